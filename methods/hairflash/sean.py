"""SEAN (semantic region-adaptive normalisation): HairFast's inpainting generator in the Alignment stage.

Key names follow ``SPADEGenerator`` of ``models/sean_codes`` in AIRI-Institute/HairFastGAN (the same SEAN code as
XuyangGuo/CtrlHair), built as HairFast does through ``Pix2PixModel(SEAN_OPT)``: ngf 64, 19 CelebAMask-HQ classes,
256x256 output, ``norm_G = spectralspadesyncbatch3x3``, no VAE, no instance map. So the bare state dict
``pretrained_models/sean_checkpoints/CelebA-HQ_pretrained/latest_net_G.pth`` loads unchanged into
:class:`SEANGenerator`.

Two halves:

* **Style encoder** (``Zencoder``): a small conv net maps the image (HairFast feeds ``image_256`` in [0, 1], *not*
  [-1, 1]) to a [B,512,128,128] tanh map; the label map is nearest-resized to 128 and each class's code is the
  mean of that map over the class's pixels -> [B,19,512] (:meth:`SEANGenerator.encode_styles`; absent classes give
  zero rows).
* **Generator**: a conv of the label map at 8x8, then SPADE residual blocks (head_0 8, G_middle_0/1 16, up_0 32,
  up_1 64, up_2 128, up_3 256) with nearest x2 upsampling between them, ``conv_img(lrelu(x))`` and tanh. Every
  normalisation is an :class:`ACE`: ``n = BN_running(x + noise)``; ``gamma/beta_spade = SPADE(seg)``; with the style
  path each class's ``relu(fc_mu_j(code_j))`` is painted over its pixels and two 3x3 convs give ``gamma/beta_avg``,
  mixed with the SPADE ones by ``sigmoid(blending_gamma/beta)``; ``out = n * (1 + gamma) + beta``. up_3 has no
  style path.

HairFast's ``decode_sean`` first replaces each all-zero code row by a fixed per-class *median* code that ships with
its repository (``models/sean_codes/styles_test/mean_style_code/median/<class>/ACE.npy``, 19 files of 512 float32;
see :func:`load_median_style_codes`), then renders the target label map (:meth:`SEANGenerator.decode`).
``inpaint(image, labels, target)`` is encode + decode. The official code renders batch element 0 only; ours is
batched with the same per-sample result.

Details that matter for the numbers:

* Spectral norm (``conv_0``/``conv_1``/``conv_s`` of each block) is a plain parametrisation of the stored
  ``weight_orig``, ``weight_u``, ``weight_v``: ``W = weight_orig / (u . (W_orig v))``; no power iteration (eval).
* The "sync" batch norms always use their running statistics (eps 1e-5, no affine). Each SPADE also owns an unused
  norm whose buffers are in the checkpoint.
* ACE noise: ``randn(B, W, H, 1) * noise_var`` transposed to [B,C,H,W] (one value per pixel, scaled per channel).
  The official code draws fresh noise at every call, so its output is random whenever ``noise_var`` is nonzero;
  here the source is explicit (:data:`Noise`: ``"zero"``, ``"fresh"`` or a seeded ``torch.Generator``).
* Nearest-neighbour resizing everywhere (labels and upsampling).

Faster than the official forward, same numbers up to rounding (parity ~3e-6): the painted 512-channel style map is
never built (its convs are folded into 19-channel convs of the one-hot map, :meth:`ACE.style_modulation`), and a
target map shared by the batch runs its label-only branches (SPADE, ``fc``) once. Batched results equal per-sample
ones for ``noise="zero"`` (or a zero ``noise_var``); with random noise every sample gets its own draw, so a seeded
batch does not reproduce seeded single calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.method import Checkpoint
from harness.parity import Fixture, Op, arg_word, case_op, fill_value, to_numpy
from harness.weights import MissingWeights, WeightStore, load_state_dict_into

HF_REPO = "https://huggingface.co/AIRI-Institute/HairFastGAN"
GITHUB_REPO = "https://github.com/AIRI-Institute/HairFastGAN"

CHECKPOINT = Checkpoint(
    key="hairfast_sean",
    filename="latest_net_G.pth",
    source=f"{HF_REPO} pretrained_models/sean_checkpoints/CelebA-HQ_pretrained/latest_net_G.pth (SEAN's "
           "CelebA-HQ generator; HairFast loads it via Pix2PixModel(SEAN_OPT))",
    purpose="HairFast Alignment-stage inpainting: SEAN SPADEGenerator + Zencoder; netG's bare state dict",
    official_path="sean_checkpoints/CelebA-HQ_pretrained/latest_net_G.pth",
    download=("hf:AIRI-Institute/HairFastGAN/pretrained_models/sean_checkpoints/CelebA-HQ_pretrained/latest_net_G.pth",),
)
MEDIAN_CODES_CHECKPOINT = Checkpoint(
    key="hairfast_sean_median_codes",
    filename="sean_median_style_codes.npy",
    source=f"{GITHUB_REPO} models/sean_codes/styles_test/mean_style_code/median/<class 0..18>/ACE.npy (in the "
           "source tree, not on the Hub); stack them with pack_median_style_codes(), or point --weights-dir at a "
           "folder holding that tree (see MEDIAN_CODE_DIRS)",
    purpose="SEAN per-class median style codes [19,512] float32: replace the codes of classes absent from the "
            "source image when decoding (HairFast decode_sean)",
)
CHECKPOINTS = [CHECKPOINT, MEDIAN_CODES_CHECKPOINT]

# Where the official per-class folders (<class>/ACE.npy) may sit inside a weight directory: HairFast's repository
# root, its pretrained_models/ (the tree is a sibling of it), the styles_test folder, or the median folder itself.
OFFICIAL_MEDIAN_DIR = "models/sean_codes/styles_test/mean_style_code/median"
MEDIAN_CODE_DIRS = (
    MEDIAN_CODES_CHECKPOINT.key,
    OFFICIAL_MEDIAN_DIR,
    f"../{OFFICIAL_MEDIAN_DIR}",
    "styles_test/mean_style_code/median",
    "mean_style_code/median",
    "median",
)

STYLE_DIM = 512  # hard-coded in the official ACE and Zencoder
STYLE_CLASSES = 19  # fc_mu0 .. fc_mu18, hard-coded in the official ACE
SPADE_HIDDEN = 128
ZENCODER_NGF = 32
BN_EPS = 1e-5
LRELU = 0.2

# Where ACE noise comes from: "zero" (none), "fresh" (the global RNG, as the official code) or a seeded generator.
Noise = Literal["zero", "fresh"] | torch.Generator


@dataclass(frozen=True)
class SeanConfig:
    """``SPADEGenerator(opt)`` options that shape the network (HairFast's ``SEAN_OPT`` by default)."""

    ngf: int = 64
    semantic_nc: int = 19  # label channels of the one-hot map
    crop_size: int = 256
    aspect_ratio: float = 1.0
    num_upsampling_layers: Literal["normal", "more"] = "normal"
    spectral: bool = True  # "spectral" in norm_G
    spade_norm: Literal["syncbatch", "batch", "instance"] = "syncbatch"  # the SPADE's own (unused) norm
    spade_kernel: int = 3
    style_dim: int = STYLE_DIM  # 512 in the official code (smaller only for quick tests)

    def __post_init__(self):
        if self.num_upsampling_layers not in ("normal", "more"):
            raise ValueError(f"num_upsampling_layers {self.num_upsampling_layers!r} is not supported "
                             "(the official forward does not run up_4 of 'most')")
        if self.semantic_nc > STYLE_CLASSES:
            raise ValueError(f"semantic_nc {self.semantic_nc} > {STYLE_CLASSES} style classes (fc_mu0..18)")

    @property
    def base_size(self) -> tuple[int, int]:
        """(height, width) of the first feature map: crop_size / 2^(5 or 6)."""
        sw = self.crop_size // (2 ** (5 if self.num_upsampling_layers == "normal" else 6))
        return round(sw / self.aspect_ratio), sw

    @classmethod
    def from_constructor(cls, constructor: Mapping[str, Any]) -> SeanConfig:
        """From a fixture constructor's ``opt`` (HairFast's ``SEAN_OPT`` fields)."""
        opt = dict(constructor.get("opt", constructor))
        semantic_nc = opt.get("semantic_nc")
        if semantic_nc is None:
            semantic_nc = (opt.get("label_nc", 19) + int(bool(opt.get("contain_dontcare_label", False)))
                           + int(not opt.get("no_instance", True)))
        norm_g = opt.get("norm_G", "spectralspadesyncbatch3x3")
        parsed = re.fullmatch(r"(spectral)?spade(\D+)(\d)x\d", norm_g)
        if parsed is None:
            raise ValueError(f"norm_G {norm_g!r} is not a SPADE configuration")
        return cls(ngf=int(opt.get("ngf", 64)), semantic_nc=int(semantic_nc), crop_size=int(opt.get("crop_size", 256)),
                   aspect_ratio=float(opt.get("aspect_ratio", 1.0)),
                   num_upsampling_layers=opt.get("num_upsampling_layers", "normal"),
                   spectral=parsed.group(1) is not None, spade_norm=parsed.group(2),
                   spade_kernel=int(parsed.group(3)))


SEAN_CONFIG = SeanConfig()


# ---------------------------------------------------------------- layers (zero-initialised: weights are loaded)

class Conv2d(nn.Conv2d):
    def reset_parameters(self) -> None:
        for p in self.parameters(recurse=False):
            nn.init.zeros_(p)


class ConvTranspose2d(nn.ConvTranspose2d):
    def reset_parameters(self) -> None:
        for p in self.parameters(recurse=False):
            nn.init.zeros_(p)


class Linear(nn.Linear):
    def reset_parameters(self) -> None:
        for p in self.parameters(recurse=False):
            nn.init.zeros_(p)


class SpectralNormConv2d(nn.Module):
    """A conv whose weight is ``weight_orig / sigma``, ``sigma = u . (weight_orig.reshape(out, -1) @ v)`` with the
    stored vectors (torch's ``spectral_norm`` keys and eval behaviour; no power iteration)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, padding: int = 0, bias: bool = True):
        super().__init__()
        self.padding = padding
        self.weight_orig = nn.Parameter(torch.zeros(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.register_buffer("weight_u", torch.zeros(out_ch))
        self.register_buffer("weight_v", torch.zeros(in_ch * kernel * kernel))

    def sigma(self) -> Tensor:
        w = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        return torch.dot(self.weight_u, torch.mv(w, self.weight_v))

    def weight(self) -> Tensor:
        return self.weight_orig / self.sigma()

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)

    @torch.no_grad()
    def derive_vectors(self, u_draw: Tensor) -> None:
        """``u, v`` from one power iteration started at ``u_draw`` (the fill recipe for rule-filled weights)."""
        w = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        u0 = F.normalize(u_draw.to(w), dim=0, eps=1e-12)
        v = F.normalize(torch.mv(w.t(), u0), dim=0, eps=1e-12)
        u = F.normalize(torch.mv(w, v), dim=0, eps=1e-12)
        self.weight_u.copy_(u)
        self.weight_v.copy_(v)


def block_conv(in_ch: int, out_ch: int, kernel: int, spectral: bool, bias: bool = True) -> nn.Module:
    if spectral:
        return SpectralNormConv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
    return Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)


class RunningBatchNorm(nn.Module):
    """SEAN's ``SynchronizedBatchNorm2d(affine=False)`` at inference: normalised by the running statistics."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, training=False, eps=BN_EPS)


def spade_own_norm(kind: str, channels: int) -> nn.Module:
    """The norm a SPADE constructs but never uses (kept so the checkpoint's buffers load)."""
    if kind in ("syncbatch", "batch"):
        return RunningBatchNorm(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    raise ValueError(f"unknown SPADE norm {kind!r}")


def one_hot_labels(labels: Tensor, classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Class ids [B,1,H,W] or [B,H,W] (any numeric dtype) -> one-hot [B,classes,H,W]."""
    if labels.ndim == 4:
        if labels.shape[1] != 1:
            raise ValueError(f"labels must be [B,1,H,W] or [B,H,W] class ids, got {tuple(labels.shape)}")
        labels = labels[:, 0]
    if labels.ndim != 3:
        raise ValueError(f"labels must be [B,1,H,W] or [B,H,W] class ids, got {tuple(labels.shape)}")
    ids = labels.long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= classes):
        raise ValueError(f"label ids must lie in 0..{classes - 1}")
    return F.one_hot(ids, classes).permute(0, 3, 1, 2).to(dtype)


def ace_noise(x: Tensor, scale: Tensor, noise: Noise) -> Tensor | None:
    """ACE's additive noise ``randn(B, W, H, 1) * scale`` as [B,C,H,W]; ``None`` for ``"zero"``."""
    if isinstance(noise, str) and noise == "zero":
        return None
    b, _, h, w = x.shape
    generator = noise if isinstance(noise, torch.Generator) else None
    if generator is None and noise != "fresh":
        raise ValueError(f"noise must be 'zero', 'fresh' or a torch.Generator, got {noise!r}")
    draw = torch.randn(b, w, h, 1, generator=generator, device=x.device, dtype=x.dtype)
    return draw.transpose(1, 3) * scale.view(1, -1, 1, 1)


# ---------------------------------------------------------------- SPADE / ACE / residual block

class SPADE(nn.Module):
    """Label-only modulation: ``gamma, beta = conv(relu(conv(seg)))``."""

    def __init__(self, channels: int, cfg: SeanConfig):
        super().__init__()
        k = cfg.spade_kernel
        self.param_free_norm = spade_own_norm(cfg.spade_norm, channels)  # unused in forward (as official)
        self.mlp_shared = nn.Sequential(Conv2d(cfg.semantic_nc, SPADE_HIDDEN, k, padding=k // 2), nn.ReLU())
        self.mlp_gamma = Conv2d(SPADE_HIDDEN, channels, k, padding=k // 2)
        self.mlp_beta = Conv2d(SPADE_HIDDEN, channels, k, padding=k // 2)

    def forward(self, seg: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.mlp_shared(seg)
        return self.mlp_gamma(hidden), self.mlp_beta(hidden)


class ACE(nn.Module):
    """SEAN's normalisation: running-stat BN of ``x + noise``, modulated by SPADE and (with ``use_style``) by the
    per-class style codes painted over their regions, mixed by learned sigmoid weights."""

    def __init__(self, channels: int, cfg: SeanConfig, use_style: bool = True):
        super().__init__()
        self.use_style = use_style
        self.Spade = SPADE(channels, cfg)
        self.blending_gamma = nn.Parameter(torch.zeros(1))
        self.blending_beta = nn.Parameter(torch.zeros(1))
        self.noise_var = nn.Parameter(torch.zeros(channels))
        self.param_free_norm = RunningBatchNorm(channels)
        if use_style:
            for j in range(STYLE_CLASSES):
                self.add_module(f"fc_mu{j}", Linear(cfg.style_dim, cfg.style_dim))
            self.conv_gamma = Conv2d(cfg.style_dim, channels, 3, padding=1)
            self.conv_beta = Conv2d(cfg.style_dim, channels, 3, padding=1)

    def class_styles(self, codes: Tensor) -> Tensor:
        """``relu(fc_mu_j(code_j))`` for every class j: [B,K,512] -> [B,K,512]."""
        return torch.stack([F.relu(getattr(self, f"fc_mu{j}")(codes[:, j])) for j in range(codes.shape[1])], dim=1)

    def style_modulation(self, styles: Tensor, seg: Tensor) -> tuple[Tensor, Tensor]:
        """``conv_gamma`` / ``conv_beta`` of the style map (each class's style painted over its pixels).

        The map is ``sum_j styles[:, j] (x) seg_j``, so by linearity the 512-channel convs equal convs of the
        K-channel one-hot map with per-sample kernels ``A[o, j] = sum_c W[o, c] styles[j, c]`` (K/512 of the
        work; only the rounding differs)."""
        b = styles.shape[0]
        k, h, w = seg.shape[1:]
        seg = seg.expand(b, -1, -1, -1)  # a target map shared by the batch
        weight = torch.cat([self.conv_gamma.weight, self.conv_beta.weight])  # [2C,512,3,3]
        bias = torch.cat([self.conv_gamma.bias, self.conv_beta.bias])
        kernels = torch.einsum("ocxy,bjc->bojxy", weight, styles)  # [B,2C,K,3,3]
        out = F.conv2d(seg.reshape(1, b * k, h, w), kernels.reshape(-1, k, *weight.shape[2:]),
                       padding=weight.shape[-1] // 2, groups=b)
        out = out.reshape(b, -1, h, w) + bias.view(1, -1, 1, 1)
        gamma, beta = out.chunk(2, dim=1)
        return gamma, beta

    def forward(self, x: Tensor, seg: Tensor, codes: Tensor | None, noise: Noise = "zero") -> Tensor:
        """``seg``: one-hot labels already resized to ``x``; ``codes``: [B,19,512] (needed with the style path)."""
        added = ace_noise(x, self.noise_var, noise)
        normalized = self.param_free_norm(x if added is None else x + added)
        gamma, beta = self.Spade(seg)
        if self.use_style:
            if codes is None:
                raise ValueError("this ACE has a style path: style codes are required")
            gamma_avg, beta_avg = self.style_modulation(self.class_styles(codes[:, :seg.shape[1]]), seg)
            mix_gamma = torch.sigmoid(self.blending_gamma)
            mix_beta = torch.sigmoid(self.blending_beta)
            gamma = mix_gamma * gamma_avg + (1 - mix_gamma) * gamma
            beta = mix_beta * beta_avg + (1 - mix_beta) * beta
        return normalized * (1 + gamma) + beta


class SPADEResnetBlock(nn.Module):
    """``shortcut(x) + conv_1(lrelu(ace_1(conv_0(lrelu(ace_0(x))))))``; the shortcut is ``conv_s(ace_s(x))``
    when the width changes."""

    def __init__(self, fin: int, fout: int, cfg: SeanConfig, use_style: bool = True):
        super().__init__()
        fmiddle = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = block_conv(fin, fmiddle, 3, cfg.spectral)
        self.conv_1 = block_conv(fmiddle, fout, 3, cfg.spectral)
        if self.learned_shortcut:
            self.conv_s = block_conv(fin, fout, 1, cfg.spectral, bias=False)
        self.ace_0 = ACE(fin, cfg, use_style)
        self.ace_1 = ACE(fmiddle, cfg, use_style)
        if self.learned_shortcut:
            self.ace_s = ACE(fin, cfg, use_style)

    def forward(self, x: Tensor, seg: Tensor, codes: Tensor | None, noise: Noise = "zero") -> Tensor:
        shortcut = self.conv_s(self.ace_s(x, seg, codes, noise)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.ace_0(x, seg, codes, noise), LRELU))
        dx = self.conv_1(F.leaky_relu(self.ace_1(dx, seg, codes, noise), LRELU))
        return shortcut + dx


# ---------------------------------------------------------------- style encoder

class Zencoder(nn.Module):
    """Image -> [B,512,H/2,W/2] tanh map -> per-class mean over each class's pixels (official ``Zencoder(3, 512)``;
    ``model.N`` indices as in the checkpoint)."""

    def __init__(self, ngf: int = ZENCODER_NGF, style_dim: int = STYLE_DIM):
        super().__init__()
        self.model = nn.Sequential(
            nn.ReflectionPad2d(1), Conv2d(3, ngf, 3), nn.InstanceNorm2d(ngf), nn.LeakyReLU(LRELU),  # 0..3
            Conv2d(ngf, 2 * ngf, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * ngf), nn.LeakyReLU(LRELU),  # 4..6
            Conv2d(2 * ngf, 4 * ngf, 3, stride=2, padding=1), nn.InstanceNorm2d(4 * ngf), nn.LeakyReLU(LRELU),
            ConvTranspose2d(4 * ngf, 8 * ngf, 3, stride=2, padding=1, output_padding=1),  # 10
            # official: InstanceNorm2d(2 * ngf); without affine or running stats it normalises all 8 * ngf channels
            nn.InstanceNorm2d(8 * ngf), nn.LeakyReLU(LRELU),
            nn.ReflectionPad2d(1), Conv2d(8 * ngf, style_dim, 3), nn.Tanh(),  # 13..15
        )

    def forward(self, image: Tensor, seg: Tensor) -> Tensor:
        """``image`` [B,3,H,W], ``seg`` one-hot [B,K,H',W'] -> codes [B,K,512] (zero rows for absent classes)."""
        feats = self.model(image)
        b, c, h, w = feats.shape
        seg = F.interpolate(seg.to(feats.dtype), size=(h, w), mode="nearest").reshape(b, -1, h * w)
        sums = torch.bmm(seg, feats.reshape(b, c, h * w).transpose(1, 2))
        counts = seg.sum(dim=2, keepdim=True)
        return sums / counts.clamp(min=1)


# ---------------------------------------------------------------- generator

def fill_absent_codes(codes: Tensor, median_codes: Tensor) -> Tensor:
    """HairFast's ``decode_sean`` rule: every all-zero row of ``codes`` [B,K,512] becomes the class's median code."""
    median = median_codes.to(codes)[: codes.shape[1]].unsqueeze(0).expand_as(codes)
    absent = (codes == 0).all(dim=-1, keepdim=True)
    return torch.where(absent, median, codes)


class SEANGenerator(nn.Module):
    """SEAN's ``SPADEGenerator`` with its ``Zencoder`` (state-dict keys of ``latest_net_G.pth``).

    ``median_style_codes`` ([19,512], not part of the state dict) must be set before :meth:`decode` /
    :meth:`inpaint`; :func:`load_sean` does it.
    """

    def __init__(self, config: SeanConfig = SEAN_CONFIG):
        super().__init__()
        self.config = config
        nf = config.ngf
        self.Zencoder = Zencoder(style_dim=config.style_dim)
        self.fc = Conv2d(config.semantic_nc, 16 * nf, 3, padding=1)
        self.head_0 = SPADEResnetBlock(16 * nf, 16 * nf, config)
        self.G_middle_0 = SPADEResnetBlock(16 * nf, 16 * nf, config)
        self.G_middle_1 = SPADEResnetBlock(16 * nf, 16 * nf, config)
        self.up_0 = SPADEResnetBlock(16 * nf, 8 * nf, config)
        self.up_1 = SPADEResnetBlock(8 * nf, 4 * nf, config)
        self.up_2 = SPADEResnetBlock(4 * nf, 2 * nf, config)
        self.up_3 = SPADEResnetBlock(2 * nf, nf, config, use_style=False)
        self.conv_img = Conv2d(nf, 3, 3, padding=1)
        self.register_buffer("median_style_codes", None, persistent=False)

    def spectral_convs(self) -> dict[str, SpectralNormConv2d]:
        return {name: m for name, m in self.named_modules() if isinstance(m, SpectralNormConv2d)}

    def one_hot(self, labels: Tensor) -> Tensor:
        return one_hot_labels(labels, self.config.semantic_nc, self.fc.weight.dtype).to(self.fc.weight.device)

    def encode_styles(self, image_0_1: Tensor, labels: Tensor) -> Tensor:
        """Per-class style codes [B,19,512] of images in [0, 1] (HairFast's scale) with class-id maps."""
        image = image_0_1.to(self.fc.weight)
        return self.Zencoder(image, self.one_hot(labels))

    def render(self, style_codes: Tensor, target_labels: Tensor, noise: Noise = "fresh") -> Tensor:
        """The generator on the target label map with the codes as given (no median replacement): [B,3,H,W] in
        (-1, 1). A single target map is shared by every code set."""
        codes = style_codes.to(self.fc.weight)
        seg = self.one_hot(target_labels)  # a shared map stays [1,...]: its label-only branches run once
        if seg.shape[0] not in (1, codes.shape[0]):
            raise ValueError(f"{seg.shape[0]} target maps for {codes.shape[0]} code sets")
        resized: dict[tuple[int, int], Tensor] = {}

        def seg_at(x: Tensor) -> Tensor:
            size = (x.shape[2], x.shape[3])
            if size not in resized:
                resized[size] = F.interpolate(seg, size=size, mode="nearest")
            return resized[size]

        x = self.fc(F.interpolate(seg, size=self.config.base_size, mode="nearest"))
        x = x.expand(codes.shape[0], -1, -1, -1)
        x = self.head_0(x, seg_at(x), codes, noise)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.G_middle_0(x, seg_at(x), codes, noise)
        if self.config.num_upsampling_layers == "more":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.G_middle_1(x, seg_at(x), codes, noise)
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(x, seg_at(x), codes, noise)
        return torch.tanh(self.conv_img(F.leaky_relu(x, LRELU)))

    def decode(self, style_codes: Tensor, target_labels: Tensor, noise: Noise = "fresh") -> Tensor:
        """HairFast's ``decode_sean`` for every batch element: absent (all-zero) code rows -> median codes, then
        :meth:`render` -> [B,3,H,W] in (-1, 1)."""
        if self.median_style_codes is None:
            raise RuntimeError("median style codes are not set (load_sean sets them)")
        return self.render(fill_absent_codes(style_codes.to(self.fc.weight), self.median_style_codes),
                           target_labels, noise)

    def inpaint(self, image_0_1: Tensor, labels: Tensor, target_labels: Tensor, noise: Noise = "fresh") -> Tensor:
        """HairFast's SEAN step: each image's region styles re-rendered on the target label map (one shared map
        [1,1,H,W] or one per image) -> [B,3,H,W] in (-1, 1)."""
        return self.decode(self.encode_styles(image_0_1, labels), target_labels, noise)


# ---------------------------------------------------------------- fill recipe (parity rule, --fill-weights)

def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Fill of one state-dict entry, identical to the ``sean`` fixture's recipe. Spectral-norm vectors are
    ``const``: :func:`derive_spectral_vectors` computes them from the filled weights."""
    name = key.rsplit(".", 1)[-1]
    if name == "num_batches_tracked":
        return {"kind": "int_zero"}
    if name in ("weight_u", "weight_v"):
        return {"kind": "const"}
    if name == "running_mean":
        return {"kind": "normal", "mean": 0.0, "std": 0.1}
    if name == "running_var":
        return {"kind": "normal", "mean": 1.0, "std": 0.0}
    if name in ("blending_gamma", "blending_beta"):
        return {"kind": "normal", "mean": 0.0, "std": 1.0}
    if name == "noise_var":
        return {"kind": "normal", "mean": 0.0, "std": 0.0}
    if len(shape) <= 1:  # biases
        return {"kind": "normal", "mean": 0.0, "std": 0.01}
    fan_in = int(np.prod(shape[1:]))
    return {"kind": "normal", "mean": 0.0, "std": float(1.0 / np.sqrt(fan_in))}


def derive_spectral_vectors(generator: nn.Module, namespace: str) -> None:
    """The fill rule's ``u, v`` of every spectral-norm conv: the rule's N(0, 1) draw for ``<name>.weight_u``,
    normalised, then one power iteration against the filled ``weight_orig``."""
    for name, conv in generator.named_modules():
        if isinstance(conv, SpectralNormConv2d):
            draw = fill_value(namespace, f"{name}.weight_u", tuple(conv.weight_u.shape))
            conv.derive_vectors(torch.from_numpy(np.asarray(draw)))


# ---------------------------------------------------------------- loading

def pack_median_style_codes(folder: str | Path, out: str | Path | None = None,
                            style_dim: int = STYLE_DIM) -> np.ndarray:
    """Stack the official ``<folder>/<class>/ACE.npy`` files (class 0..18, 512 float32 each) into [19,512]
    float32; written to ``out`` (``.npy``) when given."""
    folder = Path(folder)
    rows = []
    for j in range(STYLE_CLASSES):
        path = folder / str(j) / "ACE.npy"
        row = np.load(path, allow_pickle=False)
        if row.size != style_dim:
            raise ValueError(f"{path}: expected {style_dim} values, found shape {row.shape}")
        rows.append(np.asarray(row, dtype=np.float32).reshape(style_dim))
    codes = np.stack(rows)
    if out is not None:
        np.save(out, codes)
    return codes


def _official_median_folder(weights: WeightStore) -> Path | None:
    for d in weights.search_dirs:
        for rel in MEDIAN_CODE_DIRS:
            folder = d / rel
            if all((folder / str(j) / "ACE.npy").is_file() for j in range(STYLE_CLASSES)):
                return folder
    return None


def load_median_style_codes(weights: WeightStore, style_dim: int = STYLE_DIM) -> Tensor:
    """The median codes [19,512]: ``sean_median_style_codes.npy`` found by ``weights`` (see
    :data:`MEDIAN_CODES_CHECKPOINT`), else the official per-class folders (:data:`MEDIAN_CODE_DIRS`) in a weight
    directory. With ``weights.fill``: the rule's N(0, 0.25) fill of key ``median_style_codes`` (namespace
    ``hairfast_sean_median_codes``)."""
    if weights.fill:
        draw = fill_value(MEDIAN_CODES_CHECKPOINT.key, "median_style_codes", (STYLE_CLASSES, style_dim), 0.0, 0.25)
        return torch.from_numpy(np.asarray(draw))
    path = weights.find(MEDIAN_CODES_CHECKPOINT)
    if path is not None:
        codes = np.load(path, allow_pickle=False)
    else:
        folder = _official_median_folder(weights)
        if folder is None:
            raise MissingWeights([MEDIAN_CODES_CHECKPOINT], weights.search_dirs)
        codes = pack_median_style_codes(folder, style_dim=style_dim)
    codes = np.asarray(codes, dtype=np.float32)
    if codes.shape != (STYLE_CLASSES, style_dim):
        raise ValueError(f"median style codes: expected [{STYLE_CLASSES},{style_dim}], found {codes.shape}")
    return torch.from_numpy(codes.copy())


def load_sean(weights: WeightStore, device: str | torch.device = "cpu", config: SeanConfig = SEAN_CONFIG,
              median_style_codes: Tensor | None = None) -> SEANGenerator:
    """The SEAN generator (eval, float32, on ``device``) from ``latest_net_G.pth`` found by ``weights``, with its
    median style codes (from ``median_style_codes`` if given, else :func:`load_median_style_codes`). With
    ``weights.fill`` every tensor is filled by the parity rule (namespace ``hairfast_sean``) and the spectral-norm
    vectors are derived as the fixture does (:func:`derive_spectral_vectors`)."""
    if median_style_codes is None:  # first: a missing file fails before the 1 GB network is read
        median_style_codes = load_median_style_codes(weights, config.style_dim)
    generator = SEANGenerator(config)
    weights.load_network(generator, CHECKPOINT, recipe=fill_recipe)
    if weights.fill:
        derive_spectral_vectors(generator, CHECKPOINT.key)
    generator.median_style_codes = torch.as_tensor(median_style_codes, dtype=torch.float32)
    return generator.float().to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------- parity

def _output_name(target: str) -> str:
    return target.split(",")[0].strip().removeprefix("out/").removesuffix("/*")


#: the ops of ``sean`` and how a case shows which one it exercises (see :func:`harness.parity.case_op`)
PARITY_OPS = {"encode_style_codes": Op(call=(r"encode_sean|Zencoder",)),
              "decode_to_target": Op(call=(r"decode_sean",))}


def parity_adapter(fixture: Fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """Builds the generator from the fixture's constructor, loads its filled state dict (strict) and runs
    the Zencoder (``encode_sean``) or the median replacement + render (``decode_sean``, zero noise), as each
    case's spec entry says; outputs by name (else by npz key)."""
    generator = SEANGenerator(SeanConfig.from_constructor(fixture.constructor))
    load_state_dict_into(generator, fixture.torch_state_dict(), f"fixture {fixture.name}")
    generator = generator.float().eval()

    def tensor(case: dict, name: str) -> Tensor:
        ref = case["inputs"][name]
        key = ref if ref in fixture.data else ref.split()[0]  # "out/X (from the previous case)"
        return torch.from_numpy(np.ascontiguousarray(fixture.data[key]))

    def run(case: dict) -> dict[str, np.ndarray]:
        with torch.no_grad():
            op = case_op(case, PARITY_OPS)
            if op == "encode_style_codes":
                results = {"style_codes": generator.encode_styles(tensor(case, "images").float(),
                                                                  tensor(case, "labels"))}
            else:
                generator.median_style_codes = (tensor(case, "median_style_codes").float()
                                                if "median_style_codes" in case["inputs"]
                                                else torch.from_numpy(fixture.consts["median_style_codes"]))
                codes = tensor(case, "style_codes").float()
                effective = fill_absent_codes(codes, generator.median_style_codes)
                results = {"decoded": generator.decode(codes, tensor(case, "target_label"), noise="zero"),
                           "decoder_codes_effective": effective}
        return {name: to_numpy(results[arg_word(name) if arg_word(name) in results else _output_name(target)])
                for name, target in case["outputs"].items()}

    return run


PARITY = {"sean": parity_adapter}
