"""CycleGAN's ResNet generator: parity (released layout and a small one), keys and fill rule against the fixture,
the official file format with the stale InstanceNorm entries old files carry, registration."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from conftest import assert_fill_recipe_matches, load_fixture

from harness.parity import check
from harness.weights import WeightStore
from methods.nets import cyclegan
from methods.nets.cyclegan import GeneratorConfig, ResnetGenerator, fill_recipe, load_generator

SMALL = GeneratorConfig(ngf=8, n_blocks=2)


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("cyclegan_resnet")


def test_parity(fixture):
    results = list(check(fixture, cyclegan.parity_adapter))
    assert [r.case for r in results] == ["full_0", "small_0", "small_1"]
    for r in results:
        assert r.ok, r.line()


def test_keys_and_fill_rule_match_the_fixture(fixture):
    spec = fixture.spec
    assert GeneratorConfig.from_constructor(spec["constructor"]) == GeneratorConfig()
    assert GeneratorConfig.from_constructor(spec["constructor_small"]) == SMALL
    for config, listing in ((GeneratorConfig(), spec["state_dict"]), (SMALL, spec["state_dict_small"])):
        ours = {k: tuple(v.shape) for k, v in ResnetGenerator(config).state_dict().items()}
        assert ours == {e["key"]: tuple(e["shape"]) for e in listing}
    assert set(ResnetGenerator().state_dict()) == {entry[0] for entry in spec["full_config_keys"]}
    assert_fill_recipe_matches(fixture, fill_recipe)
    with pytest.raises(ValueError, match="dropout"):
        GeneratorConfig.from_constructor({**spec["constructor"], "use_dropout": True})


def test_official_file_loads_with_stale_instance_norm_entries(tmp_path):
    torch.manual_seed(0)
    generator = ResnetGenerator(SMALL).eval()
    state = OrderedDict(generator.state_dict())
    # what files saved before PyTorch 0.4 carry for the InstanceNorms (the official loader drops them)
    state["model.2.running_mean"] = torch.zeros(8)
    state["model.2.running_var"] = torch.ones(8)
    state["model.10.conv_block.2.num_batches_tracked"] = torch.tensor(0)
    torch.save(state, tmp_path / "latest_net_G.pth")
    loaded = load_generator(WeightStore(weights_dir=tmp_path), config=SMALL)
    x = torch.rand(1, 3, 40, 24) * 2 - 1
    with torch.no_grad():
        y = loaded(x)
        assert torch.equal(y, generator(x)) and y.shape == x.shape and y.abs().max() < 1
    filled = load_generator(WeightStore(fill=True), config=SMALL)
    assert filled.model[1].weight.std() > 0 and not filled.training
    with pytest.raises(Exception, match="latest_net_G.pth"):
        load_generator(WeightStore(weights_dir=tmp_path / "empty"), config=SMALL)


def test_registered_with_the_harness():
    from harness import plugins

    assert plugins.parity_adapters().get("cyclegan_resnet") is cyclegan.parity_adapter
    assert any(c.key == "cyclegan_generator" for c in plugins.extra_checkpoints())
