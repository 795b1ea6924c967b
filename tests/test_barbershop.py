"""The barbershop method: losses against the parity fixtures, stages, batching, caching, refusal, CLI end to end.

Networks are filled by the parity rule (``WeightStore(fill=True)``) at the smallest generator that has an F
(size 64, channel multiplier 1), so every test runs the real code path on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest
import scipy.ndimage
import torch
from conftest import load_fixture, run_harness
from PIL import Image

from harness import synthetic
from harness.parity import check
from harness.weights import WeightStore, filled_state_dict, sha256_file
from methods.barbershop import losses, pipeline
from methods.barbershop.method import Barbershop, tensor_to_pil
from methods.barbershop.params import QUICK_STEPS, BarbershopParams
from methods.cache import NpzStore
from methods.nets import bisenet, lpips, stylegan2
from methods.ops import dilate_erode, resized_pixels, signed_tensor

SMALL = {"size": 64, "channel_multiplier": 1}




@pytest.fixture(scope="module")
def method(tmp_path_factory) -> Barbershop:
    """A set-up method on filled weights (its PCA fit lands in the session's isolated cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "harness-cache"))
        m = Barbershop(BarbershopParams(**SMALL, quick=True, pca_samples=4000))
        m.setup("cpu", WeightStore(fill=True))
    return m


@pytest.fixture(scope="module")
def portraits(tmp_path_factory) -> list[Image.Image]:
    items = synthetic.generate(3, 128, 0, tmp_path_factory.mktemp("portraits"))
    return [Image.open(it["image"]).convert("RGB") for it in items]


def image_batch(images: list[Image.Image], size: int) -> torch.Tensor:
    return torch.cat([signed_tensor(resized_pixels(im, size, Image.Resampling.LANCZOS)) for im in images])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------- parameters

def test_defaults_are_the_report_parameters():
    p = BarbershopParams()
    report = dict(sign="realistic", smooth=5, size=1024, channel_multiplier=2, latent=512, n_mlp=8, opt_name="adam",
                  learning_rate=0.01, lr_schedule="fixed", percept_lambda=1.0, l2_lambda=1.0, p_norm_lambda=0.001,
                  l_F_lambda=0.1, W_steps=1100, FS_steps=250, ce_lambda=1.0, style_lambda=4e4, align_steps1=140,
                  align_steps2=100, face_lambda=1.0, hair_lambda=1.0, blend_steps=400)
    assert {k: getattr(p, k) for k in report} == report
    assert (p.mask_steps, p.use_l_F, p.use_face_hair_lambdas, p.align_more_region) == (80, False, False, False)
    assert p.blend_weights == (1.0, 1.0)
    assert dataclasses.replace(p, use_face_hair_lambdas=True, hair_lambda=2.0).blend_weights == (1.0, 2.0)
    assert (p.parser_size, p.low_size, p.steps("W_steps")) == (512, 256, 1100)
    quick = dataclasses.replace(p, quick=True)
    assert quick.steps("W_steps") == quick.steps("blend_steps") == QUICK_STEPS == 2
    with pytest.raises(ValueError, match="power of two"):
        BarbershopParams(size=32)


# ---------------------------------------------------------------- losses against the fixtures

def test_parity_of_barbershop_ops():
    fx = load_fixture("barbershop_ops")
    results = list(check(fx, losses.PARITY["barbershop_ops"]))
    assert len(results) == 7 and all(r.ok for r in results), [r.line() for r in results]


def test_perceptual_losses_match_lpips_fixture():
    """The stages' LPIPS (targets' features computed once, per-sample masked form) against lpips_vgg."""
    fx = load_fixture("lpips_vgg")
    net = pipeline.LPIPS()
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in fx.state_dict().items()})
    net.eval().requires_grad_(False)
    in0, in1, mask = (torch.from_numpy(fx.data[k]) for k in ("in/in0", "in/in1", "in/mask"))
    full = pipeline.PerceptualTarget(net, in0)
    blocks = pipeline.PerceptualTarget(net, in0, pipeline.MASKED_LPIPS_BLOCKS)
    with torch.no_grad():
        got = {"distance": full.distance(in1), "masked": blocks.masked(in1, mask), "nomask": blocks.masked(in1, None)}
    for name, key in (("distance", "out/distance/d"), ("masked", "out/masked_blocks123/d"),
                      ("nomask", "out/masked_blocks123_nomask/d")):
        ref = fx.data[key].reshape(-1)
        assert np.allclose(got[name].numpy(), ref, rtol=1e-4), name
    # per-sample normalisation: a batch of two gives each item its batch-1 value
    pair_mask = torch.cat([mask, 1 - mask])
    with torch.no_grad():
        pair = pipeline.PerceptualTarget(net, torch.cat([in0, in0]), 3).masked(torch.cat([in1, in1]), pair_mask)
        second = pipeline.PerceptualTarget(net, in0, 3).masked(in1, 1 - mask)
    assert np.allclose(pair.numpy(), [got["masked"].item(), second.item()], rtol=1e-5)


def test_p_norm_matches_fixture_per_sample():
    fx = load_fixture("barbershop_ops")
    pca = losses.LatentPCA(*(torch.from_numpy(fx.data[f"in/pca_X_{k}"]) for k in ("mean", "comp", "stdev")),
                           torch.ones(()))
    latent = torch.from_numpy(fx.data["in/pnorm_latent"])
    assert np.isclose(losses.p_norm_loss(latent, pca).item(), fx.data["out/p_norm/loss"], rtol=1e-5)
    two = losses.p_norm_loss(torch.cat([latent, latent.flip(1)]), pca, 1.0)
    assert np.isclose(two[0].item(), fx.data["out/p_norm/loss_lambda1"], rtol=1e-5)
    assert np.isclose(two[1].item(), losses.p_norm_loss(latent.flip(1), pca, 1.0).item(), rtol=1e-6)


def test_style_loss_matches_fixture_and_masked_form():
    fx = load_fixture("barbershop_ops")
    vgg = losses.VGG16Features()
    vgg.load_state_dict(fx.torch_state_dict())
    vgg.eval().requires_grad_(False)
    x, x_hat, m1, m2 = (torch.from_numpy(fx.data[f"in/style_{k}"]) for k in ("x", "xhat", "mask1", "mask2"))
    style = losses.StyleLoss(vgg, size=256, per_sample=True)  # as the method builds it at size 1024
    with torch.no_grad():
        assert np.isclose(style(x, x_hat, m1, m2).item(), fx.data["out/style_full/loss"], rtol=1e-4)
        masked = pipeline.MaskedStyle(style, x, m1)(x_hat, m2)
        direct = style(x * m1, x_hat * m2, m1, m2)
    assert np.isclose(masked.item(), direct.item(), rtol=1e-5)


def test_cross_entropies_match_torch():
    """Per-sample cross-entropies equal CrossEntropyLoss (with the 'realistic' class weights) at batch 1."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, pipeline.N_CLASSES, 8, 8, generator=gen)
    target = torch.randint(0, pipeline.N_CLASSES, (2, 8, 8), generator=gen)
    for weights in (None, pipeline.background_weights(torch.device("cpu"), False),
                    pipeline.background_weights(torch.device("cpu"), True)):
        ours = pipeline.cross_entropy(logits, target, weights)
        for i in range(2):
            ref = torch.nn.CrossEntropyLoss(weight=weights)(logits[i:i + 1], target[i:i + 1])
            assert np.isclose(ours[i].item(), ref.item(), rtol=1e-6)
    empty = torch.ones_like(target)  # no background pixel: the official loss is NaN, ours 0
    assert pipeline.cross_entropy(logits, empty, pipeline.background_weights(torch.device("cpu"), True)).eq(0).all()


def test_mask_morphology_matches_scipy():
    """Barbershop dilates/erodes with scipy.ndimage (plus-shaped, border 0); the stages use methods.ops."""
    rng = np.random.default_rng(1)
    mask = scipy.ndimage.binary_opening(rng.uniform(size=(40, 40)) > 0.4)
    mask[:, :3] = True  # touches the border
    dilated, eroded = dilate_erode(torch.from_numpy(mask)[None, None].float(), 3)
    assert np.array_equal(dilated[0, 0].numpy() > 0, scipy.ndimage.binary_dilation(mask, iterations=3))
    assert np.array_equal(eroded[0, 0].numpy() > 0, scipy.ndimage.binary_erosion(mask, iterations=3))


def test_initial_target_segmentation():
    face = torch.zeros(1, 16, 16, dtype=torch.long)
    face[:, 4:14, 4:12] = 1  # skin
    face[:, 2:5, 4:12] = pipeline.HAIR
    other = torch.zeros_like(face)
    other[:, 0:6, 2:14] = pipeline.HAIR
    other[:, 12:16, 12:16] = 14  # neck where face is background: occluded
    other[:, 14:16, 0:4] = pipeline.CLOTH  # cloth is never occluding
    init = pipeline.initial_target(face, other)
    assert (init.target[other == pipeline.HAIR] == pipeline.HAIR).all()
    assert (init.target[:, 6:14, 4:12] == 1).all()  # face kept where the other image has no hair
    assert init.occluded[:, 12:16, 12:16].all() and not init.occluded[:, 14:16, 0:4].any()
    assert set(init.target[init.occluded].tolist()) <= {pipeline.BACKGROUND, pipeline.HAIR}
    assert init.keep[:, 0, 2].item() == 1 and init.keep[:, 15, 15].item() == 0


# ---------------------------------------------------------------- stages

def test_w_plus_stage_lowers_its_loss(method, portraits):
    params = dataclasses.replace(method.params, quick=False, W_steps=4)
    hi = image_batch(portraits[:1], 64)
    _, trace = pipeline.embed_w_plus(method.nets, method.noise, params, hi, hi, ["a"])
    assert trace.losses.shape == (4, 1)
    assert (trace.losses[-1] < trace.losses[0]).all(), trace.losses


def test_blending_lowers_its_loss_and_clamps(method, portraits):
    params = dataclasses.replace(method.params, quick=False, blend_steps=4)
    nets, gen = method.nets, torch.Generator().manual_seed(3)
    base = nets.latent_avg.reshape(1, 1, -1).repeat(1, nets.generator.n_latent, 1)
    face, color = (base + 0.3 * torch.randn(base.shape, generator=gen) for _ in range(2))
    with torch.no_grad():
        feat = pipeline.render_f(nets, face, method.noise(None))
    lo = image_batch(portraits[:2], 64)
    hair = torch.zeros(1, 1, 64, 64)
    hair[..., :20, 10:54] = 1
    result = pipeline.blend(nets, method.noise, params, face, color, feat, feat, lo[:1], lo[1:], hair, hair, ["t"])
    assert result.trace.losses[-1, 0] < result.trace.losses[0, 0]
    assert result.interpolation.min() >= 0 and result.interpolation.max() <= 1
    assert result.image.shape == (1, 3, 64, 64) and torch.isfinite(result.image).all()


def test_batched_equals_one_by_one(method, portraits):
    """Two images optimised together follow their one-by-one trajectories (up to float noise, which Adam's
    normalisation lifts on elements with near-zero gradients: FS features differ by 5.5e-4 relative with two
    CPU threads, under 1e-4 with one; a coupling of the images would show as > 1e-2): W+ with per-image 'official'
    noise streams, FS with the fixed seeded noise."""
    hi = image_batch(portraits[:2], 64)
    official = dataclasses.replace(method.params, noise="official")
    streams = pipeline.Noise("official", method.nets.generator, official.seed)
    together, _ = pipeline.embed_w_plus(method.nets, streams, official, hi, hi, ["a", "b"])
    alone = [pipeline.embed_w_plus(method.nets, streams, official, hi[i:i + 1], hi[i:i + 1], [k])[0]
             for i, k in enumerate("ab")]
    assert rel_err(together, torch.cat(alone)) < 1e-5
    assert not torch.equal(together[0], together[1])
    emb, _ = pipeline.embed_fs(method.nets, method.noise, method.params, together, hi, hi, ["a", "b"])
    one, _ = pipeline.embed_fs(method.nets, method.noise, method.params, together[1:], hi[1:], hi[1:], ["b"])
    assert rel_err(emb.feat[1:], one.feat) < 2e-3 and rel_err(emb.latent[1:], one.latent) < 1e-5
    assert rel_err(emb.feat[:1], emb.feat[1:]) > 1e-2


def test_transfer_caches_embeddings_and_writes_intermediates(method, portraits, tmp_path):
    """Second call with the same images skips stages 1-3; intermediates hold each stage's latents and masks."""
    original, original_cache = method.params, method.cache
    method.cache = NpzStore(tmp_path / "cache")
    one_step = {k: 1 for k in ("W_steps", "FS_steps", "mask_steps", "align_steps1", "align_steps2", "blend_steps")}
    method.params = dataclasses.replace(original, quick=False, save_intermediates=True,
                                        intermediates_dir=str(tmp_path / "inter"), **one_step)
    try:
        face, shape, color = portraits
        first = method.transfer(face, shape, color)
        stats = method.last_stats
        assert stats["images_embedded"] == 3 and stats["pairs_aligned"] == 2
        assert stats["steps_w_plus"] == 3 and stats["steps_mask"] == 4 and stats["steps_blend"] == 1
        assert len(list((tmp_path / "cache" / "embeddings" / "fs").rglob("*.npz"))) == 3
        again = method.transfer(face, shape, color)
        assert method.last_stats.get("images_embedded", 0) == 0 and method.last_stats["fs_cache_hits"] == 3
        assert method.last_stats["alignment_cache_hits"] == 2 and "pairs_aligned" not in method.last_stats
        assert np.array_equal(np.asarray(first), np.asarray(again)) and first.size == face.size
        # another task variant of the same images: only the new pair (face, face) is aligned
        method.transfer(face, face, color)
        assert method.last_stats["pairs_aligned"] == 1 and method.last_stats["fs_cache_hits"] == 2
    finally:
        method.params, method.cache = original, original_cache
    folders = sorted(p.name for p in (tmp_path / "inter").iterdir())
    assert len(folders) == 2
    folder = next(p for p in (tmp_path / "inter").iterdir() if len(set(p.name.split("_"))) == 3)
    files = sorted(p.name for p in folder.iterdir())
    assert len([f for f in files if f.startswith("embedding_")]) == 3
    assert len([f for f in files if f.startswith("alignment_")]) == 2 and "blending.npz" in files
    with np.load(next(folder.glob("embedding_*.npz"))) as npz:
        assert npz["w_plus"].shape == (10, 512) and npz["F"].shape == (512, 32, 32)
    with np.load(next(folder.glob("alignment_*.npz"))) as npz:
        assert npz["target"].shape == (64, 64) and npz["F"].shape == (512, 32, 32)
    with np.load(folder / "blending.npz") as npz:
        assert npz["interpolation"].shape == (10, 512) and npz["mask_face"].shape == (1, 64, 64)
    counts = json.loads((folder / "counts.json").read_text())
    assert counts["params_steps"]["W_steps"] == 1


def test_output_conversion_truncates_like_to_pil():
    x = torch.tensor([-1.0, 0.0, 0.999, 2.0]).view(1, 1, 4).expand(3, 1, 4)
    assert np.asarray(tensor_to_pil(x))[0, :, 0].tolist() == [0, 127, 254, 255]


# ---------------------------------------------------------------- harness integration

def test_refused_without_weights(tmp_path):
    proc = run_harness("run", "--methods", "barbershop", "--protocol", "smoke", "--out", str(tmp_path / "run"),
                       check=False, env={"HARNESS_WEIGHTS": str(tmp_path / "empty")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    for name in ("ffhq.pt", "seg.pth", "vgg16-397923af.pth", "vgg.pth"):
        assert name in text
    assert "ffhq_PCA.npz" not in text  # optional: fitted when absent
    assert not (tmp_path / "run" / "records.jsonl").exists()


def test_cli_end_to_end_quick(tmp_path):
    out = tmp_path / "run"
    run_harness("run", "--methods", "barbershop", "--protocol", "smoke", "--fill-weights", "--set",
                "barbershop.quick=true", "--set", "barbershop.size=64", "--set", "barbershop.channel_multiplier=1",
                "--set", "barbershop.save_intermediates=true", "--out", str(out), "--limit", "1")
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all(r["status"] == "ok" for r in records), records
    # no warm-up call, so the first unit embeds its images; later tasks reuse the cached embeddings
    assert records[0]["extras"]["images_embedded"] >= 1 and records[0]["extras"]["steps_w_plus"] >= 2
    assert sum(r["extras"].get("fs_cache_hits", 0) for r in records[1:]) >= 1
    for r in records:
        folder = out / "intermediates" / "barbershop" / r["task"] / r["triplet"]
        assert (folder / "blending.npz").is_file() and (folder / "counts.json").is_file(), folder
    assert set(records[0]["stages"]) == {"embedding", "fs", "alignment", "blending"}
    for r in records:
        assert Image.open(out / r["output"]).size == (128, 128)
    params = json.loads((out / "manifest.json").read_text())["methods"]["barbershop"]["params"]
    assert params["quick"] is True and params["W_steps"] == 1100


def write_official_barbershop_files(folder: pathlib.Path, params: BarbershopParams) -> None:
    """Barbershop's four checkpoints, filled exactly as ``--fill-weights`` fills them (same recipe, namespace =
    checkpoint key), saved in the official layouts under the official names."""
    folder.mkdir(parents=True)
    gen = stylegan2.Generator(params.size, params.latent, params.n_mlp, params.channel_multiplier)
    gen.load_state_dict(filled_state_dict(gen, stylegan2.CHECKPOINT.key, stylegan2.fill_recipe))
    gen = gen.eval().requires_grad_(False)
    # fill mode has no file to read latent_avg from and takes the mean mapping output of seeded z: store that
    latent_avg = gen.mean_latent(stylegan2.LATENT_AVG_SAMPLES,
                                 torch.Generator().manual_seed(stylegan2.LATENT_AVG_SEED))
    torch.save({"g_ema": gen.state_dict(), "latent_avg": latent_avg}, folder / stylegan2.CHECKPOINT.filename)
    parser = bisenet.BiSeNet(bisenet.VARIANTS["bisenet16"].n_classes)
    torch.save(filled_state_dict(parser, bisenet.BISENET16.key, bisenet.fill_recipe),
               folder / bisenet.BISENET16.filename)
    # vgg16-397923af.pth feeds two networks: the LPIPS trunk (fill keys slice{s}.N.*) and the style loss's
    # VGG16Features (fill keys features.N.*); fill mode seeds them differently, one file cannot. The file holds the
    # LPIPS trunk's fill under torchvision's features.N.* keys.
    trunk = filled_state_dict(lpips.LPIPS().net, lpips.VGG16_IMAGENET.key, lpips.fill_recipe)
    torchvision = {f"features.{key.split('.', 1)[1]}": value for key, value in trunk.items()}
    for i in (0, 3, 6):  # classifier.* (unused, ~500 MB at full size): present, with small shapes
        torchvision[f"classifier.{i}.weight"] = torch.zeros(4, 4)
        torchvision[f"classifier.{i}.bias"] = torch.zeros(4)
    torch.save(torchvision, folder / lpips.VGG16_IMAGENET.filename)
    torch.save(filled_state_dict(lpips.LPIPS().heads(), lpips.LPIPS_VGG_HEADS.key, lpips.fill_recipe),
               folder / lpips.LPIPS_VGG_HEADS.filename)


def test_official_layout_files_load_like_the_fill(tmp_path, monkeypatch, portraits):
    """``--weights-dir`` with official-layout files (the fill written to disk) gives the networks of
    ``--fill-weights`` and the same result, through the real search, safe loading and strict key checks."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    params = BarbershopParams(**SMALL, quick=True, pca_samples=4000, cache=False)
    write_official_barbershop_files(tmp_path / "weights", params)
    # vgg.pth has an official size (and sha256) that a rule-filled stand-in cannot have: drop them for this test
    heads = dataclasses.replace(lpips.LPIPS_VGG_HEADS, size=None, sha256=None)
    monkeypatch.setattr(lpips, "LPIPS_VGG_HEADS", heads)
    monkeypatch.setattr("methods.barbershop.method.LPIPS_VGG_HEADS", heads)
    from_files, filled = Barbershop(params), Barbershop(params)
    from_files.setup("cpu", WeightStore(weights_dir=tmp_path / "weights"))
    filled.setup("cpu", WeightStore(fill=True))

    a, b = from_files.nets, filled.nets
    for name in ("generator", "parser", "lpips"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert torch.equal(a.latent_avg, b.latent_avg)
    for name, checkpoint in (("generator", stylegan2.CHECKPOINT), ("parser", bisenet.BISENET16)):
        assert from_files.identity[name] == sha256_file(tmp_path / "weights" / checkpoint.filename)
        assert filled.identity[name].startswith("filled:")
    # The style loss's VGG is the one network whose fill differs from the file (see above); with the file's
    # weights in both, one transfer gives the same image bit for bit.
    b.style.load_state_dict(a.style.state_dict())
    face, shape, color = portraits
    assert np.array_equal(np.asarray(from_files.transfer(face, shape, color)),
                          np.asarray(filled.transfer(face, shape, color)))
