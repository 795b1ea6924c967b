"""SEAN generator (HairFast's Alignment-stage inpainting): parity, fill recipe, official file layout, median codes,
batching and noise sources."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness.parity import Fixture, check, fill_value
from harness.weights import MissingWeights, WeightStore
from methods.hairflash import sean

# A small configuration (same code paths, a fraction of the 267M parameters) for the tests that need no fixture.
SMALL = sean.SeanConfig(ngf=8, crop_size=64, style_dim=32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads spin against other jobs (small convs run 100x
    slower); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fixture(parity_dir) -> Fixture:
    path = parity_dir / "sean"
    if not path.is_dir():
        pytest.skip("sean fixture missing")
    return Fixture.load(path)


@pytest.fixture(scope="module")
def small() -> sean.SEANGenerator:
    return sean.load_sean(WeightStore(fill=True), config=SMALL)


def random_labels(batch: int, size: int, seed: int, classes: int = 19) -> torch.Tensor:
    """Blocky label maps (8x8 cells, nearest-upsampled) so every resolution keeps several classes."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, classes, (batch, 1, 8, 8), generator=g)
    return torch.nn.functional.interpolate(cells.float(), size=(size, size), mode="nearest").long()


def test_parity(fixture):
    results = list(check(fixture, sean.parity_adapter))
    assert [r.case for r in results] == ["encode_style_codes", "decode_to_target"]
    for r in results:
        assert r.ok, r.line()
        assert r.rel_err < 1e-5, r.line()  # measured fp32 noise is ~3e-6


def test_median_replacement_matches_fixture(fixture):
    case = next(c for c in fixture.cases if c["name"] == "decode_to_target")
    codes = torch.from_numpy(fixture.data["out/style_codes"])
    median = torch.from_numpy(fixture.input(case, "median_style_codes"))
    effective = sean.fill_absent_codes(codes, median).numpy()
    np.testing.assert_array_equal(effective, fixture.data["out/decoder_codes_effective"])
    # image 0 lacks classes 3 and 14, image 1 lacks 14 and 15: exactly those rows are replaced
    replaced = (effective != codes.numpy()).any(-1)
    assert [np.flatnonzero(r).tolist() for r in replaced] == [[3, 14], [14, 15]]


def test_recipe_matches_spec(fixture):
    entries = fixture.spec["state_dict"]
    mismatched = [e["key"] for e in entries if sean.fill_recipe(e["key"], tuple(e["shape"])) != e["fill"]]
    assert mismatched == []
    generator = sean.SEANGenerator(sean.SeanConfig.from_constructor(fixture.constructor))
    ours = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    assert ours == {e["key"]: tuple(e["shape"]) for e in entries}
    # spectral-norm vectors: derived in fill mode exactly as the fixture made its stored constants
    fills = {e["key"]: e["fill"] for e in entries}
    with torch.no_grad():
        for name, conv in generator.spectral_convs().items():
            f = fills[f"{name}.weight_orig"]
            conv.weight_orig.copy_(torch.from_numpy(fill_value(fixture.namespace, f"{name}.weight_orig",
                                                               conv.weight_orig.shape, f["mean"], f["std"])))
    sean.derive_spectral_vectors(generator, fixture.namespace)
    state = generator.state_dict()
    vectors = {k: v for k, v in fixture.consts.items() if k.endswith(("weight_u", "weight_v"))}
    assert len(vectors) == 2 * len(generator.spectral_convs()) > 0
    for key, const in vectors.items():
        np.testing.assert_allclose(state[key].numpy(), const, rtol=0, atol=1e-5 * np.abs(const).max())


def test_spectral_norm_is_u_dot_wv():
    conv = sean.SpectralNormConv2d(4, 6, 3, padding=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.weight_orig.copy_(torch.randn(6, 4, 3, 3, generator=g))
        conv.weight_u.copy_(torch.randn(6, generator=g))
        conv.weight_v.copy_(torch.randn(36, generator=g))
    sigma = float(conv.weight_u @ (conv.weight_orig.detach().reshape(6, -1) @ conv.weight_v))
    torch.testing.assert_close(conv.weight(), conv.weight_orig / sigma)
    before = (conv.weight_u.clone(), conv.weight_v.clone())
    conv(torch.randn(1, 4, 5, 5))
    assert torch.equal(conv.weight_u, before[0]) and torch.equal(conv.weight_v, before[1])  # no power iteration


def test_from_constructor_sizes():
    cfg = sean.SeanConfig.from_constructor({"opt": {"ngf": 16, "label_nc": 19, "crop_size": 128,
                                                    "norm_G": "spectralspadesyncbatch3x3"}})
    assert (cfg.ngf, cfg.semantic_nc, cfg.crop_size, cfg.base_size, cfg.spectral) == (16, 19, 128, (4, 4), True)
    plain = sean.SeanConfig.from_constructor({"opt": {"norm_G": "spadeinstance3x3", "crop_size": 64, "ngf": 8}})
    assert (plain.spectral, plain.spade_norm, plain.style_dim) == (False, "instance", 512)
    keys = sean.SEANGenerator(dataclasses.replace(plain, style_dim=16)).state_dict().keys()
    assert "head_0.conv_0.weight" in keys and "head_0.conv_0.weight_orig" not in keys
    assert not any(k.startswith("head_0.ace_0.Spade.param_free_norm") for k in keys)
    with pytest.raises(ValueError):
        sean.SeanConfig(num_upsampling_layers="most")


def test_encode_absent_classes_are_zero(small):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = random_labels(2, 64, seed=2, classes=12)  # classes 12..18 absent
    labels[1, :, :32] = 5
    codes = small.encode_styles(images, labels)
    assert codes.shape == (2, 19, SMALL.style_dim)
    for b in range(2):
        present = set(torch.unique(labels[b]).tolist())
        for j in range(19):
            row = codes[b, j]
            assert bool((row == 0).all()) == (j not in present), (b, j)
    # the per-class mean of the tanh map: recompute one class by hand
    feats = small.Zencoder.model(images)
    mask = torch.nn.functional.interpolate((labels == 5).float(), size=feats.shape[2:], mode="nearest")[:, 0]
    manual = (feats[1] * mask[1]).sum((1, 2)) / mask[1].sum()
    torch.testing.assert_close(codes[1, 5], manual, rtol=1e-5, atol=1e-6)


def test_absent_class_median_replacement(small):
    g = torch.Generator().manual_seed(3)
    codes = torch.randn(1, 19, SMALL.style_dim, generator=g)
    codes[0, 14] = 0
    codes[0, 2, :5] = 0  # partly zero: kept
    median = small.median_style_codes
    filled = sean.fill_absent_codes(codes, median)
    assert torch.equal(filled[0, 14], median[14])
    assert torch.equal(filled[0, 2], codes[0, 2])
    assert torch.equal(filled[:, [j for j in range(19) if j != 14]], codes[:, [j for j in range(19) if j != 14]])
    target = random_labels(1, 64, seed=4)
    target[..., :16, :16] = 14  # the absent class is present in the target
    decoded = small.decode(codes, target, noise="zero")
    assert torch.equal(decoded, small.render(filled, target, noise="zero"))
    # without the replacement the hat region renders differently
    assert not torch.allclose(decoded, small.render(codes, target, noise="zero"))
    assert decoded.shape == (1, 3, 64, 64) and float(decoded.abs().max()) < 1


def test_batched_equals_per_sample(small):
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    labels = random_labels(3, 64, seed=6)
    shared_target = random_labels(1, 64, seed=7)
    batched = small.inpaint(images, labels, shared_target, noise="zero")
    single = torch.cat([small.inpaint(images[i:i + 1], labels[i:i + 1], shared_target, noise="zero")
                        for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    assert float((batched[0] - batched[1]).abs().max()) > 1e-3  # the samples really differ
    targets = random_labels(3, 64, seed=8)
    batched = small.inpaint(images, labels, targets, noise="zero")
    single = torch.cat([small.inpaint(images[i:i + 1], labels[i:i + 1], targets[i:i + 1], noise="zero")
                        for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        small.inpaint(images, labels, targets[:2], noise="zero")


def test_noise_sources():
    generator = sean.load_sean(WeightStore(fill=True), config=SMALL)
    codes = torch.randn(1, 19, SMALL.style_dim, generator=torch.Generator().manual_seed(9))
    target = random_labels(1, 64, seed=10)
    # rule-filled noise_var is zero: every source gives the same image
    reference = generator.decode(codes, target, noise="zero")
    assert torch.equal(generator.decode(codes, target, noise="fresh"), reference)
    with torch.no_grad():
        for m in generator.modules():
            if isinstance(m, sean.ACE):
                m.noise_var.fill_(0.5)
    seeded = [generator.decode(codes, target, noise=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(seeded[0], seeded[1])
    assert not torch.allclose(seeded[0], seeded[2])
    assert torch.equal(generator.decode(codes, target, noise="zero"), reference)
    with pytest.raises(ValueError):
        generator.decode(codes, target, noise="random")


def test_official_layout_round_trip(tmp_path, small, fixture):
    repo = tmp_path / "HairFastGAN"
    pretrained = repo / "pretrained_models"
    ckpt = pretrained / sean.CHECKPOINT.official_path
    ckpt.parent.mkdir(parents=True)
    torch.save(small.state_dict(), ckpt)  # netG's bare state dict, as the official file
    median = fixture.consts["median_style_codes"][:, :SMALL.style_dim].copy()
    median_dir = repo / sean.OFFICIAL_MEDIAN_DIR
    for j in range(19):
        (median_dir / str(j)).mkdir(parents=True)
        np.save(median_dir / str(j) / "ACE.npy", median[j])

    # --weights-dir = HairFast's pretrained_models; the median folders sit in the repository beside it
    loaded = sean.load_sean(WeightStore(weights_dir=pretrained), config=SMALL)
    assert loaded.state_dict().keys() == small.state_dict().keys()
    for key, value in small.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    np.testing.assert_array_equal(loaded.median_style_codes.numpy(), median)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    labels, target = random_labels(1, 64, seed=12), random_labels(1, 64, seed=13)
    small_out = sean.SEANGenerator(SMALL)
    small_out.load_state_dict(small.state_dict())
    small_out.median_style_codes = torch.from_numpy(median)
    torch.testing.assert_close(loaded.inpaint(images, labels, target, noise="zero"),
                               small_out.eval().inpaint(images, labels, target, noise="zero"))

    # the packed form: one [19, D] .npy under the checkpoint's key
    packed_dir = tmp_path / "weights" / sean.MEDIAN_CODES_CHECKPOINT.key
    packed_dir.mkdir(parents=True)
    sean.pack_median_style_codes(median_dir, packed_dir / sean.MEDIAN_CODES_CHECKPOINT.filename, SMALL.style_dim)
    codes = sean.load_median_style_codes(WeightStore(weights_dir=tmp_path / "weights"), SMALL.style_dim)
    np.testing.assert_array_equal(codes.numpy(), median)

    with pytest.raises(MissingWeights):
        empty = WeightStore(weights_dir=tmp_path / "empty", env={"HARNESS_CACHE": str(tmp_path / "cache")})
        sean.load_sean(empty, config=SMALL)
    with pytest.raises(ValueError):  # a full-size file does not fit the small network's median codes
        sean.load_median_style_codes(WeightStore(weights_dir=tmp_path / "weights"), sean.STYLE_DIM)
