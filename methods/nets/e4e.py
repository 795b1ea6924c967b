"""encoder4editing (e4e): an IR-SE-50 image encoder that predicts StyleGAN2 W+ codes.

Key names follow ``Encoder4Editing(50, 'ir_se', opts)`` of encoder4editing (HairFast's copy,
``models/encoder4editing/models/encoders/psp_encoders.py``), so the ``encoder.*`` part of the official
``e4e_ffhq_encode.pt`` loads unchanged. That checkpoint is a dict with ``state_dict`` (the whole pSp module:
``encoder.*`` and ``decoder.*`` = a StyleGAN2 1024 generator), ``latent_avg`` ([18, 512]) and ``opts`` (a plain
dict of training options).

The encoder maps a 256x256 image in [-1, 1] to offsets from the average latent; pSp and HairFast add
``latent_avg`` (the FFHQ model is trained with ``start_from_latent_avg``): :meth:`Encoder4Editing.encode`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.method import Checkpoint
from harness.parity import Fixture, Op, case_op, fill_value
from harness.weights import load_state_dict_into

CHECKPOINT = Checkpoint(
    key="e4e_ffhq",
    filename="e4e_ffhq_encode.pt",
    source="https://github.com/omertov/encoder4editing (FFHQ Inversion, Google Drive file "
           "1cUv_reLE6k3604or78EranS7XzuVMWeO); HairFast ships it as "
           "https://huggingface.co/AIRI-Institute/HairFastGAN pretrained_models/encoder4editing/e4e_ffhq_encode.pt",
    purpose="e4e FFHQ encoder: image -> StyleGAN2 W+ (HairFast embedding; HairCLIP inversion)",
    download=("gdrive:1cUv_reLE6k3604or78EranS7XzuVMWeO",
              "hf:AIRI-Institute/HairFastGAN/pretrained_models/encoder4editing/e4e_ffhq_encode.pt"),
)
CHECKPOINTS = [CHECKPOINT]

# Body units whose outputs feed the feature pyramid (fixed in the official forward).
TAP_C1, TAP_C2, TAP_C3 = 6, 20, 23
# Style rows 0..COARSE-1 read the 16x16 map, COARSE..MIDDLE-1 the 32x32 map, the rest the 64x64 map.
COARSE_END, MIDDLE_END = 3, 7
# (in_channels, depth, units) per stage of the IR backbones; the first unit of each stage has stride 2.
BACKBONE_STAGES = {
    50: ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)),
    100: ((64, 64, 3), (64, 128, 13), (128, 256, 30), (256, 512, 3)),
    152: ((64, 64, 3), (64, 128, 8), (128, 256, 36), (256, 512, 3)),
}


@dataclass(frozen=True)
class E4EConfig:
    """``Encoder4Editing(num_layers, mode, opts)``; only ``opts.stylegan_size`` is used."""

    num_layers: int = 50
    mode: str = "ir_se"
    stylegan_size: int = 1024

    @property
    def style_count(self) -> int:
        """W+ rows: 2 * log2(stylegan_size) - 2 (18 for 1024)."""
        return 2 * int(math.log2(self.stylegan_size)) - 2

    @classmethod
    def from_constructor(cls, values: Mapping[str, Any]) -> E4EConfig:
        opts = values.get("opts") or {}
        size = opts["stylegan_size"] if isinstance(opts, Mapping) else opts.stylegan_size
        return cls(int(values.get("num_layers", 50)), str(values.get("mode", "ir_se")), int(size))


# ---------------------------------------------------------------- backbone (IR / IR-SE)

class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))


class BottleneckIR(nn.Module):
    """``res_layer`` = BN, 3x3 conv, PReLU, 3x3 conv (stride), BN[, SE]; shortcut = 1x1 max-pool (stride) when
    the width is unchanged, else 1x1 conv (stride) + BN."""

    def __init__(self, in_channels: int, depth: int, stride: int, squeeze_excite: bool):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
                  nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth)]
        if squeeze_excite:
            layers.append(SqueezeExcite(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


# ---------------------------------------------------------------- style heads

class EqualLinear(nn.Module):
    """StyleGAN2's equalised linear layer (no activation): ``x @ (W / sqrt(in) * lr_mul).T + b * lr_mul``."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 3x3 convs with LeakyReLU(0.01), flatten, :class:`EqualLinear` -> one 512 code."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int):
        super().__init__()
        self.out_channels = out_channels
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels, lr_mul=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_channels))


def upsample_add(x: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """FPN merge: ``x`` bilinearly resized (align_corners=True) to ``lateral``'s size, plus ``lateral``."""
    return F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


# ---------------------------------------------------------------- the encoder

class Encoder4Editing(nn.Module):
    """Image [B, 3, 256, 256] in [-1, 1] -> W+ offsets [B, style_count, 512] (without ``latent_avg``)."""

    def __init__(self, config: E4EConfig = E4EConfig()):
        super().__init__()
        if config.num_layers not in BACKBONE_STAGES:
            raise ValueError(f"num_layers must be one of {sorted(BACKBONE_STAGES)}")
        if config.mode not in ("ir", "ir_se"):
            raise ValueError("mode must be 'ir' or 'ir_se'")
        self.config = config
        self.style_count = config.style_count
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for in_channels, depth, count in BACKBONE_STAGES[config.num_layers]:
            units.append(BottleneckIR(in_channels, depth, 2, config.mode == "ir_se"))
            units += [BottleneckIR(depth, depth, 1, config.mode == "ir_se") for _ in range(count - 1)]
        self.body = nn.Sequential(*units)
        self.styles = nn.ModuleList(
            GradualStyleBlock(512, 512, 16 if i < COARSE_END else 32 if i < MIDDLE_END else 64)
            for i in range(self.style_count))
        self.latlayer1 = nn.Conv2d(256, 512, 1, 1, 0)
        self.latlayer2 = nn.Conv2d(128, 512, 1, 1, 0)
        # set by load_e4e; not part of the state dict
        self.register_buffer("latent_avg", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(x)
        taps = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in (TAP_C1, TAP_C2, TAP_C3):
                taps[i] = x
        c1, c2, c3 = taps[TAP_C1], taps[TAP_C2], taps[TAP_C3]
        w0 = self.styles[0](c3)
        rows = [w0]
        features = c3
        for i in range(1, self.style_count):
            if i == COARSE_END:
                p2 = upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == MIDDLE_END:
                features = upsample_add(p2, self.latlayer2(c1))
            rows.append(w0 + self.styles[i](features))
        return torch.stack(rows, dim=1)

    def encode(self, x: torch.Tensor, latent_avg: torch.Tensor | None = None) -> torch.Tensor:
        """W+ as pSp / HairFast ``get_latents`` return it: ``forward(x) + latent_avg`` (the checkpoint's
        ``latent_avg`` unless one is given)."""
        latent_avg = self.latent_avg if latent_avg is None else latent_avg
        if latent_avg is None:
            raise ValueError("no latent_avg: load the encoder with load_e4e or pass latent_avg")
        return add_latent_avg(self(x), latent_avg)


def add_latent_avg(codes: torch.Tensor, latent_avg: torch.Tensor) -> torch.Tensor:
    """``codes + latent_avg.repeat(B, 1, 1)`` for a [style_count, 512] average; a [512] one broadcasts."""
    latent_avg = latent_avg.to(codes.device, codes.dtype)
    if latent_avg.ndim == 2:
        return codes + latent_avg.unsqueeze(0).expand(codes.shape[0], -1, -1)
    return codes + latent_avg


# ---------------------------------------------------------------- fill recipe (parity rule, --fill-weights)

_PRELU = re.compile(r"(^input_layer\.2|\.res_layer\.2)\.weight$")
_BATCHNORM = re.compile(r"(^input_layer\.1|\.res_layer\.[04]|\.shortcut_layer\.1)\.[a-z_]+$")


def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Fill of one state-dict entry, identical to the ``e4e`` fixture's recipe."""
    name = key.rsplit(".", 1)[-1]
    if name == "num_batches_tracked":
        return {"kind": "int_zero"}
    if _PRELU.search(key):
        return {"kind": "normal", "mean": 0.25, "std": 0.05}
    if _BATCHNORM.search(key):
        return {"weight": {"kind": "normal", "mean": 1.0, "std": 0.1},
                "running_var": {"kind": "normal", "mean": 1.0, "std": 0.0}}.get(
            name, {"kind": "normal", "mean": 0.0, "std": 0.1})  # bias, running_mean
    if name == "bias":
        return {"kind": "normal", "mean": 0.0, "std": 0.01}
    if re.search(r"^styles\.\d+\.linear\.weight$", key):
        return {"kind": "normal", "mean": 0.0, "std": 1.0}
    fan_in = int(np.prod(shape[1:]))
    if re.search(r"^styles\.\d+\.convs\.\d+\.weight$", key):  # followed by leaky ReLU
        return {"kind": "normal", "mean": 0.0, "std": math.sqrt(2.0) / math.sqrt(fan_in)}
    return {"kind": "normal", "mean": 0.0, "std": 1.0 / math.sqrt(fan_in)}


# ---------------------------------------------------------------- loading

def encoder_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` entries of a pSp/e4e checkpoint's ``state_dict`` with the prefix stripped."""
    state = checkpoint.get("state_dict", checkpoint)
    return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}


def load_e4e(weights, device: str | torch.device = "cpu",
             config: E4EConfig = E4EConfig()) -> tuple[Encoder4Editing, torch.Tensor]:
    """The e4e encoder (eval, on ``device``) and the checkpoint's ``latent_avg`` from ``e4e_ffhq_encode.pt``
    found by ``weights`` (a ``harness.weights.WeightStore``). With ``weights.fill`` the encoder is filled by the
    parity rule (namespace ``e4e_ffhq``) and ``latent_avg`` is the rule's N(0, 1) fill of key ``latent_avg``."""
    encoder = Encoder4Editing(config)
    obj = weights.load_network(encoder, CHECKPOINT, extract=encoder_state_dict, recipe=fill_recipe)
    if obj is None:
        latent_avg = torch.from_numpy(fill_value(CHECKPOINT.key, "latent_avg", (config.style_count, 512)))
    else:
        latent_avg = torch.as_tensor(obj["latent_avg"]).float()
    encoder.latent_avg = latent_avg
    encoder = encoder.float().to(device).eval().requires_grad_(False)
    return encoder, encoder.latent_avg


# ---------------------------------------------------------------- parity

#: the op of ``e4e`` and how a case shows it (see :func:`harness.parity.case_op`)
PARITY_OPS = {"encode": Op(outputs=("codes",))}


def parity_adapter(fixture: Fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """Builds the encoder from the fixture's constructor, loads its filled state dict (strict) and returns
    ``codes`` and ``codes_plus_avg`` for a case encoding its image input (``x``, or the one other than
    ``latent_avg``)."""
    encoder = Encoder4Editing(E4EConfig.from_constructor(fixture.constructor))
    load_state_dict_into(encoder, fixture.torch_state_dict(), f"fixture {fixture.name}")
    encoder = encoder.float().eval()

    def run(case: dict) -> dict[str, np.ndarray]:
        case_op(case, PARITY_OPS)
        images = [arg for arg in case["inputs"] if arg != "latent_avg"]
        image = "x" if "x" in images else images[0]
        x = torch.from_numpy(np.ascontiguousarray(fixture.input(case, image))).float()
        with torch.no_grad():
            codes = encoder(x)
            outputs = {"codes": codes}
            if "latent_avg" in case["inputs"]:
                latent_avg = torch.from_numpy(np.ascontiguousarray(fixture.input(case, "latent_avg"))).float()
                outputs["codes_plus_avg"] = add_latent_avg(codes, latent_avg)
        return {name: outputs[name].numpy() for name in case["outputs"]}

    return run


PARITY = {"e4e": parity_adapter}
