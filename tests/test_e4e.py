"""e4e encoder: parity, fill recipe, the official e4e_ffhq_encode.pt layout, latent_avg convention."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from harness.parity import Fixture, check, compare, fill_value
from harness.weights import WeightStore, safe_load
from methods.nets import e4e
from methods.nets.e4e import E4EConfig, Encoder4Editing, fill_recipe, load_e4e

TOL = 1e-4


@pytest.fixture(scope="module")
def fixture(parity_dir) -> Fixture:
    loaded = Fixture.load(parity_dir / "e4e")
    state = loaded.torch_state_dict()
    loaded.torch_state_dict = lambda prefix_strip="": dict(state)  # fill the 267M values once for all tests
    return loaded


def test_parity(fixture):
    results = list(check(fixture, e4e.parity_adapter))
    assert [r.case for r in results] == ["encode"]
    for r in results:
        assert r.ok, r.line()
        assert set(r.details) == {"codes", "codes_plus_avg"}


def test_config_from_constructor_and_keys_match_spec(fixture):
    config = E4EConfig.from_constructor(fixture.constructor)
    assert config == E4EConfig(50, "ir_se", 1024) and config.style_count == 18
    assert E4EConfig(stylegan_size=256).style_count == 14
    model = Encoder4Editing(config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {e["key"]: tuple(e["shape"]) for e in fixture.spec["state_dict"]}
    assert sorted(k[0] for k in fixture.spec["full_config_keys"]) == sorted(model.state_dict())


def test_recipe_matches_spec(fixture):
    for e in fixture.spec["state_dict"]:
        assert fill_recipe(e["key"], tuple(e["shape"])) == e["fill"], e["key"]


def test_official_checkpoint_layout_loads_and_reproduces_fixture(fixture, tmp_path):
    latent_avg = torch.from_numpy(fixture.data["in/latent_avg"].copy())
    state = {f"encoder.{k}": v for k, v in fixture.torch_state_dict().items()}
    # a few generator entries (the real file holds a whole StyleGAN2 1024 generator under decoder.*)
    state["decoder.style.1.weight"] = torch.randn(512, 512)
    state["decoder.input.input"] = torch.randn(1, 512, 4, 4)
    opts = {"exp_dir": "experiment", "dataset_type": "ffhq_encode", "encoder_type": "Encoder4Editing",
            "stylegan_size": 1024, "start_from_latent_avg": True, "learning_rate": 0.0001, "lpips_lambda": 0.8,
            "progressive_steps": [0, 20000, 22000], "checkpoint_path": None, "w_discriminator_lambda": 0.1}
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": opts}, tmp_path / "e4e_ffhq_encode.pt")
    del state

    loaded = safe_load(tmp_path / "e4e_ffhq_encode.pt")  # a plain options dict needs no allow-listed global
    assert loaded["opts"] == opts and set(loaded) == {"state_dict", "latent_avg", "opts"}
    del loaded

    encoder, avg = load_e4e(WeightStore(weights_dir=tmp_path), "cpu")
    assert not encoder.training and torch.equal(avg, latent_avg)
    x = torch.from_numpy(fixture.data["in/x"])
    with torch.no_grad():
        w_plus = encoder.encode(x)
    assert w_plus.shape == (1, 18, 512)
    assert compare(w_plus.numpy(), fixture.reference("out/codes_plus_avg"), TOL) < TOL
    assert compare((w_plus - latent_avg).numpy(), fixture.reference("out/codes"), TOL) < TOL


def test_latent_avg_convention():
    codes = torch.randn(2, 18, 512)
    per_row = torch.randn(18, 512)
    torch.testing.assert_close(e4e.add_latent_avg(codes, per_row), codes + per_row.repeat(2, 1, 1))
    single = torch.randn(512)
    torch.testing.assert_close(e4e.add_latent_avg(codes, single), codes + single)


def test_fill_weights_path_and_small_config():
    config = E4EConfig(stylegan_size=16)  # 6 W+ rows: coarse and middle heads only, fast
    encoder, latent_avg = load_e4e(WeightStore(fill=True), "cpu", config)
    assert latent_avg.shape == (6, 512)
    np.testing.assert_array_equal(latent_avg.numpy(), fill_value("e4e_ffhq", "latent_avg", (6, 512)))
    key = "styles.0.linear.weight"
    expected = fill_value("e4e_ffhq", key, (512, 512), **{k: fill_recipe(key, (512, 512))[k] for k in ("mean", "std")})
    np.testing.assert_array_equal(encoder.state_dict()[key].numpy(), expected)
    with torch.no_grad():
        w_plus = encoder.encode(torch.zeros(2, 3, 256, 256).uniform_(-1, 1))
    assert w_plus.shape == (2, 6, 512) and torch.isfinite(w_plus).all()


def test_namespace_opts_are_allowed(tmp_path):
    path = tmp_path / "opts.pt"
    torch.save({"opts": argparse.Namespace(stylegan_size=1024)}, path)
    assert safe_load(path)["opts"].stylegan_size == 1024


def test_registered_with_the_harness():
    from harness import plugins

    assert plugins.parity_adapters().get("e4e") is e4e.parity_adapter
    assert any(c.key == "e4e_ffhq" and c.filename == "e4e_ffhq_encode.pt" for c in plugins.extra_checkpoints())
