"""CLIP ViT-B/32: parity, fill recipe, the official TorchScript archive reader, the FID_CLIP extractor."""

from __future__ import annotations

import copy
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from harness.parity import Fixture, check, compare
from harness.weights import UnsafeCheckpoint, WeightStore, filled_state_dict
from methods.nets import clip
from methods.nets.clip import (
    CLIP,
    CLIP_MEAN,
    CLIP_STD,
    ClipConfig,
    ClipFeatureExtractor,
    fill_recipe,
    fp16_parameter_names,
    load_clip,
    read_clip_state_dict,
    read_torchscript_state_dict,
    round_weights_through_fp16,
)

SCALARS = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}


@pytest.fixture(scope="module")
def fixture(parity_dir) -> Fixture:
    return Fixture.load(parity_dir / "clip_vitb32")


@pytest.fixture(scope="module")
def filled(fixture) -> dict[str, torch.Tensor]:
    return fixture.torch_state_dict()


@pytest.fixture(scope="module")
def extractor() -> ClipFeatureExtractor:
    """The registered FID_CLIP extractor, filled through the --fill-weights path (namespace = checkpoint key =
    the fixture's namespace, so the weights are the fixture's)."""
    return clip.FEATURE_EXTRACTORS["clip_vitb32"]("cpu", WeightStore(fill=True))


@pytest.fixture(scope="module")
def filled_model(extractor) -> CLIP:
    return extractor.model


def encode_case(model: CLIP, fixture: Fixture, text: bool = True) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = {"out/image_features": model.encode_image(torch.from_numpy(fixture.data["in/image"]))}
        if text:
            out["out/text_features"] = model.encode_text(torch.from_numpy(fixture.data["in/text"]))
    return {k: v.float().numpy() for k, v in out.items()}


def errors(model: CLIP, fixture: Fixture) -> dict[str, float]:
    return {k: compare(v, fixture.data[k], 1e-4) for k, v in encode_case(model, fixture).items()}


def test_parity(fixture):
    results = list(check(fixture, clip.parity_adapter))
    assert [r.case for r in results] == ["encode_image", "encode_text"]
    for r in results:
        assert r.ok, r.line()


def test_module_keys_and_recipe_match_spec(fixture):
    entries = fixture.spec["state_dict"]
    model = CLIP(ClipConfig.from_mapping(fixture.constructor))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {e["key"]: tuple(e["shape"]) for e in entries}
    assert sorted(k[0] for k in fixture.spec["full_config_keys"]) == sorted(model.state_dict())
    for e in entries:
        assert fill_recipe(e["key"], tuple(e["shape"])) == e["fill"], e["key"]


def test_fill_weights_path_reproduces_fixture(filled_model, fixture):
    for key, err in errors(filled_model, fixture).items():
        assert err < 1e-4, (key, err)


# ---------------------------------------------------------------- official checkpoint layouts

class StateHolder(nn.Module):
    """A scriptable module that only holds tensors (stands in for the official traced CLIP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def script_archive(state: dict[str, torch.Tensor], buffers: set[str], path: Path,
                   plain_attributes: dict[str, torch.Tensor] | None = None) -> None:
    root = StateHolder()
    for key, value in state.items():
        *parents, name = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, StateHolder())
            module = getattr(module, part)
        if key in buffers:
            module.register_buffer(name, value)
        else:
            module.register_parameter(name, nn.Parameter(value, requires_grad=False))
    for name, value in (plain_attributes or {}).items():
        setattr(root, name, value)  # a tensor attribute that is neither parameter nor buffer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(root), str(path))


def official_fp16_state(filled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released archive's layout: convert_weights' entries in float16, the 3 scalar entries added."""
    half = set(fp16_parameter_names(CLIP()))
    state = {k: (v.half() if k in half else v.float()) for k, v in filled.items()}
    state.update({k: torch.tensor(v) for k, v in SCALARS.items()})
    return state


def test_torchscript_archive_loads_without_running_it(filled, fixture, tmp_path):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    path = weights_dir / "ViT-B-32.pt"
    state = official_fp16_state(filled)
    script_archive(state, set(SCALARS), path, plain_attributes={"attn_mask": torch.ones(3, 3)})

    read = read_torchscript_state_dict(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.jit.load(str(path)).state_dict()  # our own archive: fine to run here
    assert set(read) == set(reference) == set(state)  # the plain attribute is not part of the state dict
    for key, value in reference.items():
        assert read[key].dtype == value.dtype and torch.equal(read[key], value), key
    assert read["visual.proj"].dtype == torch.float16 and read["ln_final.weight"].dtype == torch.float32
    assert int(read["input_resolution"]) == 224
    assert set(read_clip_state_dict(path)) == set(filled)

    model = load_clip(WeightStore(weights_dir=weights_dir), "cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the archive holds float16 weights: exactly the official CPU path (fp16 weights, fp32 compute) ...
    rounded = CLIP()
    rounded.load_state_dict(filled)
    round_weights_through_fp16(rounded.eval())
    ours, official_cpu = encode_case(model, fixture), encode_case(rounded, fixture)
    for key in ours:
        np.testing.assert_array_equal(ours[key], official_cpu[key])
    # ... which moves the features by ~1e-3 from the float32 fixture (spec.json notes: 0.0012 for fp16)
    for key, err in errors(model, fixture).items():
        assert 1e-5 < err < 3e-3, (key, err)


def test_plain_state_dict_file_reproduces_fixture(filled, fixture, tmp_path):
    state = {**filled, **{k: torch.tensor(v) for k, v in SCALARS.items()}}
    torch.save(state, tmp_path / "ViT-B-32.pt")
    model = load_clip(WeightStore(weights_dir=tmp_path), "cpu")
    for key, err in errors(model, fixture).items():
        assert err < 1e-4, (key, err)


def test_archive_with_other_globals_is_refused(tmp_path):
    marker = tmp_path / "ran"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "ViT-B-32.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ViT-B-32/data.pkl", payload)
        zf.writestr("ViT-B-32/constants.pkl", pickle.dumps(()))
        zf.writestr("ViT-B-32/code/__torch__.py", "")
        zf.writestr("ViT-B-32/version", "3\n")
    with pytest.raises(UnsafeCheckpoint, match="os.system"):
        read_torchscript_state_dict(path)
    with pytest.raises(UnsafeCheckpoint):
        load_clip(WeightStore(weights_dir=tmp_path), "cpu")
    assert not marker.exists()


def test_fp16_precision_matches_official_half_pass(filled_model, fixture):
    model = clip.apply_precision(copy.deepcopy(filled_model), "fp16")
    half = set(fp16_parameter_names(model))
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float16 if name in half else torch.float32), name
    assert "visual.proj" in half and "text_projection" in half and "visual.ln_post.weight" not in half
    outputs = encode_case(model, fixture, text=False)
    assert all(np.isfinite(v).all() for v in outputs.values())
    # spec.json notes: the official half-precision model moves encode_image by rel L2 0.0012
    err = compare(outputs["out/image_features"], fixture.data["out/image_features"], 1e-4)
    assert 5e-4 < err < 3e-3


# ---------------------------------------------------------------- FID_CLIP feature extractor

def normalised(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def test_extractor_contract(extractor, filled_model):
    assert isinstance(extractor, ClipFeatureExtractor)
    torch.manual_seed(0)
    at_224 = torch.rand(2, 3, 224, 224) * 255
    at_299 = torch.rand(2, 3, 299, 299) * 255
    with torch.no_grad():
        feats = extractor(at_224)
        assert feats.shape == (2, 512) and feats.dtype == torch.float32
        # 224 input: only clean-fid's CLIP_fx steps (/255, CLIP normalisation, encode_image)
        torch.testing.assert_close(feats, filled_model.encode_image(normalised(at_224)), rtol=1e-5, atol=1e-5)
        # clean-fid's 299 input: antialiased bicubic to 224 first
        resized = torch.nn.functional.interpolate(at_299, size=(224, 224), mode="bicubic", antialias=True)
        expected = filled_model.encode_image(normalised(resized.clamp(0, 255)))
        torch.testing.assert_close(extractor(at_299), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(extractor(at_299[0]), expected[:1], rtol=1e-5, atol=1e-5)


def test_text_scorer_contract(extractor, filled_model):
    """The "clip_text" network of the text-reference metrics: images through the FID_CLIP extractor's steps
    (resize to 224, /255, CLIP normalisation), prompts through tokenize + encode_text; both float32 [N, 512]."""
    scorer = clip.FEATURE_EXTRACTORS["clip_text"]("cpu", WeightStore(fill=True))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (299, 299, 3), dtype=np.uint8) for _ in range(2)]
    got = scorer.image_embeddings(images)
    with torch.no_grad():
        batch = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() for im in images])
        torch.testing.assert_close(got, extractor(batch), rtol=1e-5, atol=1e-5)
        texts = scorer.text_embeddings(["purple hair", "afro hairstyle"])
        torch.testing.assert_close(texts, filled_model.encode_text(clip.tokenize(["purple hair", "afro hairstyle"])))
    assert got.shape == texts.shape == (2, 512) and not torch.equal(texts[0], texts[1])


def test_clean_fid_clip_resize_matches_clean_fid_clip_mode():
    from torchvision import transforms

    rng = np.random.default_rng(0)
    image = (rng.random((40, 57, 3)) * 255).astype(np.uint8)
    # clean-fid's img_preprocess_clip (cleanfid/clip_features.py; that module needs OpenAI's `clip` package)
    steps = transforms.Compose([transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
                                transforms.CenterCrop(224)])
    expected = np.asarray(steps(Image.fromarray(image).convert("RGB"))).clip(0, 255).astype(np.uint8)
    ours = clip.clean_fid_clip_resize(image)
    assert ours.dtype == np.uint8 and ours.shape == (224, 224, 3)
    np.testing.assert_array_equal(ours, expected)


def write_images(folder: Path, images: list[np.ndarray]) -> str:
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    return str(folder)


def test_clean_fid_compute_fid_with_our_extractor(extractor, tmp_path):
    from cleanfid import fid

    rng = np.random.default_rng(1)
    noise = write_images(tmp_path / "noise", [(rng.random((48, 40, 3)) * 255).astype(np.uint8) for _ in range(6)])
    flat = write_images(tmp_path / "flat", [np.full((48, 40, 3), 35 * i, np.uint8) for i in range(6)])
    kwargs = dict(mode="clean", device=torch.device("cpu"), use_dataparallel=False, num_workers=0, verbose=False)

    score = fid.compute_fid(noise, flat, custom_feat_extractor=extractor, **kwargs)
    assert np.isfinite(score) and score > 1.0

    # a small CLIP (4-d embeddings, full-rank covariance from 6 images) for the exact checks
    small = CLIP(ClipConfig(embed_dim=4, image_resolution=64, vision_layers=1, vision_width=64, vision_patch_size=32,
                            context_length=8, vocab_size=16, transformer_width=64, transformer_heads=1,
                            transformer_layers=1))
    small.load_state_dict(filled_state_dict(small, "test_clip_small", fill_recipe))
    small_extractor = ClipFeatureExtractor(small.eval())
    same = fid.compute_fid(noise, noise, custom_feat_extractor=small_extractor, **kwargs)
    different = fid.compute_fid(noise, flat, custom_feat_extractor=small_extractor, **kwargs)
    assert abs(same) < 1e-6 and different > 1e-2
    clip_mode = fid.compute_fid(noise, flat, custom_feat_extractor=small_extractor,
                                custom_fn_resize=small_extractor.fn_resize, **kwargs)
    assert np.isfinite(clip_mode) and clip_mode != pytest.approx(different)


def test_registered_with_the_harness():
    from harness import plugins

    assert plugins.parity_adapters().get("clip_vitb32") is clip.parity_adapter
    assert any(c.key == "clip_vitb32" and c.filename == "ViT-B-32.pt" for c in plugins.extra_checkpoints())
    assert plugins.feature_extractors().get("clip_vitb32") is clip.feature_extractor
    assert plugins.feature_extractors().get("clip_text") is clip.text_scorer
