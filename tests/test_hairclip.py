"""HairCLIP: the mapper's parity (image, text and cut paths), keys and fill rule against the fixture, the released
``hairclip.pt`` layout (mapper + decoder, fp16 CLIP tensors, sub-mappers from ``opts``); the UNet hair parser's
keys and file; the ``hairclip`` method with filled weights and through the CLI; registration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import load_fixture, run_harness
from PIL import Image

from harness.method import TextPrompt
from harness.parity import check
from harness.weights import WeightStore
from methods.hairclip.method import HairCLIP, HairCLIPParams, to_pil, to_signed_tensor
from methods.nets import hairclip, stylegan2, unet_parser
from methods.nets.clip import ClipConfig, fp16_parameter_names, tokenize
from methods.nets.hairclip import HairMapper, MapperConfig, edit, fill_recipe, load_hairclip

TINY_CLIP = ClipConfig(embed_dim=512, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                       context_length=8, vocab_size=16, transformer_width=32, transformer_heads=2, transformer_layers=1)


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("hairclip_mapper")


def test_parity(fixture):
    results = list(check(fixture, hairclip.parity_adapter))
    assert [r.case for r in results] == ["both_image", "color_only_image", "hairstyle_only_image", "both_text"]
    for r in results:
        assert r.ok, r.line()
    details = {r.case: set(r.details) for r in results}
    assert details["both_text"] == {"mapper_out", "w_hat", "hairstyle_embedding", "color_embedding"}
    assert details["color_only_image"] == {"mapper_out", "w_hat", "color_embedding"}


def test_keys_and_fill_rule_match_the_fixture(fixture):
    model = HairMapper()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {e["key"]: tuple(e["shape"]) for e in fixture.spec["state_dict"]}
    decoder = stylegan2.Generator(1024, 512, 8, 2)
    ours = {f"mapper.{k}" for k in model.state_dict()} | {f"decoder.{k}" for k in decoder.state_dict()}
    assert ours == {entry[0] for entry in fixture.spec["full_config_keys"]}
    # the float16 tensors of the released file are the ones clip.load converts
    fp16 = {entry[0] for entry in fixture.spec["full_config_keys"] if entry[2] == "float16"}
    assert fp16 == {f"mapper.clip_model.{k}" for k in fp16_parameter_names(model.clip_model)}
    for entry in fixture.spec["state_dict"]:
        ours, want = fill_recipe(entry["key"], tuple(entry["shape"])), entry["fill"]
        assert ours["kind"] == want["kind"] == "normal", entry["key"]
        # the spec stores logit_scale's ln(1/0.07) rounded to float32
        assert ours["mean"] == pytest.approx(want["mean"], rel=1e-7, abs=1e-12), entry["key"]
        assert ours["std"] == pytest.approx(want["std"], rel=1e-12, abs=1e-12), entry["key"]


def test_cut_paths_and_missing_sub_mappers():
    torch.manual_seed(0)
    mapper, _ = load_hairclip(WeightStore(fill=True), clip=TINY_CLIP)
    w = torch.randn(2, 18, 512)
    color = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = mapper(w, color_image=color)
        alone = mapper.map(w, None, mapper.image_embedding(color))
        # the cut path still moves rows 0-7 (fc + LayerNorm chain), and only the colour conditions rows 8-17
        assert torch.equal(out, alone) and out[:, :8].abs().min() > 0
        other = mapper(w, color_image=-color)
        assert torch.equal(out[:, :8], other[:, :8]) and not torch.allclose(out[:, 8:], other[:, 8:])
        # text wins over an image for the same attribute
        tokens = torch.randint(0, 16, (2, 8))
        assert torch.equal(mapper(w, color_text=tokens, color_image=color), mapper(w, color_text=tokens))
        no_fine = HairMapper(MapperConfig(fine=False, clip=TINY_CLIP))
        no_fine.load_state_dict({k: v for k, v in mapper.state_dict().items() if not k.startswith("fine_")})
        cut = no_fine.eval()(w, color_image=color)
        assert not hasattr(no_fine, "fine_mapping") and not cut[:, 8:].any() and torch.equal(cut[:, :8], out[:, :8])
    assert torch.equal(edit(w, out), w + 0.1 * out)


def test_released_file_layout_loads(tmp_path):
    """``hairclip.pt`` as the official code saves it: both parts prefixed, CLIP tensors partly float16, the
    TorchScript-only CLIP entries, ``opts`` with a sub-mapper switched off."""
    torch.manual_seed(1)
    filled, _ = load_hairclip(WeightStore(fill=True), clip=TINY_CLIP)
    mapper = HairMapper(MapperConfig(medium=False, clip=TINY_CLIP)).eval()
    mapper.load_state_dict({k: v for k, v in filled.state_dict().items() if not k.startswith("medium_")})
    decoder = stylegan2.Generator(1024, 512, 8, 2).eval()
    fp16 = set(fp16_parameter_names(mapper.clip_model))
    state = {f"mapper.{k}": (v.half() if k.removeprefix("clip_model.") in fp16 else v)
             for k, v in mapper.state_dict().items()}
    state |= {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    state["mapper.clip_model.input_resolution"] = torch.tensor(32)
    opts = {"no_coarse_mapper": False, "no_medium_mapper": True, "no_fine_mapper": False, "stylegan_size": 1024}
    torch.save({"state_dict": state, "opts": opts}, tmp_path / "hairclip.pt")
    loaded, loaded_decoder = load_hairclip(WeightStore(weights_dir=tmp_path), clip=TINY_CLIP)
    assert not hasattr(loaded, "medium_mapping") and not loaded.training
    for key, value in loaded.state_dict().items():
        want = state[f"mapper.{key}"].float()
        assert torch.equal(value, want), key
    assert all(torch.equal(v, state[f"decoder.{k}"]) for k, v in loaded_decoder.state_dict().items())
    w, color = torch.randn(1, 18, 512), torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        mapper.clip_model.load_state_dict({k: v.half().float() if k in fp16 else v
                                           for k, v in mapper.clip_model.state_dict().items()})
        out = loaded(w, color_image=color)
        assert torch.equal(out, mapper(w, color_image=color)) and loaded.image_embedding(color).abs().min() > 0


def test_filled_weights_and_refusal(tmp_path):
    first, decoder = load_hairclip(WeightStore(fill=True), clip=TINY_CLIP)
    again, _ = load_hairclip(WeightStore(fill=True), clip=TINY_CLIP)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    assert first.course_mapping.modulation_module_list[0].fc.weight.std() > 0 and decoder.size == 1024
    with pytest.raises(Exception, match="hairclip.pt"):
        load_hairclip(WeightStore(weights_dir=tmp_path), clip=TINY_CLIP)


def test_registered_with_the_harness():
    from harness import plugins

    assert plugins.parity_adapters().get("hairclip_mapper") is hairclip.parity_adapter
    assert any(c.key == "hairclip" and c.filename == "hairclip.pt" for c in plugins.extra_checkpoints())


# ---------------------------------------------------------------- hair parser and method

def test_unet_parser_keys_file_and_hair_mask(fixture, tmp_path):
    parser = unet_parser.UNetParser()
    assert {k: tuple(v.shape) for k, v in parser.state_dict().items()} == \
        {entry[0]: tuple(entry[1]) for entry in fixture.spec["aux_parsenet_keys"]}
    filled = unet_parser.load_parser(WeightStore(fill=True))
    # a file saved from DataParallel (module. prefix) loads into the same tensors
    torch.save({f"module.{k}": v for k, v in filled.state_dict().items()}, tmp_path / "parsenet.pth")
    loaded = unet_parser.load_parser(WeightStore(weights_dir=tmp_path))
    assert all(torch.equal(v, filled.state_dict()[k]) for k, v in loaded.state_dict().items())
    image = torch.rand(2, 3, 1024, 1024) * 2 - 1
    with torch.no_grad():
        mask = unet_parser.hair_mask(loaded, image)
        labels = loaded(torch.nn.functional.adaptive_avg_pool2d(image, 512)).argmax(1, keepdim=True)
    assert mask.shape == (2, 1, 1024, 1024) and set(mask.unique().tolist()) <= {0.0, 1.0}
    # nearest 2x replication of the 512 decision (class 13 = hair)
    assert torch.equal(mask[:, :, ::2, ::2], (labels == 13).float()) and torch.equal(mask[:, :, 1::2, 1::2],
                                                                                       mask[:, :, ::2, ::2])


def portrait(seed: int, size: int = 256) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def filled_method() -> HairCLIP:
    method = HairCLIP(HairCLIPParams(cache=False))
    method.setup(torch.device("cpu"), WeightStore(fill=True))
    return method


def test_method_with_filled_weights(filled_method):
    face, shape, color = portrait(0), portrait(1), portrait(2)
    out = filled_method.transfer(face, shape, color)
    assert out.size == face.size and out.mode == "RGB" and np.asarray(out).std() > 0
    assert np.array_equal(np.asarray(out), np.asarray(filled_method.transfer(face, shape, color)))  # buffers noise
    assert filled_method.invert(face).shape == (1, 18, 512)
    # the references enter through their hair masks: with the parser's hair logit pushed up (all hair) the colour
    # image changes the result; pushed down (no hair anywhere) neither reference matters
    bias = filled_method.parser.final.bias
    saved = bias.clone()
    try:
        bias[unet_parser.HAIR] = 1e4
        all_hair = [filled_method.transfer(face, shape, c) for c in (color, portrait(3))]
        assert torch.equal(filled_method.hair_only(color), to_signed_tensor(color, 1024, Image.Resampling.LANCZOS))
        assert not np.array_equal(np.asarray(all_hair[0]), np.asarray(all_hair[1]))
        bias[unet_parser.HAIR] = -1e4
        assert not filled_method.hair_only(color).any()
        no_hair = [filled_method.transfer(face, s, c) for s, c in ((shape, color), (portrait(4), portrait(3)))]
        assert np.array_equal(np.asarray(no_hair[0]), np.asarray(no_hair[1]))
    finally:
        bias.copy_(saved)


def test_text_references_take_the_mapper_text_path(filled_method):
    """A TextPrompt role is tokenised and embedded by CLIP's text tower: the result is the decoder's render of
    ``w + 0.1 * mapper(w, text tokens)``; the prompt matters, and a text and an image role can be mixed."""
    face, color = portrait(0), portrait(2)
    f = filled_method
    out = f.transfer(face, TextPrompt("afro hairstyle"), TextPrompt("purple hair"))
    with torch.no_grad():
        w = f.invert(face)
        mapped = f.mapper(w, hairstyle_text=tokenize("afro hairstyle"), color_text=tokenize("purple hair"))
        want = to_pil(f.decoder.synthesis(edit(w, mapped), noise="buffers").rgb[0])
    want = want.resize(face.size, Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out), np.asarray(want))
    other = f.transfer(face, TextPrompt("buzz cut hairstyle"), TextPrompt("purple hair"))
    assert not np.array_equal(np.asarray(out), np.asarray(other))
    mixed = f.transfer(face, TextPrompt("afro hairstyle"), color)
    assert not np.array_equal(np.asarray(out), np.asarray(mixed))
    assert f.stats["texts_computed"] == 3  # afro, purple, buzz cut: each embedded once


def test_cache_reuses_inversions_and_references(filled_method, tmp_path, monkeypatch):
    """The five task variants of a triplet: one inversion and three references in all, the same pixels as without
    the cache; a new instance (another run, --resume) reads them from disk."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    images = [portrait(0), portrait(1), portrait(2)]
    f = filled_method

    def cached() -> HairCLIP:
        method = HairCLIP()
        method.use_networks(f.mapper, f.decoder, f.encoder, f.parser, f.identity)
        return method

    method = cached()
    for roles in ((0, 1, 2), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 0, 0)):
        triplet = [images[r] for r in roles]
        assert np.array_equal(np.asarray(method.transfer(*triplet)), np.asarray(filled_method.transfer(*triplet)))
    assert (method.stats["inversions_computed"], method.stats["references_computed"]) == (1, 3)
    assert method.cache.stats["reference:memory"] == 7 and method.cache.stats["inversion:memory"] == 4
    again = cached()
    again.transfer(*images)
    assert again.cache.stats["inversion:disk"] == 1 and again.cache.stats["reference:disk"] == 2
    assert not again.stats


def test_cli_runs_and_refuses_without_weights(tmp_path):
    proc = run_harness("run", "--methods", "hairclip", "--protocol", "smoke", "--limit", "1", "--out",
                       str(tmp_path / "refused"), check=False, env={"HARNESS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    assert all(name in proc.stdout + proc.stderr for name in ("hairclip.pt", "e4e_ffhq_encode.pt", "parsenet.pth"))
    # with a shape prompt: tasks full and shape take HairCLIP's text path, color and rec its image path, and both
    # (whose Color slot would get the shape prompt) is skipped
    out = tmp_path / "run"
    proc = run_harness("run", "--methods", "hairclip", "--protocol", "smoke", "--fill-weights", "--limit", "1",
                       "--shape-text", "afro hairstyle", "--out", str(out),
                       env={"HARNESS_CACHE": str(tmp_path / "cache")}, timeout=900)
    assert "ok: 4  failed: 0  skipped: 1" in proc.stdout, proc.stdout
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    skipped = [r for r in records if r["status"] == "skipped"]
    assert [r["task"] for r in skipped] == ["both"] and "shape reference as the color reference" in skipped[0]["error"]
    records = [r for r in records if r["status"] != "skipped"]
    assert len(records) == 4 and all(r["status"] == "ok" for r in records), records
    assert all(set(r["stages"]) == {"inversion", "mapping", "rendering"} for r in records)
    assert sum(r["extras"].get("texts_computed", 0) for r in records) == 1  # the prompt is embedded once
    # the untimed warm-up call fills no cache: the first timed unit computes; later tasks reuse
    assert records[0]["extras"]["inversions_computed"] == 1, records[0]["extras"]
    assert sum(r["extras"].get("inversions_computed", 0) for r in records) == 1
    for r in records:
        with Image.open(out / r["output"]) as image:
            assert image.mode == "RGB" and np.asarray(image).std() > 0
