"""StyleGAN2 generator: parity with the official module, fills, checkpoint loading, noise modes, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_fixture

from harness.parity import Fixture, check, compare, fill_entry
from harness.weights import WeightStore, filled_state_dict
from methods.nets import stylegan2 as sg


@pytest.fixture(scope="module")
def fx128(parity_dir) -> Fixture:
    return load_fixture("stylegan2")


@pytest.fixture(scope="module")
def fx1024(parity_dir) -> Fixture:
    return load_fixture("stylegan2_1024")


@pytest.fixture(scope="module")
def g128(fx128) -> sg.Generator:
    """The 128x128 fixture generator with the fixture's weights, parameters frozen."""
    g = sg.Generator(**{**fx128.constructor, "blur_kernel": tuple(fx128.constructor["blur_kernel"])})
    g.load_state_dict(fx128.torch_state_dict())
    return g.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def g16() -> sg.Generator:
    """A small generator (4, 8, 16) with recipe-filled weights for the API tests, parameters frozen."""
    g = sg.Generator(16, channel_multiplier=1)
    g.load_state_dict(filled_state_dict(g, "test-stylegan2-16", sg.fill_recipe))
    return g.eval().requires_grad_(False)


def _wplus(g: sg.Generator, batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = g.mapping(torch.randn(batch * g.n_latent, g.style_dim, generator=gen))
    return w.view(batch, g.n_latent, g.style_dim)


# ---------------------------------------------------------------- parity

@pytest.mark.parametrize("name", ["stylegan2", "stylegan2_1024"])
def test_parity(parity_dir, name):
    fixture = load_fixture(name)
    results = list(check(fixture, sg.PARITY[name]))
    assert {r.case for r in results} == {c["name"] for c in fixture.cases}
    for r in results:
        assert r.ok, r.line()
        assert r.rel_err < 1e-5, r.line()  # measured ~2e-6; the tolerance is 1e-4


def _batched(monkeypatch) -> None:
    """Make a CPU batch use the batched (modulated activations) form instead of sample-by-sample."""
    monkeypatch.setattr(sg.Generator, "split_batch", staticmethod(lambda device: False))


@pytest.mark.parametrize("fold_from", [8, 10**9])
def test_parity_other_code_paths(fx128, g128, monkeypatch, fold_from):
    """Batched form (used on GPUs) and the blur folded into a 6x6 transposed conv at every stage / nowhere."""
    wplus = torch.from_numpy(fx128.data["in/wplus"])
    ref = fx128.data["out/image"]
    monkeypatch.setattr(sg, "FOLD_BLUR_FROM", fold_from)
    with torch.no_grad():
        assert compare(g128(wplus[1:]).numpy(), ref[1:], 1e-4) < 1e-5
        _batched(monkeypatch)
        assert compare(g128(wplus).numpy(), ref, 1e-4) < 1e-5


# ---------------------------------------------------------------- layout and fills

def test_state_dict_layout_is_rosinalitys(fx1024):
    g = sg.Generator(1024)
    own = [(k, list(v.shape)) for k, v in g.state_dict().items()]
    assert own == [(k, shape) for k, shape, _ in fx1024.spec["full_config_keys"]]
    assert g.n_latent == 18 and g.num_noise_layers == 17 and g.last_stage == 8 and g.channels(1024) == 32


def test_blur_kernels_are_computed_like_the_official_ones(fx128, fx1024):
    for fixture in (fx128, fx1024):
        own = sg.Generator(**{**fixture.constructor, "blur_kernel": tuple(fixture.constructor["blur_kernel"])})
        state = own.state_dict()
        assert fixture.consts
        for key, value in fixture.consts.items():
            np.testing.assert_array_equal(state[key].numpy(), value)


@pytest.mark.parametrize("name", ["stylegan2", "stylegan2_1024"])
def test_fill_recipe_equals_spec(parity_dir, name):
    fixture = load_fixture(name)
    lr_mlp = fixture.constructor.get("lr_mlp", 0.01)
    for entry in fixture.spec["state_dict"]:
        ours = sg.fill_recipe(entry["key"], tuple(entry["shape"]), lr_mlp=lr_mlp)
        want = entry["fill"]
        assert ours["kind"] == want["kind"], entry["key"]
        if want["kind"] == "normal":
            assert ours["mean"] == pytest.approx(want["mean"]) and ours["std"] == pytest.approx(want["std"]), \
                entry["key"]


def test_filled_state_dict_matches_fixture_fill(fx128):
    """Our recipe through the harness fill reproduces the fixture's state dict (constants included)."""
    g = sg.Generator(**{**fx128.constructor, "blur_kernel": tuple(fx128.constructor["blur_kernel"])})
    ours = filled_state_dict(g, fx128.namespace, sg.fill_recipe)
    want = fx128.state_dict()
    assert list(ours) == list(want)
    for key, value in want.items():
        np.testing.assert_array_equal(ours[key].numpy(), value, err_msg=key)


# ---------------------------------------------------------------- checkpoint loading

def test_official_layout_checkpoint_loads_and_reproduces_fixture(fx128, tmp_path):
    state = fx128.torch_state_dict()
    latent_avg = torch.linspace(-1, 1, 512)
    torch.save({"g_ema": state, "latent_avg": latent_avg}, tmp_path / sg.CHECKPOINT.filename)
    store = WeightStore(weights_dir=tmp_path, env={})

    g = sg.Generator(128, channel_multiplier=1)
    obj = store.load_network(g, sg.CHECKPOINT, extract=lambda o: o["g_ema"])
    torch.testing.assert_close(obj["latent_avg"], latent_avg)

    g2, avg = sg.load_generator(store, "cpu", size=128, channel_multiplier=1)
    torch.testing.assert_close(avg, latent_avg)
    assert not any(p.requires_grad for p in g2.parameters()) and not g2.training
    case = next(c for c in fx128.cases if c["name"] == "synth_wplus")
    with torch.no_grad():
        for model in (g.eval(), g2):
            image = model(torch.from_numpy(fx128.input(case, "styles")))
            assert compare(image.numpy(), fx128.reference("out/image"), 1e-4) < 1e-5


def test_fill_weights_loading_is_deterministic():
    store = WeightStore(fill=True, env={})
    g, avg = sg.load_generator(store, "cpu", size=32, channel_multiplier=1)
    g2, avg2 = sg.load_generator(store, "cpu", size=32, channel_multiplier=1)
    expected = filled_state_dict(sg.Generator(32, channel_multiplier=1), sg.CHECKPOINT.key, sg.fill_recipe)
    for key, value in g.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    assert avg.shape == (512,) and torch.isfinite(avg).all()
    torch.testing.assert_close(avg, avg2, rtol=0, atol=0)
    with torch.no_grad():
        z = torch.randn(sg.LATENT_AVG_SAMPLES, 512, generator=torch.Generator().manual_seed(sg.LATENT_AVG_SEED))
        torch.testing.assert_close(avg, g.mapping(z).mean(0))
    fill = {"kind": "normal", "mean": 0.0, "std": 100.0}
    np.testing.assert_array_equal(g.state_dict()["style.3.weight"].numpy(),
                                  fill_entry(sg.CHECKPOINT.key, "style.3.weight", (512, 512), fill))


# ---------------------------------------------------------------- API: noise, batches, slicing

def test_noise_modes(g16):
    w = _wplus(g16, 2, seed=1)
    with torch.no_grad():
        a, b = g16(w), g16(w)
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # buffers: deterministic
        buffers = [getattr(g16.noises, f"noise_{i}") for i in range(g16.num_noise_layers)]
        torch.testing.assert_close(g16(w, noise=buffers), a, rtol=0, atol=0)
        s1 = g16(w, noise=torch.Generator().manual_seed(5))
        s2 = g16(w, noise=torch.Generator().manual_seed(5))
        s3 = g16(w, noise=torch.Generator().manual_seed(6))
        torch.testing.assert_close(s1, s2, rtol=0, atol=0)
        assert (s1 - s3).abs().max() > 1e-3 and (s1 - a).abs().max() > 1e-3
        assert (g16(w, noise="random") - a).abs().max() > 1e-3
        zero = [torch.zeros_like(t) for t in buffers]
        explicit = g16(w, noise=zero)
        assert (explicit - a).abs().max() > 1e-3
    with pytest.raises(ValueError):
        g16(w, noise=buffers[:-1])
    with pytest.raises(ValueError):
        g16(w, noise="nope")


@pytest.mark.parametrize("batched", [False, True])
def test_batch_equals_single_samples_and_w_equals_repeated_wplus(g16, batched, monkeypatch):
    w = _wplus(g16, 3, seed=2)
    noise = [torch.randn(3, 1, t.shape[-2], t.shape[-1], generator=torch.Generator().manual_seed(i))
             for i, t in enumerate(g16.noises.buffers())]
    with torch.no_grad():
        single = torch.cat([g16(w[i:i + 1], noise=[t[i:i + 1] for t in noise]) for i in range(3)])
        if batched:
            _batched(monkeypatch)
        batch = g16(w, noise=noise)
        torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-4 * single.abs().max().item())
        w_row = w[:, 0]
        torch.testing.assert_close(g16(w_row), g16(w_row[:, None].repeat(1, g16.n_latent, 1)))


def test_slicing_chain_equals_full_synthesis(g16):
    w = _wplus(g16, 2, seed=3)
    with torch.no_grad():
        full = g16.synthesis(w)
        f8, rgb8 = g16.synthesis(w, end_layer=1)
        assert f8.shape == (2, g16.channels(8), 8, 8) and rgb8.shape == (2, 3, 8, 8)
        rest = g16.synthesis(w, start_layer=2, layer_in=f8, skip=rgb8)
        torch.testing.assert_close(rest.rgb, full.rgb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rest.features, full.features, rtol=1e-5, atol=1e-5)
        assert full.rgb.shape == (2, 3, 16, 16)
        with pytest.raises(ValueError):
            g16.synthesis(w, start_layer=2, layer_in=f8[:, :, :4])
        with pytest.raises(ValueError):
            g16.synthesis(w, start_layer=2)
        with pytest.raises(ValueError):
            g16.synthesis(w, start_layer=2, end_layer=1, layer_in=f8)


# ---------------------------------------------------------------- gradients

def _directional_check(fn, x: torch.Tensor, seed: int) -> None:
    """Autograd's directional derivative equals a central finite difference (float64)."""
    gen = torch.Generator().manual_seed(seed)
    x = x.detach().double().requires_grad_(True)
    out = fn(x)
    u = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * u).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    eps = 1e-6  # small: the leaky ReLU kinks make larger steps inexact
    with torch.no_grad():
        numeric = ((fn(x + eps * v) - fn(x - eps * v)) * u).sum() / (2 * eps)
    analytic = (grad * v).sum()
    assert analytic.item() == pytest.approx(numeric.item(), rel=1e-6)


@pytest.mark.parametrize(("batch", "batched"), [(1, False), (2, False), (2, True)])
def test_gradients_flow_to_wplus_and_layer_in(g16, batch, batched, monkeypatch):
    if batched:
        _batched(monkeypatch)
    w = _wplus(g16, batch, seed=4).double()
    g = g16.double()
    try:
        monkeypatch.setattr(sg, "FOLD_BLUR_FROM", 16)  # exercise both up-sampling forms
        _directional_check(lambda x: g(x), w, seed=5)
        f4 = g.synthesis(w.detach(), end_layer=0).features.detach()
        _directional_check(lambda x: g.synthesis(w, start_layer=1, layer_in=x).rgb, f4, seed=6)
        # trainable generator parameters: the uncached path gives the same values and gradients reach them
        conv = g.convs[2].conv
        conv.weight.requires_grad_(True)
        image = g(w)
        (gw,) = torch.autograd.grad(image.square().mean(), conv.weight)
        assert torch.isfinite(gw).all() and gw.abs().sum() > 0
        with torch.no_grad():
            torch.testing.assert_close(image, g(w))
    finally:
        g16.float().requires_grad_(False)


def test_cached_weight_layouts_follow_weight_changes():
    """Derived weights (demodulation energies, transposed / blur-folded layouts) are cached; loading new
    weights or converting the module must not leave stale ones."""
    g = sg.Generator(16, channel_multiplier=1).eval().requires_grad_(False)
    w = _wplus(g, 1, seed=7)
    fresh = sg.Generator(16, channel_multiplier=1).eval().requires_grad_(False)
    with torch.no_grad():
        for namespace in ("cache-a", "cache-b"):
            state = filled_state_dict(g, namespace, sg.fill_recipe)
            g.load_state_dict(state)
            fresh.load_state_dict(state)
            torch.testing.assert_close(g(w), fresh(w), rtol=0, atol=0)
        before = g(w)
        g.double()
        g.load_state_dict(filled_state_dict(g, "cache-c", sg.fill_recipe))
        g.float()
        fresh.load_state_dict(filled_state_dict(fresh, "cache-c", sg.fill_recipe))
        after = g(w)
        assert (after - before).abs().max() > 1e-3
        torch.testing.assert_close(after, fresh(w))
