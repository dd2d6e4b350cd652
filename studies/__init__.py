"""The studies: analyses that train many variants of the model on the dataset (``studies/dvc.yaml``).

``size_study`` (the seed's Figure 6: top-1 % and mean rank against training-set size, with the fitted
``y = a - b / x^c``) and ``filter_study`` (what each filter of ``filters.REGISTRY`` is worth, against a
size-matched random set) and ``simulation`` (the seed's Figure 4: from north-aligned panoramas to
ordinary photos, one change at a time). All train with ``pipeline.train.runs`` and the ``train``/``evaluate``
params; ``study.*`` and ``simulation.*`` params override only what a study varies.
"""
