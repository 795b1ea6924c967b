"""clip-opt: ArcFace iresnet-50 in HairFast's file layout (strict), the objective's terms by hand, StyleCLIP's
schedule and pooling, the optimisation on tiny filled networks (text and image targets), the cache, and the real
CLI end to end with filled weights, plus its refusal without weight files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_harness
from PIL import Image

from harness.method import TextPrompt
from harness.weights import WeightStore, filled_state_dict, load_state_dict_into
from methods.clipopt.method import (
    QUICK_STEPS,
    ClipOpt,
    ClipOptParams,
    Target,
    identity_term,
    image_term,
    l2_term,
    styleclip_lr,
    styleclip_pool,
    text_term,
)
from methods.nets import arcface, bisenet, clip, e4e, stylegan2
from methods.nets.bisenet import FaceParser
from methods.nets.e4e import E4EConfig

# a CLIP with the real vocabulary (text prompts are tokenised for real) and a 32 px image tower
TINY_CLIP = clip.ClipConfig(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                            transformer_width=32, transformer_heads=2, transformer_layers=1)
TINY_ARCFACE = arcface.ArcFaceConfig(stages=((8, 1), (8, 1), (16, 1), (16, 1)), embedding=32)
TINY = dict(size=32, channel_multiplier=1, parser_resolution=64)


def filled(module: torch.nn.Module, namespace: str, recipe) -> torch.nn.Module:
    load_state_dict_into(module, filled_state_dict(module, namespace, recipe), "filled weights")
    return module.eval().requires_grad_(False)


def portrait(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def networks():
    """Filled networks at test size: the real loaders where the size allows, tiny CLIP / ArcFace otherwise."""
    store = WeightStore(fill=True)
    generator, _ = stylegan2.load_generator(store, "cpu", 32, 1)
    encoder, _ = e4e.load_e4e(store, "cpu", E4EConfig(stylegan_size=32))
    clip_model = filled(clip.CLIP(TINY_CLIP), clip.CHECKPOINT.key, clip.fill_recipe)
    arc = filled(arcface.ArcFace(TINY_ARCFACE), arcface.CHECKPOINT.key, arcface.fill_recipe)
    parser = FaceParser(bisenet.load_bisenet(store, "cpu"), resolution=64)
    return generator, encoder, clip_model, arc, parser


def make_method(networks, **params) -> ClipOpt:
    method = ClipOpt(ClipOptParams(**{**TINY, "quick": True, **params}))
    method.use_networks(*networks, {"inversion": "filled-e4e", "reference": "filled-parser-clip"})
    return method


# ---------------------------------------------------------------- parameters, schedule, pooling

def test_defaults_schedule_and_pooling():
    p = ClipOptParams()
    assert (p.steps, p.lr, p.l2_lambda, p.id_lambda) == (2000, 0.1, 0.001, 0.008) and 1500 <= p.steps <= 3000
    assert p.effective_steps == 2000 and ClipOptParams(quick=True).effective_steps == QUICK_STEPS == 20
    assert ClipOptParams(quick=True, steps=3).effective_steps == 3
    with pytest.raises(ValueError, match="power of two"):
        ClipOptParams(size=48)
    # StyleCLIP get_lr: 0 at the start, linear ramp-up over 5 %, flat, cosine ramp-down over the last 25 %
    assert styleclip_lr(0.0, 0.1) == 0.0 and styleclip_lr(0.025, 0.1) == pytest.approx(0.05)
    assert styleclip_lr(0.5, 0.1) == pytest.approx(0.1)
    assert styleclip_lr(0.9, 0.1) == pytest.approx(0.1 * (0.5 - 0.5 * math.cos(0.4 * math.pi)))
    # pooling = Upsample(scale_factor=7) then AvgPool2d(size // 32), exactly
    x = torch.rand(2, 3, 64, 64)
    want = F.avg_pool2d(F.interpolate(x, scale_factor=7, mode="nearest"), 64 // 32)
    assert torch.allclose(styleclip_pool(x, 224), want, atol=1e-6)
    small = torch.rand(1, 3, 32, 32)
    assert torch.allclose(styleclip_pool(small, 32), small, atol=1e-6)


def test_terms_by_hand(networks):
    w0 = torch.zeros(1, 8, 512)
    w = w0.clone()
    w[0, 0, 0], w[0, 3, 7] = 0.5, -1.0
    assert l2_term(w, w0).item() == 1.25  # 0.25 + 1
    e = torch.tensor([[1.0, 0.0]])
    assert identity_term(e, torch.tensor([[0.0, 2.0]])).item() == pytest.approx(1.0)
    assert identity_term(torch.tensor([[1.0, 1.0]]), e).item() == pytest.approx(1 - 1 / math.sqrt(2))
    assert text_term(e, e, torch.tensor(math.log(100.0))).item() == pytest.approx(0.0, abs=1e-6)
    assert image_term(e, torch.tensor([[0.0, 1.0]])).item() == 1.0
    # the method's objective at w0 + delta: total = clip + 0.001 * 1.25 + 0.008 * id
    method = make_method(networks)
    w0 = method.invert(portrait(0))
    delta = torch.zeros_like(w0)
    delta[0, 0, 0], delta[0, 3, 7] = 0.5, -1.0
    with torch.no_grad():
        start = method.identity_features(method.render(w0))
        targets = [method.target("shape", portrait(1)), method.target("color", portrait(2))]
        at_start = method.terms(w0, w0, start, targets)
        moved = method.terms(w0 + delta, w0, start, targets)
    assert at_start.l2.item() == 0 and abs(at_start.identity.item()) < 1e-5
    assert moved.l2.item() == pytest.approx(1.25, rel=1e-6)
    assert moved.total.item() == pytest.approx(moved.clip.item() + 0.001 * 1.25 + 0.008 * moved.identity.item(),
                                               rel=1e-6)
    assert [t.kind for t in targets] == ["image", "image"] and targets[0].embedding.norm().item() == \
        pytest.approx(1.0)


# ---------------------------------------------------------------- ArcFace in HairFast's layout

def test_arcface_loads_hairfast_file_strictly(tmp_path):
    model = arcface.ArcFace()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # insightface iresnet50: stem, 3/4/14/3 blocks (first strided with downsample), bn2, fc, features
    assert shapes["conv1.weight"] == (64, 3, 3, 3) and shapes["prelu.weight"] == (64,)
    assert shapes["fc.weight"] == (512, 25088) and shapes["features.running_var"] == (512,)
    assert shapes["layer1.0.downsample.0.weight"] == (64, 64, 1, 1) and "layer1.1.downsample.0.weight" not in shapes
    assert {int(k.split(".")[1]) for k in shapes if k.startswith("layer3.")} == set(range(14))
    assert shapes["layer4.2.bn3.weight"] == (512,) and shapes["bn2.weight"] == (512,)
    state = filled_state_dict(model, arcface.CHECKPOINT.key, arcface.fill_recipe)
    official = tmp_path / "pretrained_models" / "FeatureStyleEncoder"
    official.mkdir(parents=True)
    torch.save(state, official / "backbone.pth")
    loaded = arcface.load_arcface(WeightStore(weights_dir=tmp_path / "pretrained_models"))
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    with torch.no_grad():
        embedding = loaded(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert embedding.shape == (2, 512) and torch.isfinite(embedding).all()
    torch.save({**state, "fc2.weight": torch.zeros(1)}, official / "backbone.pth")
    with pytest.raises(ValueError, match="unexpected keys: fc2.weight"):
        arcface.load_arcface(WeightStore(weights_dir=tmp_path / "pretrained_models"))
    torch.save({k: v for k, v in state.items() if k != "features.running_var"}, official / "backbone.pth")
    with pytest.raises(ValueError, match="missing keys: features.running_var"):
        arcface.load_arcface(WeightStore(weights_dir=tmp_path / "pretrained_models"))


# ---------------------------------------------------------------- optimisation

def test_loss_decreases_text_and_image_targets_and_cache(networks, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    method = make_method(networks, steps=10)
    face, shape, color = portrait(0), portrait(1), portrait(2)
    out = method.transfer(face, TextPrompt("purple hair"), TextPrompt("afro hairstyle"))
    trace = method.trace
    assert out.size == face.size and out.mode == "RGB" and len(trace) == 10
    assert trace[0]["l2"] == 0 and trace[-1]["total"] < trace[0]["total"]
    assert trace[-1]["clip"] < trace[0]["clip"] and trace[-1]["l2"] > 0
    assert method.stats["texts_computed"] == 2
    # image targets (hair through the soft parser mask), mixed with text
    mixed = make_method(networks, steps=3)
    mixed.cache = method.cache
    result = mixed.transfer(face, shape, TextPrompt("purple hair"))
    assert result.size == face.size and len(mixed.trace) == 3 and mixed.stats["references_computed"] == 1
    assert not np.array_equal(np.asarray(result), np.asarray(out))
    # the face's inversion was cached by the first call (same cache), so none is computed again
    assert "inversions_computed" not in mixed.stats and method.stats["inversions_computed"] == 1
    image_only = make_method(networks, steps=2)
    image_only.transfer(face, shape, color)
    assert image_only.cache.stats["inversion:disk"] == 1 and image_only.stats["references_computed"] == 1
    assert image_only.cache.stats["reference:disk"] == 1  # the shape reference, from the disk cache
    # no steps: the e4e reconstruction
    zero = make_method(networks, steps=0)
    with torch.no_grad():
        want = zero.render(zero.invert(face))
    rec = zero.transfer(face, face, face)
    assert zero.trace == [] and np.array_equal(
        np.asarray(rec), np.asarray(Image.fromarray(
            ((want[0] + 1) / 2).clamp(0, 1).mul(255).add(0.5).floor().byte().permute(1, 2, 0).numpy())
            .resize(face.size, Image.Resampling.LANCZOS)))
    assert isinstance(Target("shape", "text", torch.zeros(1, 2)).embedding, torch.Tensor)


# ---------------------------------------------------------------- the harness

def test_refused_without_weights_naming_files(tmp_path):
    proc = run_harness("run", "--methods", "clip-opt", "--protocol", "smoke", "--limit", "1", "--out",
                       str(tmp_path / "run"), check=False, env={"HARNESS_WEIGHTS": str(tmp_path / "empty")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    for name in ("ffhq.pt", "e4e_ffhq_encode.pt", "backbone.pth", "79999_iter.pth", "ViT-B-32.pt"):
        assert name in text, name
    assert not (tmp_path / "run" / "records.jsonl").exists()


PROTOCOL = """
name = "clipopt-tiny"
[dataset]
kind = "synthetic"
n_images = 3
size = 64
seed = 1
[triplets]
n = 1
seed = 1
tasks = ["full", "rec"]
[evaluation]
size = 64
metrics = ["all"]
[runner]
warmup = 1
seed = 0
"""


def test_cli_end_to_end_with_filled_weights(tmp_path):
    (tmp_path / "tiny.toml").write_text(PROTOCOL)
    out = tmp_path / "run"
    sets = [f"clip-opt.{k}={v}" for k, v in
            dict(size=32, channel_multiplier=1, parser_resolution=64, quick="true", steps=2).items()]
    run_harness("run", "--methods", "clip-opt", "--protocol", str(tmp_path / "tiny.toml"), "--fill-weights",
                "--no-metrics", "--color-text", "purple hair", "--out", str(out),
                *[a for s in sets for a in ("--set", s)])
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    assert [r["task"] for r in records] == ["full", "rec"] and all(r["status"] == "ok" for r in records), records
    for r, color in zip(records, ("text", "image"), strict=True):  # full: the colour prompt; rec: the face
        extras = r["extras"]
        assert extras["steps"] == 2 and extras["targets"] == {"shape": "image", "color": color}, extras
        assert {"first_total", "last_total", "last_clip", "last_l2", "last_identity"} <= set(extras)
        assert set(r["stages"]) == {"inversion", "targets", "optimisation", "rendering"}
        with Image.open(out / r["output"]) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
    # no warm-up call (warmup_calls = 0): the first unit inverts the face, the second reuses it
    assert records[0]["extras"]["inversions_computed"] == 1 and "inversions_computed" not in records[1]["extras"]
    params = json.loads((out / "manifest.json").read_text())["methods"]["clip-opt"]["params"]
    assert params["quick"] is True and params["l2_lambda"] == 0.001 and params["id_lambda"] == 0.008
