"""StyleGAN2 generator (rosinality key layout) with the Barbershop/HairFast layer slicing, written for speed.

Parameter and buffer names/shapes are exactly those of rosinality/stylegan2-pytorch ``model.py`` ``Generator``, so
the official ``ffhq.pt`` (``{"g_ema": state_dict, "latent_avg": [512]}``) loads unchanged; a bare NVlabs
stylegan2-ada ``Generator`` state dict (HairMapper's ``StyleGAN2-ada-Generator.pth``) loads too, its keys mapped onto
these (:func:`from_nvlabs_state_dict`). The computation is the same function, reorganised for speed:

* modulation + demodulation are folded into the weight of a batch-1 convolution (the style-independent
  demodulation energies and weight layouts are cached while the weights are frozen); on CPU a batch runs
  sample by sample (measured faster than grouped or batched forms), elsewhere as one shared-weight convolution
  on modulated activations (no grouped convolution);
* the ``sqrt(2)`` gain of the leaky ReLU is folded into weight, bias and noise strength (the leaky ReLU is
  positively homogeneous), the bias rides in the convolution, noise and activation run in place;
* the [1,3,3,1] blur after the transposed convolution is a depthwise convolution, or, at the 1024 stage where
  the transposed convolution is memory bound, folded into its weight (a 6x6 transposed convolution);
* the RGB skip up-sampling (upfirdn2d, up=2) is one depthwise transposed convolution;
* activations are kept channels-last (much faster oneDNN convolutions on CPU).

Stage numbering (HairFast/Barbershop ``start_layer`` / ``end_layer``): stage 0 is 4x4, stage k is 2^(k+2).
Stage k >= 1 uses W+ rows 2k-1, 2k (its two convolutions) and 2k+1 (its RGB layer) and noise buffers
``noise_{2k-1}``, ``noise_{2k}``; stage 0 uses rows 0, 1 and ``noise_0``. ``n_latent = 2 * log2(size) - 2``.

Public API::

    g = Generator(1024)                      # or load_generator(WeightStore(...), device)
    w = g.mapping(z)                         # [B, 512]
    out = g.synthesis(wplus)                 # Synthesis(features, rgb); rgb is the image
    F32, rgb32 = g.synthesis(wplus, end_layer=3)
    image = g.synthesis(wplus2, start_layer=4, layer_in=F32).rgb
    image = g(wplus)                         # = g.synthesis(wplus).rgb
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.method import Checkpoint
from harness.parity import Op, calls, case_op

SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2
DEMOD_EPS = 1e-8
CHANNELS_LAST = torch.channels_last

CHECKPOINT = Checkpoint(
    key="stylegan2_ffhq",
    filename="ffhq.pt",
    source=("HairFast: https://huggingface.co/AIRI-Institute/HairFastGAN (pretrained_models/StyleGAN/ffhq.pt); "
            "Barbershop: https://drive.google.com/file/d/1AT6bNR2ppK8f2ETL_evT27f3R_oyWNHS "
            "(ZPdesu/Barbershop utils/model_utils.py, pretrained_models/ffhq.pt)"),
    purpose="StyleGAN2 FFHQ 1024 generator, rosinality format {'g_ema': state_dict, 'latent_avg': [512]}",
    download=("hf:AIRI-Institute/HairFastGAN/pretrained_models/StyleGAN/ffhq.pt",
              "gdrive:1AT6bNR2ppK8f2ETL_evT27f3R_oyWNHS"),
)
CHECKPOINTS = [CHECKPOINT]

# Output resolution from which the up-sampling convolution folds the blur into a 6x6 transposed convolution.
# Measured on 2 CPU cores: it pays only at 1024 (64 -> 32 channels, memory bound); below, the 4x larger
# transposed convolution costs more than the separate depthwise blur it saves.
FOLD_BLUR_FROM = 1024


@dataclass(frozen=True)
class GeneratorConfig:
    """Constructor arguments of the official ``Generator`` and the sizes derived from them."""

    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)
    lr_mlp: float = 0.01

    def __post_init__(self):
        if self.size < 4 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 4, got {self.size}")
        if len(self.blur_kernel) % 2:
            raise ValueError("blur_kernel must have an even length")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def last_stage(self) -> int:
        """Index of the last synthesis stage (its resolution is ``size``)."""
        return self.log_size - 2

    @property
    def n_stages(self) -> int:
        return self.last_stage + 1

    @property
    def n_latent(self) -> int:
        """Rows of W+."""
        return 2 * self.log_size - 2

    @property
    def num_noise_layers(self) -> int:
        return 2 * self.last_stage + 1

    def channels(self, resolution: int) -> int:
        """Feature channels at ``resolution`` (rosinality's ``channels`` dict)."""
        cm = self.channel_multiplier
        table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
                 1024: 16 * cm, 2048: 8 * cm}
        return table[resolution]

    @staticmethod
    def resolution(stage: int) -> int:
        return 2 ** (stage + 2)


class Synthesis(NamedTuple):
    """Output of :meth:`Generator.synthesis`: ``features`` of the last stage run (post-activation output of its
    second convolution, channels-last memory format) and the RGB accumulated so far (at the last stage, ``rgb``
    is the image; contiguous)."""

    features: Tensor
    rgb: Tensor


# ---------------------------------------------------------------- small pure functions

def make_blur_kernel(taps: Sequence[float], gain: float = 1.0) -> Tensor:
    """Normalised separable 2-D kernel (outer product of ``taps``) times ``gain`` (rosinality ``make_kernel``)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None] if k.ndim == 1 else k
    return k / k.sum() * gain


def depthwise_weight(kernel: Tensor, channels: int, flip: bool) -> Tensor:
    """``kernel`` as a [channels, 1, kh, kw] depthwise weight; ``flip`` turns F.conv2d's correlation into a true
    convolution (what upfirdn2d computes)."""
    k = kernel.flip(0, 1) if flip else kernel
    return k.expand(channels, 1, *kernel.shape)


def fold_blur(weight: Tensor, kernel: Tensor) -> Tensor:
    """Full 2-D convolution of every [kh, kw] slice of ``weight`` [O, I, kh, kw] with ``kernel`` -> bigger kernels.

    A transposed convolution with the result equals the transposed convolution with ``weight`` followed by the
    blur (when the blur padding is symmetric)."""
    out_c, in_c, kh, kw = weight.shape
    n = kernel.shape[0]
    flat = F.pad(weight.reshape(out_c * in_c, 1, kh, kw), (n - 1, n - 1, n - 1, n - 1))
    folded = F.conv2d(flat, kernel.flip(0, 1)[None, None].to(weight.dtype))
    return folded.view(out_c, in_c, kh + n - 1, kw + n - 1)


def upsample_rgb(rgb: Tensor, kernel: Tensor) -> Tensor:
    """upfirdn2d(up=2, pad=(n/2, n/2 - 1)) as one depthwise transposed convolution (kernel already x4)."""
    n = kernel.shape[0]
    c = rgb.shape[1]
    return F.conv_transpose2d(rgb, depthwise_weight(kernel.to(rgb.dtype), c, flip=False), stride=2,
                              padding=n // 2 - 1, groups=c)


def to_channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=CHANNELS_LAST) if x.ndim == 4 else x


# ---------------------------------------------------------------- modules (rosinality key layout)

class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with run-time weight scaling ``lr_mul / sqrt(in)`` and bias scaling ``lr_mul``;
    ``activate`` adds the scaled leaky ReLU (``leaky_relu(x + b, 0.2) * sqrt(2)``)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        out = torch.addmm(self.bias * self.lr_mul, x, self.weight.t(), alpha=self.scale) if x.ndim == 2 else \
            F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(out, LRELU_SLOPE) * SQRT2 if self.activate else out


class MappingNetwork(nn.Sequential):
    """z -> w: PixelNorm then ``n_mlp`` EqualLinear layers (keys ``style.1`` ... ``style.n``)."""

    def __init__(self, style_dim: int, n_mlp: int, lr_mlp: float):
        super().__init__(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activate=True)
                                        for _ in range(n_mlp)])


class Blur(nn.Module):
    """Holds the blur kernel buffer (``kernel``) of an up-sampling convolution and its padding."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], gain: float = 1.0):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps, gain))
        self.pad = pad


class Upsample(nn.Module):
    """Holds the RGB up-sampling kernel buffer (``kernel``, x4 gain)."""

    def __init__(self, taps: Sequence[float], factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps, factor ** 2))


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution; weight [1, out, in, k, k], ``modulation`` maps w to per-input-channel scales."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False, blur_kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), gain=factor ** 2)
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def styles(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-sample input scales ``s`` [B, in] (including the 1/sqrt(fan_in) weight scale) and demodulation
        factors ``d`` [B, out] (``None`` without demodulation)."""
        s = self.modulation(w) * self.scale
        if not self.demodulate:
            return s, None
        energy = self._derived("energy", lambda wt: wt[0].pow(2).sum(dim=(2, 3)))  # [out, in]
        return s, torch.rsqrt(F.linear(s.pow(2), energy) + DEMOD_EPS)

    def _derived(self, name: str, make) -> Tensor:
        """``make(self.weight)``, cached while the weight is unchanged and needs no gradient."""
        weight = self.weight
        if weight.requires_grad and torch.is_grad_enabled():
            return make(weight)
        sources = [weight, self.blur.kernel] if self.upsample else [weight]
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        cache = self.__dict__.setdefault("_cache", {})
        hit = cache.get(name)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = cache[name] = (key, make(weight).contiguous())
        return hit[1]

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_cache", None)  # .to() / .float() / .cuda(): new tensors, drop derived ones
        return super()._apply(fn, *args, **kwargs)

    def _fold(self, x: Tensor) -> bool:
        """Fold the blur into the transposed convolution at this input size?"""
        return self.upsample and self.blur.pad[0] == self.blur.pad[1] and 2 * x.shape[-1] >= FOLD_BLUR_FROM

    def _conv_weight(self, fold: bool) -> Tensor:
        """The unmodulated weight in the layout of the convolution that runs: [out, in, k, k] for conv2d,
        [in, out, k', k'] for the (blur-folded) transposed convolution."""
        if not self.upsample:
            return self.weight[0]
        if fold:
            return self._derived("folded_t", lambda wt: fold_blur(wt[0], self.blur.kernel).transpose(0, 1))
        return self._derived("transposed", lambda wt: wt[0].transpose(0, 1))

    def forward(self, x: Tensor, w: Tensor, bias: Tensor | None = None, gain: float = 1.0) -> Tensor:
        """``gain * (modulated_conv(x) + bias)``; ``bias`` [out] is added before the gain."""
        s, d = self.styles(w)
        out_scale = d * gain if d is not None else s.new_full((s.shape[0], self.out_channel), gain)
        bias = None if bias is None else bias * gain
        fold = self._fold(x)
        base = self._conv_weight(fold)
        if x.shape[0] == 1:  # fold modulation, demodulation and gain into the weight
            if self.upsample:  # [in, out, k, k]
                weight = base * (s[0][:, None] * out_scale[0][None, :])[:, :, None, None]
            else:  # [out, in, k, k]
                weight = base * (out_scale[0][:, None] * s[0][None, :])[:, :, None, None]
            return self._conv(x, weight, bias, fold)
        # batch > 1: modulate the activations, one shared-weight convolution for the whole batch
        out = self._conv(x * s[:, :, None, None], base, None, fold)
        if bias is None:
            return out.mul_(out_scale[:, :, None, None])
        return torch.addcmul(bias.view(1, -1, 1, 1), out, out_scale[:, :, None, None])

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, fold: bool) -> Tensor:
        if not self.upsample:
            return F.conv2d(x, weight, bias, padding=self.padding)
        kernel = self.blur.kernel.to(weight.dtype)
        pad0, pad1 = self.blur.pad
        if fold:
            return F.conv_transpose2d(x, weight, bias, stride=2, padding=kernel.shape[0] - 1 - pad0)
        out = F.conv_transpose2d(x, weight, stride=2)
        if pad0 != pad1:
            out = F.pad(out, (pad0, pad1, pad0, pad1))
            pad0 = 0
        return F.conv2d(out, depthwise_weight(kernel, out.shape[1], flip=True), bias, padding=pad0,
                        groups=out.shape[1])


class NoiseInjection(nn.Module):
    """Per-layer noise strength (``weight`` [1])."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


class FusedLeakyReLU(nn.Module):
    """Holds the activation bias (``bias`` [C]) of ``leaky_relu(x + bias, 0.2) * sqrt(2)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))


class StyledConv(nn.Module):
    """Modulated conv -> + strength * noise -> + bias -> leaky ReLU(0.2) * sqrt(2)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        # sqrt(2) * leaky_relu(z) == leaky_relu(sqrt(2) * z): the gain goes into weight, bias and noise strength
        out = self.conv(x, w, self.activate.bias, gain=SQRT2)
        out = out.add_(noise * (self.noise.weight * SQRT2))
        return F.leaky_relu_(out, LRELU_SLOPE)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB + bias, plus the up-sampled RGB of the previous stage."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, w, self.bias.view(3))
        if skip is not None:
            out = out.add_(upsample_rgb(skip, self.upsample.kernel))
        return out


class ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))


NoiseSpec = str | torch.Generator | Sequence[Tensor | None]  # see Generator.noise_tensors


class Generator(nn.Module):
    """StyleGAN2 generator; see the module docstring for the API and the stage numbering.

    ``n_latent``: rows of W+; ``channels(res)``: feature channels at a resolution; ``n_stages`` / ``last_stage``;
    ``num_noise_layers``: number of ``noises.noise_i`` buffers. ``mean_latent(n)``: mean w of n random z.

    Noise: the default ``noise="buffers"`` is deterministic (the official ``randomize_noise=False``, what the
    parity fixtures use). HairFast/Barbershop inference used ``randomize_noise=True`` (fresh noise per call);
    pass a seeded ``torch.Generator`` for that behaviour, reproducibly.
    """

    def __init__(self, size: int = 1024, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 blur_kernel: Sequence[int] = (1, 3, 3, 1), lr_mlp: float = 0.01):
        super().__init__()
        cfg = GeneratorConfig(size, style_dim, n_mlp, channel_multiplier, tuple(blur_kernel), lr_mlp)
        self.config = cfg
        self.size, self.style_dim = size, style_dim
        self.style = MappingNetwork(style_dim, n_mlp, lr_mlp)
        ch4 = cfg.channels(4)
        self.input = ConstantInput(ch4)
        self.conv1 = StyledConv(ch4, ch4, 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch4, style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(cfg.num_noise_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_channel = ch4
        for stage in range(1, cfg.n_stages):
            out_channel = cfg.channels(cfg.resolution(stage))
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                                         blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel))
            in_channel = out_channel

    # ------------------------------------------------------------ sizes
    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    @property
    def n_stages(self) -> int:
        return self.config.n_stages

    @property
    def last_stage(self) -> int:
        return self.config.last_stage

    @property
    def num_noise_layers(self) -> int:
        return self.config.num_noise_layers

    def channels(self, resolution: int) -> int:
        return self.config.channels(resolution)

    # ------------------------------------------------------------ mapping
    def mapping(self, z: Tensor) -> Tensor:
        """z [B, style_dim] -> w [B, style_dim]."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> Tensor:
        """Mean of ``mapping(z)`` over ``n`` standard-normal z (drawn from ``generator``) -> [style_dim]."""
        device = self.input.input.device
        gen_device = generator.device if generator is not None else device
        z = torch.randn(n, self.style_dim, generator=generator, device=gen_device).to(device)
        return self.mapping(z.to(self.input.input.dtype)).mean(0)

    # ------------------------------------------------------------ synthesis
    def noise_tensors(self, noise: NoiseSpec, batch: int, layers: Sequence[int]) -> dict[int, Tensor]:
        """Noise for the given noise-layer indices: the stored buffers (``"buffers"``), fresh N(0,1) from the
        global RNG (``"random"``, the official ``randomize_noise=True``) or from a ``torch.Generator``, or an
        explicit sequence indexed by layer (entries [1 or B, 1, r, r]; ``None`` entries use the buffer)."""
        buffers = {i: getattr(self.noises, f"noise_{i}") for i in layers}
        if isinstance(noise, str) and noise == "buffers":
            return buffers
        if isinstance(noise, str) and noise == "random" or isinstance(noise, torch.Generator):
            gen = noise if isinstance(noise, torch.Generator) else None
            out = {}
            for i in layers:
                ref = buffers[i]
                device = gen.device if gen is not None else ref.device
                out[i] = torch.randn(batch, 1, *ref.shape[2:], generator=gen, device=device,
                                     dtype=ref.dtype).to(ref.device)
            return out
        if isinstance(noise, str):
            raise ValueError(f"unknown noise mode {noise!r} (use 'buffers', 'random', a torch.Generator or tensors)")
        noise = list(noise)
        if len(noise) != self.num_noise_layers:
            raise ValueError(f"expected {self.num_noise_layers} noise tensors, got {len(noise)}")
        return {i: buffers[i] if noise[i] is None else noise[i] for i in layers}

    def expand_latent(self, latent: Tensor) -> Tensor:
        """W [B, style_dim] (repeated to every row) or W+ [B, n_latent, style_dim] -> W+."""
        if latent.ndim == 2:
            return latent[:, None, :].expand(-1, self.n_latent, -1)
        if latent.ndim != 3 or latent.shape[1] != self.n_latent:
            raise ValueError(f"latent must be [B, {self.style_dim}] or [B, {self.n_latent}, {self.style_dim}], "
                             f"got {tuple(latent.shape)}")
        return latent

    def synthesis(self, latent: Tensor, *, start_layer: int = 0, end_layer: int | None = None,
                  layer_in: Tensor | None = None, skip: Tensor | None = None,
                  noise: NoiseSpec = "buffers") -> Synthesis:
        """Run stages ``start_layer`` .. ``end_layer`` (default: the last) -> ``Synthesis(features, rgb)`` at
        resolution 2^(end_layer+2) (``features`` comes channels-last; use ``reshape``, not ``view``).

        ``start_layer=s >= 1`` feeds ``layer_in`` (the output of stage s-1: [B, channels(2^(s+1)), 2^(s+1),
        2^(s+1)]) to stage s; the RGB path restarts there from ``skip`` (RGB at 2^(s+1), default none).
        ``latent`` is W [B, 512] or W+ [B, n_latent, 512]; ``noise`` see :meth:`noise_tensors`.
        """
        last = self.last_stage
        end = last if end_layer is None else min(int(end_layer), last)
        start = int(start_layer)
        if not 0 <= start <= end:
            raise ValueError(f"need 0 <= start_layer <= end_layer <= {last}, got {start_layer}, {end_layer}")
        wplus = self.expand_latent(latent)
        batch = wplus.shape[0]
        layers = [0] if start == 0 else []
        layers += [j for k in range(max(start, 1), end + 1) for j in (2 * k - 1, 2 * k)]
        noises = self.noise_tensors(noise, batch, layers)
        if start == 0:
            if layer_in is not None or skip is not None:
                raise ValueError("layer_in / skip are inputs of start_layer >= 1")
        else:
            res = self.config.resolution(start - 1)
            expected = (batch, self.channels(res), res, res)
            if layer_in is None or tuple(layer_in.shape) != expected:
                got = None if layer_in is None else tuple(layer_in.shape)
                raise ValueError(f"start_layer={start} needs layer_in of shape {expected}, got {got}")
            if skip is not None and tuple(skip.shape) != (batch, 3, res, res):
                raise ValueError(f"skip must be [{batch}, 3, {res}, {res}], got {tuple(skip.shape)}")
        if batch == 1 or not self.split_batch(wplus.device):
            return self._run_stages(wplus, layer_in, skip, noises, start, end)
        parts = []
        for i in range(batch):
            one = slice(i, i + 1)
            parts.append(self._run_stages(
                wplus[one], None if layer_in is None else layer_in[one], None if skip is None else skip[one],
                {j: t[one] if t.shape[0] == batch else t for j, t in noises.items()}, start, end))
        return Synthesis(torch.cat([p.features for p in parts]), torch.cat([p.rgb for p in parts]))

    @staticmethod
    def split_batch(device: torch.device) -> bool:
        """Run a batch sample by sample (weight modulation, batch-1 convolutions)? On CPU that is faster than
        one shared-weight convolution on modulated activations (measured 2x at 1024, batch 3); on GPUs the
        batched form is used."""
        return device.type == "cpu"

    def _run_stages(self, wplus: Tensor, layer_in: Tensor | None, skip: Tensor | None,
                    noises: dict[int, Tensor], start: int, end: int) -> Synthesis:
        if start == 0:
            x = to_channels_last(self.input.input.expand(wplus.shape[0], -1, -1, -1))
            x = self.conv1(x, wplus[:, 0], noises[0])
            rgb = self.to_rgb1(x, wplus[:, 1])
        else:
            x, rgb = to_channels_last(layer_in), skip
        for k in range(max(start, 1), end + 1):
            up_conv, conv, to_rgb = self.convs[2 * k - 2], self.convs[2 * k - 1], self.to_rgbs[k - 1]
            x = up_conv(x, wplus[:, 2 * k - 1], noises[2 * k - 1])
            x = conv(x, wplus[:, 2 * k], noises[2 * k])
            rgb = to_rgb(x, wplus[:, 2 * k + 1], rgb)
        return Synthesis(x, rgb.contiguous())

    def forward(self, latent: Tensor, **kwargs) -> Tensor:
        """The image: ``synthesis(latent, **kwargs).rgb``."""
        return self.synthesis(latent, **kwargs).rgb


# ---------------------------------------------------------------- fill recipe and loading

def fill_recipe(key: str, shape: tuple[int, ...], lr_mlp: float = 0.01) -> dict[str, Any]:
    """The parity fill of every state-dict entry (equal to the fixtures' spec)."""
    name = key.rsplit(".", 1)[-1]
    if name == "kernel":
        return {"kind": "const"}
    if key.startswith("style."):
        return {"kind": "normal", "mean": 0.0, "std": (1.0 if name == "weight" else 0.1) / lr_mlp}
    if ".modulation." in key:
        return {"kind": "normal", "mean": 0.0, "std": 1.0} if name == "weight" else \
            {"kind": "normal", "mean": 1.0, "std": 0.1}
    if key.endswith("noise.weight"):
        return {"kind": "normal", "mean": 0.0, "std": 0.2}
    if name == "bias":  # activate.bias, to_rgb*.bias
        return {"kind": "normal", "mean": 0.0, "std": 0.1}
    return {"kind": "normal", "mean": 0.0, "std": 1.0}  # conv weights, constant input, noise buffers


# ---------------------------------------------------------------- the NVlabs stylegan2-ada layout

NVLABS_FILTER = "resample_filter"  # [4,4] buffers of the official blocks and layers: the fixed [1,3,3,1] filter


def is_nvlabs_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` is an NVlabs stylegan2-ada(-pytorch) ``Generator`` state dict (``mapping.fc0.weight``,
    ``synthesis.b4.const``, ...) rather than rosinality's."""
    return "synthesis.b4.const" in state


def nvlabs_key_map(size: int, n_mlp: int = 8) -> dict[str, str]:
    """NVlabs ``Generator`` key -> rosinality key, for every parameter and buffer but the ``resample_filter``
    buffers and ``mapping.w_avg``.

    Facts (NVlabs ``training/networks.py``; both repositories convert the TensorFlow release the same way, the
    up-sampling convolution's weight flipped in both): ``mapping.fc{i}`` = ``style.{i+1}``; block ``b{r}`` is
    stage ``k = log2(r) - 2``: ``b4.const`` = ``input.input``, ``b4.conv1`` = ``conv1``, ``b4.torgb`` =
    ``to_rgb1``; for ``k >= 1`` ``conv0`` (up-sampling) = ``convs.{2k-2}``, ``conv1`` = ``convs.{2k-1}``, ``torgb`` =
    ``to_rgbs.{k-1}``. Inside a layer: ``weight`` = ``conv.weight``, ``affine`` = ``conv.modulation``, ``bias`` =
    ``activate.bias`` (``bias`` of an RGB layer), ``noise_strength`` = ``noise.weight``, ``noise_const`` =
    ``noises.noise_{2k-1}`` (``conv0``) / ``noises.noise_{2k}`` (``conv1``; ``noise_0`` at 4x4)."""
    out = {}
    for i in range(n_mlp):
        for name in ("weight", "bias"):
            out[f"mapping.fc{i}.{name}"] = f"style.{i + 1}.{name}"
    out["synthesis.b4.const"] = "input.input"

    def layer(src: str, dst: str, noise: int) -> None:
        out[f"{src}.weight"] = f"{dst}.conv.weight"
        out[f"{src}.affine.weight"] = f"{dst}.conv.modulation.weight"
        out[f"{src}.affine.bias"] = f"{dst}.conv.modulation.bias"
        out[f"{src}.bias"] = f"{dst}.activate.bias"
        out[f"{src}.noise_strength"] = f"{dst}.noise.weight"
        out[f"{src}.noise_const"] = f"noises.noise_{noise}"

    def torgb(src: str, dst: str) -> None:
        out[f"{src}.weight"] = f"{dst}.conv.weight"
        out[f"{src}.affine.weight"] = f"{dst}.conv.modulation.weight"
        out[f"{src}.affine.bias"] = f"{dst}.conv.modulation.bias"
        out[f"{src}.bias"] = f"{dst}.bias"

    layer("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for stage in range(1, int(math.log2(size)) - 1):
        block = f"synthesis.b{2 ** (stage + 2)}"
        layer(f"{block}.conv0", f"convs.{2 * stage - 2}", 2 * stage - 1)
        layer(f"{block}.conv1", f"convs.{2 * stage - 1}", 2 * stage)
        torgb(f"{block}.torgb", f"to_rgbs.{stage - 1}")
    return out


def from_nvlabs_state_dict(state: Mapping[str, Tensor], reference: Mapping[str, Tensor],
                           size: int, n_mlp: int = 8) -> tuple[dict[str, Tensor], Tensor | None]:
    """An NVlabs stylegan2-ada ``Generator`` state dict as rosinality's (shapes from ``reference``, our generator's
    own state dict: tensors are reshaped, never transposed) and its ``mapping.w_avg`` (``None`` if absent).

    Refused (``ValueError``, naming the keys): a key we do not know (e.g. ``mapping.embed`` of a conditional
    generator, ``skip`` of the 'resnet' architecture), a missing one, a size that does not reshape, or a
    ``resample_filter`` other than the normalised [1,3,3,1] filter our generator is built with."""
    mapping = nvlabs_key_map(size, n_mlp)
    filt = make_blur_kernel((1, 3, 3, 1))
    unknown, bad_filter, converted = [], [], {}
    for key, value in state.items():
        if key.endswith(NVLABS_FILTER):
            if tuple(value.shape) != (4, 4) or not torch.allclose(value.float().cpu(), filt, atol=1e-6):
                bad_filter.append(key)
            continue
        if key == "mapping.w_avg":
            continue
        target = mapping.get(key)
        if target is None:
            unknown.append(key)
            continue
        want = reference[target].shape
        if value.numel() != math.prod(want):
            raise ValueError(f"NVlabs generator: {key} {tuple(value.shape)} does not fit {target} {tuple(want)}")
        converted[target] = value.reshape(want)
    # rosinality keeps its blur kernels as buffers: ours, not the file's
    for key, value in reference.items():
        if key.endswith(".kernel"):
            converted[key] = value
    missing = sorted(set(mapping.values()) - set(converted))
    problems = [f"unknown keys {unknown[:5]}" if unknown else "", f"missing {missing[:5]}" if missing else "",
                f"non-standard resample filters {bad_filter[:3]}" if bad_filter else ""]
    if any(problems):
        raise ValueError("not a 'skip' StyleGAN2-ADA generator of this size: " + "; ".join(p for p in problems if p))
    w_avg = state.get("mapping.w_avg")
    return converted, (None if w_avg is None else w_avg.reshape(-1).float())


def to_nvlabs_state_dict(generator: Generator, w_avg: Tensor | None = None) -> dict[str, Tensor]:
    """Our generator's weights in the NVlabs layout (for writing test files in the official format): the inverse of
    :func:`from_nvlabs_state_dict`, with the official shapes and ``resample_filter`` buffers."""
    state = generator.state_dict()
    nv = {}
    for src, dst in nvlabs_key_map(generator.size, generator.config.n_mlp).items():
        value = state[dst]
        if src == "synthesis.b4.const":
            value = value[0]
        elif src.endswith("noise_strength"):
            value = value.reshape(())
        elif src.endswith("noise_const"):
            value = value[0, 0]
        elif src.endswith(".weight") and dst.endswith("conv.weight"):
            value = value[0]
        elif src.endswith("torgb.bias"):
            value = value.reshape(-1)
        nv[src] = value.clone()
    filt = make_blur_kernel((1, 3, 3, 1))
    for key in list(nv):
        if key.endswith(".affine.weight") and ".torgb." not in key:
            nv[key.rsplit(".", 2)[0] + "." + NVLABS_FILTER] = filt.clone()  # every SynthesisLayer
    for stage in range(generator.n_stages):
        nv[f"synthesis.b{2 ** (stage + 2)}.{NVLABS_FILTER}"] = filt.clone()  # every SynthesisBlock
    nv["mapping.w_avg"] = torch.zeros(generator.style_dim) if w_avg is None else w_avg.detach().clone()
    return nv


LATENT_AVG_SAMPLES = 4096
LATENT_AVG_SEED = 0


def load_generator(weights, device: torch.device | str = "cpu", size: int = 1024, channel_multiplier: int = 2,
                   checkpoint: Checkpoint = CHECKPOINT) -> tuple[Generator, Tensor]:
    """Build the generator, load ``checkpoint`` through ``weights`` (a ``WeightStore``) and return
    ``(generator, latent_avg [512])``, in eval mode with gradients off for the parameters.

    Two file layouts load: rosinality's ``{"g_ema": state_dict, "latent_avg": [512]}`` (``ffhq.pt``) and a bare
    NVlabs stylegan2-ada ``Generator`` state dict (HairMapper's ``StyleGAN2-ada-Generator.pth``; its
    ``mapping.w_avg`` is the latent average), mapped onto ours by :func:`from_nvlabs_state_dict`.

    With ``weights.fill`` the weights come from :func:`fill_recipe` (namespace = checkpoint key) and
    ``latent_avg`` is the mean of ``mapping(z)`` over 4096 z drawn on the CPU from
    ``torch.Generator().manual_seed(0)``.
    """
    gen = Generator(size, channel_multiplier=channel_multiplier)
    found: dict[str, Tensor | None] = {}

    def extract(obj: Any) -> Mapping[str, Any]:
        if isinstance(obj, Mapping) and is_nvlabs_state_dict(obj):
            state, found["latent_avg"] = from_nvlabs_state_dict(obj, gen.state_dict(), size, gen.config.n_mlp)
            return state
        if not isinstance(obj, Mapping) or "g_ema" not in obj:
            raise ValueError(f"{checkpoint.filename}: neither rosinality's {{'g_ema': ...}} nor an NVlabs "
                             "stylegan2-ada Generator state dict")
        found["latent_avg"] = obj.get("latent_avg")
        return obj["g_ema"]

    weights.load_network(gen, checkpoint, extract=extract, recipe=fill_recipe)
    gen = gen.to(device).eval().requires_grad_(False)
    if found.get("latent_avg") is not None:
        latent_avg = torch.as_tensor(found["latent_avg"]).reshape(-1).to(device=device, dtype=torch.float32)
    else:
        latent_avg = gen.mean_latent(LATENT_AVG_SAMPLES, torch.Generator().manual_seed(LATENT_AVG_SEED))
    return gen, latent_avg


# ---------------------------------------------------------------- parity adapters

#: the ops of ``stylegan2`` / ``stylegan2_1024`` and how a case shows which one it exercises
PARITY_OPS = {"mapping": Op(call=(r"\.style\(",)), "synthesis": Op(call=(r"(?<![\w.])generator\(",))}


def parity_adapter(fixture):
    """Adapter for the ``stylegan2`` / ``stylegan2_1024`` fixtures: ``generator.style(z)``, or the case's
    ``generator([styles], start_layer=.., end_layer=.., layer_in=..)`` calls in order (input ``styles`` for the
    first, ``styles2`` for the second, ...; a ``layer_in`` named by an earlier call's result takes its F)."""
    from harness.weights import load_state_dict_into

    cons = dict(fixture.constructor)
    cons["blur_kernel"] = tuple(cons.get("blur_kernel", (1, 3, 3, 1)))
    gen = Generator(**cons)
    load_state_dict_into(gen, fixture.torch_state_dict(), f"fixture {fixture.name}")
    gen = gen.eval().float()

    def tensor(case, name):
        return torch.from_numpy(fixture.input(case, name)).float()

    @torch.no_grad()
    def run(case: dict) -> dict[str, Any]:
        if case_op(case, PARITY_OPS) == "mapping":
            return {"w": gen.mapping(tensor(case, next(iter(case["inputs"]))))}
        features: dict[str, Tensor] = {}
        for i, call in enumerate(calls(case, "generator")):
            layer_in, end = call.arg("layer_in"), call.arg("end_layer")
            if layer_in is not None:
                layer_in = features[layer_in] if layer_in in features else tensor(case, "layer_in")
            out = gen.synthesis(tensor(case, "styles" if i == 0 else f"styles{i + 1}"),
                                start_layer=int(call.arg("start_layer") or 0),
                                end_layer=None if end is None else int(end), layer_in=layer_in)
            features.update({target: out.features for target in call.targets[:1]})
        return {"image": out.rgb, "F": out.features, "skip": out.rgb}

    return run


PARITY = {"stylegan2": parity_adapter, "stylegan2_1024": parity_adapter}
