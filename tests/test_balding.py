"""HairMapper's hair removal (:mod:`methods.balding`) and the NVlabs stylegan2-ada generator layout it renders with
(:func:`methods.nets.stylegan2.from_nvlabs_state_dict`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.weights import WeightStore, filled_state_dict, load_state_dict_into
from methods import balding
from methods.nets import bisenet, hairmapper, stylegan2

SQRT2 = math.sqrt(2.0)


def filled(module: torch.nn.Module, namespace: str, recipe) -> torch.nn.Module:
    load_state_dict_into(module, filled_state_dict(module, namespace, recipe), "filled weights")
    return module.eval().requires_grad_(False)


# ---------------------------------------------------------------- an NVlabs reference written from its definition

FILTER = torch.tensor([1.0, 3.0, 3.0, 1.0])
FILTER = FILTER[:, None] * FILTER[None, :] / 64  # upfirdn2d.setup_filter([1,3,3,1])


def nv_fc(x, weight, bias, lr=1.0, act=False):
    """FullyConnectedLayer: runtime weight ``weight * lr / sqrt(in)``, bias ``bias * lr``."""
    y = x @ (weight * (lr / math.sqrt(weight.shape[1]))).t() + bias * lr
    return F.leaky_relu(y, 0.2) * SQRT2 if act else y


def fir(x, pad, gain):
    """upfirdn2d (up=down=1) with the [1,3,3,1] filter: pad then filter per channel."""
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    c = x.shape[1]
    return F.conv2d(x, (FILTER * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1), groups=c)


def nv_modconv(x, weight, styles, demodulate, up):
    """modulated_conv2d per sample: up=2 is conv_transpose2d(stride 2) then the filter padded [1,1] with gain 4."""
    out = []
    for i in range(x.shape[0]):
        w = weight * styles[i][None, :, None, None]
        if demodulate:
            w = w * (w.square().sum([1, 2, 3]) + 1e-8).rsqrt()[:, None, None, None]
        if up == 1:
            out.append(F.conv2d(x[i:i + 1], w, padding=weight.shape[-1] // 2))
        else:
            out.append(fir(F.conv_transpose2d(x[i:i + 1], w.transpose(0, 1), stride=2), (1, 1), 4))
    return torch.cat(out)


def nv_layer(p, name, x, w, up=1):
    x = nv_modconv(x, p[f"{name}.weight"], nv_fc(w, p[f"{name}.affine.weight"], p[f"{name}.affine.bias"]), True, up)
    x = x + p[f"{name}.noise_const"] * p[f"{name}.noise_strength"]  # noise_mode='const'
    return F.leaky_relu(x + p[f"{name}.bias"][None, :, None, None], 0.2) * SQRT2


def nv_torgb(p, name, x, w):
    weight = p[f"{name}.weight"]
    styles = nv_fc(w, p[f"{name}.affine.weight"], p[f"{name}.affine.bias"]) / math.sqrt(weight.shape[1])
    return nv_modconv(x, weight, styles, False, 1) + p[f"{name}.bias"][None, :, None, None]


def nv_synthesis(p, ws, size):
    """SynthesisNetwork ('skip'): block b4 reads ws[0:2], block b{r} ws[i:i+3] with i advancing by 2."""
    x = p["synthesis.b4.const"][None].repeat(ws.shape[0], 1, 1, 1)
    x = nv_layer(p, "synthesis.b4.conv1", x, ws[:, 0])
    img = nv_torgb(p, "synthesis.b4.torgb", x, ws[:, 1])
    index = 1
    for res in [2 ** k for k in range(3, int(math.log2(size)) + 1)]:
        b = f"synthesis.b{res}"
        x = nv_layer(p, f"{b}.conv0", x, ws[:, index], up=2)
        x = nv_layer(p, f"{b}.conv1", x, ws[:, index + 1])
        up = torch.zeros(img.shape[0], 3, img.shape[2] * 2, img.shape[3] * 2)
        up[:, :, ::2, ::2] = img
        img = fir(up, (2, 1), 4) + nv_torgb(p, f"{b}.torgb", x, ws[:, index + 2])
        index += 2
    return img


def nv_mapping(p, z):
    x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
    for i in range(8):
        x = nv_fc(x, p[f"mapping.fc{i}.weight"], p[f"mapping.fc{i}.bias"], lr=0.01, act=True)
    return x


def official_file(tmp_path, size=16):
    """A generator in the official NVlabs layout, written to ``StyleGAN2-ada-Generator.pth`` in ``tmp_path``."""
    g = filled(stylegan2.Generator(size, channel_multiplier=1), "nv", stylegan2.fill_recipe)
    state = stylegan2.to_nvlabs_state_dict(g, torch.randn(512, generator=torch.Generator().manual_seed(3)))
    torch.save(state, tmp_path / hairmapper.GENERATOR_CHECKPOINT.filename)
    return state


def test_nvlabs_layout_keys_and_shapes(tmp_path):
    state = official_file(tmp_path)
    blocks = {4: ("conv1",), 8: ("conv0", "conv1"), 16: ("conv0", "conv1")}
    want = {f"mapping.fc{i}.{n}" for i in range(8) for n in ("weight", "bias")} | {"mapping.w_avg",
                                                                                  "synthesis.b4.const"}
    for res, layers in blocks.items():
        want |= {f"synthesis.b{res}.resample_filter"}
        want |= {f"synthesis.b{res}.torgb.{n}" for n in ("weight", "bias", "affine.weight", "affine.bias")}
        want |= {f"synthesis.b{res}.{layer}.{n}" for layer in layers for n in (
            "weight", "bias", "affine.weight", "affine.bias", "noise_const", "noise_strength", "resample_filter")}
    assert set(state) == want
    assert state["synthesis.b4.const"].shape == (512, 4, 4)
    assert state["synthesis.b8.conv0.weight"].shape == (512, 512, 3, 3)
    assert state["synthesis.b16.torgb.weight"].shape == (3, 512, 1, 1)
    assert state["synthesis.b16.torgb.bias"].shape == (3,)
    assert state["synthesis.b16.conv1.noise_const"].shape == (16, 16)
    assert state["synthesis.b8.conv1.noise_strength"].shape == ()
    assert torch.allclose(state["synthesis.b8.resample_filter"], FILTER)


def test_nvlabs_file_loads_and_renders_as_the_nvlabs_definition(tmp_path):
    state = official_file(tmp_path)
    gen, latent_avg = stylegan2.load_generator(WeightStore(weights_dir=tmp_path), "cpu", size=16,
                                               checkpoint=hairmapper.GENERATOR_CHECKPOINT)
    assert torch.equal(latent_avg, state["mapping.w_avg"])  # w_avg is the latent average
    ws = torch.randn(2, gen.n_latent, 512, generator=torch.Generator().manual_seed(0)) * 0.5
    ours = gen.synthesis(ws, noise="buffers").rgb
    theirs = nv_synthesis(state, ws, 16)
    assert ours.shape == theirs.shape == (2, 3, 16, 16)
    assert (ours - theirs).norm() / theirs.norm() < 1e-5
    z = torch.randn(3, 512, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(gen.mapping(z), nv_mapping(state, z), rtol=1e-4, atol=1e-5)


def test_nvlabs_refusals(tmp_path):
    state = official_file(tmp_path)
    reference = stylegan2.Generator(16, channel_multiplier=1).state_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['synthesis.b8.skip.weight'\]"):
        stylegan2.from_nvlabs_state_dict({**state, "synthesis.b8.skip.weight": torch.zeros(512, 512, 1, 1)},
                                         reference, 16)
    with pytest.raises(ValueError, match="missing"):
        stylegan2.from_nvlabs_state_dict({k: v for k, v in state.items() if "b16.torgb" not in k}, reference, 16)
    with pytest.raises(ValueError, match="resample filters"):
        stylegan2.from_nvlabs_state_dict({**state, "synthesis.b8.resample_filter": torch.ones(4, 4) / 16},
                                         reference, 16)
    torch.save({"something": 1}, tmp_path / hairmapper.GENERATOR_CHECKPOINT.filename)
    with pytest.raises(ValueError, match="neither rosinality"):
        stylegan2.load_generator(WeightStore(weights_dir=tmp_path), "cpu", size=16,
                                 checkpoint=hairmapper.GENERATOR_CHECKPOINT)


# ---------------------------------------------------------------- the pre-processing steps

def test_face_mask_softens_and_centres():
    hair = np.zeros((256, 256, 3), np.uint8)
    hair[20:80, 60:200] = 255  # a hair band at the top
    keep, center = balding.face_mask(hair)
    assert keep.dtype == np.uint8 and keep.shape == hair.shape
    assert (keep[20:80, 60:200] == 0).all()  # hair is never kept
    assert (keep[200:, :] == 255).all() and (keep[:, :20] == 255).all()  # far from the hair: the original
    band = keep[82:90, 100, 0]  # within dilate(50/4) + blur(30/4) of the hair: partly kept
    assert ((band > 0) & (band < 255)).any()
    rows, cols = np.nonzero(keep[..., 0] > 0)
    assert center == ((cols.min() + cols.max()) // 2, (rows.min() + rows.max()) // 2) == (127, 127)
    assert balding.face_mask(np.full_like(hair, 255))[1] is None  # all hair: nothing to blend back


def test_poisson_blend_of_an_image_with_itself_is_the_image():
    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    keep = np.zeros_like(image)
    keep[8:56, 8:56] = 255
    out = balding.poisson_blend(image, image, keep, (32, 32))
    assert out.shape == image.shape and np.abs(out.astype(int) - image).max() <= 2
    other = np.zeros_like(image)
    assert np.array_equal(balding.poisson_blend(image, other, keep, None), other)


@pytest.fixture(scope="module")
def tiny_balding() -> balding.BaldingNets:
    """The real classes (BiSeNet-19 at its one size, the mapper, a 64 px StyleGAN2), e4e replaced by a linear
    encoder with the same ``encode`` interface (the IR-SE-50 would cost most of the test)."""
    torch.manual_seed(0)
    rows = stylegan2.Generator(64, channel_multiplier=1).n_latent

    class TinyE4E(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 16 * 16, rows * 512)

        def encode(self, x):
            return self.fc(F.adaptive_avg_pool2d(x, 16).flatten(1)).view(-1, rows, 512)

    return balding.BaldingNets(
        e4e=TinyE4E().eval().requires_grad_(False),
        mapper=filled(hairmapper.LevelMapper(), "m", hairmapper.fill_recipe),
        alpha=hairmapper.inference_alpha(hairmapper.DEFAULT_ALPHA),
        generator=filled(stylegan2.Generator(64, channel_multiplier=1), "g", stylegan2.fill_recipe),
        parser=filled(bisenet.BiSeNet(19), "p", bisenet.fill_recipe))


def portrait(size=64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    return (np.stack([np.sin(6 * x), np.cos(5 * y), np.sin(3 * (x + y))], -1) * 100 + 128).astype(np.uint8)


def test_bald_latent_edits_rows_0_to_7_only(tiny_balding):
    rgb = portrait()
    small = np.array(Image.fromarray(rgb).resize((256, 256), Image.Resampling.BILINEAR))
    w = tiny_balding.e4e.encode(torch.from_numpy(small).permute(2, 0, 1)[None].float().div(255).sub(0.5).div(0.5))
    edited = balding.bald_latent(tiny_balding, rgb)
    assert tiny_balding.alpha == pytest.approx(0.48)
    # rows 8+ pass through (the script's self-mixing of rows 7-17 rounds: 0.2 x + 0.8 x)
    assert torch.allclose(edited[:, 8:], w[:, 8:], rtol=0, atol=1e-6)
    assert torch.allclose(edited[:, :8], w[:, :8] + 0.48 * tiny_balding.mapper(w), atol=1e-4)
    assert (edited[:, :8] - w[:, :8]).abs().max() > 0.01


def test_removal_mask_sees_bgr_like_the_official_code(tiny_balding):
    rgb = portrait()
    quirk = balding.removal_mask(tiny_balding.parser, rgb, parser_bgr=True)
    assert quirk.shape == (64, 64, 3) and quirk.dtype == np.uint8
    assert np.array_equal(quirk, balding.removal_mask(tiny_balding.parser, rgb[..., ::-1].copy(), parser_bgr=False))
    assert (quirk[..., 0] == quirk[..., 2]).all()


def test_remove_hair_keeps_the_face_and_renders_the_hair(tiny_balding):
    rgb = portrait()
    image = Image.fromarray(rgb)
    out = balding.remove_hair(tiny_balding, image)
    assert out.size == (64, 64) and out.mode == "RGB"
    result = np.asarray(out).astype(int)
    render = balding.render(tiny_balding, balding.bald_latent(tiny_balding, rgb)).astype(int)
    keep, center = balding.face_mask(balding.removal_mask(tiny_balding.parser, rgb))
    kept = keep[..., 0] > 0
    if center is None or kept.all():
        pytest.skip("the filled parser found no hair or only hair in this image")
    # OpenCV solves the Poisson equation over the mask's bounding box (guidance: the original's gradients where
    # kept, the render's elsewhere); outside that box the result is the render
    rows, cols = np.nonzero(kept)
    outside = np.ones(kept.shape, bool)
    outside[max(rows.min() - 2, 0):rows.max() + 3, max(cols.min() - 2, 0):cols.max() + 3] = False
    assert outside.any() and np.abs(result[outside] - render[outside]).max() <= 1

    def grad(a):
        return np.diff(a.astype(int), axis=1)

    inner_kept = kept[:, 1:] & kept[:, :-1]
    inner_removed = ~kept[:, 1:] & ~kept[:, :-1]
    assert np.abs(grad(result) - grad(rgb))[inner_kept].mean() < np.abs(grad(render) - grad(rgb))[inner_kept].mean()
    assert (np.abs(grad(result) - grad(render))[inner_removed].mean()
            < np.abs(grad(result) - grad(rgb))[inner_removed].mean())
