"""The studies: analyses that train many variants of the model on the dataset (``studies/dvc.yaml``).

``size_study`` (the seed's Figure 6: top-1 % and mean rank against training-set size, with the fitted
``y = a - b / x^c``) and ``filter_study`` (what each filter of ``filters.REGISTRY`` is worth, against a
size-matched random set). Both train with ``pipeline.train.runs`` and the ``train``/``evaluate`` params;
``study.*`` params override only what a study varies.
"""
