"""LPIPS v0.1 ``net-lin`` with the VGG16 trunk, plain and masked (Barbershop's blending loss).

Why our own implementation and not the PyPI ``lpips`` package: ``lpips.LPIPS(net='vgg')`` asks torchvision
for the ImageNet VGG16 at construction (a download; only ``pnet_rand=True`` avoids it, and then the trunk
has to be loaded by hand anyway), prints on construction, carries duplicate ``lins.*`` state-dict entries,
and has no masked variant, which Barbershop needs. The network itself is small: a scaling layer, five VGG16
slices, per-pixel unit normalisation and five 1x1 heads, written here against the same key layout
(``scaling_layer.*``, ``net.slice{s}.{N}.*``, ``lin{k}.model.1.weight``) so the fixture and the official
files load unchanged.

Formula (inputs in [-1,1]): ``x' = (x - shift) / scale``; ``f_l`` = VGG16 activations relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3, each unit-normalised over channels (``f / (||f|| + 1e-10)``);
``d_l = lin_l((f0_l - f1_l)^2)``; distance = sum over layers of the spatial mean of ``d_l`` -> ``[N,1,1,1]``;
the spatial map upsamples each ``d_l`` bilinearly (align_corners=False, scale factor ``H / h_l``) to the input
size and sums.

Masked variant (Barbershop ``losses/masked_lpips``): only the selected layers (1-based, Barbershop uses 1-3)
are summed; the mask ``[N,1,H,W]`` is nearest-resized level by level, each time from the previous level's
mask, and each layer term is ``sum(d_l * mask_l) / sum(mask_l)`` where the denominator sums the whole mask
tensor (all batch items together).

Weights: the trunk comes from torchvision's ImageNet ``vgg16-397923af.pth`` (``features.N.*`` ->
``slice{s}.N.*``, ``classifier.*`` unused) and the heads from the small v0.1 ``vgg.pth`` (five
``lin{k}.model.1.weight``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.method import Checkpoint
from harness.parity import Fixture, Op, call_arg, case_op, to_numpy
from harness.weights import WeightStore, load_state_dict_into

VGG16_IMAGENET = Checkpoint(
    key="vgg16_imagenet",
    filename="vgg16-397923af.pth",
    source="https://download.pytorch.org/models/vgg16-397923af.pth (torchvision VGG16_Weights.IMAGENET1K_V1)",
    purpose="VGG16 ImageNet trunk of LPIPS (torchvision layout: features.N.*, classifier.*)",
    download=("https://download.pytorch.org/models/vgg16-397923af.pth",),
)
LPIPS_VGG_HEADS = Checkpoint(
    key="lpips_vgg_v0.1",
    filename="vgg.pth",
    source="richzhang/PerceptualSimilarity lpips/weights/v0.1/vgg.pth (also in the PyPI package lpips 0.1.4 "
           "and in ZPdesu/Barbershop losses/lpips/weights/v0.1/vgg.pth)",
    purpose="LPIPS v0.1 linear heads for the VGG16 trunk (lin0..lin4.model.1.weight)",
    size=7289,
    sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    download=("https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",),
)
CHECKPOINTS = [VGG16_IMAGENET, LPIPS_VGG_HEADS]

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 128, 256, 512, 512)
# torchvision vgg16.features indices of each slice (ends at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_VGG16_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
                14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512),
                26: (512, 512), 28: (512, 512)}
_VGG16_POOLS = (4, 9, 16, 23)


class ScalingLayer(nn.Module):
    """Maps [-1,1] RGB to the trunk's input statistics: ``(x - shift) / scale``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class VGG16Slices(nn.Module):
    """``features`` of torchvision's VGG16 up to relu5_3, cut into five slices that keep the layer indices."""

    def __init__(self):
        super().__init__()
        for s, (start, stop) in enumerate(SLICES, 1):
            layers = nn.Sequential()
            for i in range(start, stop):
                if i in _VGG16_CONVS:
                    layers.add_module(str(i), nn.Conv2d(*_VGG16_CONVS[i], kernel_size=3, padding=1))
                elif i in _VGG16_POOLS:
                    layers.add_module(str(i), nn.MaxPool2d(2, 2))
                else:
                    layers.add_module(str(i), nn.ReLU())
            self.add_module(f"slice{s}", layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for s in range(1, len(SLICES) + 1):
            x = getattr(self, f"slice{s}")(x)
            feats.append(x)
        return feats


def vgg16_trunk_state(torchvision_state: Mapping[str, Any]) -> dict[str, Any]:
    """torchvision VGG16 state dict (``features.N.*``) -> :class:`VGG16Slices` keys (``slice{s}.N.*``)."""
    out = {}
    for key, value in torchvision_state.items():
        prefix, _, rest = key.partition(".")
        if prefix != "features":
            continue  # classifier.* is not part of LPIPS
        index = int(rest.split(".")[0])
        slice_no = next((s for s, (a, b) in enumerate(SLICES, 1) if a <= index < b), None)
        if slice_no is not None:
            out[f"slice{slice_no}.{rest}"] = value
    return out


class LinearHead(nn.Module):
    """A 1x1 conv from ``channels`` to 1 without bias. ``model.0`` is the original's training-time Dropout,
    kept so the keys read ``model.1.weight``; the metric never applies it."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model[1](x)


def unit_normalize(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 (VGG16, net-lin). ``forward(in0, in1)`` -> ``[N,1,1,1]``; inputs ``[N,3,H,W]`` in [-1,1].

    Differentiable in the inputs (use as a loss); :meth:`spatial_map` and :meth:`per_layer` give the map and
    the layer terms.
    """

    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Slices()
        for k, channels in enumerate(CHANNELS):
            self.add_module(f"lin{k}", LinearHead(channels))

    @property
    def lins(self) -> list[LinearHead]:
        return [getattr(self, f"lin{k}") for k in range(len(CHANNELS))]

    def heads(self) -> nn.Module:
        """A view holding ``lin0..lin4`` (shared parameters), the layout of the ``vgg.pth`` head file."""
        view = nn.Module()
        for k, lin in enumerate(self.lins):
            view.add_module(f"lin{k}", lin)
        return view

    def layer_maps(self, in0: torch.Tensor, in1: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer distance maps ``lin_l((f0 - f1)^2)``, each ``[N,1,h_l,w_l]``."""
        feats0 = self.net(self.scaling_layer(in0))
        feats1 = self.net(self.scaling_layer(in1))
        pairs = zip(self.lins, feats0, feats1, strict=True)
        return [lin((unit_normalize(a) - unit_normalize(b)) ** 2) for lin, a, b in pairs]

    def per_layer(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """The five layer terms (spatial means) ``[N,5]``; they sum to the distance."""
        return torch.cat([m.mean(dim=(2, 3)) for m in self.layer_maps(in0, in1)], dim=1)

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        return self.per_layer(in0, in1).sum(dim=1).view(-1, 1, 1, 1)

    def spatial_map(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """Distance map ``[N,1,H,W]``: each layer map upsampled to the input size, summed."""
        height = in0.shape[2]
        maps = [F.interpolate(m, scale_factor=height / m.shape[2], mode="bilinear", align_corners=False)
                for m in self.layer_maps(in0, in1)]
        return torch.stack(maps).sum(dim=0)


def masked_lpips(net: LPIPS, in0: torch.Tensor, in1: torch.Tensor, mask: torch.Tensor | None = None,
                 blocks: Iterable[int] = (1, 2, 3)) -> torch.Tensor:
    """Barbershop's masked LPIPS ``[N,1,1,1]`` over the 1-based ``blocks`` (see the module docstring)."""
    selected = {int(b) for b in blocks}
    maps = net.layer_maps(in0, in1)
    if mask is not None and mask.dim() == 3:
        mask = mask.unsqueeze(0)
    total = torch.zeros((), dtype=maps[0].dtype, device=maps[0].device)
    for layer, dist in enumerate(maps, 1):
        if mask is not None:
            mask = F.interpolate(mask.to(dist.dtype), size=dist.shape[2:], mode="nearest")
        if layer not in selected:
            continue
        if mask is None:
            total = total + dist.mean(dim=(2, 3), keepdim=True)
        else:
            total = total + (dist * mask).sum(dim=(2, 3), keepdim=True) / mask.sum()
    return total


class MaskedLPIPS(LPIPS):
    """LPIPS restricted to a mask and to some layers (Barbershop's blending loss uses blocks 1-3).

    ``forward(in0, in1, mask=None)`` -> ``[N,1,1,1]``; same keys and weight files as :class:`LPIPS`.
    """

    def __init__(self, blocks: Sequence[int] = (1, 2, 3)):
        super().__init__()
        self.blocks = tuple(int(b) for b in blocks)

    def forward(self, in0: torch.Tensor, in1: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_lpips(self, in0, in1, mask, self.blocks)


def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """The parity fill: VGG convs std sqrt(2/fan_in), biases std 0.01, heads 0.08 +- 0.05, scaling consts."""
    if key.startswith("scaling_layer."):
        return {"kind": "const"}
    if key.rsplit(".", 1)[-1] == "bias":
        return {"kind": "normal", "mean": 0.0, "std": 0.01}
    if key.split(".", 1)[0].startswith("lin"):
        return {"kind": "normal", "mean": 0.08, "std": 0.05}
    return {"kind": "normal", "mean": 0.0, "std": float(np.sqrt(2.0 / np.prod(shape[1:])))}


def load_lpips(weights: WeightStore, device: torch.device | str = "cpu",
               masked_blocks: Sequence[int] | None = None) -> LPIPS:
    """LPIPS (or :class:`MaskedLPIPS` when ``masked_blocks`` is given) with the torchvision VGG16 trunk and
    the v0.1 heads, frozen, in eval mode. Gradients still flow to the inputs."""
    net = LPIPS() if masked_blocks is None else MaskedLPIPS(masked_blocks)
    weights.load_network(net.net, VGG16_IMAGENET, extract=vgg16_trunk_state, recipe=fill_recipe)
    weights.load_network(net.heads(), LPIPS_VGG_HEADS, recipe=fill_recipe)
    return net.to(device).eval().requires_grad_(False)


def lpips_extractor(device: torch.device | str, weights: WeightStore) -> Callable[..., np.ndarray]:
    """Feature extractor ``lpips_vgg``: ``(img0, img1)`` ``[N,3,H,W]`` in [-1,1] -> distances ``[N]``."""
    net = load_lpips(weights, device)
    on = net.scaling_layer.shift.device

    @torch.no_grad()
    def distance(img0: torch.Tensor, img1: torch.Tensor) -> np.ndarray:
        return to_numpy(net(img0.to(on).float(), img1.to(on).float()).view(-1))

    return distance


FEATURE_EXTRACTORS = {"lpips_vgg": lpips_extractor}


# ---------------------------------------------------------------- parity

#: the ops of ``lpips_vgg`` and how a case shows which one it exercises (see :func:`harness.parity.case_op`)
PARITY_OPS = {
    "distance": Op(call=(r"spatial\s*=\s*False|PNetLin\.forward",)),
    "spatial": Op(call=(r"spatial\s*=\s*True",)),
    "masked": Op(call=(r"masked",), names=("masked_blocks123", "masked_blocks123_nomask")),
}


def _blocks(text: str | None, default: Sequence[int | str]) -> tuple[int, ...]:
    """VGG blocks from ``"['1','2','3']"`` (the call's ``vgg_blocks``), else ``default``."""
    found = re.findall(r"\d+", text or "")
    return tuple(int(b) for b in (found or default))


def parity_adapter(fixture: Fixture) -> Callable[[Mapping], dict[str, np.ndarray]]:
    """Fixture ``lpips_vgg``: distance, layer terms, spatial map, masked distance (blocks from the constructor,
    else the case's call); the op of each case follows its spec entry."""
    stated = fixture.constructor.get("masked_vgg_blocks")
    blocks = _blocks(None, stated or (1, 2, 3))
    net = MaskedLPIPS(blocks)
    state = {k: torch.from_numpy(np.array(v)) for k, v in fixture.state_dict().items()}
    load_state_dict_into(net, state, f"fixture {fixture.name}")
    net.eval().float()

    def run(case: Mapping) -> dict[str, np.ndarray]:
        inputs = {arg: torch.from_numpy(fixture.input(case, arg)).float() for arg in case["inputs"]}
        in0, in1 = inputs["in0"], inputs["in1"]
        op = case_op(case, PARITY_OPS)
        with torch.no_grad():
            if op == "distance":
                out = {"d": LPIPS.forward(net, in0, in1), "per_layer": net.per_layer(in0, in1)}
            elif op == "spatial":
                out = {"map": net.spatial_map(in0, in1)}
            else:
                case_blocks = blocks if stated else _blocks(call_arg(case, "PerceptualLoss", "vgg_blocks"), blocks)
                out = {"d": masked_lpips(net, in0, in1, inputs.get("mask"), case_blocks)}
        return {k: to_numpy(v) for k, v in out.items() if k in case["outputs"]}

    return run


PARITY = {"lpips_vgg": parity_adapter}
