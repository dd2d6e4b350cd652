"""Typed params of the train, evaluate and heatmap stages (sections ``train``, ``evaluate``, ``heatmap``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WitwFovParams(_Section):
    """The WITW model: VGG16 trunk, polar overhead, orientation by circular correlation, soft-margin triplet."""

    lr: float = Field(1e-5, gt=0)
    fov_deg: float = Field(70.0, gt=0, le=360)  # assumed horizontal field of view of every photo
    chip_px: int = Field(256, ge=16)  # the overhead chip is resized to this before the polar transform
    polar_height: int = Field(128, ge=8)  # polar image rows; the photo is resized to this height
    polar_width: int = Field(512, ge=16)  # polar image columns = 360 degrees of azimuth
    vgg_convs: int = Field(10, ge=1, le=13)  # VGG16 conv layers kept (10: up to conv4_3, stride 8)
    channels: int = Field(16, ge=1)  # channels of the compact feature map
    alpha: float = Field(10.0, gt=0)  # soft-margin triplet scale
    pretrained: str | None = None  # local torchvision VGG16 state dict (vgg16-397923af.pth); None: from scratch


class TimmParams(_Section):
    """A timm backbone for both branches with a symmetric InfoNCE loss and a learnable temperature."""

    backbone: str = "resnet10t"
    shared: bool = False  # one set of weights for photos and chips
    embed_dim: int = Field(128, ge=0)  # linear projection after pooling; 0 keeps the pooled features
    photo_height: int = Field(48, ge=16)
    photo_width: int = Field(64, ge=16)
    chip_px: int = Field(64, ge=16)
    lr: float = Field(1e-3, gt=0)
    temperature: float = Field(0.07, gt=0)  # initial value; learnt
    pretrained: str | None = None  # local timm/torch state dict for the backbone; None: from scratch


class TrainParams(_Section):
    """Section ``train``: model choice, optimisation, data loading and the device."""

    model: Literal["witw_fov", "timm_contrastive"] = "timm_contrastive"
    seed: int = 0
    epochs: int = Field(12, ge=1)  # the demo default: a tiny model for a few steps (12 x 5 steps)
    batch_size: int = Field(32, ge=2)
    steps_per_epoch: int | None = Field(None, ge=1)  # None: one pass over the training split
    weight_decay: float = Field(0.0, ge=0)
    augment: bool = True  # mirror photo+chip together; chip quarter turns (timm_contrastive)
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
