"""Shared image/mask ops, HairFast's mask formulas and Barbershop's losses: parity with the official code
(fixtures ``hairfast_ops`` / ``barbershop_ops``) and the properties the method plugins rely on."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_fixture
from scipy import ndimage

from harness.parity import Fixture, check
from harness.weights import WeightStore, filled_state_dict, load_state_dict_into
from methods import ops
from methods.barbershop import losses
from methods.barbershop.losses import (
    ClampOptimizer,
    LatentPCA,
    StyleLoss,
    VGG16Features,
    fit_latent_pca,
    fit_pca,
    gram_style_loss,
    p_norm_loss,
    pca_filename,
    vgg16_features_state,
    vgg16_fill_recipe,
)
from methods.hairflash import masks


@pytest.fixture(scope="module")
def vgg() -> VGG16Features:
    """The style loss's VGG16 filled by the parity rule (as ``--fill-weights`` does)."""
    net = VGG16Features()
    load_state_dict_into(net, filled_state_dict(net, "test_ops", vgg16_fill_recipe))
    return net.eval().requires_grad_(False)


def _random_mask(shape, seed: int, blobs: int = 6) -> torch.Tensor:
    """Blobby 0/1 masks, some touching the border."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(shape, generator=gen)
    smooth = F.avg_pool2d(noise.reshape(-1, 1, *shape[-2:]), 9, stride=1, padding=4).reshape(shape)
    return (smooth > 0.5).float()


# ---------------------------------------------------------------- parity

@pytest.mark.parametrize("name, module", [("hairfast_ops", masks), ("barbershop_ops", losses)])
def test_parity(parity_dir, name, module):
    fixture = load_fixture(name)
    results = list(check(fixture, module.PARITY[name]))
    assert len(results) == len(fixture.cases) >= 6
    for result in results:
        assert result.ok, result.line()
        assert result.details, result.line()


def test_plugins_register_parity():
    from harness import plugins

    adapters = plugins.parity_adapters()
    assert adapters.get("hairfast_ops") is masks.PARITY["hairfast_ops"]
    assert adapters.get("barbershop_ops") is losses.PARITY["barbershop_ops"]


def test_hairfast_adapter_follows_spec(parity_dir):
    """A twin with other smoothing / mixing / inputs: the adapter must use the spec, checked against scipy."""
    fixture = load_fixture("hairfast_ops")
    spec = copy.deepcopy(fixture.spec)
    spec["constructor"]["DilateErosion"] = "DilateErosion(dilate_erosion=3)"
    spec["constructor"]["mixing"] = 0.5
    data = dict(fixture.data)
    mask = _random_mask((3, 1, 40, 48), seed=1).numpy().astype(np.uint8)
    data["in/hair_mask_de"] = mask
    plus = ndimage.generate_binary_structure(2, 1)
    data["out/hair_mask_dilate"] = np.stack([ndimage.binary_dilation(m[0], plus, 3)[None] for m in mask]) * 1
    data["out/hair_mask_erode"] = np.stack([ndimage.binary_erosion(m[0], plus, 3, border_value=0)[None]
                                            for m in mask]) * 1
    mix = data["in/mix_labels"]
    mask32 = F.interpolate(torch.from_numpy((mix == 13).astype(np.float32)), size=(32, 32), mode="bicubic").numpy()
    data["out/mix_F"] = data["in/mix_F_FS"] + 0.5 * mask32 * (data["in/mix_F_from_W"] - data["in/mix_F_FS"])
    twin = Fixture(fixture.path, spec, data)
    results = {r.case: r for r in check(twin, masks.PARITY["hairfast_ops"])}
    assert results["dilate_erosion_smooth5"].ok, results["dilate_erosion_smooth5"].line()
    assert results["embedding_F_mixing"].ok, results["embedding_F_mixing"].line()
    assert not results["blending_target_mask"].ok  # 3 rounds instead of the stored 5 must show


# ---------------------------------------------------------------- ops

def test_dilate_erode_properties():
    mask = _random_mask((4, 1, 64, 64), seed=0)
    mask[0, 0, :10, :] = 1  # touches the border
    dilated, eroded = ops.dilate_erode(mask, 5)
    assert dilated.shape == eroded.shape == mask.shape
    assert torch.all(eroded <= mask) and torch.all(mask <= dilated)
    assert torch.all((dilated == 0) | (dilated == 1)) and torch.all((eroded == 0) | (eroded == 1))
    assert eroded.sum() < mask.sum() < dilated.sum()
    # scipy: plus-shaped structuring element, n iterations, outside counts as 0
    plus = ndimage.generate_binary_structure(2, 1)
    for m, d, e in zip(mask[:, 0].numpy() > 0, dilated[:, 0].numpy(), eroded[:, 0].numpy(), strict=True):
        np.testing.assert_array_equal(d, ndimage.binary_dilation(m, plus, 5))
        np.testing.assert_array_equal(e, ndimage.binary_erosion(m, plus, 5, border_value=0))


def test_dilate_erode_border_and_shapes():
    full = torch.ones(2, 3, 20, 24)
    dilated, eroded = ops.dilate_erode(full, 3)
    assert torch.all(dilated == 1)
    rows, cols = torch.meshgrid(torch.arange(20), torch.arange(24), indexing="ij")
    inner = (torch.stack([rows, cols, 19 - rows, 23 - cols]).amin(0) >= 3).float()
    assert torch.equal(eroded, inner.expand_as(full))  # a full mask erodes n pixels in from the border
    point = torch.zeros(1, 1, 11, 11, dtype=torch.uint8)
    point[0, 0, 5, 5] = 1
    dilated, _ = ops.dilate_erode(point, 2)
    assert dilated.dtype == torch.float32 and int(dilated.sum()) == 13  # the L1 ball of radius 2


@pytest.mark.parametrize("factor, channels", [(2, 3), (4, 1), (4, 5)])
def test_bicubic_downsample_constant(factor, channels):
    x = torch.full((2, channels, 16 * factor, 8 * factor), 0.37)
    y = ops.bicubic_downsample(x, factor)
    assert y.shape == (2, channels, 16, 8)
    torch.testing.assert_close(y, torch.full_like(y, 0.37), rtol=0, atol=1e-6)
    taps = ops.bicubic_taps(factor)
    assert taps.shape == (4 * factor,) and abs(float(taps.sum()) - 1) < 1e-6
    torch.testing.assert_close(taps, taps.flip(0))


def test_bicubic_downsample_per_channel():
    x = torch.rand(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    y = ops.bicubic_downsample(x, 2)
    for c in range(4):
        torch.testing.assert_close(y[:, c:c + 1], ops.bicubic_downsample(x[:, c:c + 1], 2))


def test_labels_and_hair_mask():
    table = torch.tensor(ops.BISENET19_TO_CELEBAMASKHQ)
    assert sorted(table.tolist()) == list(range(19)) and int(table[17]) == 13  # a permutation; hair 17 -> 13
    ids = torch.randint(0, 19, (2, 512, 512), generator=torch.Generator().manual_seed(0))
    celeba = ops.bisenet_to_celeba(ids)
    assert torch.equal(celeba, table[ids])
    small = ops.resize_labels(celeba, 256)
    assert small.shape == (2, 1, 256, 256) and torch.equal(small[:, 0], celeba[:, ::2, ::2])
    hair = ops.hair_mask(celeba, 256)
    assert hair.dtype == torch.float32 and torch.equal(hair[:, 0], (celeba[:, ::2, ::2] == 13).float())


# ---------------------------------------------------------------- HairFast masks

def test_mix_features():
    f_fs, f_w = torch.randn(2, 8, 32, 32), torch.randn(2, 8, 32, 32)
    labels = torch.zeros(2, 1, 256, 256, dtype=torch.uint8)
    labels[0] = 13
    mixed, mask = masks.mix_embedding_features(f_fs, f_w, labels)
    assert mask.shape == (2, 1, 32, 32)
    torch.testing.assert_close(mixed[0], 0.05 * f_fs[0] + 0.95 * f_w[0])
    torch.testing.assert_close(mixed[1], f_fs[1])


def test_alignment_and_blending_are_batched():
    hm = [_random_mask((2, 1, 64, 64), seed=s) for s in (1, 2, 3)]
    feats = [torch.randn(2, 4, 8, 8) for _ in range(4)]
    batched = masks.alignment_masks(*hm, feature_size=8)
    f_align = masks.blend_alignment_features(*feats, batched.low)
    assert batched.masks.shape == batched.free.shape == (6, 1, 64, 64) and batched.low.shape == (6, 1, 8, 8)
    labels_face = torch.where(hm[0] > 0, 13, 1).to(torch.uint8)
    labels_color = torch.where(hm[1] > 0, 13, 2).to(torch.uint8)
    hair_target = F.interpolate(hm[2], size=(256, 256), mode="nearest")  # official: a 256 mask
    blend = masks.blending_masks(labels_face, labels_color, hair_target)
    for i in range(2):
        single = masks.alignment_masks(*(m[i:i + 1] for m in hm), feature_size=8)
        torch.testing.assert_close(batched.low[i::2], single.low)
        torch.testing.assert_close(f_align[i:i + 1], masks.blend_alignment_features(*(f[i:i + 1] for f in feats),
                                                                                     single.low))
        one = masks.blending_masks(labels_face[i:i + 1], labels_color[i:i + 1], hair_target[i:i + 1])
        for a, b in zip(blend, one, strict=True):
            assert a.shape[-2:] == (256, 256)
            torch.testing.assert_close(a[i:i + 1], b)
    # the target region is free of every dilated hair mask
    assert torch.all(blend.target_mask * (blend.hair_face_dilated + blend.hair_color_dilated) == 0)


# ---------------------------------------------------------------- Barbershop losses

def test_vgg16_features_layout(parity_dir, vgg):
    fixture = load_fixture("barbershop_ops")
    ours = {k: tuple(v.shape) for k, v in VGG16Features().state_dict().items()}
    assert ours == {k: tuple(shape) for k, shape, _ in fixture.spec["full_config_keys"]}
    for entry in fixture.spec["state_dict"]:  # our fill recipe is the fixture's
        fill = vgg16_fill_recipe(entry["key"], tuple(entry["shape"]))
        assert fill["kind"] == entry["fill"]["kind"]
        assert fill["mean"] == pytest.approx(entry["fill"]["mean"]) and fill["std"] == pytest.approx(
            entry["fill"]["std"])
    torchvision_file = {**VGG16Features().state_dict(), "classifier.0.weight": torch.zeros(2, 2)}
    load_state_dict_into(VGG16Features(), vgg16_features_state(torchvision_file))
    net = losses.load_vgg16_features(WeightStore(fill=True))
    assert not any(p.requires_grad for p in net.parameters())
    acts = net(torch.rand(1, 3, 32, 32), (3, 8, 15, 22))
    assert [tuple(a.shape[1:]) for a in acts] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]


def test_style_loss_zero_and_gradient(vgg):
    style = StyleLoss(vgg, size=64)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    mask = _random_mask((1, 1, 32, 32), seed=4)
    assert float(style(x * mask, x * mask, mask, mask)) == 0.0
    x_hat = (torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1).requires_grad_(True)
    target = x.clone().requires_grad_(True)
    loss = style(target * mask, x_hat * mask, mask, mask)
    assert float(loss.detach()) > 0
    loss.backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0
    assert target.grad is None  # the first image is the target
    assert float(x_hat.grad[mask.expand_as(x_hat) == 0].abs().max()) == 0.0  # nothing leaks from outside the mask


def test_gram_loss_per_sample():
    gen = torch.Generator().manual_seed(1)
    acts_x = [torch.rand(2, c, s, s, generator=gen) for c, s in ((4, 16), (8, 8))]
    acts_y = [torch.rand(2, c, s, s, generator=gen) for c, s in ((4, 16), (8, 8))]
    mask1, mask2 = _random_mask((2, 1, 32, 32), seed=5), _random_mask((2, 1, 32, 32), seed=6)
    per_sample = gram_style_loss(acts_x, acts_y, mask1, mask2, per_sample=True)
    assert per_sample.shape == (2,)
    for i in range(2):
        official = gram_style_loss([a[i:i + 1] for a in acts_x], [a[i:i + 1] for a in acts_y], mask1[i:i + 1],
                                   mask2[i:i + 1])
        torch.testing.assert_close(per_sample[i], official)


def test_clamp_optimizer_keeps_params_in_range():
    gen = torch.Generator().manual_seed(2)
    target = torch.randn(18, 512, generator=gen) * 2
    u = torch.zeros(18, 512, requires_grad=True)
    opt = ClampOptimizer(torch.optim.Adam, [u], lr=0.3)
    for _ in range(20):
        opt.zero_grad()
        ((u - target) ** 2).sum().backward()
        opt.step()
        assert float(u.detach().min()) >= 0.0 and float(u.detach().max()) <= 1.0
    outside = (target < 0) | (target > 1)  # pushed beyond the bounds every step: held exactly at them
    assert outside.any() and torch.equal(u.detach()[outside], target.clamp(0, 1)[outside])
    assert opt.state_dict()["state"][0]["step"] == 20  # the inner optimiser's state is its own


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_pca_fit_recovers_known_variances(tmp_path):
    d, n = 12, 60_000
    stdev = torch.linspace(3.0, 0.5, d, dtype=torch.float64)
    basis, mean = _orthogonal(d, 0), torch.linspace(-1, 1, d, dtype=torch.float64)
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    data = (z * stdev) @ basis.T + mean
    pca = fit_pca(data.split(7_000))
    assert pca.components.shape == (d, d)
    torch.testing.assert_close(pca.stdev, stdev, rtol=0.02, atol=0)
    torch.testing.assert_close(pca.mean, mean, rtol=0, atol=0.03)
    assert torch.all((pca.components @ basis).abs().diagonal() > 0.99)  # the known directions
    assert float(pca.var_ratio.sum()) == pytest.approx(1.0)
    whole = fit_pca([data])  # batching does not change the fit
    for a, b in zip(pca.tensors(), whole.tensors(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    path = tmp_path / pca_filename("ffhq.pt")
    pca.save(path)
    with np.load(path) as npz:
        assert {k: str(npz[k].dtype) for k in npz.files} == {"X_mean": "float32", "X_comp": "float64",
                                                             "X_stdev": "float64", "X_var_ratio": "float64"}
    loaded = LatentPCA.load(path)
    assert loaded.components.dtype == torch.float32
    torch.testing.assert_close(loaded.stdev, pca.stdev.float())


def test_fit_latent_pca_on_a_mapping():
    """LeakyReLU(5) undoes the mapping's final LeakyReLU(0.2): a linear mapping gives the covariance A A^T."""
    d = 8
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(3)) * 0.7
    expected = torch.linalg.eigvalsh((a @ a.T).double()).flip(0).sqrt()
    pca = fit_latent_pca(lambda z: F.leaky_relu(z @ a.T, 0.2), n_samples=40_000, batch_size=9_000, latent_dim=d,
                         n_components=4)
    assert pca.components.shape == (4, d)
    torch.testing.assert_close(pca.stdev, expected[:4], rtol=0.03, atol=0)


def test_p_norm_batched_equals_per_sample():
    d = 512
    gen = torch.Generator().manual_seed(4)
    pca = LatentPCA(torch.randn(d, generator=gen) * 0.1, _orthogonal(d, 5).float(), torch.rand(d, generator=gen) + 1,
                    torch.full((d,), 1 / d))
    latent = torch.randn(3, 18, d, generator=gen, requires_grad=True)
    batched = p_norm_loss(latent, pca)
    assert batched.shape == (3,)
    batched.sum().backward()
    for i in range(3):
        one = latent.detach()[i:i + 1].clone().requires_grad_(True)
        # the official formula (batch 1): bmm against X_comp^T, divide by X_stdev, lambda * mean of squares
        v = torch.nn.LeakyReLU(5)(one) - pca.mean
        official = 0.001 * (v.bmm(pca.components.T.unsqueeze(0)) / pca.stdev).pow(2).mean()
        official.backward()
        torch.testing.assert_close(batched[i], official.detach())
        torch.testing.assert_close(latent.grad[i:i + 1], one.grad)
