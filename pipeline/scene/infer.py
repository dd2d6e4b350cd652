"""Scene inference: photo bytes → preprocessed arrays → batched forward passes → top categories and embeddings.

Preprocessing needs numpy and Pillow alone; :func:`infer` runs a torch :class:`Backbone` or its
ONNX Runtime session (:mod:`pipeline.scene.onnx`) through a torch DataLoader.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from pipeline.config import S3Params
from pipeline.device import import_torch
from pipeline.errors import describe
from pipeline.images import to_rgb
from pipeline.scene.backbone import Backbone
from pipeline.scene.spec import Preprocess
from pipeline.store import read_bytes


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
    the same network (:class:`pipeline.scene.onnx.OnnxBackbone`, CPU only); both give the same outputs.
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
