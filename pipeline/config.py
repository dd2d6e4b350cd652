"""Typed params: params.yaml is loaded once into these models; unknown keys and wrong types fail at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.train.params import EvaluateParams, HeatmapParams, TrainParams


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


class StacParams(_Section):
    """Overhead imagery from a STAC catalog or API: when ``url`` is set its items are the raster catalog."""

    url: str | None = None  # STAC API root, or a static catalog.json / collection.json: path, http(s):// or s3://
    collections: list[str] = []  # empty: every collection
    bbox: tuple[float, float, float, float] | None = None  # [min_lon, min_lat, max_lon, max_lat]
    aoi: str | None = None  # instead of bbox: a vector file (any CRS); items intersecting its polygons
    datetime: str | None = None  # RFC 3339 instant or interval: "2016-01-01/2018-12-31", ".." for an open end
    asset: str | None = None  # key of the image asset; null: "visual", else the item's one GeoTIFF data asset
    band_order: tuple[int, int, int] | None = None  # null: red/green/blue of the asset's eo:bands, else [1, 2, 3]
    city_property: str = "city"  # item property naming the city; else the collection's title, else its id
    licence: str | None = None  # overrides the item/collection licence (then licence_url too, unless known)
    licence_url: str | None = None
    attribution: str | None = None  # overrides the providers named by the item/collection
    satellite: str | None = None  # overrides the item's platform/constellation
    max_items: int = Field(5000, ge=1)  # more matches is an error (narrow the search), never a silent cut
    timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _one_area(self) -> StacParams:
        if self.bbox is not None and self.aoi:
            raise ValueError("bbox and aoi are both set: keep one of them")
        if self.bbox is not None and not (self.bbox[0] < self.bbox[2] and self.bbox[1] < self.bbox[3]):
            raise ValueError("bbox must be [min_lon, min_lat, max_lon, max_lat] with min < max")
        return self


class DemoParams(_Section):
    """The embedded demo AOI, generated deterministically in code."""

    seed: int = 7
    out: str = "data/demo"
    n_photos: int = Field(300, ge=40)


class DownloadParams(_Section):
    workers: int = Field(8, ge=1)
    per_host: int = Field(4, ge=1)  # at most this many requests in flight to one host (be polite to a CDN)
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
    reject_modes: list[Literal["CMYK", "P", "RGBA", "LA", "PA", "I;16", "I", "F"]] = []  # else converted to RGB
    deny_list: str = "catalogs/deny_list.yaml"
    verdicts: str = "review/verdicts.csv"


class FlickrParams(_Section):
    """Flickr harvest (source: flickr). Credentials come from the environment, never from params."""

    rest_url: str = "https://api.flickr.com/services/rest/"
    bbox: tuple[float, float, float, float] | None = None  # [min_lon, min_lat, max_lon, max_lat]
    aoi: str | None = None  # instead of bbox: a vector file of polygons (any CRS), one search area per feature
    licences: list[int] = list(range(1, 17))  # all that allow redistribution with attribution
    min_upload_date: str | None = "2004-01-01"  # a geo query needs a limiting agent
    max_upload_date: str | None = None
    min_accuracy: int = Field(1, ge=1, le=16)
    calls_per_hour: float = Field(3600, gt=0)
    split_threshold: int = Field(3500, ge=1, le=4000)
    min_cell_deg: float = Field(0.001, gt=0)
    per_page: int = Field(250, ge=1, le=500)
    retries: int = Field(6, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    timeout_s: float = Field(30.0, gt=0)
    credentials_file: str | None = None  # YAML/ini file with key and secret, instead of the env vars
    state_dir: str = "data/flickr_state"
    size: str = Field("largest<=1024", pattern=r"^(largest<=[0-9]+|url_(o|k|h|l|c|z|m|n))$")  # or url_o, url_l, ...


class ClassifyParams(_Section):
    """Scene classification for the indoor rule and embeddings for the relevance head."""

    model: Literal["imagenet", "places365"] = "imagenet"
    places365_checkpoint: str | None = None  # path to resnet18_places365.pth.tar / wideresnet18_places365.pth.tar
    places365_arch: Literal["resnet18", "resnet50", "wideresnet18"] = "resnet18"
    top_k: int = Field(10, ge=1)
    indoor_threshold: float = Field(0.5, ge=0, le=1)
    min_indoor_mass: float = Field(0.15, ge=0, le=1)
    device: str = "auto"
    runtime: Literal["auto", "torch", "onnxruntime"] = "auto"  # auto: onnxruntime on the CPU when installed
    batch_size: int = Field(16, ge=1)
    loader_workers: int = Field(2, ge=0)
    threads: int = Field(2, ge=1)


class RelevanceParams(_Section):
    """The relevance head trained from curator verdicts."""

    min_labels: int = Field(20, ge=2)
    threshold: float = Field(0.5, ge=0, le=1)
    c: float = Field(1.0, gt=0)
    seed: int = 0


class Params(_Section):
    """Everything params.yaml may hold."""

    source: Literal["demo", "flickr", "custom"] = "demo"
    store: str = "data/store"
    scheduler: str = ""
    workers: int = Field(2, ge=1)
    s3: S3Params = S3Params()
    custom: CustomParams = CustomParams()
    stac: StacParams = StacParams()
    demo: DemoParams = DemoParams()
    download: DownloadParams = DownloadParams()
    tiles: TilesParams = TilesParams()
    pair: PairParams = PairParams()
    split: SplitParams = SplitParams()
    chip: ChipParams = ChipParams()
    filter: FilterParams = FilterParams()
    flickr: FlickrParams = FlickrParams()
    classify: ClassifyParams = ClassifyParams()
    relevance: RelevanceParams = RelevanceParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    heatmap: HeatmapParams = HeatmapParams()


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
