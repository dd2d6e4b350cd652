"""The training job that reads the manifests: data, models, losses, metrics, loop and the train/evaluate stages.

torch, torchvision and timm are imported by the submodules that need them (``pip install -e .[train]``);
:mod:`pipeline.train.polar` needs only numpy; the sections' params are in :mod:`pipeline.config`.
"""
