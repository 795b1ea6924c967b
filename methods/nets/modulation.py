"""The modulation family of latent mappers: HairCLIP's ``mapper/latent_mappers.py`` (wty-ustc/HairCLIP) and the
HairFast encoders built on it (AIRI-Institute/HairFastGAN ``models/Encoders.py``).

``pixel_norm_rows``: StyleGAN2's PixelNorm applied to ``[B, rows, 512]`` with ``dim=1``, so it normalises over the
*rows*, not the channels: ``x * rsqrt(mean_rows(x^2) + 1e-8)``. :class:`ModulationModule`: ``x =
LayerNorm_[rows,512](fc(x))`` (no affine, eps 1e-5), ``out = x * (1 + gamma(c)) + beta(c)`` with ``gamma``/``beta``
= ``Linear(cond, middle) -> LayerNorm(middle) -> LeakyReLU(0.01) -> Linear(middle, 512)`` applied row-wise to the
conditioning ``c``, then LeakyReLU(0.01) (HairFast: every module but the last; HairCLIP: every module). HairCLIP's
``cut`` path returns ``x`` right after the LayerNorm (no conditioning, no activation).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU() default, as the official modules use it
PIXEL_NORM_EPS = 1e-8
LAYER_NORM_EPS = 1e-5
DT_SCALE = 0.1


# ---------------------------------------------------------------- shared pieces

def pixel_norm_rows(x: Tensor, eps: float = PIXEL_NORM_EPS) -> Tensor:
    """``x * rsqrt(mean(x^2 over dim 1) + eps)``: for ``[B, rows, 512]`` codes the mean runs over the rows."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def modulation_mlp(cond_dim: int, middle: int, out_dim: int) -> nn.Sequential:
    """``Linear -> LayerNorm -> LeakyReLU(0.01) -> Linear`` (keys ``0``, ``1``, ``3``)."""
    return nn.Sequential(nn.Linear(cond_dim, middle), nn.LayerNorm(middle, eps=LAYER_NORM_EPS),
                         nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(middle, out_dim))


class ModulationModule(nn.Module):
    """``LayerNorm_[rows, dim](fc(x)) * (1 + gamma(c)) + beta(c)``, then LeakyReLU(0.01) unless ``last``."""

    def __init__(self, rows: int, last: bool = False, cond_dim: int = 512, middle: int = 512, dim: int = 512):
        super().__init__()
        self.rows = rows
        self.last = last
        self.fc = nn.Linear(dim, dim)
        self.gamma_function = modulation_mlp(cond_dim, middle, dim)
        self.beta_function = modulation_mlp(cond_dim, middle, dim)

    def forward(self, x: Tensor, condition: Tensor | None, cut: bool = False) -> Tensor:
        """``cut`` (HairCLIP, no condition given): ``LayerNorm(fc(x))`` alone."""
        x = self.fc(x)
        x = F.layer_norm(x, tuple(x.shape[-2:]), eps=LAYER_NORM_EPS)
        if cut:
            return x
        out = x * (1 + self.gamma_function(condition)) + self.beta_function(condition)
        return out if self.last else F.leaky_relu(out, LEAKY_SLOPE)


@dataclass(frozen=True)
class ModulationConfig:
    """A stack of :class:`ModulationModule`: ``rows`` (the official ``layernum``), conditioning width
    ``cond_dim`` (``inp``), hidden width ``middle``, code width ``dim`` and the number of modules."""

    rows: int
    cond_dim: int = 512
    middle: int = 512
    dim: int = 512
    n_blocks: int = 5


def modulation_stack(config: ModulationConfig) -> nn.ModuleList:
    return nn.ModuleList(ModulationModule(config.rows, i == config.n_blocks - 1, config.cond_dim, config.middle,
                                          config.dim) for i in range(config.n_blocks))


def modulate(blocks: nn.ModuleList, x: Tensor, condition: Tensor) -> Tensor:
    """``dt = PixelNorm_rows(x)`` passed through every module with the same conditioning."""
    dt = pixel_norm_rows(x)
    for block in blocks:
        dt = block(dt, condition)
    return dt


# ---------------------------------------------------------------- fill recipe (parity rule, --fill-weights)

_LAYERNORM = re.compile(r"_function\.1\.(weight|bias)$")


def is_layernorm(key: str) -> bool:
    """A ``gamma``/``beta`` LayerNorm entry of a modulation module."""
    return bool(_LAYERNORM.search(key))


def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Fill of a modulation entry as the HairFast and HairCLIP fixtures state it: the ``gamma``/``beta`` LayerNorms
    weight 1 +- 0.1, bias 0.1; other biases 0.01; weights ``1/sqrt(fan_in)``."""
    name = key.rsplit(".", 1)[-1]
    if _LAYERNORM.search(key):
        return {"kind": "normal", "mean": 1.0 if name == "weight" else 0.0, "std": 0.1}
    if name == "bias":
        return {"kind": "normal", "mean": 0.0, "std": 0.01}
    return {"kind": "normal", "mean": 0.0, "std": 1.0 / math.sqrt(int(np.prod(shape[1:])))}
