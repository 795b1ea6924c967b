"""The ``hairflash`` method: parameters, variants and their checkpoints, blending architectures, noise, cache, the
pipeline end to end (small networks: fast; every real network filled at 1024: slow) and the CLI."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_harness
from PIL import Image

from harness.annotations import Annotations, attach
from harness.method import Checkpoint
from harness.weights import WeightStore, filled_state_dict, load_state_dict_into
from methods import balding
from methods.hairflash import checkpoints as ckpts
from methods.hairflash import encoders, pipeline, sean, shape_adaptor
from methods.hairflash.blending import (
    OFFICIAL_ARCH,
    BlendingArch,
    BlendingEncoder,
    blending_checkpoint_dict,
    load_blending_encoder,
)
from methods.hairflash.cache import StageCache, cache_key, image_key
from methods.hairflash.encoders import ClipBlendingModel, PostProcessConfig, PostProcessModel, RotateModel
from methods.hairflash.method import NETWORK_CHECKPOINTS, HairFlash
from methods.hairflash.params import HairFlashParams
from methods.hairflash.sean import SeanConfig, SEANGenerator
from methods.hairflash.shape_adaptor import ShapeAdaptor, ShapeAdaptorConfig
from methods.hairflash.variants import VARIANTS
from methods.nets import bisenet, hairmapper, iresnet, stylegan2
from methods.nets.clip import ClipConfig
from methods.nets.iresnet import EncoderConfig, FSEncoder

TINY_CLIP = ClipConfig(embed_dim=32, vision_layers=1, vision_width=64, context_length=8, vocab_size=16,
                       transformer_width=32, transformer_heads=2, transformer_layers=1)
TINY_STAGES = ((8, 1), (16, 1), (32, 1), (64, 1))
TASKS = {"full": (0, 1, 2), "color": (0, 0, 2), "shape": (0, 1, 0), "both": (0, 1, 1), "rec": (0, 0, 0)}


# ---------------------------------------------------------------- helpers

def portraits(size: int = 64) -> list[Image.Image]:
    """Three distinct deterministic RGB images with harness ids."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        y, x = np.mgrid[0:size, 0:size] / size
        base = np.stack([np.sin(6 * x + i), np.cos(5 * y - i), np.sin(3 * (x + y) + 2 * i)], -1) * 0.4 + 0.5
        pixels = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
        image = Image.fromarray((pixels * 255).astype(np.uint8), "RGB")
        out.append(attach(image, Annotations(image_id=f"img{i}")))
    return out


def fill(module: torch.nn.Module, namespace: str, recipe) -> torch.nn.Module:
    load_state_dict_into(module, filled_state_dict(module, namespace, recipe), "filled weights")
    return module.eval().requires_grad_(False)


class TinyW(torch.nn.Module):
    """Stands in for e4e (whose only architecture, IR-SE-50, costs most of a small-network triplet): a 256 image
    in [-1, 1] -> W+ [B, rows, 512] through ``encode`` like :class:`methods.nets.e4e.Encoder4Editing`."""

    def __init__(self, rows: int):
        super().__init__()
        self.rows = rows
        self.conv = torch.nn.Conv2d(3, 8, 8, stride=8)
        self.fc = torch.nn.Linear(8 * 16, rows * 512)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 4).flatten(1)
        return self.fc(features).view(-1, self.rows, 512)


def tiny_nets(arch: BlendingArch = OFFICIAL_ARCH) -> pipeline.HairFastNets:
    """Every pipeline network for StyleGAN size 256 (14 rows), filled by the parity rule: the real classes with
    small configurations (BiSeNet and the rotate encoder have one size), e4e replaced by :class:`TinyW`."""
    n = 14
    fse = fill(FSEncoder(EncoderConfig(n_styles=n, stages=TINY_STAGES), halvings=0), "t_fse", iresnet.fill_recipe)
    fse.set_latent_avg(torch.zeros(n, 512))
    enc = fill(TinyW(n), "t_w", iresnet.fill_recipe)
    sean_net = fill(SEANGenerator(SeanConfig(ngf=4, style_dim=32)), "t_sean", sean.fill_recipe)
    sean.derive_spectral_vectors(sean_net, "t_sean")
    sean_net.median_style_codes = torch.full((19, 32), 0.1)
    pp = fill(PostProcessModel(PostProcessConfig(
        encoder=EncoderConfig(n_styles=n, stages=TINY_STAGES, content_stage=2, content_stride=1, content_channels=32,
                              content_in_list=True, resize_to=256),
        to_feature=((256, 1),), middle=64)), "t_pp", encoders.fill_recipe)
    pp.set_latent_avg(torch.zeros(n, 512))
    return pipeline.HairFastNets(
        generator=fill(stylegan2.Generator(256, 512, 2, 1), "t_gen", stylegan2.fill_recipe),
        fse=fse, e4e=enc, parser=fill(bisenet.BiSeNet(19), "t_parser", bisenet.fill_recipe),
        rotate=fill(RotateModel(), "t_rotate", encoders.fill_recipe),
        shape_adaptor=fill(ShapeAdaptor(ShapeAdaptorConfig(base_channels=4, max_channels=32, face_dim=32,
                                                           hair_dim=8)), "t_sa", shape_adaptor.fill_recipe),
        sean=sean_net,
        blending=fill(BlendingEncoder(arch, arch.config(n - 6, TINY_CLIP)), "t_blend", encoders.fill_recipe),
        postprocess=pp,
    )


TINY_IDENTITY = {**{name: f"tiny:{name}" for name in NETWORK_CHECKPOINTS}, "sean_median_codes": "tiny",
                 "postprocess": "tiny:postprocess", "clip": "tiny:clip"}


@pytest.fixture(scope="module")
def nets() -> dict[str, pipeline.HairFastNets]:
    torch.manual_seed(0)
    official = tiny_nets()
    clip_embeds = tiny_nets(VARIANTS["final"].arch)
    return {"official": official, "clip_embeds": clip_embeds}


def tiny_method(nets, variant: str = "baseline", **params) -> HairFlash:
    method = HairFlash(HairFlashParams(size=256, **params), variant)
    key = "official" if VARIANTS[variant].arch == OFFICIAL_ARCH else "clip_embeds"
    method.use_networks(nets[key], {**TINY_IDENTITY, "blending": variant})
    return method


# ---------------------------------------------------------------- parameters and variants

def test_defaults_are_the_reports_fixed_parameters():
    p = HairFlashParams()
    assert (p.mixing, p.smooth, p.size, p.channel_multiplier, p.latent, p.n_mlp, p.batch_size) == \
        (0.95, 5, 1024, 2, 512, 8, 3)
    assert (p.noise, p.seed, p.cache, p.save_intermediates) == ("seeded", 3407, True, False)
    assert p.n_latent == 18 and HairFlashParams(size=256).n_latent == 14
    for bad in ({"size": 300}, {"latent": 256}, {"mixing": 1.5}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            HairFlashParams(**bad)


def test_variants_declare_their_own_checkpoints():
    assert HairFlash.default_variant == "final"
    assert set(HairFlash.variants) == {"baseline", "no-color-align", "clip-embeds", "with-s", "admix-clip", "admix-s",
                                       "final", "balding"}
    files = {}
    for name in HairFlash.variants:
        method = HairFlash(variant=name)
        declared = {c.key: c for c in method.checkpoints()}
        assert len(declared) == len(method.checkpoints())
        blending = method.spec.blending
        assert blending.key in declared
        files[name] = blending.filename
        for key in (ckpts.GENERATOR.key, ckpts.FSE.key, ckpts.SEAN.key, ckpts.POSTPROCESS.key, ckpts.CLIP.key):
            assert key in declared
    assert files["baseline"] == files["balding"] == "checkpoint.pth"
    assert HairFlash(variant="baseline").spec.blending.official_path == "Blending/checkpoint.pth"
    assert files["final"] == "blending_final.pth" and files["no-color-align"] == "blending_no_color_align.pth"
    assert len({files[v] for v in files if v not in ("baseline", "balding")}) == 6  # one file per trained variant
    final = VARIANTS["final"]
    assert "harness train hairflash-blending --variant final" in final.blending.source
    assert (final.color_alignment, final.arch, final.shape_loss) == (False, BlendingArch(stream_embed=True),
                                                                       "sobel_cossim")
    assert not VARIANTS["no-color-align"].color_alignment and VARIANTS["no-color-align"].arch == OFFICIAL_ARCH
    assert VARIANTS["admix-s"].arch.cond_latent and VARIANTS["with-s"].arch.stream_latent
    assert ckpts.HAIRMAPPER.key in {c.key for c in HairFlash(variant="balding").checkpoints()}


def test_official_folder_layout_is_found(tmp_path):
    """--weights-dir may be HairFast's unpacked pretrained_models/: the method's checkpoints carry the official
    paths, and the networks' own loaders find them through OfficialLayout."""
    official_tree = ("StyleGAN/ffhq.pt", "encoder4editing/e4e_ffhq_encode.pt", "BiSeNet/face_parsing_79999_iter.pth",
                     "FeatureStyleEncoder/143_enc.pth", "FeatureStyleEncoder/psp_ffhq_encode.pt",
                     "Rotate/rotate_best.pth", "Blending/checkpoint.pth", "PostProcess/pp_model.pth",
                     "PostProcess/latent_avg.pt", "ShapeAdaptor/mask_generator.pth",
                     "sean_checkpoints/CelebA-HQ_pretrained/latest_net_G.pth")
    for rel in official_tree:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    store = WeightStore(weights_dir=tmp_path, env={"HARNESS_CACHE": str(tmp_path / "cache")})
    missing = {c.filename for c in store.missing(HairFlash(variant="baseline").checkpoints())}
    assert missing == {"ViT-B-32.pt", "sean_median_style_codes.npy"}  # not in pretrained_models/
    assert "blending_final.pth" in {c.filename for c in store.missing(HairFlash(variant="final").checkpoints())}
    layout = ckpts.OfficialLayout(store)
    assert store.find(iresnet.FSE_CHECKPOINT) is None  # the module's own declaration has no official path
    assert layout.find(iresnet.FSE_CHECKPOINT) == tmp_path / "FeatureStyleEncoder/143_enc.pth"
    assert layout.find(bisenet.BISENET19) == tmp_path / "BiSeNet/face_parsing_79999_iter.pth"


def tiny_balding_method(nets, **params) -> HairFlash:
    """``hairflash:balding`` on the tiny networks; HairMapper's generator is the tiny 256 one (filled)."""
    official = nets["official"]
    bald = balding.BaldingNets(official.e4e, fill(hairmapper.LevelMapper(), "t_mapper", hairmapper.fill_recipe),
                               hairmapper.inference_alpha(hairmapper.DEFAULT_ALPHA), official.generator,
                               official.parser)
    method = HairFlash(HairFlashParams(size=256, **params), "balding")
    method.use_networks(official, {**TINY_IDENTITY, "blending": "baseline", "balding": "tiny"}, bald)
    return method


def test_balding_runs_hairflash_on_the_bald_face(nets, tmp_path):
    """The WithBalding variant (report 8.3): HairMapper's bald version of the face image replaces it, computed once
    per face image (cached by content) and timed as its own stage."""
    face, shape, color = portraits(64)
    method = tiny_balding_method(nets, cache=True)
    method.cache = StageCache(tmp_path / "cache", 8)
    out = method.transfer(face, shape, color)
    assert out.size == face.size and np.asarray(out).std() > 0
    assert method.last_stats["faces_balded"] == 1 and method.last_stats["images_embedded"] == 3
    bald = method._bald(face, Counter())
    expected = balding.remove_hair(method.balding_nets, face.resize((256, 256), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(bald), np.asarray(expected))
    assert not np.array_equal(np.asarray(bald), np.asarray(face.resize((256, 256), Image.Resampling.LANCZOS)))
    # the pipeline embedded the bald face, not the original: its embedding is cached under the bald pixels
    keys = {method._embedding_key(image_key(np.asarray(im))) for im in (bald, shape.resize((256, 256),
                                                                                           Image.Resampling.LANCZOS))}
    assert all(method.cache.get("embedding", k) is not None for k in keys)
    again = method.transfer(face, face, color)  # the color task: the same face, balded once
    assert again.size == face.size
    assert "faces_balded" not in method.last_stats and method.last_stats["bald:memory"] == 1
    with pytest.raises(ValueError, match="balding_nets"):
        HairFlash(HairFlashParams(size=256), "balding").use_networks(nets["official"], TINY_IDENTITY)


def test_balding_declares_hairmappers_files():
    declared = {c.filename: c for c in HairFlash(variant="balding").checkpoints()}
    assert {"best_model.pt", "StyleGAN2-ada-Generator.pth", "e4e_ffhq_encode.pt"} <= set(declared)
    assert "forms.gle" in declared["best_model.pt"].source
    assert declared["StyleGAN2-ada-Generator.pth"].official_path == "ckpts/StyleGAN2-ada-Generator.pth"
    assert "best_model.pt" not in {c.filename for c in HairFlash(variant="baseline").checkpoints()}


# ---------------------------------------------------------------- blending architectures

def _blend_inputs(rows: int = 12, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    latents = [torch.randn(batch, rows, 512, generator=g) for _ in range(3)]
    images = [torch.rand(batch, 3, 64, 64, generator=g) * 2 - 1 for _ in range(3)]
    return latents, images


def test_official_architecture_is_the_official_model():
    torch.manual_seed(0)
    ours = fill(BlendingEncoder(OFFICIAL_ARCH, OFFICIAL_ARCH.config(12, TINY_CLIP)), "b", encoders.fill_recipe)
    official = ClipBlendingModel(OFFICIAL_ARCH.config(12, TINY_CLIP)).eval()
    assert set(official.state_dict()) == set(ours.state_dict())
    official.load_state_dict(ours.state_dict())
    (s_face, s_color, _), (face, color, _) = _blend_inputs()
    with torch.no_grad():
        assert torch.equal(ours(s_face, s_color, face, color), official(s_face, s_color, face, color))


@pytest.mark.parametrize("arch, cond, stream", [
    (BlendingArch(stream_embed=True), 512 + 2 * 32, 512 + 32),
    (BlendingArch(stream_latent=True), 512 + 2 * 32, 1024),
    (BlendingArch(cond_embed=True), 512 + 3 * 32, 512),
    (BlendingArch(cond_latent=True), 1024 + 2 * 32, 512),
])
def test_variant_architectures(arch, cond, stream):
    model = fill(BlendingEncoder(arch, arch.config(12, TINY_CLIP)), "v", encoders.fill_recipe)
    first = model.modulation_module_list[0]
    assert first.fc.in_features == stream and first.gamma_function[0].in_features == cond
    (s_face, s_color, s_shape), (face, color, shape) = _blend_inputs()
    with torch.no_grad():
        out = model(s_face, s_color, face, color, s_shape, shape)
        assert out.shape == (2, 12, 512) and torch.isfinite(out).all()
        # the shape image's information changes the result
        other = model(s_face, s_color, face, color, s_shape.flip(0), shape.flip(0))
        assert not torch.allclose(out, other)
        with pytest.raises(ValueError):
            model(s_face, s_color, face, color)


def test_blending_checkpoint_round_trip(tmp_path):
    """What training saves loads as that variant (official file layout, CLIP keys in the file here)."""
    arch = BlendingArch(stream_embed=True)
    model = fill(BlendingEncoder(arch, arch.config(12, TINY_CLIP)), "r", encoders.fill_recipe)
    saved = blending_checkpoint_dict(model, epoch=3)
    assert not any(k.startswith("clip_model.") for k in saved["model_state_dict"])
    assert saved["arch"] == {"stream_latent": False, "stream_embed": True, "cond_latent": False, "cond_embed": False}
    full = dict(saved, model_state_dict={**saved["model_state_dict"],
                                         **{k: v for k, v in model.state_dict().items() if k.startswith("clip_")}})
    ckpt = Checkpoint(key="test_blending", filename="blending_test.pth", source="test", purpose="test")
    torch.save(full, tmp_path / ckpt.filename)
    loaded = load_blending_encoder(WeightStore(weights_dir=tmp_path), ckpt, arch, 12, clip_precision="fp32",
                                   clip=TINY_CLIP)
    (s_face, s_color, _), (face, color, shape) = _blend_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(s_face, s_color, face, color, hair_shape=shape),
                                   model(s_face, s_color, face, color, hair_shape=shape))


# ---------------------------------------------------------------- noise and cache

def test_seeded_noise_is_per_item_and_batch_independent():
    gen = stylegan2.Generator(64, 512, 2, 1)
    noise = pipeline.Noise("seeded", 3407)
    assert pipeline.gan_noise(gen, pipeline.Noise("buffers").items("x", [["a"], ["b"]])) == "buffers"
    batch = pipeline.gan_noise(gen, noise.items("embedding", [["a"], ["b"]]), 0, 3)
    alone = pipeline.gan_noise(gen, noise.items("embedding", [["b"]]), 0, 3)
    again = pipeline.gan_noise(gen, noise.items("embedding", [["b"]]), 0, 3)
    other_seed = pipeline.gan_noise(gen, pipeline.Noise("seeded", 1).items("embedding", [["b"]]), 0, 3)
    assert pipeline.noise_layers(0, 3) == [0, 1, 2, 3, 4, 5, 6] and pipeline.noise_layers(4, 4) == [7, 8]
    for i in pipeline.noise_layers(0, 3):
        assert batch[i].shape == (2, 1, *gen.noises.__getattr__(f"noise_{i}").shape[2:])
        assert torch.equal(batch[i][1:], alone[i]) and torch.equal(alone[i], again[i])
        assert not torch.equal(alone[i], other_seed[i])
    assert batch[7] is None  # layers the call does not run


def test_stage_cache_memory_lru_and_disk(tmp_path):
    cache = StageCache(tmp_path, capacity=2)
    for i in range(3):
        cache.put("kind", f"k{i}", {"x": torch.full((2,), float(i))})
    assert list(cache.memory["kind"]) == ["k1", "k2"]  # k0 evicted from memory
    assert cache.get("kind", "k0")["x"].tolist() == [0.0, 0.0]  # ... but on disk
    assert cache.get("kind", "k2")["x"].tolist() == [2.0, 2.0]
    assert cache.get("kind", "nope") is None
    assert cache.stats == {"kind:disk": 1, "kind:memory": 1, "kind:miss": 1}
    assert StageCache(tmp_path, enabled=False).get("kind", "k1") is None
    assert StageCache(None).get("kind", "k1") is None  # memory only
    assert cache_key("a", 1) == cache_key("a", 1) != cache_key("a", 2)


def test_folding_batchnorms_keeps_the_numbers(nets):
    """``load_nets`` folds the BatchNorms that follow a convolution (FS, e4e and post-processing encoders): the
    folded networks give the unfolded numbers up to float rounding, with non-trivial BatchNorm statistics."""
    torch.manual_seed(3)
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    for name in ("fse", "postprocess"):
        net = copy.deepcopy(getattr(nets["official"], name))
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
        folded = pipeline.channels_last(pipeline.fold_batchnorms(copy.deepcopy(net)))

        def count(module):
            return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())

        assert count(folded) < count(net), name
        run = (lambda n: n.embed(x)) if name == "fse" else (lambda n: n.combine(n.encode(x[:1]), n.encode(x[1:])))
        with torch.no_grad():
            for a, b in zip(run(net), run(folded), strict=True):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


# ---------------------------------------------------------------- the pipeline on small networks

def test_tiny_triplet_end_to_end(nets, tmp_path):
    face, shape, color = portraits(48)
    method = tiny_method(nets, "baseline", cache=False, save_intermediates=True, intermediates_dir=str(tmp_path))
    out = method.transfer(face, shape, color)
    assert out.size == face.size and out.mode == "RGB"
    assert np.isfinite(np.asarray(out, dtype=float)).all() and np.asarray(out).std() > 0
    assert method.last_stats == {"images_embedded": 3, "hair_shapes": 2, "inpaintings": 1, "clip_images": 2,
                                 "triplets": 1}
    folder = tmp_path / "baseline" / "img0_img1_img2"
    shapes = {name: {k: v.shape for k, v in np.load(folder / name).items()} for name in
              ("embedding_img0.npz", "alignment.npz", "color_shape.npz", "blending.npz", "final.npz")}
    assert shapes["embedding_img0.npz"] == {"W": (14, 512), "S": (14, 512), "F_fs": (512, 32, 32),
                                            "F_w": (512, 32, 32), "labels": (1, 256, 256), "F": (512, 32, 32)}
    align = shapes["alignment.npz"]
    assert align["target"] == align["HM_X"] == align["rotated_labels"] == (1, 256, 256)
    assert align["F_align"] == (512, 32, 32) and align["F_inpaint"] == (2, 512, 32, 32)
    assert align["sean_images"] == (2, 3, 256, 256) and align["masks"] == align["free_mask"] == (3, 256, 256)
    assert align["interpolation_low"] == (3, 32, 32)
    assert shapes["blending.npz"]["target_mask"] == (1, 256, 256) and shapes["blending.npz"]["S_blend"] == (14, 512)
    assert shapes["blending.npz"]["I_blend"] == (3, 256, 256)
    assert shapes["final.npz"] == {"S_final": (14, 512), "F_final": (256, 64, 64), "image": (3, 256, 256)}
    blending = np.load(folder / "blending.npz")
    target = blending["target_mask"]
    assert set(np.unique(target)) <= {0.0, 1.0}
    assert np.array_equal(target, (1 - blending["HM_1D"]) * (1 - blending["HM_3D"]) * (1 - blending["HM_XD"]))


def test_work_per_task_and_the_cache(nets, tmp_path):
    """Official short-cuts, task by task: alignment runs even when shape is the face image; the colour hair-shape
    step is skipped only when colour is the shape image; F mixing only with > 1 distinct image. The cache then
    computes each image / pair once across the five tasks; a cached result may come from a batch of another size
    than the fresh one (an image embedded with the full triplet, reused alone), which moves float rounding only:
    at most one 8-bit level, in a few pixels."""
    images = portraits(40)
    fresh = tiny_method(nets, "baseline", seed=11, cache=False, save_intermediates=True,
                        intermediates_dir=str(tmp_path))
    cached = tiny_method(nets, "baseline", seed=11)
    expected_shapes = {"full": 2, "color": 2, "shape": 2, "both": 1, "rec": 1}
    for task, roles in TASKS.items():
        a = fresh.transfer(*(images[r] for r in roles))
        stats = fresh.last_stats
        assert stats["images_embedded"] == len(set(roles)), task
        assert stats["hair_shapes"] == expected_shapes[task], task
        assert stats["inpaintings"] == 1, task
        emb = np.load(tmp_path / "baseline" / "_".join(f"img{r}" for r in roles) / "embedding_img0.npz")
        assert np.array_equal(emb["F"], emb["F_fs"]) == (task == "rec"), task  # F mixing
        b = cached.transfer(*(images[r] for r in roles))
        diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (task, diff.max(), (diff > 0).sum())
    # (face, shape), (face, colour), (face, face) hair shapes and (face, shape), (face, face) inpaintings: once each
    assert (cached.stats["images_embedded"], cached.stats["hair_shapes"], cached.stats["inpaintings"]) == (3, 3, 2)
    assert (fresh.stats["images_embedded"], fresh.stats["hair_shapes"], fresh.stats["inpaintings"]) == (10, 8, 5)
    # a new method instance (another run, --resume) finds the results on disk
    again = tiny_method(nets, "baseline", seed=11)
    again.transfer(*images)
    assert again.last_stats.get("images_embedded", 0) == 0 and again.last_stats["embedding:disk"] == 3
    assert again.last_stats["shape:disk"] == 2 and again.last_stats["inpaint:disk"] == 1
    # the face's post-processing codes: computed once over the five tasks (one face), then from memory or disk
    assert cached.stats["postprocess_face:miss"] == 1 and cached.stats["postprocess_face:memory"] == 4
    assert again.last_stats["postprocess_face:disk"] == 1
    # CLIP embeddings of the masked images: face-outside-hair per (face, colour) pair -- (0, 2) twice, (0, 0)
    # twice, (0, 1) -- and colour hair per colour image (2 twice, 0 twice, 1): 6 of the 10 computed
    assert fresh.stats["clip_images"] == 10 and cached.stats["clip_images"] == 6
    assert (cached.stats["clip:miss"], cached.stats["clip:memory"]) == (6, 4)
    assert again.last_stats["clip:disk"] == 2 and "clip_images" not in again.last_stats


def test_noise_modes_batches_and_determinism(nets):
    face, shape, color = portraits(32)
    first = tiny_method(nets, "baseline", cache=False).transfer(face, shape, color)
    other_seed = tiny_method(nets, "baseline", cache=False, seed=1).transfer(face, shape, color)
    assert not np.array_equal(np.asarray(first), np.asarray(other_seed))
    batched = tiny_method(nets, "baseline", cache=False, batch_size=2).transfer_batch(
        [(face, shape, color), (face, shape, color)])
    for image in batched:  # batching moves float rounding only
        assert np.abs(np.asarray(image, dtype=int) - np.asarray(first, dtype=int)).max() <= 1
    assert pipeline.Noise("buffers", 1).identity == pipeline.Noise("buffers", 2).identity == "buffers"
    assert pipeline.sean_noise(pipeline.Noise("buffers").item("inpaint", "a", "b")) == "zero"


def test_shape_aware_variant_without_colour_alignment(nets):
    face, shape, color = portraits(32)
    method = tiny_method(nets, "final", cache=False)
    out = method.transfer(face, shape, color)
    assert out.size == face.size and np.asarray(out).std() > 0
    assert method.last_stats["hair_shapes"] == 1  # no colour hair-shape step
    # what training the blending encoder takes: the same stages up to blending, batched
    batch = method.blending_inputs([(face, shape, color), (color, face, shape)])
    assert batch.S_face.shape == batch.S_shape.shape == (2, 14, 512) and batch.F_align.shape == (2, 512, 32, 32)
    assert batch.hair_shape.shape == batch.target_face.shape == (2, 3, 256, 256)
    m = batch.masks
    assert not m.hair_target_dilated.any()  # no colour alignment: target = not-hair(face) x not-hair(colour)
    assert torch.equal(m.target_mask, (1 - m.hair_face_dilated) * (1 - m.hair_color_dilated))


# ---------------------------------------------------------------- CLI

def test_cli_refuses_without_weights(tmp_path):
    proc = run_harness("run", "--methods", "hairflash", "--protocol", "smoke", "--limit", "1", "--out",
                       str(tmp_path / "run"), check=False, env={"HARNESS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    text = proc.stdout + proc.stderr
    for name in ("ffhq.pt", "143_enc.pth", "e4e_ffhq_encode.pt", "rotate_best.pth", "latest_net_G.pth",
                 "pp_model.pth", "ViT-B-32.pt", "blending_final.pth"):
        assert name in text, name
    assert "huggingface.co/AIRI-Institute/HairFastGAN" in text
    assert "harness train hairflash-blending --variant final" in text


# ---------------------------------------------------------------- real networks (slow)

@pytest.mark.slow
def test_filled_networks_full_size_end_to_end(tmp_path):
    """Every real network filled by the parity rule, StyleGAN at 1024: a triplet gives a finite image and the
    documented tensor shapes."""
    method = HairFlash(HairFlashParams(noise="buffers", cache=False, save_intermediates=True,
                                       intermediates_dir=str(tmp_path)), "baseline")
    method.setup(torch.device("cpu"), WeightStore(fill=True))
    face, shape, color = portraits(128)
    out = method.transfer(face, shape, color)
    assert out.size == (128, 128) and np.asarray(out).std() > 0
    folder = tmp_path / "baseline" / "img0_img1_img2"
    emb = np.load(folder / "embedding_img1.npz")
    assert emb["W"].shape == emb["S"].shape == (18, 512) and emb["F"].shape == (512, 32, 32)
    assert emb["labels"].shape == (1, 256, 256)
    align = np.load(folder / "alignment.npz")
    assert align["target"].shape == (1, 256, 256) and align["F_align"].shape == (512, 32, 32)
    assert np.isfinite(align["F_align"]).all()
    final = np.load(folder / "final.npz")
    assert final["S_final"].shape == (18, 512) and final["F_final"].shape == (512, 64, 64)
    assert final["image"].shape == (3, 1024, 1024) and np.isfinite(final["image"]).all()
    assert np.load(folder / "blending.npz")["I_blend"].shape == (3, 1024, 1024)


@pytest.mark.slow
def test_cli_smoke_with_filled_weights(tmp_path):
    out = tmp_path / "run"
    # balding = the baseline pipeline on HairMapper's bald face (so the baseline's path runs too)
    run_harness("run", "--methods", "hairflash:balding,hairflash:final", "--protocol", "smoke", "--fill-weights",
                "--limit", "1", "--set", "hairflash.save_intermediates=true", "--out", str(out),
                env={"HARNESS_CACHE": str(tmp_path / "cache")}, timeout=1800)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    assert len(records) == 10 and all(r["status"] == "ok" for r in records), records
    assert {r["method"] for r in records} == {"hairflash:balding", "hairflash:final"}
    stages = {"embedding", "alignment", "blending", "post_processing"}
    assert all(set(r["stages"]) == stages | ({"balding"} if r["method"] == "hairflash:balding" else set())
               for r in records)
    balded = [r["extras"].get("faces_balded", 0) for r in records if r["method"] == "hairflash:balding"]
    assert sum(balded) == 1  # one face image, balded once over the five tasks (then cached)
    assert all(Path(out / r["output"]).is_file() for r in records)
    # work counts reach the records; the untimed warm-up call filled no cache, so the first timed call embeds
    assert all(r["extras"]["triplets"] == 1 for r in records)
    assert records[0]["extras"].get("embedding:miss", 0) >= 1, records[0]["extras"]
    for r in records:  # intermediates under RUN/intermediates/<method dir>/<task>/<triplet>/
        folder = out / "intermediates" / Path(r["output"]).parent.parent.name / r["task"] / r["triplet"]
        assert {"alignment.npz", "blending.npz", "final.npz"} <= {f.name for f in folder.iterdir()}, folder
