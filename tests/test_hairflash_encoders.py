"""HairFast's learned encoders: FS encoder (iresnet trunk), rotate, CLIP blending and post-processing encoders.

Parity on the four fixtures, fill recipes equal to the specs, key listings, and checkpoint files written in the
official layouts loading through ``WeightStore`` and reproducing the fixtures' outputs. Each big network's state
dict is filled once per test class (the adapter reuses it) to keep the file fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.parity import Fixture, check, compare, fill_value
from harness.weights import WeightStore, safe_load
from methods.hairflash import encoders
from methods.hairflash.encoders import (
    BLENDING_VARIANTS,
    BlendingConfig,
    ClipBlendingModel,
    ModulationPart,
    PostProcessConfig,
    PostProcessModel,
    RotateModel,
    load_blending,
    load_postprocess,
    load_rotate,
    pixel_norm_rows,
)
from methods.nets import iresnet
from methods.nets.clip import ClipConfig
from methods.nets.iresnet import EncoderConfig, FSEncoder, load_fse

TOL = 1e-4
FIXTURES = ("fse", "hairfast_rotate", "hairfast_blending", "hairfast_postprocess")
RECIPES = {"fse": iresnet.fill_recipe, "hairfast_rotate": encoders.fill_recipe,
           "hairfast_blending": encoders.fill_recipe, "hairfast_postprocess": encoders.fill_recipe}
ADAPTERS = {**iresnet.PARITY, **encoders.PARITY}
TINY_CLIP = ClipConfig(embed_dim=32, image_resolution=64, vision_layers=1, vision_width=64, vision_patch_size=32,
                       context_length=8, vocab_size=16, transformer_width=64, transformer_layers=1)


def filled_once(parity_dir, name: str) -> tuple[Fixture, dict[str, torch.Tensor]]:
    """The fixture with its state dict filled once; the adapter's ``torch_state_dict()`` returns the same fill."""
    fixture = Fixture.load(parity_dir / name)
    state = fixture.torch_state_dict()
    fixture.torch_state_dict = lambda prefix_strip="": dict(state)
    return fixture, state


def assert_parity(fixture: Fixture) -> None:
    results = list(check(fixture, ADAPTERS[fixture.name]))
    assert [r.case for r in results] == [c["name"] for c in fixture.cases]
    for result, case in zip(results, fixture.cases, strict=True):
        assert result.ok, result.line()
        assert set(result.details) == set(case["outputs"])


def u8_to_unit_normalised(fixture: Fixture, key: str) -> torch.Tensor:
    return (torch.from_numpy(fixture.data[key]).float() / 255.0 - 0.5) / 0.5


# ---------------------------------------------------------------- specs (cheap)

@pytest.mark.parametrize("name", FIXTURES)
def test_recipe_matches_spec(parity_dir, name):
    spec = Fixture.load(parity_dir / name).spec
    entries = spec["state_dict"] + spec.get("extra_tensors", [])
    mismatches = [e["key"] for e in entries if RECIPES[name](e["key"], tuple(e["shape"])) != e["fill"]]
    assert not mismatches, mismatches[:5]


@pytest.mark.parametrize("name", FIXTURES)
def test_default_models_have_the_spec_keys(parity_dir, name):
    spec = Fixture.load(parity_dir / name).spec
    with torch.device("meta"):
        model = {"fse": FSEncoder, "hairfast_rotate": RotateModel, "hairfast_blending": ClipBlendingModel,
                 "hairfast_postprocess": PostProcessModel}[name]()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {e["key"]: tuple(e["shape"]) for e in spec["state_dict"]}
    assert sorted(k[0] if isinstance(k, list) else k for k in spec["full_config_keys"]) == sorted(ours)
    assert not any("latent_avg" in k for k in ours)  # non-persistent: not part of the checkpoints' state dicts
    if name == "hairfast_blending":
        with torch.device("meta"):
            part = ModulationPart()
        assert sorted(part.state_dict()) == sorted(k[0] if isinstance(k, list) else k
                                                   for k in spec["checkpoint_keys"])


def test_checkpoints_are_declared():
    declared = iresnet.CHECKPOINTS + encoders.CHECKPOINTS
    assert len({c.key for c in declared}) == len(declared)
    assert {c.filename for c in declared} == {"143_enc.pth", "psp_ffhq_encode.pt", "rotate_best.pth",
                                              "checkpoint.pth", "pp_model.pth", "latent_avg.pt"}
    for ckpt in declared:
        assert "huggingface.co/AIRI-Institute/HairFastGAN" in ckpt.source and "pretrained_models/" in ckpt.source
        assert ckpt.size is None and ckpt.sha256 is None  # the Hub lists rounded sizes only: none invented


def test_plugin_registers_the_adapters():
    from methods.hairflash import plugin

    names = []
    plugin.register_parity(lambda name, adapter: names.append(name))
    assert set(FIXTURES) | {"hairfast_ops"} <= set(names)


# ---------------------------------------------------------------- small pieces (tiny networks)

def test_pixel_norm_runs_over_rows():
    x = torch.randn(2, 6, 512)
    expected = x / torch.sqrt((x ** 2).mean(dim=1, keepdim=True) + 1e-8)
    torch.testing.assert_close(pixel_norm_rows(x), expected)
    assert not torch.allclose(pixel_norm_rows(x), x / torch.sqrt((x ** 2).mean(dim=2, keepdim=True) + 1e-8))


def tiny_postprocess() -> PostProcessModel:
    encoder = EncoderConfig(stages=((8, 1), (16, 1), (16, 1), (16, 1)), content_stage=2, content_stride=1,
                            content_channels=16, content_in_list=True, resize_to=32)
    torch.manual_seed(0)
    return PostProcessModel(PostProcessConfig(encoder, to_feature=((16, 1), (8, 1)), middle=32)).eval()


def test_latent_avg_shapes_broadcast():
    model = tiny_postprocess()
    for value, shape in ((torch.randn(512), (1, 512)), (torch.randn(1, 512), (1, 512)),
                         (torch.randn(1, 18, 512), (18, 512)), (torch.randn(18, 512), (18, 512))):
        model.set_latent_avg(value)
        assert tuple(model.latent_avg.shape) == shape
        torch.testing.assert_close(model.latent_avg.reshape(value.shape), value)
    with pytest.raises(ValueError, match="does not fit"):
        model.set_latent_avg(torch.randn(6, 512))
    fse = FSEncoder(EncoderConfig(stages=((8, 1), (8, 1), (8, 1), (8, 1)), content_channels=8))
    fse.set_latent_avg(torch.randn(512))
    assert tuple(fse.latent_avg.shape) == (1, 512)


def test_postprocess_batches_and_resizes():
    model = tiny_postprocess()
    model.set_latent_avg(torch.randn(512))
    source, target = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        s_both, f_both = model(source, target)
        s_one, f_one = model(source[1:], target[1:])
    assert s_both.shape == (2, 18, 512) and f_both.shape == (2, 8, 8, 8)  # resized to 32, stage 2 at 8x8
    torch.testing.assert_close(s_both[1:], s_one, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f_both[1:], f_one, rtol=1e-4, atol=1e-5)


def test_fse_embed_halves_bilinearly_and_adds_the_average():
    model = FSEncoder(EncoderConfig(n_styles=4, stages=((8, 1), (8, 1), (8, 1), (8, 1)), content_channels=8),
                      halvings=2).eval()
    model.set_latent_avg(torch.randn(4, 512))
    image = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        s, content = model.embed(image)
        styles, content_direct = model(torch.nn.functional.avg_pool2d(image, 4))  # 4x4 box mean = two halvings
    torch.testing.assert_close(s, styles + model.latent_avg, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(content, content_direct, rtol=1e-5, atol=1e-5)
    assert content.shape == (1, 8, 2, 2)  # 128 -> 32 trunk input, stage 3 at 4x4, stride-2 content conv


def test_blending_variant_with_clip_embeds_of_the_shape_hair():
    config = BlendingConfig(n_image_embeds=3, cond_dim=512 + 3 * 32, middle=64, clip=TINY_CLIP)
    assert BLENDING_VARIANTS["with_clip_embeds"].cond_dim == 2048 and BLENDING_VARIANTS["official"].cond_dim == 1536
    with pytest.raises(ValueError, match="cond_dim"):
        BlendingConfig(n_image_embeds=3, cond_dim=1536)
    model = load_blending(WeightStore(fill=True), clip_precision="fp32", config=config)
    assert model.modulation_module_list[0].gamma_function[0].weight.shape == (64, 608)
    s_face, s_color = torch.randn(2, 12, 512), torch.randn(2, 12, 512)
    images = [torch.rand(2, 3, 96, 96) * 2 - 1 for _ in range(3)]
    with torch.no_grad():
        out = model(s_face, s_color, *images)
        embeds = [model.get_image_embed(image) for image in images]
        expected = model.blend(s_face, model.condition([s_color], embeds))
    assert out.shape == (2, 12, 512)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="takes 3 images"):
        model(s_face, s_color, *images[:2])


# ---------------------------------------------------------------- the four fixtures: parity and official files

class TestRotate:
    @pytest.fixture(scope="class")
    def filled(self, parity_dir):
        return filled_once(parity_dir, "hairfast_rotate")

    def test_parity(self, filled):
        assert_parity(filled[0])

    def test_official_file_and_fill_reproduce_the_fixture(self, filled, tmp_path):
        fixture, state = filled
        torch.save({"model_state_dict": state}, tmp_path / "rotate_best.pth")
        w_face = torch.from_numpy(fixture.data["in/W_face"])
        w_shape = torch.from_numpy(fixture.data["in/W_shape"])
        # the checkpoint key is the fixture's namespace, so --fill-weights builds the fixture's network
        for weights in (WeightStore(weights_dir=tmp_path), WeightStore(fill=True)):
            model = load_rotate(weights)
            assert not model.training
            with torch.no_grad():
                full = model.rotate_wplus(w_shape, w_face)
            assert compare(full.numpy(), fixture.reference("out/W_rotated_full"), 1e-5) < 1e-5
            assert compare((full - w_shape)[:, :6].numpy(), fixture.reference("out/delta_rows_0_5"), 1e-5) < 1e-5
        torch.save({"model_state_dict": {k: v for k, v in state.items() if "4.fc" not in k}},
                   tmp_path / "rotate_best.pth")
        with pytest.raises(ValueError, match="missing keys: modulation_module_list.4.fc"):
            load_rotate(WeightStore(weights_dir=tmp_path))


class TestFSE:
    @pytest.fixture(scope="class")
    def filled(self, parity_dir):
        return filled_once(parity_dir, "fse")

    def test_parity(self, filled):
        assert_parity(filled[0])

    def test_official_files_reproduce_the_fixture(self, filled, tmp_path):
        fixture, state = filled
        extra = fixture.spec["extra_tensors"][0]
        latent_avg = torch.from_numpy(fill_value(fixture.namespace, "dlatent_avg", extra["shape"], 0.0, 0.5))
        torch.save(state, tmp_path / "143_enc.pth")  # bare state dict
        psp = {"state_dict": {"encoder.input_layer.0.weight": torch.randn(64, 3, 3, 3),
                              "decoder.style.1.weight": torch.randn(8, 8)},
               "latent_avg": latent_avg, "opts": {"encoder_type": "GradualStyleEncoder", "stylegan_size": 1024}}
        torch.save(psp, tmp_path / "psp_ffhq_encode.pt")
        model = load_fse(WeightStore(weights_dir=tmp_path))
        assert not model.training and torch.equal(model.latent_avg, latent_avg)
        with torch.no_grad():
            s, content = model.embed(u8_to_unit_normalised(fixture, "in/img_u8"))
        assert compare(s.numpy(), fixture.reference("out/latent_S"), TOL) < TOL
        assert compare(content.numpy(), fixture.reference("out/content"), TOL) < TOL


class TestBlending:
    @pytest.fixture(scope="class")
    def filled(self, parity_dir):
        return filled_once(parity_dir, "hairfast_blending")

    def test_parity(self, filled):
        assert_parity(filled[0])

    def test_released_layout_with_the_clip_checkpoint_reproduces_the_fixture(self, filled, tmp_path):
        fixture, state = filled
        released = {k: v for k, v in state.items() if not k.startswith("clip_model.")}
        assert sorted(released) == sorted(k[0] for k in fixture.spec["checkpoint_keys"])
        torch.save({"model_state_dict": released}, tmp_path / "checkpoint.pth")
        torch.save({k[len("clip_model."):]: v for k, v in state.items() if k.startswith("clip_model.")},
                   tmp_path / "ViT-B-32.pt")  # a plain CLIP state dict (the release is a TorchScript archive)
        model = load_blending(WeightStore(weights_dir=tmp_path), clip_precision="fp32")
        assert not model.training
        x = {k.split("/")[-1]: torch.from_numpy(v) for k, v in fixture.data.items() if k.startswith("in/")}
        face = x["I_face_norm_256"] * x["target_mask"]
        color = x["I_color_norm_256"] * x["HM_3E"]
        with torch.no_grad():
            out = model(x["S_face"][:, 6:], x["S_color"][:, 6:], face, color)
            embed = model.get_image_embed(color)
        assert compare(out.numpy(), fixture.reference("out/S_blend_rows_6_17"), TOL) < TOL
        assert compare((out - x["S_face"][:, 6:]).numpy(), fixture.reference("out/delta_rows_6_17"), TOL) < TOL
        assert compare(embed.numpy(), fixture.reference("out/clip_embed_color"), TOL) < TOL

        # a full state dict (clip_model.* included) needs no CLIP file; a missing released key is an error
        (tmp_path / "ViT-B-32.pt").unlink()
        torch.save({"model_state_dict": state}, tmp_path / "checkpoint.pth")
        full = load_blending(WeightStore(weights_dir=tmp_path), clip_precision="fp32")
        assert all(torch.equal(v, state[k]) for k, v in full.state_dict().items())
        del released["modulation_module_list.0.fc.bias"]
        torch.save({"model_state_dict": released}, tmp_path / "checkpoint.pth")
        with pytest.raises(ValueError, match="missing keys: modulation_module_list.0.fc.bias"):
            load_blending(WeightStore(weights_dir=tmp_path))


class TestPostProcess:
    @pytest.fixture(scope="class")
    def filled(self, parity_dir):
        return filled_once(parity_dir, "hairfast_postprocess")

    def test_parity(self, filled):
        assert_parity(filled[0])

    def test_official_files_reproduce_the_fixture(self, filled, tmp_path):
        fixture, state = filled
        extra = fixture.spec["extra_tensors"][0]
        latent_avg = torch.from_numpy(fill_value(fixture.namespace, "latent_avg", extra["shape"], 0.0, 0.5))
        discriminator = {"convs.0.0.weight": torch.randn(16, 3, 1, 1), "final_linear.1.bias": torch.zeros(1)}
        torch.save({"model_state_dict": state, "D": discriminator, "cur_iter": 12345}, tmp_path / "pp_model.pth")
        torch.save(latent_avg, tmp_path / "latent_avg.pt")
        assert torch.equal(safe_load(tmp_path / "latent_avg.pt"), latent_avg)
        model = load_postprocess(WeightStore(weights_dir=tmp_path))
        assert not model.training and torch.equal(model.latent_avg, latent_avg)
        source = torch.from_numpy(fixture.data["in/I_face_norm_256"])
        target = torch.from_numpy(fixture.data["in/I_blend_256"])
        with torch.no_grad():
            s_final, f_final = model(source, target)
        assert compare(s_final.numpy(), fixture.reference("out/S_final"), TOL) < TOL
        assert compare((s_final - latent_avg).numpy(), fixture.reference("out/S_final_minus_latent_avg"), TOL) < TOL
        assert compare(f_final.numpy(), fixture.reference("out/F_final/*"), TOL) < TOL
        assert np.isfinite(f_final.numpy()).all()
        # the pipeline's split form (the face's codes computed on their own, cacheable) gives the same outputs
        with torch.no_grad():
            s_split, f_split = model.combine(model.encode(source), model.encode(target))
        assert compare(s_split.numpy(), fixture.reference("out/S_final"), TOL) < TOL
        assert compare(f_split.numpy(), fixture.reference("out/F_final/*"), TOL) < TOL
