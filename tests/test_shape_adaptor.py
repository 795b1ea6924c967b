"""HairFast's shape adaptor (CtrlHair's shape generator): parity on the ``shape_adaptor`` fixture, fill recipe, key
listing, the official file layout through ``WeightStore``, batching, position encoding, label handling.

The fixture's state dict (about 250M values) is filled once per module and shared by the tests that need it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.parity import Fixture, check, compare, fill_entry
from harness.weights import WeightStore
from methods.hairflash import shape_adaptor as sa
from methods.hairflash.shape_adaptor import (
    CHECKPOINT,
    ShapeAdaptor,
    ShapeAdaptorConfig,
    agreement_checked,
    as_label_batch,
    assemble_logits,
    config_from_state,
    ctrlhair_layer_norm,
    fill_recipe,
    load_shape_adaptor,
    one_hot_labels,
    position_encoding,
    split_hair_face,
)

TOL = 1e-4
TINY = ShapeAdaptorConfig(hair_dim=4, face_dim=8, pos_encoding_order=2, size=16, n_layers=3, base_channels=4,
                          max_channels=8)


def spec_shapes(spec: dict) -> dict[str, tuple[int, ...]]:
    return {e["key"]: tuple(e["shape"]) for e in spec["state_dict"]}


@pytest.fixture(scope="module")
def spec(parity_dir) -> dict:
    return Fixture.load(parity_dir / "shape_adaptor").spec


@pytest.fixture(scope="module")
def model() -> ShapeAdaptor:
    """Filled by ``--fill-weights`` (namespace = checkpoint key = the fixture's namespace)."""
    return load_shape_adaptor(WeightStore(fill=True))


@pytest.fixture(scope="module")
def filled(parity_dir, model) -> tuple[Fixture, dict[str, torch.Tensor]]:
    """The fixture whose ``torch_state_dict()`` returns the ``--fill-weights`` fill (filled once for the module;
    ``test_fill_weights_give_the_fixture_state`` checks it against the spec's own fill)."""
    fixture = Fixture.load(parity_dir / "shape_adaptor")
    state = model.state_dict()
    fixture.torch_state_dict = lambda prefix_strip="": dict(state)
    return fixture, state


def labels_of(fixture: Fixture, key: str) -> torch.Tensor:
    return torch.from_numpy(fixture.data[key])


# ---------------------------------------------------------------- spec (cheap)

def test_recipe_matches_spec(spec):
    mismatches = [e["key"] for e in spec["state_dict"] if fill_recipe(e["key"], tuple(e["shape"])) != e["fill"]]
    assert not mismatches, mismatches[:5]


def test_default_model_has_the_official_keys(spec):
    with torch.device("meta"):
        net = ShapeAdaptor()
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == spec_shapes(spec)
    assert ours == {k: tuple(shape) for k, shape, _ in spec["full_config_keys"]}
    assert "position_encoding" in dict(net.named_buffers()) and "position_encoding" not in ours  # non-persistent


def test_config_from_the_spec_is_the_default_and_checks_the_cfg(spec):
    cfg = spec["constructor"]["cfg"]
    assert config_from_state(spec_shapes(spec), cfg) == ShapeAdaptorConfig()
    with pytest.raises(ValueError, match="hair_dim"):
        config_from_state(spec_shapes(spec), {**cfg, "hair_dim": 8})
    with torch.device("meta"):
        tiny_shapes = {k: tuple(v.shape) for k, v in ShapeAdaptor(TINY).state_dict().items()}
    assert config_from_state(tiny_shapes) == TINY
    with pytest.raises(ValueError, match="divisible"):
        ShapeAdaptorConfig(size=100)


def test_checkpoint_is_declared_at_the_official_path():
    assert CHECKPOINT.filename == "mask_generator.pth"
    assert CHECKPOINT.official_path == "ShapeAdaptor/mask_generator.pth"
    assert CHECKPOINT.key == "shape_adaptor"  # = fixture namespace: --fill-weights builds the fixture's network
    assert "huggingface.co/AIRI-Institute/HairFastGAN" in CHECKPOINT.source
    assert CHECKPOINT.size is None and CHECKPOINT.sha256 is None  # not known as facts: none invented
    assert sa.CHECKPOINTS == [CHECKPOINT]


def test_plugin_registers_the_adapter():
    from methods.hairflash import plugin

    adapters = {}
    plugin.register_parity(lambda name, adapter: adapters.setdefault(name, adapter))
    assert adapters["shape_adaptor"] is sa.parity_adapter


# ---------------------------------------------------------------- pure pieces

def test_position_encoding_formula(parity_dir):
    size, order = 256, 10
    enc = position_encoding(size, order)
    assert enc.shape == (40, size, size) and enc.dtype == torch.float32
    c = np.arange(size) / size
    x, y = np.meshgrid(c, c)  # x varies along the width
    for k in range(order):
        f = 2.0 ** k * math.pi
        expected = [np.sin(f * x), np.sin(f * y), np.cos(f * x), np.cos(f * y)]
        got = [enc[2 * k], enc[2 * k + 1], enc[2 * order + 2 * k], enc[2 * order + 2 * k + 1]]
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_allclose(g.numpy(), e, rtol=0, atol=1e-6)
    assert enc[0, 5, 3].item() == pytest.approx(math.sin(math.pi * 3 / 256), abs=1e-7)
    assert enc[1, 5, 3].item() == pytest.approx(math.sin(math.pi * 5 / 256), abs=1e-7)
    fixture = Fixture.load(parity_dir / "shape_adaptor")
    assert compare(enc.numpy(), fixture.reference("out/pos_embedding/*"), 1e-6) < 1e-6
    assert position_encoding(16, 2).shape == (8, 16, 16)


def test_layer_norm_is_ctrlhairs_not_torchs():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6) * 2 + 1
    gamma, beta = torch.rand(4) + 0.5, torch.randn(4)
    ours = ctrlhair_layer_norm(x, gamma, beta)
    for b in range(3):
        mean, std = x[b].mean(), x[b].std(unbiased=True)
        expected = (x[b] - mean) / (std + 1e-5) * gamma[:, None, None] + beta[:, None, None]
        torch.testing.assert_close(ours[b], expected, rtol=1e-5, atol=1e-5)
    torch_ln = torch.nn.functional.layer_norm(x, x.shape[1:]) * gamma[:, None, None] + beta[:, None, None]
    assert not torch.allclose(ours, torch_ln, atol=1e-3)  # biased std and eps inside the sqrt differ


def test_labels_one_hot_split_and_assembly():
    labels = torch.tensor([[[0, 13, 18], [255, 5, 13]]])
    one_hot = one_hot_labels(labels)
    assert one_hot.shape == (1, 19, 2, 3)
    assert torch.equal(one_hot.sum(1), torch.tensor([[[1.0, 1, 1], [0, 1, 1]]]))  # 255: no channel
    assert torch.equal(one_hot.argmax(1)[0, 0], torch.tensor([0, 13, 18]))
    hair, face = split_hair_face(one_hot)
    assert torch.equal(hair[0, 0], (labels[0] == 13).float())
    assert face.shape[1] == 18 and torch.equal(face[:, 13], one_hot[:, 14])  # label 14 follows label 12
    assert torch.equal(assemble_logits(face, hair), one_hot)
    with pytest.raises(ValueError, match="0..18 or 255"):
        one_hot_labels(torch.tensor([[[19]]]))
    with pytest.raises(TypeError):
        as_label_batch(torch.zeros(4, 4), 4)


def test_label_layouts_and_nearest_resize():
    torch.manual_seed(0)
    labels = torch.randint(0, 19, (2, 1, 512, 512), dtype=torch.uint8)
    resized = as_label_batch(labels, 256)
    assert resized.shape == (2, 256, 256) and resized.dtype == torch.int64
    assert torch.equal(resized, labels[:, 0, ::2, ::2].long())  # legacy nearest: source pixel 2i
    assert torch.equal(as_label_batch(labels[0, 0], 512), labels[0, 0].long()[None])
    assert torch.equal(as_label_batch(labels[:, 0], 512), labels[:, 0].long())


def test_agreement_check_is_faithful():
    ref = np.zeros((1, 1, 100, 100), np.uint8)
    ref[..., 50:, :] = 13
    ours = ref.astype(np.int64)
    ours[0, 0, 0, :5] = 13  # 5 pixels of 10000 differ: 99.95% agree
    assert compare(agreement_checked(ours, ref, 0.999), ref, TOL) == 0.0
    ours[0, 0, 1, :10] = 13  # 15 pixels: 99.85% agree
    assert compare(agreement_checked(ours, ref, 0.999), ref, TOL) > TOL
    assert sa.min_agreement({"compare": "target_label: at least 99.9% identical pixels"}) == pytest.approx(0.999)


def test_tiny_network_runs_batched_on_any_layout():
    torch.manual_seed(0)
    net = ShapeAdaptor(TINY).eval()
    labels = torch.randint(0, 19, (3, 16, 16))
    with torch.no_grad():
        face_code, hair_code = net.codes(labels)
        logits, out = net.generate(face_code, hair_code)
        target = net.transfer_shape(labels[:, None], labels.flip(0))
    assert face_code.shape == (3, 8) and hair_code.shape == (3, 4)
    assert logits.shape == (3, 19, 16, 16) and out.shape == (3, 16, 16)
    assert target.shape == (3, 1, 16, 16) and target.dtype == torch.int64
    with pytest.raises(ValueError, match="batch sizes differ"):
        net.transfer_shape(labels, labels[:2])


# ---------------------------------------------------------------- the fixture: parity, official file, batching

def test_parity(filled):
    fixture, _ = filled
    results = list(check(fixture, sa.parity_adapter))
    assert [r.case for r in results] == [c["name"] for c in fixture.cases]
    for result, case in zip(results, fixture.cases, strict=True):
        assert result.ok, result.line()
        assert set(result.details) == set(case["outputs"])


def test_batched_transfer_shape_equals_per_sample_and_the_fixture(filled, model):
    fixture, _ = filled
    masks = torch.cat([labels_of(fixture, "in/mask_face"), labels_of(fixture, "in/mask_shape")])  # [2,1,256,256]
    with torch.no_grad():
        face_b, hair_b = model.codes(masks)
        face_0, hair_0 = model.codes(masks[0, 0])  # one [H,W] map, as HairFast passes it
        target = model.transfer_shape(masks, masks.flip(0))  # row 0 is HairFast's call: face of 1, hair of 2
        _, labels_1 = model.generate(face_b[1:], hair_b[:1])
    # batched codes against the official per-sample codes, and against ours per sample
    for k in (1, 2):
        assert compare(face_b[k - 1:k].numpy(), fixture.data[f"out/face_code_{k}"], TOL) < TOL
        assert compare(hair_b[k - 1:k].numpy(), fixture.data[f"out/hair_code_{k}"], TOL) < TOL
    torch.testing.assert_close(face_b[:1], face_0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hair_b[:1], hair_0, rtol=1e-4, atol=1e-5)
    assert target.shape == (2, 1, 256, 256) and target.dtype == torch.int64
    # raw labels, no agreement substitution: at least 99.9% identical pixels (measured: all of them)
    assert sa.pixel_agreement(target[:1].numpy(), fixture.data["out/target_label"]) >= 0.999
    assert sa.pixel_agreement((target[:1] == 13).numpy(), fixture.data["out/hair_mask_target"]) >= 0.999
    assert sa.pixel_agreement(target[1, 0].numpy(), labels_1[0].numpy()) >= 0.999


def test_fill_weights_give_the_fixture_state(filled):
    fixture, state = filled
    assert sorted(state) == sorted(e["key"] for e in fixture.spec["state_dict"])
    small = [e for e in fixture.spec["state_dict"] if math.prod(e["shape"]) <= 1 << 17]  # the big ones: by parity
    assert len(small) > 60
    for e in small:
        expected = fill_entry(fixture.namespace, e["key"], e["shape"], e["fill"])
        assert np.array_equal(state[e["key"]].numpy(), expected), e["key"]


def test_official_file_reproduces_the_fixture(filled, tmp_path):
    fixture, state = filled
    path = tmp_path / CHECKPOINT.official_path  # an unpacked pretrained_models/ folder
    path.parent.mkdir(parents=True)
    torch.save(state, path)  # the generator's bare state dict
    net = load_shape_adaptor(WeightStore(weights_dir=tmp_path))
    assert not net.training and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    with torch.no_grad():
        logits, labels = net.generate(torch.from_numpy(fixture.data["out/face_code_1"]),
                                      torch.from_numpy(fixture.data["out/hair_code_2"]))
    assert compare(torch.softmax(logits, 1).numpy(), fixture.reference("out/target_prob/*"), TOL) < TOL
    assert sa.pixel_agreement(labels.numpy(), fixture.data["out/target_label"]) >= 0.999


def test_a_missing_key_is_named(tmp_path):
    torch.manual_seed(0)
    state = ShapeAdaptor(TINY).state_dict()
    (tmp_path / "ShapeAdaptor").mkdir()
    torch.save({k: v for k, v in state.items() if k != "face_decoder.out_layer.conv.bias"},
               tmp_path / CHECKPOINT.official_path)
    with pytest.raises(ValueError, match="missing keys: face_decoder.out_layer.conv.bias"):
        load_shape_adaptor(WeightStore(weights_dir=tmp_path), config=TINY)
    torch.save(state, tmp_path / CHECKPOINT.official_path)
    assert load_shape_adaptor(WeightStore(weights_dir=tmp_path), config=TINY).hair_encoder.std_out_layer is not None


def test_adapter_follows_the_spec_sizes_and_namespace(spec, tmp_path):
    """A twin fixture with another namespace, tiny sizes and 32x32 input maps (references from our own pieces,
    filled under that namespace): the adapter must follow the spec, not the real fixture's constants."""
    from harness.weights import filled_state_dict

    net = ShapeAdaptor(TINY).eval()
    state = filled_state_dict(net, "twin", fill_recipe)
    net.load_state_dict(state)
    torch.manual_seed(1)
    masks = [torch.randint(0, 19, (1, 1, 32, 32), dtype=torch.uint8) for _ in range(2)]
    masks[0][..., :4, :4] = 255
    with torch.no_grad():
        (f1, h1), (f2, h2) = net.codes(masks[0]), net.codes(masks[1])
        hair_logit, face_logit = net.decode_parts(f1, h2)
        logits, labels = net.generate(f1, h2)

    def sampled(name: str, value: torch.Tensor) -> dict[str, np.ndarray]:
        flat = value.numpy().ravel()
        return {f"out/{name}/idx": np.arange(flat.size), f"out/{name}/val": flat, f"out/{name}/mean": flat.mean(),
                f"out/{name}/std": flat.std(), f"out/{name}/shape": np.array(value.shape)}

    data = {"in/mask_face": masks[0].numpy(), "in/mask_shape": masks[1].numpy(),
            "out/face_code_1": f1.numpy(), "out/hair_code_1": h1.numpy(), "out/face_code_2": f2.numpy(),
            "out/hair_code_2": h2.numpy(), "out/target_label": labels[:, None].numpy().astype(np.uint8),
            "out/hair_mask_target": (labels[:, None] == 13).numpy().astype(np.uint8),
            **sampled("target_prob", torch.softmax(logits, 1)), **sampled("hair_logit", hair_logit),
            **sampled("face_logit", face_logit), **sampled("pos_embedding", position_encoding(16, 2))}
    twin_spec = {**spec, "namespace": "twin",
                 "constructor": {**spec["constructor"], "cfg": {"hair_dim": 4, "pos_encoding_order": 2}},
                 "state_dict": [{"key": k, "shape": list(v.shape), "dtype": "float32",
                                 "fill": fill_recipe(k, tuple(v.shape))} for k, v in state.items()]}
    twin = Fixture(tmp_path, twin_spec, data)
    results = list(check(twin, sa.parity_adapter))
    assert [r.case for r in results] == [c["name"] for c in spec["cases"]]
    for result in results:
        assert result.ok and result.rel_err < 1e-6, result.line()
    wrong = Fixture(tmp_path, {**twin_spec, "namespace": "shape_adaptor"}, data)
    assert not all(r.ok for r in check(wrong, sa.parity_adapter))
