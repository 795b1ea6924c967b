"""HairMapper's LevelMapper: parity per case, keys and fill rule against the fixture, the official
``best_model.pt`` layout through ``--weights-dir``, batching, the edit rule, registration."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_fill_recipe_matches, load_fixture

from harness.parity import check, rel_err
from harness.weights import WeightStore, filled_state_dict
from methods.nets import hairmapper
from methods.nets.hairmapper import (
    CHECKPOINT,
    DEFAULT_ALPHA,
    LevelMapper,
    fill_recipe,
    inference_alpha,
    load_mapper,
    render_latent,
    w_edit,
)


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("hairmapper")


@pytest.fixture(scope="module")
def filled() -> LevelMapper:
    mapper, _ = load_mapper(WeightStore(fill=True))
    return mapper


def test_parity(fixture):
    results = list(check(fixture, hairmapper.parity_adapter))
    assert [r.case for r in results] == [c["name"] for c in fixture.cases] and results
    for r, case in zip(results, fixture.cases, strict=True):
        assert r.ok, r.line()
        assert set(r.details) == set(case["outputs"]), r.line()


def test_adapter_follows_the_spec_not_case_names(fixture):
    """Another copy of the fixture: renamed cases and input argument, fewer outputs listed."""
    import copy

    from harness.parity import Fixture

    spec = copy.deepcopy(fixture.spec)
    for i, case in enumerate(spec["cases"]):
        case["name"] = f"copy_{i}"
        case["inputs"] = {"w": next(iter(case["inputs"].values()))}
        case["outputs"] = {"w_edit": case["outputs"]["w_edit"]}
    results = list(check(Fixture(fixture.path, spec, fixture.data), hairmapper.parity_adapter))
    assert [r.case for r in results] == [f"copy_{i}" for i in range(len(spec["cases"]))]
    assert all(r.ok and set(r.details) == {"w_edit"} for r in results), [r.line() for r in results]


def test_keys_and_fill_rule_match_the_fixture(fixture):
    ours = {k: tuple(v.shape) for k, v in LevelMapper().state_dict().items()}
    assert ours == {e["key"]: tuple(e["shape"]) for e in fixture.spec["state_dict"]}
    assert list(ours) == [entry[0] for entry in fixture.spec["full_config_keys"]]
    assert all(v.dtype == torch.float32 for v in LevelMapper().state_dict().values())
    assert_fill_recipe_matches(fixture, fill_recipe)


def test_official_file_loads_through_weights_dir(tmp_path, filled):
    state = filled_state_dict(LevelMapper(), CHECKPOINT.key, fill_recipe)
    path = tmp_path / CHECKPOINT.official_path
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "alpha": 0.35}, path)
    mapper, alpha = load_mapper(WeightStore(weights_dir=tmp_path))
    assert alpha == 0.35 and inference_alpha(alpha) == pytest.approx(0.42)
    assert not mapper.training and not any(p.requires_grad for p in mapper.parameters())
    w = torch.randn(2, 18, 512)
    with torch.no_grad():
        assert torch.equal(mapper(w), filled(w))
    _, default_alpha = load_mapper(WeightStore(fill=True))
    assert default_alpha == DEFAULT_ALPHA and inference_alpha(default_alpha) == pytest.approx(0.48)
    (tmp_path / "bare").mkdir()
    torch.save(state, tmp_path / "bare" / CHECKPOINT.filename)  # a bare state dict is not the official layout
    with pytest.raises(ValueError, match="state_dict"):
        load_mapper(WeightStore(weights_dir=tmp_path / "bare"))
    with pytest.raises(Exception, match="best_model.pt"):
        load_mapper(WeightStore(weights_dir=tmp_path / "empty"))


def test_batch_equals_per_sample(filled):
    torch.manual_seed(0)
    w = torch.randn(3, 18, 512)
    with torch.no_grad():
        batched = filled(w)
        single = torch.cat([filled(w[i:i + 1]) for i in range(3)])
    assert batched.shape == (3, 8, 512)
    # float32 matmul blocking differs between batch sizes: compare like the fixture (relative L2)
    assert rel_err(batched.numpy(), single.numpy()) < 1e-5


def test_edit_rows_and_w_avg(filled):
    torch.manual_seed(1)
    w = torch.randn(2, 18, 512)
    original = w.clone()
    with torch.no_grad():
        out = filled(w)
        edited = w_edit(w, out, inference_alpha(DEFAULT_ALPHA))
        # rows 8-17 are never read
        changed = w.clone()
        changed[:, 8:] += 1.0
        assert torch.equal(filled(changed), out)
    assert torch.equal(w, original)  # pure: the input is not modified
    assert torch.equal(edited[:, 8:], w[:, 8:])
    torch.testing.assert_close(edited[:, :8], w[:, :8] + 0.48 * out)
    torch.testing.assert_close(render_latent(edited), edited, rtol=1e-6, atol=1e-6)
    # w_avg is loaded but unused
    other = LevelMapper()
    other.load_state_dict(filled.state_dict())
    other.structure_mapping.w_avg.fill_(5.0)
    with torch.no_grad():
        assert torch.equal(other.eval()(w), out)


def test_registered_with_the_harness():
    from harness import plugins

    assert plugins.parity_adapters().get("hairmapper") is hairmapper.parity_adapter
    assert any(c.key == CHECKPOINT.key and c.official_path == "mapper/checkpoints/final/best_model.pt"
               for c in plugins.extra_checkpoints())
