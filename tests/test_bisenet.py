"""BiSeNet face parser: parity with the official module, fill recipe, official-layout files, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_fill_recipe_matches, load_fixture
from PIL import Image

from harness.parity import Fixture, check, compare
from harness.weights import WeightStore
from methods.nets import bisenet
from methods.nets.bisenet import (
    BISENET19_TO_CELEBAMASKHQ,
    CELEBAMASKHQ_HAIR,
    CELEBAMASKHQ_LABELS,
    BiSeNet,
    FaceParser,
    bicubic_downsample,
    bicubic_taps,
    fill_recipe,
    load_bisenet,
    remap_labels,
)


@pytest.fixture(scope="module")
def fx19() -> Fixture:
    return load_fixture("bisenet19")


@pytest.fixture(scope="module")
def fx16() -> Fixture:
    return load_fixture("bisenet16")


def run_forward(net: BiSeNet, x: np.ndarray) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return net(torch.from_numpy(x))


@pytest.mark.parametrize("name", ["bisenet19", "bisenet16"])
def test_parity(name):
    fx = load_fixture(name)
    results = list(check(fx, bisenet.PARITY[name]))
    assert len(results) == len(fx.cases)
    for r in results:
        assert r.ok, r.line()


def test_adapter_follows_constructor_and_input_size(fx16):
    """A held-out twin may change namespace, class count and input size: nothing is hard-coded."""
    spec = dict(fx16.spec, namespace="bisenet16_twin")
    data = dict(fx16.data, **{"in/x96": np.random.default_rng(1).standard_normal((2, 3, 96, 96), np.float32)})
    twin = Fixture(fx16.path, spec, data)
    case = {"name": "forward_96", "inputs": {"x": "in/x96"}, "outputs": {"out": "-", "out32": "-"}}
    out = bisenet.parity_adapter(twin)(case)
    assert set(out) == {"out", "out32"}
    assert out["out"].shape == (2, 16, 96, 96)
    assert np.all(np.isfinite(out["out"]))


@pytest.mark.parametrize("name", ["bisenet19", "bisenet16"])
def test_fill_recipe_matches_spec(name):
    fx = load_fixture(name)
    assert_fill_recipe_matches(fx, fill_recipe)


@pytest.mark.parametrize("name", ["bisenet19", "bisenet16"])
def test_state_dict_keys_match_official(name):
    fx = load_fixture(name)
    ours = {k: tuple(v.shape) for k, v in BiSeNet(fx.constructor["n_classes"]).state_dict().items()}
    official = {k: tuple(shape) for k, shape, _ in fx.spec["full_config_keys"]}
    assert ours == official


@pytest.mark.parametrize("name", ["bisenet19", "bisenet16"])
def test_official_layout_file_loads_and_reproduces(name, tmp_path):
    """A plain state dict saved like the official file loads through the WeightStore and gives the outputs."""
    fx = load_fixture(name)
    variant = bisenet.VARIANTS[name]
    torch.save(fx.torch_state_dict(), tmp_path / variant.checkpoint.filename)
    net = load_bisenet(WeightStore(weights_dir=tmp_path), "cpu", name)
    case = next(c for c in fx.cases if c["name"] == "forward_64")
    heads = run_forward(net, fx.input(case, "x"))
    for head, name in zip(heads, ("out", "out16", "out32"), strict=True):
        assert compare(head.numpy(), fx.reference(case["outputs"][name]), case["tol"]) < case["tol"]


@pytest.mark.parametrize("name", ["bisenet19", "bisenet16"])
def test_fill_weights_equal_fixture_weights(name):
    """--fill-weights fills under the checkpoint key, which is the fixture namespace: same network."""
    fx = load_fixture(name)
    net = load_bisenet(WeightStore(fill=True), "cpu", name)
    case = next(c for c in fx.cases if c["name"] == "forward_64")
    out = run_forward(net, fx.input(case, "x"))[0]
    assert compare(out.numpy(), fx.reference(case["outputs"]["out"]), 1e-4) < 1e-4


def test_label_tables():
    assert len(BISENET19_TO_CELEBAMASKHQ) == 19 and sorted(BISENET19_TO_CELEBAMASKHQ) == list(range(19))
    for i, name in enumerate(bisenet.BISENET19_LABELS):
        target = CELEBAMASKHQ_LABELS[BISENET19_TO_CELEBAMASKHQ[i]]
        assert target == name or (name, target) == ("skin", "skin_other")
    assert BISENET19_TO_CELEBAMASKHQ[bisenet.BISENET19_HAIR] == CELEBAMASKHQ_HAIR == 13
    assert bisenet.BISENET16_LABELS[bisenet.BISENET16_HAIR] == "hair"


def test_spec_label_orders(fx19, fx16):
    assert list(bisenet.BISENET19_LABELS) == fx19.spec["label_order"]
    assert list(BISENET19_TO_CELEBAMASKHQ) == fx19.spec["hairfast_remap_to_celebamaskhq"]
    assert list(CELEBAMASKHQ_LABELS) == fx19.spec["celebamaskhq_order_hairfast"]
    assert fx19.spec["hair_index"] == bisenet.BISENET19_HAIR and fx16.spec["hair_index"] == bisenet.BISENET16_HAIR
    assert len(fx16.spec["label_order"]) == len(bisenet.BISENET16_LABELS) == 16


def test_remap_and_bicubic_match_hairfast_ops():
    ops = load_fixture("hairfast_ops")
    labels = torch.from_numpy(ops.data["in/bisenet_labels_512"].astype(np.int64))
    celeba = remap_labels(labels, BISENET19_TO_CELEBAMASKHQ)
    np.testing.assert_array_equal(celeba.numpy()[:, None], ops.data["out/celeba_labels_512"])
    np.testing.assert_array_equal(np.asarray(BISENET19_TO_CELEBAMASKHQ), ops.data["out/bisenet_to_celeba_table"])
    np.testing.assert_allclose(bicubic_taps(2).numpy(), ops.consts["bicubic_k_factor2"], atol=1e-7)
    np.testing.assert_allclose(bicubic_taps(4).numpy(), ops.consts["bicubic_k_factor4"], atol=1e-7)
    x = torch.from_numpy(ops.data["in/img_u8"]).float() / 255
    assert compare(bicubic_downsample(x, 4).numpy(), ops.data["out/im_256"], 1e-5) < 1e-5
    assert compare(bicubic_downsample(x, 2).numpy(), ops.reference("out/im_512/*"), 1e-5) < 1e-5


@pytest.fixture(scope="module")
def filled_parser() -> FaceParser:
    return FaceParser.load(WeightStore(fill=True), "cpu")


def test_face_parser_pipeline(filled_parser):
    """uint8 HxWx3 and float [0,1] tensors give the same maps: bicubic /2, normalise, argmax, remap, resize.

    (Parser resolution 64 instead of 512 keeps the test fast; the code path is the same.)
    """
    parser = FaceParser(filled_parser.net, resolution=64)
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    labels = parser(image)
    assert labels.shape == (1, 128, 128) and labels.dtype == torch.uint8
    as_tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(parser(as_tensor), labels, rtol=0, atol=0)
    torch.testing.assert_close(parser([image, image]), labels.repeat(2, 1, 1), rtol=0, atol=0)

    x = bicubic_downsample(as_tensor[None], 2)
    with torch.no_grad():
        ids = parser.net(bisenet.imagenet_normalize(x))[0].argmax(1)
    expected = remap_labels(ids, BISENET19_TO_CELEBAMASKHQ).repeat_interleave(2, 1).repeat_interleave(2, 2)
    torch.testing.assert_close(labels.long(), expected, rtol=0, atol=0)
    assert parser.hair == CELEBAMASKHQ_HAIR
    assert len(torch.unique(labels)) > 1


def test_face_parser_other_sizes(filled_parser):
    parser = FaceParser(filled_parser.net, resolution=64)
    for size in (40, 100):  # bilinear up, area down
        images = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        labels = parser(images)
        assert labels.shape == (2, size, size)
        assert int(labels.max()) < 19
    native = FaceParser(load_bisenet(WeightStore(fill=True), "cpu", "bisenet16"), remap=None, resolution=64)
    assert native.hair == bisenet.BISENET16_HAIR
    assert int(native(images).max()) < 16


def test_feature_extractor_registered(filled_parser):
    from harness import plugins

    factory = plugins.feature_extractors()["face_parser"]
    assert factory is bisenet.face_parser_extractor
    extract = factory("cpu", WeightStore(fill=True))
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    (labels,) = extract([image])
    assert labels.dtype == np.uint8 and labels.shape == (48, 48)
    np.testing.assert_array_equal(labels, filled_parser(np.asarray(image))[0].numpy())


def test_checkpoints_declared():
    from harness import plugins

    keys = {c.key: c for c in plugins.extra_checkpoints()}
    for ckpt in bisenet.CHECKPOINTS:
        assert keys[ckpt.key] == ckpt
    assert bisenet.BISENET19.filename == "79999_iter.pth"
    assert bisenet.BISENET16.filename == "seg.pth"
