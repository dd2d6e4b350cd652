"""The training job that reads the manifests: data, models, losses, metrics, loop and the train/evaluate stages.

torch, torchvision and timm are imported by the submodules that need them (``pip install -e .[train]``);
:mod:`pipeline.train.params` and :mod:`pipeline.train.polar` need only pydantic and numpy.
"""
