"""Typed params: params.yaml is loaded once into these models; unknown keys and wrong types fail at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Params(_Section):
    """S3 access: SpaceNet's bucket is public, so reads are anonymous unless told otherwise."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    anonymous: bool = True


class CustomParams(_Section):
    """Bring-your-own data: a raster catalog (YAML/CSV) and a photo table (CSV/Parquet) or folder."""

    rasters: str | None = None
    photos: str | None = None


class DemoParams(_Section):
    """The embedded demo AOI, generated deterministically in code."""

    seed: int = 7
    out: str = "data/demo"
    n_photos: int = Field(300, ge=40)


class DownloadParams(_Section):
    workers: int = Field(8, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0)
    jpeg_quality: int = Field(95, ge=50, le=100)


class TilesParams(_Section):
    gsd_m: float = Field(0.3, gt=0)
    resampling: Literal["lanczos", "bilinear", "cubic", "nearest"] = "lanczos"
    percentiles: tuple[float, float] = (2.0, 98.0)
    overview_max_px: int = Field(1024, ge=64)
    block_px: int = Field(1024, ge=256)
    compress: Literal["deflate", "lzw", "zstd", "jpeg"] = "deflate"

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 100:
            raise ValueError("must be two numbers 0 <= low < high <= 100")
        return v


class PairParams(_Section):
    density_m: float = Field(10.0, ge=0)
    seed: int = 0


class SplitParams(_Section):
    test_cities: list[str] = ["Paris"]
    val_fraction: float = Field(0.1, ge=0, lt=1)
    block_m: float = Field(500.0, gt=0)
    seed: int = 0


class ChipParams(_Section):
    edge_m: float = Field(225.0, gt=0)
    format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = Field(90, ge=50, le=100)


class FilterParams(_Section):
    min_accuracy: int = Field(16, ge=0, le=16)
    max_nodata_fraction: float = Field(0.05, ge=0, le=1)
    min_chip_std: float = Field(2.0, ge=0)
    min_side_px: int = Field(64, ge=1)
    single_band: Literal["drop", "convert"] = "drop"
    deny_list: str = "catalogs/deny_list.yaml"
    verdicts: str = "review/verdicts.csv"


class Params(_Section):
    """Everything params.yaml may hold."""

    source: Literal["demo", "flickr", "custom"] = "demo"
    store: str = "data/store"
    scheduler: str = ""
    workers: int = Field(2, ge=1)
    s3: S3Params = S3Params()
    custom: CustomParams = CustomParams()
    demo: DemoParams = DemoParams()
    download: DownloadParams = DownloadParams()
    tiles: TilesParams = TilesParams()
    pair: PairParams = PairParams()
    split: SplitParams = SplitParams()
    chip: ChipParams = ChipParams()
    filter: FilterParams = FilterParams()


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (check its spelling against params.yaml in the repo)")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def parse_params(data: dict | None) -> Params:
    """Validate a params mapping; raise ConfigError naming every bad key."""
    try:
        return Params.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(f"params: {_describe(err)}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load params.yaml once; a missing file gives the defaults."""
    path = Path(path)
    if not path.exists():
        return Params()
    with path.open() as fh:
        data = yaml.safe_load(fh)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    try:
        return parse_params(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {str(err).removeprefix('params: ')}") from None
