"""The cross-view models: shapes, circular padding, orientation by circular correlation, weights loading."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from pipeline.config import TimmParams, TrainParams, WitwFovParams
from pipeline.errors import ConfigError
from pipeline.train.models import (
    DropoutConv2d,
    TimmContrastive,
    WitwFov,
    bearing_of_shift,
    build_model,
    circular_distances,
    vgg_trunk,
)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and on a busy 2-core machine OpenMP barriers cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_WITW = WitwFovParams(vgg_convs=4, polar_height=16, polar_width=64, chip_px=32, channels=8)


@pytest.mark.parametrize("shift", [0, 5, 37, 60])
def test_circular_correlation_finds_a_known_shift(shift):
    torch.manual_seed(0)
    overhead = torch.randn(4, 16, 4, 64)
    photo = overhead[2:3, :, :, (torch.arange(12) + shift) % 64]  # wraps past north for shift 60
    dist, found, bearing = circular_distances(photo, overhead, stride=8, polar_width=512)
    assert int(found[0, 2]) == shift
    assert float(dist[0, 2]) < 1e-3
    assert int(dist[0].argmin()) == 2
    assert float(bearing[0, 2]) == pytest.approx((((shift + 6) * 8 - 0.5) * 360 / 512) % 360)


def test_distance_is_witws_two_times_one_minus_cosine_of_the_normalised_crop():
    torch.manual_seed(1)
    photo, overhead = torch.randn(1, 8, 2, 5), torch.randn(1, 8, 2, 20)
    dist, shift, _ = circular_distances(photo, overhead, stride=1, polar_width=20)
    s = int(shift[0, 0])
    crop = overhead[..., (torch.arange(5) + s) % 20].flatten()
    g = photo.flatten() / photo.norm()
    cos = float((g * crop / crop.norm()).sum())
    assert float(dist[0, 0]) == pytest.approx(2 * (1 - cos), abs=1e-5)  # cvig_fov.l2_distance: 2 (1 - cos), 0..4
    whole = overhead / overhead.norm()  # the shift maximises correlation with the whole-map-normalised features
    corr = [float((photo.flatten() * whole[..., (torch.arange(5) + k) % 20].flatten()).sum()) for k in range(20)]
    assert s == max(range(20), key=corr.__getitem__)


def test_bearing_of_shift_is_the_photo_centre():
    assert float(bearing_of_shift(torch.tensor(0), 12, 8, 512)) == pytest.approx(47.5 * 360 / 512)
    assert float(bearing_of_shift(torch.tensor(63), 2, 8, 512)) == pytest.approx(359.6484375)  # wraps past north


def test_witw_fov_default_shapes_follow_the_design():
    torch.manual_seed(0)
    model = WitwFov(WitwFovParams())
    assert model.stride == 8
    assert model.spec.polar == (128, 512) and model.spec.chip_px == 256
    assert (model.spec.photo_height, model.spec.photo_width) == (128, 96)  # 70° of 512 columns, a multiple of 8
    with torch.no_grad():
        overhead = model.embed_chip(torch.randn(1, 3, 128, 512))
        photo = model.embed_photo(torch.randn(1, 3, 128, 96))
    assert overhead.shape == (1, 16, 4, 64) and photo.shape == (1, 16, 4, 12)
    dist, bearing = model.distances(photo, overhead)
    assert dist.shape == bearing.shape == (1, 1)


def test_overhead_branch_pads_circularly_so_turning_the_polar_image_rolls_the_features():
    torch.manual_seed(0)
    model = WitwFov(TINY_WITW).eval()
    x = torch.randn(1, 3, 16, 64)
    with torch.no_grad():
        a = model.embed_chip(x)
        b = model.embed_chip(torch.roll(x, shifts=3 * model.stride, dims=-1))
        photo_a = model.embed_photo(x)
        photo_b = model.embed_photo(torch.roll(x, shifts=3 * model.stride, dims=-1))
    assert torch.allclose(torch.roll(a, shifts=3, dims=-1), b, atol=1e-5)
    assert not torch.allclose(torch.roll(photo_a, shifts=3, dims=-1), photo_b, atol=1e-3)  # zero padding there


def test_vgg_trunk_is_torchvisions_vgg16_layout():
    from torchvision.models.vgg import cfgs, make_layers

    trunk, stride = vgg_trunk(10)
    reference = make_layers(cfgs["D"]).state_dict()
    assert stride == 8
    assert {k: v.shape for k, v in trunk.state_dict().items()} == {k: reference[k].shape for k in trunk.state_dict()}
    assert len(trunk.state_dict()) == 20  # 10 convs, weight + bias


def test_witw_loads_a_local_vgg16_file_into_both_trunks(tmp_path):
    torch.manual_seed(3)
    donor, _ = vgg_trunk(13)
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in donor.state_dict().items()}, path)
    model = WitwFov(TINY_WITW.model_copy(update={"pretrained": str(path)}))
    for branch in (model.photo_net, model.overhead_net):
        assert torch.equal(branch[0].state_dict()["5.weight"], donor.state_dict()["5.weight"])


def test_a_missing_or_unfitting_weights_file_names_the_param(tmp_path):
    with pytest.raises(ConfigError, match="witw_fov.pretrained.*never downloaded"):
        WitwFov(TINY_WITW.model_copy(update={"pretrained": str(tmp_path / "nope.pth")}))
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="fits only 0"):
        TimmContrastive(TimmParams(backbone="test_byobnet", pretrained=str(tmp_path / "other.pth")))


def test_timm_contrastive_embeds_normalised_vectors_and_can_share_weights():
    torch.manual_seed(0)
    separate = TimmContrastive(TimmParams(backbone="test_byobnet", embed_dim=32, photo_height=32, photo_width=48,
                                          chip_px=32))
    shared = TimmContrastive(TimmParams(backbone="test_byobnet", embed_dim=32, shared=True))
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in separate.parameters())
    with torch.no_grad():
        p = separate.embed_photo(torch.randn(3, 3, 32, 48))
        c = separate.embed_chip(torch.randn(3, 3, 32, 32))
    assert p.shape == c.shape == (3, 32)
    assert torch.allclose(p.norm(dim=1), torch.ones(3), atol=1e-5)
    dist, bearing = separate.distances(p, c)
    assert bearing is None and dist.shape == (3, 3) and 0.0 <= float(dist.min()) and float(dist.max()) <= 4.0
    assert torch.allclose(dist, 2 * (1 - p @ c.T), atol=1e-6)  # the same distance as witw_fov


def test_an_unknown_timm_backbone_names_the_param():
    with pytest.raises(ConfigError, match="train.timm_contrastive.backbone"):
        build_model(TrainParams(timm_contrastive=TimmParams(backbone="no_such_net")))


def test_witw_refuses_a_polar_size_its_stride_cannot_divide():
    with pytest.raises(ConfigError, match="polar_height"):
        WitwFov(TINY_WITW.model_copy(update={"polar_height": 20}))


# ---------------------------------------------------------------- WITW's training setup (cvig_fov.py FOV_DSM)

SMALL_WITW = WitwFovParams(polar_height=32, polar_width=64, chip_px=32)  # the full trunk and head, tiny images


def test_witw_fov_freezes_every_vgg_module_before_index_17_in_both_branches():
    torch.manual_seed(0)
    model = WitwFov(WitwFovParams())
    for branch in (model.photo_net, model.overhead_net):
        trunk, head = branch
        frozen = {name for name, p in trunk.named_parameters() if not p.requires_grad}
        trainable = {name for name, p in trunk.named_parameters() if p.requires_grad}
        assert {int(n.split(".")[0]) for n in frozen} == {0, 2, 5, 7, 10, 12, 14}  # conv1_1 .. conv3_3
        assert {int(n.split(".")[0]) for n in trainable} == {17, 19, 21}  # conv4_1 .. conv4_3
        assert all(p.requires_grad for p in head.parameters())


def test_witw_fov_adds_dropout_02_after_conv4_1_to_conv4_3_and_keeps_torchvision_keys():
    from torchvision.models.vgg import cfgs, make_layers

    trunk, _ = vgg_trunk(10, dropout=0.2)
    assert [i for i, m in enumerate(trunk) if isinstance(m, DropoutConv2d)] == [17, 19, 21]
    assert all(trunk[i].p == 0.2 for i in (17, 19, 21))
    reference = make_layers(cfgs["D"]).state_dict()
    assert {k: v.shape for k, v in trunk.state_dict().items()} == {k: reference[k].shape for k in trunk.state_dict()}
    torch.manual_seed(0)
    model = WitwFov(SMALL_WITW)
    x = torch.randn(2, 3, 32, 64)
    model.train()
    assert not torch.allclose(model.embed_chip(x), model.embed_chip(x))  # channels dropped at random
    model.eval()
    assert torch.equal(model.embed_chip(x), model.embed_chip(x))
    no_dropout = WitwFov(SMALL_WITW.model_copy(update={"dropout": 0.0}))
    assert not any(isinstance(m, DropoutConv2d) for m in no_dropout.modules())


def test_witw_fov_head_convs_start_from_xavier_uniform():
    torch.manual_seed(0)
    model = WitwFov(WitwFovParams())
    head = model.photo_net[1]
    first = head[0]
    weight = first.weight.detach()
    bound = (6 / (first.in_channels * 9 + first.out_channels * 9)) ** 0.5
    assert bound * 0.9 < float(weight.abs().max()) <= bound
    assert float(first.bias.detach().abs().max()) == 0.0
