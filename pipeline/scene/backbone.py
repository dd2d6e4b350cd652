"""Loading a scene network on torch: the weights file, the architecture, and one cached copy per process.

The embedding is the classifier head's input (pooled features), captured with a forward hook.
torch, torchvision and timm are imported only when a model is loaded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from pipeline.device import INSTALL_HINT, import_torch
from pipeline.errors import ModelError
from pipeline.scene.spec import IMAGENET_ARCH, PLACES_CLASSES, ModelSpec

log = logging.getLogger(__name__)


def _load_file(path: str):
    torch = import_torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except UnicodeDecodeError:  # Python 2 pickles of the 2017 Places365 release
        return torch.load(path, map_location="cpu", weights_only=True, encoding="latin1")
    except Exception as err:  # noqa: BLE001 - any unpickling failure: say which file and why
        raise ModelError(f"{path}: cannot load as a weights-only PyTorch file: {type(err).__name__}: {err}") from None


def _check_load(net, state: Mapping, what: str) -> None:
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ModelError(f"{what}: weights do not fit the architecture: {str(err)[:400]}") from None
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"{what}: weights do not fit the architecture (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


def map_by_position(source: Mapping, target: Mapping) -> dict:
    """Rename ``source`` tensors to ``target``'s keys by position (``num_batches_tracked`` left out of both)."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ModelError(
            f"weights hold {len(src)} tensors, the architecture {len(dst)}: not the EfficientNet-Lite0 file"
        )
    out = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if tuple(sv.shape) != tuple(dv.shape):
            raise ModelError(f"weights: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def _lite0(weights: str):
    try:
        import timm
    except ImportError:
        raise ModelError(f"classify.model imagenet needs timm: {INSTALL_HINT}") from None
    net = timm.create_model(IMAGENET_ARCH, pretrained=False)
    state = _load_file(weights)
    _check_load(net, map_by_position(state, net.state_dict()), weights)
    return net, net.classifier


def _places365(weights: str, arch: str):
    try:
        import torchvision
    except ImportError:
        raise ModelError(f"classify.model places365 needs torchvision: {INSTALL_HINT}") from None
    torch = import_torch()
    obj = _load_file(weights)
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None  # the release format, or a bare state dict
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"classify.places365_checkpoint: {weights} holds no state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    build = torchvision.models.resnet50 if arch == "resnet50" else torchvision.models.resnet18
    net = build(weights=None, num_classes=PLACES_CLASSES)
    if arch == "wideresnet18":  # the release's wideresnet.py: no max-pool after the stem, 14x14 last map at 224
        net.maxpool = torch.nn.Identity()
    _check_load(net, state, f"classify.places365_checkpoint {weights} (places365_arch={arch})")
    return net, net.fc


class Backbone:
    """A loaded scene network: ``forward(x) -> (logits, embedding)``; the embedding is the head's input."""

    def __init__(self, spec: ModelSpec, net, head) -> None:
        self.spec = spec
        self.net = net.eval()
        self.device = "cpu"
        self.head = head
        self._seen = threading.local()  # per thread: concurrent chunks share one backbone
        head.register_forward_hook(lambda _m, inputs, _out: setattr(self._seen, "embedding", inputs[0]))
        self.dim = int(head.in_features)

    def forward(self, x):
        self._seen.embedding = None
        logits = self.net(x)
        return logits, self._seen.embedding

    def to(self, device: str) -> Backbone:
        """Move to ``device`` in channels-last layout (faster convolutions on CPU and GPU)."""
        torch = import_torch()
        if device != self.device:
            self.net.to(torch.device(device), memory_format=torch.channels_last)
            self.device = device
        return self


def load_backbone(spec: ModelSpec) -> Backbone:
    """Load the network of ``spec`` on the CPU, in eval mode; never downloads anything."""
    import_torch()
    if spec.arch == IMAGENET_ARCH:
        net, head = _lite0(spec.weights)
    else:
        net, head = _places365(spec.weights, spec.arch)
    log.info("loaded %s (key %s) from %s", spec.name, spec.key, spec.weights)
    return Backbone(spec, net, head)


_BACKBONES: dict[str, Backbone] = {}
_LOCK = threading.Lock()


def cached_backbone(spec: ModelSpec) -> Backbone:
    """One loaded backbone per model key and process (chunks and Dask workers reuse it; loaded once)."""
    with _LOCK:
        if spec.key not in _BACKBONES:
            _BACKBONES[spec.key] = load_backbone(spec)
        return _BACKBONES[spec.key]
