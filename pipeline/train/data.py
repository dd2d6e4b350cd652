"""Pairs from a manifest as tensors: a map-style Dataset, a seeded per-epoch sampler and the DataLoader.

The manifest is read with pyarrow (memory-mapped, only ``id``, ``photo_uri`` and ``chip_uri``) and
kept as Arrow arrays; images are read through :func:`pipeline.store.read_bytes` (local, S3 or HTTP)
and decoded in the DataLoader's worker processes. The sampler yields ``(epoch, index)`` keys, and
every random choice for a sample is drawn from a generator seeded by ``(seed, epoch, index)``, so an
epoch's batches are the same whatever the number of workers and whether the run was resumed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from catalogs import PhotoFrames, load_photo_frames
from pipeline.config import S3Params, TrainParams
from pipeline.errors import StageInputError
from pipeline.store import read_bytes
from pipeline.train.pano_views import SWAP_RATE, overhead_view, photo_view, swap_map
from pipeline.train.polar import polar_transform

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
COLUMNS = ("id", "photo_uri", "chip_uri")
PANORAMA = "panorama"  # optional manifest column: true for a north-aligned 360 degree panorama row


@dataclass(frozen=True)
class PanoramaChain:
    """The Figure-4 chain applied to panorama rows: up to ``step``, per-image draws seeded by ``seed``."""

    step: str
    frames: PhotoFrames
    seed: int = 0


def panorama_chain(params: TrainParams) -> PanoramaChain | None:
    """The chain ``train.panorama_step`` asks for (None: panoramas are used as they are)."""
    if params.panorama_step is None:
        return None
    return PanoramaChain(params.panorama_step, load_photo_frames(params.photo_frames), params.seed)


@dataclass(frozen=True)
class ViewSpec:
    """How a photo and a chip become model inputs (sizes in pixels)."""

    photo_height: int
    photo_width: int
    chip_px: int
    polar: tuple[int, int] | None = None  # (height, width) of the polar image, or None for the square chip
    mirror: bool = False  # augmentation: mirror photo and chip together with probability 1/2
    quarter_turns: bool = False  # augmentation: turn the (square) chip by a random multiple of 90 degrees

    def training(self, augment: bool) -> ViewSpec:
        """This spec with the augmentations that suit its model switched on (or all off)."""
        return ViewSpec(self.photo_height, self.photo_width, self.chip_px, self.polar,
                        mirror=augment, quarter_turns=augment and self.polar is None)


def photo_width_for_fov(fov_deg: float, polar_width: int, stride: int) -> int:
    """Photo width covering ``fov_deg`` of the polar image's 360 degrees, a multiple of the trunk stride."""
    return stride * max(1, round(fov_deg / 360 * polar_width / stride))


def vgg_stride(n_convs: int) -> int:
    """Stride of VGG16's first ``n_convs`` conv layers (a 2x max-pool ends each block of 2, 2, 3, 3, 3 convs)."""
    return 2 ** sum(1 for end in (2, 4, 7, 10, 13) if end < n_convs)


def view_spec(params: TrainParams) -> ViewSpec:
    """The evaluation-time inputs of the model ``params`` describe."""
    if params.model == "witw_fov":
        w = params.witw_fov
        width = photo_width_for_fov(w.fov_deg, w.polar_width, vgg_stride(w.vgg_convs))
        return ViewSpec(w.polar_height, width, w.chip_px, (w.polar_height, w.polar_width))
    t = params.timm_contrastive
    return ViewSpec(t.photo_height, t.photo_width, t.chip_px)


def decode(data: bytes, size: tuple[int, int]) -> Image.Image:
    """Decode image bytes to RGB; JPEGs decode at a reduced scale that stays ≥ ``size`` (w, h)."""
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", size)
    return im.convert("RGB")


def _normalise(arr: np.ndarray) -> torch.Tensor:
    arr = (arr.astype(np.float32) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def photo_pixels(im: Image.Image, spec: ViewSpec) -> np.ndarray:
    """A photo resized (not cropped) to ``photo_height`` x ``photo_width``: uint8 HWC."""
    return np.asarray(im.resize((spec.photo_width, spec.photo_height), Image.BILINEAR, reducing_gap=2.0))


def chip_pixels(im: Image.Image, spec: ViewSpec) -> np.ndarray:
    """An overhead chip (north up) resized to ``chip_px``, then polar-transformed if the spec says so: uint8 HWC."""
    arr = np.asarray(im.resize((spec.chip_px, spec.chip_px), Image.BILINEAR, reducing_gap=2.0))
    return polar_transform(arr, *spec.polar) if spec.polar is not None else arr


def photo_tensor(arr: np.ndarray, mirror: bool = False) -> torch.Tensor:
    """Photo pixels → normalised CHW float tensor, mirrored left-right if asked."""
    return _normalise(arr[:, ::-1] if mirror else arr)


def chip_tensor(arr: np.ndarray, spec: ViewSpec, mirror: bool = False, turns: int = 0) -> torch.Tensor:
    """Chip pixels → normalised CHW tensor; ``mirror`` flips east-west (in polar form: bearing θ → -θ)."""
    if mirror:
        arr = np.roll(arr[:, ::-1], 1, axis=1) if spec.polar is not None else arr[:, ::-1]
    if turns:
        arr = np.rot90(arr, k=turns)
    return _normalise(arr)


class ManifestPairs(Dataset):
    """Photo/chip pairs of one manifest; ``ds[(epoch, i)]`` → ``(i, photo, chip)``.

    Decoded, resized pixels of up to ``cache_mb`` MiB of pairs are kept per process (per DataLoader
    worker), so later epochs of a small split skip reading and decoding.
    """

    def __init__(self, path: str, spec: ViewSpec, s3: S3Params | None = None, seed: int = 0,
                 cache_mb: int = 0, chain: PanoramaChain | None = None) -> None:
        try:
            names = pq.read_schema(path).names
            table = pq.read_table(path, columns=list(COLUMNS) + [PANORAMA] * (PANORAMA in names), memory_map=True)
        except FileNotFoundError:
            raise StageInputError(f"{path} does not exist: run the manifest stage first (`dvc repro`)") from None
        except KeyError as err:
            raise StageInputError(f"{path} is not a manifest (missing column {err}); rerun `dvc repro`") from None
        self.path, self.spec, self.s3, self.seed = str(path), spec, s3 or S3Params(), seed
        self.ids, self.photos, self.chips = (table.column(c).combine_chunks() for c in COLUMNS)
        pano = table.column(PANORAMA).to_numpy(zero_copy_only=False) if PANORAMA in table.column_names else None
        self.chain = chain
        self.is_pano = (np.zeros(len(self.ids), bool) if pano is None or chain is None
                        else np.array([bool(v) for v in pano], bool))
        swapped = chain is not None and chain.step == "swapped"
        self.chip_of = swap_map(len(self.ids), SWAP_RATE, chain.seed) if swapped else np.arange(len(self.ids))
        self.chip_of = np.where(self.is_pano, self.chip_of, np.arange(len(self.ids)))
        if swapped:  # only a panorama row's overhead goes to (and comes from) another panorama row
            self.chip_of = np.where(self.is_pano[self.chip_of], self.chip_of, np.arange(len(self.ids)))
        chip_hw = spec.polar or (spec.chip_px, spec.chip_px)
        self.cache_items = cache_mb * 2**20 // (3 * (spec.photo_height * spec.photo_width + chip_hw[0] * chip_hw[1]))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cache_bytes_left = cache_mb * 2**20  # panorama rows are cached as decoded, at their own size

    def __len__(self) -> int:
        return len(self.ids)

    def id(self, i: int) -> str:
        """The pair id of row ``i``."""
        return self.ids[i].as_py()

    def pixels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Photo and chip pixels of row ``i`` (from the cache when there); a panorama row's as decoded."""
        if i in self._cache:
            return self._cache[i]
        spec = self.spec
        if self.is_pano[i]:
            photo = decode(read_bytes(self.photos[i].as_py(), self.s3), (1 << 16, 1 << 16))
            chip = decode(read_bytes(self.chips[i].as_py(), self.s3), (1 << 16, 1 << 16))
            out = np.asarray(photo), np.asarray(chip)
        else:
            photo = decode(read_bytes(self.photos[i].as_py(), self.s3), (spec.photo_width, spec.photo_height))
            chip = decode(read_bytes(self.chips[i].as_py(), self.s3), (spec.chip_px, spec.chip_px))
            out = photo_pixels(photo, spec), chip_pixels(chip, spec)
        size = out[0].nbytes + out[1].nbytes
        if len(self._cache) < self.cache_items and size <= self._cache_bytes_left:
            self._cache[i] = out
            self._cache_bytes_left -= size
        return out

    def panorama_pixels(self, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """A panorama row's photo and chip after the chain (photo from row ``i``, overhead maybe swapped)."""
        chain, spec, image_id = self.chain, self.spec, self.id(i)
        rng = np.random.default_rng([self.seed, epoch, i, 0xF4])
        view = photo_view(self.pixels(i)[0], chain.step, image_id, chain.seed, rng, chain.frames)
        j = int(self.chip_of[i])
        overhead = overhead_view(self.pixels(j)[1], chain.step, self.id(j), chain.seed)
        photo = photo_pixels(Image.fromarray(np.ascontiguousarray(view)), spec)
        return photo, chip_pixels(Image.fromarray(np.ascontiguousarray(overhead)), spec)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[int, torch.Tensor, torch.Tensor]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        spec = self.spec
        mirror, turns = False, 0
        if spec.mirror or spec.quarter_turns:
            rng = np.random.default_rng([self.seed, epoch, i])
            mirror = spec.mirror and bool(rng.integers(2))
            turns = int(rng.integers(4)) if spec.quarter_turns else 0
        photo, chip = self.panorama_pixels(epoch, i) if self.is_pano[i] else self.pixels(i)
        return i, photo_tensor(photo, mirror), chip_tensor(chip, spec, mirror, turns)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)``: a permutation seeded by ``(seed, epoch)`` (or in order when not shuffling)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> np.ndarray:
        """The indices of ``epoch`` in the order they are drawn."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, int(i)) for i in self.order(epoch)])

    def __len__(self) -> int:
        return self.n


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode; the main process owns the compute threads


def make_loader(ds: ManifestPairs, batch_size: int, workers: int, *, train: bool, device: str = "cpu",
                seed: int = 0) -> tuple[DataLoader, EpochSampler]:
    """A DataLoader over ``ds`` and its sampler (call ``sampler.set_epoch`` before each epoch)."""
    sampler = EpochSampler(len(ds), seed, shuffle=train)
    batch = min(batch_size, len(ds)) if train else batch_size
    loader = DataLoader(
        ds, batch_size=max(batch, 1), sampler=sampler, drop_last=train, num_workers=workers,
        pin_memory=device.startswith("cuda"), worker_init_fn=_worker_init if workers else None,
        persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
    )
    return loader, sampler
