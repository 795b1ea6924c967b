"""Barbershop's four stages (ZPdesu/Barbershop ``models/Embedding.py``, ``Alignment.py``, ``Blending.py``) on the
shared networks, batched over images / pairs / triplets and device-agnostic.

Conventions: generator images are ``[B,3,size,size]`` in [-1,1]; ``P = params.parser_size`` (512 at 1024) is the
face parser's resolution and that of the target segmentation; ``L = params.low_size`` (256 at 1024) that of the
LPIPS / style losses and of the blending masks; F is the 32x32 output of generator stage 3 (``[B,512,32,32]``)
and S the W+ rows from :data:`S_INDEX` = 7 on (the rows the stages from 64x64 on read). Labels are the 16 classes
of Barbershop's ``seg.pth`` (hair 10, background 0, cloth 15).

Every loss is computed per sample (``[B]``) and summed for the backward pass; the optimisers (Adam, SGD, ...)
are element-wise, so B latents optimised together follow the same trajectories as one by one. Where the
official code reduces over the batch (masked LPIPS normalised by the whole mask tensor, one Gram matrix over
all ``N*C`` rows, cross-entropy means) it only ever runs batch 1; ours normalises per sample, which is the same
number for batch 1. Two guards differ from the official code: a weighted cross-entropy or a masked LPIPS over an
empty set of pixels is 0 here, NaN there.

Stage facts, as in the official code:

1. W+ embedding: 18 rows from ``latent_avg``; loss ``l2_lambda * MSE(G(w), I)`` at full size
   ``+ percept_lambda * LPIPS(bicubic_down(G(w)), I_L)`` (``I_L`` = the image LANCZOS-resized to 256)
   ``+ p_norm_lambda * P-norm(w)``.
2. FS embedding: ``F_init = G_0..3(w)``; optimise S (rows >= 7) and F with the same loss (``l_F`` only with
   ``use_l_F``), rendering ``G_4..(F, S)``.
3. Alignment of the face image (1) to another image (2): a target segmentation (face's labels, 2's hair pasted;
   the region that is 2's body but 1's background/hair is inpainted with OpenCV Navier-Stokes on a 0/1 hair
   image whose float result is truncated to uint8, which leaves background almost everywhere; then two
   "auto-inpainting" optimisations of ``mask_steps`` from ``latent_avg`` replace face hair not covered by 2's hair,
   and then that region, by what the generator makes of it; ``sign='realistic'`` uses cross-entropies without /
   only background there). Step 1 optimises rows 0..5 of 1's W+ (rows >= 6 from 1's FS latent) with
   cross-entropy to the target; step 2 does the same for 2 and adds ``style_lambda`` times the masked Gram loss of
   the hair regions against 2's own render. F is then mixed: outside the dilated union of the hair regions 1's F,
   inside the step-1 F; inside the eroded target hair the step-2 F; inside the eroded (2's hair and target hair)
   2's own F (masks dilated / eroded ``smooth`` times at L, bicubic down to 32).
4. Blending: ``latent = S_1 + u * (S_3 - S_1)`` with ``u`` (``[18,512]``, from 0) optimised by Adam and clamped
   to [0,1] for ``blend_steps``; loss = masked LPIPS (blocks 1-3) to the face image on
   ``(1-H_1D)(1-H_3D)(1-H_XD)`` + masked LPIPS to the colour image on ``H_3E``, rendered from F aligned to the
   colour image; the result is rendered from F aligned to the shape image.

"The result" of an optimisation is, as in the official code, what the last iteration's forward pass used (the
value after ``steps - 1`` updates; the initial value when ``steps`` is 0), except the FS stage's F, which the
official code saves after the last update.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from methods.barbershop.losses import ClampOptimizer, LatentPCA, StyleLoss, gram_style_loss, p_norm_loss
from methods.barbershop.params import BarbershopParams
from methods.nets.bisenet import BiSeNet, bicubic_downsample, imagenet_normalize
from methods.nets.lpips import LPIPS, unit_normalize
from methods.nets.stylegan2 import Generator, NoiseSpec
from methods.ops import dilate_erode, resize_bicubic

F_STAGE = 3  # F = output of generator stage 3 (32x32)
S_INDEX = 2 * F_STAGE + 1  # first W+ row read from stage 4 on (7 at every size; the official 18 - 11)
ALIGN_ROWS = 6  # rows the alignment optimises
F_SIZE = 2 ** (F_STAGE + 2)
BACKGROUND, HAIR, CLOTH = 0, 10, 15  # seg.pth labels
N_CLASSES = 16
MASKED_LPIPS_BLOCKS = 3  # Barbershop's vgg_blocks ['1', '2', '3']
INPAINT_RADIUS = 3


@dataclass
class Networks:
    """The frozen networks every stage uses."""

    generator: Generator
    latent_avg: Tensor  # [512]
    pca: LatentPCA
    parser: BiSeNet  # 16 classes (seg.pth)
    lpips: LPIPS
    style: StyleLoss  # per_sample=True, size = params.low_size

    @property
    def device(self) -> torch.device:
        return self.latent_avg.device


# ---------------------------------------------------------------- noise

def stream_seed(seed: int, stage: str, key: str) -> int:
    """Seed of one item's noise stream (``noise='official'``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stage}/{key}".encode()).digest()[:8], "little")


class Noise:
    """The generator's noise maps under one of the modes of :class:`BarbershopParams` (``noise``)."""

    def __init__(self, mode: str, generator: Generator, seed: int):
        self.mode, self.seed, self.generator = mode, int(seed), generator
        self.shapes = [tuple(getattr(generator.noises, f"noise_{i}").shape[2:])
                       for i in range(generator.num_noise_layers)]
        self.device = generator.input.input.device
        self.fixed: list[Tensor] | None = None
        if mode == "seeded":
            rng = torch.Generator().manual_seed(self.seed)
            self.fixed = [torch.randn(1, 1, *shape, generator=rng).to(self.device) for shape in self.shapes]
        elif mode not in ("buffers", "official"):
            raise ValueError(f"unknown noise mode {mode!r}")

    def streams(self, stage: str, keys: Sequence[str]) -> list[torch.Generator] | None:
        """One CPU random stream per item for ``official`` noise (``None`` otherwise)."""
        if self.mode != "official":
            return None
        return [torch.Generator().manual_seed(stream_seed(self.seed, stage, key)) for key in keys]

    def __call__(self, streams: list[torch.Generator] | None) -> NoiseSpec:
        """The noise argument of one generator call (fresh maps per call and item for ``official``)."""
        if self.mode == "buffers":
            return "buffers"
        if self.mode == "seeded":
            return self.fixed
        if not streams:
            raise ValueError("official noise needs one random stream per batch item")
        return [torch.cat([torch.randn(1, 1, *shape, generator=g) for g in streams]).to(self.device)
                for shape in self.shapes]


# ---------------------------------------------------------------- generator and parser helpers

def render(nets: Networks, latent: Tensor, noise: NoiseSpec) -> Tensor:
    """The full image of W+ ``latent``."""
    return nets.generator.synthesis(latent, noise=noise).rgb


def render_f(nets: Networks, latent: Tensor, noise: NoiseSpec) -> Tensor:
    """F: the 32x32 features of stage 3 (``start_layer=0, end_layer=3``), contiguous ``[B,512,32,32]``."""
    return nets.generator.synthesis(latent, end_layer=F_STAGE, noise=noise).features.contiguous()


def render_from_f(nets: Networks, latent: Tensor, feat: Tensor, noise: NoiseSpec) -> Tensor:
    """The image of F and the rows of ``latent`` from stage 4 on (``start_layer=4, layer_in=F``)."""
    return nets.generator.synthesis(latent, start_layer=F_STAGE + 1, layer_in=feat, noise=noise).rgb


def downsample_to(x: Tensor, size: int) -> Tensor:
    """Barbershop's ``BicubicDownSample(factor=H // size)`` (identity when already ``size``)."""
    return bicubic_downsample(x, x.shape[-1] // size)


def parser_logits(nets: Networks, images: Tensor, size: int, real: bool) -> Tensor:
    """Logits ``[B,16,size,size]`` of [-1,1] images: to [0,1], bicubic down to ``size`` (real input images are
    then clamped to [0,1], generated ones are not, as in the official code), ImageNet normalisation."""
    x = downsample_to((images + 1) / 2, size)
    if real:
        x = x.clamp(0, 1)
    return nets.parser(imagenet_normalize(x))[0]


def nearest(mask: Tensor, size: int) -> Tensor:
    """Nearest resize of a ``[B,1,H,W]`` mask to ``size`` (float)."""
    mask = mask.float()
    return mask if mask.shape[-1] == size else F.interpolate(mask, size=(size, size), mode="nearest")


def hair_of(labels: Tensor) -> Tensor:
    """``[B,H,W]`` labels -> float hair mask ``[B,1,H,W]``."""
    return (labels == HAIR).float()[:, None]


def make_optimizer(name: str, tensors: list[Tensor], lr: float) -> torch.optim.Optimizer:
    """The official ``opt_dict``: sgd, adam, sgdm (SGD with momentum 0.9), adamax."""
    factories: dict[str, Callable] = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
                                      "sgdm": partial(torch.optim.SGD, momentum=0.9), "adamax": torch.optim.Adamax}
    if name not in factories:
        raise ValueError(f"unknown optimiser {name!r} (known: {', '.join(factories)})")
    return factories[name](tensors, lr=lr)


# ---------------------------------------------------------------- losses (per sample)

def mse_per_sample(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).flatten(1).mean(dim=1)


class PerceptualTarget:
    """LPIPS (v0.1, VGG16) distances of images to fixed targets; the targets' features are computed once.

    ``distance(x)`` is LPIPS over the first ``layers`` VGG levels (5 = the plain metric) -> ``[B]``;
    ``masked(x, mask)`` is Barbershop's masked LPIPS (mask nearest-resized level by level from the previous
    level, each layer ``sum(d * m) / sum(m)``), normalised per sample; ``mask=None`` gives the plain means.
    """

    def __init__(self, net: LPIPS, target: Tensor, layers: int = 5):
        self.net, self.layers = net, int(layers)
        with torch.no_grad():
            self.target = [unit_normalize(f) for f in self.features(target)]

    def features(self, x: Tensor) -> list[Tensor]:
        x = self.net.scaling_layer(x)
        out = []
        for s in range(1, self.layers + 1):
            x = getattr(self.net.net, f"slice{s}")(x)
            out.append(x)
        return out

    def layer_maps(self, x: Tensor) -> list[Tensor]:
        feats = self.features(x)
        return [lin((unit_normalize(f) - t) ** 2) for lin, f, t in zip(self.net.lins, feats, self.target, strict=False)]

    def distance(self, x: Tensor) -> Tensor:
        return torch.stack([m.mean(dim=(1, 2, 3)) for m in self.layer_maps(x)]).sum(dim=0)

    def masked(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return self.distance(x)
        total = 0.0
        for dist in self.layer_maps(x):
            mask = F.interpolate(mask.to(dist.dtype), size=dist.shape[2:], mode="nearest")
            total = total + (dist * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1e-12)
        return total


def cross_entropy(logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """``torch.nn.CrossEntropyLoss(weight=class_weights)`` per sample: the mean over pixels, or the
    ``weight[target]``-weighted mean (0 where no pixel has weight)."""
    nll = F.cross_entropy(logits, target, reduction="none").flatten(1)
    if class_weights is None:
        return nll.mean(dim=1)
    weight = class_weights.to(logits.dtype)[target].flatten(1)
    return (weight * nll).sum(dim=1) / weight.sum(dim=1).clamp_min(1e-12)


def background_weights(device: torch.device, only: bool) -> Tensor:
    """Class weights of the 'realistic' cross-entropies: only background (``only``) or all but background."""
    onehot = torch.zeros(N_CLASSES, device=device)
    onehot[BACKGROUND] = 1
    return onehot if only else 1 - onehot


class MaskedStyle:
    """Barbershop's alignment style loss against a fixed first image: ``StyleLoss(x*m1, x_hat*m2, m1, m2)``
    per sample, the first image's VGG activations computed once. Masks are binary, so the official double
    masking (``H_region * mask`` inside ``style_loss``) equals masking once."""

    def __init__(self, style: StyleLoss, x: Tensor, mask: Tensor):
        self.style, self.mask = style, mask
        self.scale = style.size / x.shape[2]
        with torch.no_grad():
            self.acts = style.vgg(style._resize(x * mask, self.scale), style.layers)

    def __call__(self, x_hat: Tensor, mask_hat: Tensor) -> Tensor:
        acts_hat = self.style.vgg(self.style._resize(x_hat * mask_hat, self.scale), self.style.layers)
        return gram_style_loss(self.acts, acts_hat, self.mask, mask_hat, self.style.distance, per_sample=True)


# ---------------------------------------------------------------- results

@dataclass
class Trace:
    """Per-step losses ``[steps, B]`` of one optimisation (float32 numpy), for tests and intermediates."""

    losses: np.ndarray

    @classmethod
    def of(cls, values: list[Tensor], batch: int) -> Trace:
        if not values:
            return cls(np.zeros((0, batch), np.float32))
        return cls(torch.stack(values).cpu().numpy().astype(np.float32))


@dataclass
class EmbeddingResult:
    w_plus: Tensor  # [B,18,512]
    latent: Tensor  # FS latent [B,18,512]: rows < 7 from W+, rows >= 7 = S
    feat: Tensor  # F [B,512,32,32]


# ---------------------------------------------------------------- stage 1: W+ embedding

def embedding_loss(nets: Networks, params: BarbershopParams, image: Tensor, latent: Tensor, target_hi: Tensor,
                   percept: PerceptualTarget) -> Tensor:
    """``l2_lambda * MSE + percept_lambda * LPIPS(at L) + P-norm`` per sample ``[B]``."""
    loss = params.l2_lambda * mse_per_sample(image, target_hi)
    loss = loss + params.percept_lambda * percept.distance(downsample_to(image, params.low_size))
    return loss + p_norm_loss(latent, nets.pca, params.p_norm_lambda)


def embed_w_plus(nets: Networks, noise: Noise, params: BarbershopParams, target_hi: Tensor, target_lo: Tensor,
                 keys: Sequence[str]) -> tuple[Tensor, Trace]:
    """Stage 1 for a batch of images (``keys`` name them for the noise streams) -> (W+ ``[B,18,512]``, trace)."""
    batch = target_hi.shape[0]
    g = nets.generator
    latent = nets.latent_avg.detach().reshape(1, 1, -1).repeat(batch, g.n_latent, 1).requires_grad_(True)
    optimizer = make_optimizer(params.opt_name, [latent], params.learning_rate)
    percept = PerceptualTarget(nets.lpips, target_lo)
    streams = noise.streams("w_plus", keys)
    used, history = latent.detach().clone(), []
    for _ in range(params.steps("W_steps")):
        optimizer.zero_grad()
        used = latent.detach().clone()
        loss = embedding_loss(nets, params, render(nets, latent, noise(streams)), latent, target_hi, percept)
        loss.sum().backward()
        optimizer.step()
        history.append(loss.detach())
    return used, Trace.of(history, batch)


# ---------------------------------------------------------------- stage 2: FS embedding

def embed_fs(nets: Networks, noise: Noise, params: BarbershopParams, w_plus: Tensor, target_hi: Tensor,
             target_lo: Tensor, keys: Sequence[str]) -> tuple[EmbeddingResult, Trace]:
    """Stage 2: optimise S (rows >= 7) and F from the W+ embedding."""
    batch = w_plus.shape[0]
    streams = noise.streams("fs", keys)
    with torch.no_grad():
        f_init = render_f(nets, w_plus, noise(streams))
    feat = f_init.clone().requires_grad_(True)
    fixed = w_plus[:, :S_INDEX].detach()
    s_rows = w_plus[:, S_INDEX:].detach().clone().requires_grad_(True)
    optimizer = make_optimizer(params.opt_name, [s_rows, feat], params.learning_rate)
    percept = PerceptualTarget(nets.lpips, target_lo)
    used, history = torch.cat([fixed, s_rows.detach()], dim=1), []
    for _ in range(params.steps("FS_steps")):
        optimizer.zero_grad()
        latent = torch.cat([fixed, s_rows], dim=1)
        used = latent.detach().clone()
        image = render_from_f(nets, latent, feat, noise(streams))
        loss = embedding_loss(nets, params, image, latent, target_hi, percept)
        if params.use_l_F:
            loss = loss + params.l_F_lambda * mse_per_sample(feat, f_init)
        loss.sum().backward()
        optimizer.step()
        history.append(loss.detach())
    return EmbeddingResult(w_plus.detach(), used, feat.detach().clone()), Trace.of(history, batch)


# ---------------------------------------------------------------- stage 3: alignment

@dataclass
class InitialTarget:
    """The target segmentation before the auto-inpainting optimisations (all at the parser resolution)."""

    target: Tensor  # [B,P,P] long
    keep: Tensor  # [B,P,P] long: 1 where face is not background or image 2 is hair ("ggg")
    occluded: Tensor  # [B,P,P] bool: image 2's body over face's background / hair ("OB_region")
    hair_face: Tensor  # [B,P,P] bool
    hair_other: Tensor  # [B,P,P] bool


def initial_target(labels_face: Tensor, labels_other: Tensor) -> InitialTarget:
    """Face's labels without hair, image 2's hair pasted, the occluded region inpainted (OpenCV NS, radius 3,
    on the 0/1 hair image; the float result truncated to uint8 as the official code does)."""
    hair_face, hair_other = labels_face == HAIR, labels_other == HAIR
    keep = ((labels_face != BACKGROUND) | hair_other).long()
    face = torch.where(hair_face, torch.zeros_like(labels_face), labels_face)
    occluded = (~hair_other) & (labels_other != BACKGROUND) & (labels_other != CLOTH) & (face == BACKGROUND)
    pasted = torch.where(hair_other, torch.full_like(face, HAIR), face)
    region = ((pasted != BACKGROUND) & (pasted != HAIR)) | occluded
    is_hair = torch.where(region, torch.zeros_like(pasted), pasted).float().div(HAIR).cpu().numpy()
    region_u8 = region.cpu().numpy().astype(np.uint8) * 255
    inpainted = np.stack([
        cv2.inpaint(np.ascontiguousarray(h, dtype=np.float32), r, INPAINT_RADIUS, cv2.INPAINT_NS).astype(np.uint8)
        for h, r in zip(is_hair, region_u8, strict=True)])
    inpainted = torch.from_numpy(inpainted.astype(np.int64) * HAIR).to(pasted.device)
    target = torch.where(occluded, inpainted, pasted)
    return InitialTarget(target, keep, occluded, hair_face, hair_other)


def segmentation_loss(nets: Networks, params: BarbershopParams, logits: Tensor, target: Tensor,
                      keep: Tensor | None = None) -> Tensor:
    """``ce_lambda`` x cross-entropy; with ``keep`` ('realistic' auto-inpainting): cross-entropy without
    background to ``target`` plus cross-entropy of background only to ``keep``."""
    if keep is None:
        return params.ce_lambda * cross_entropy(logits, target)
    device = logits.device
    return params.ce_lambda * (cross_entropy(logits, target, background_weights(device, only=False))
                               + cross_entropy(logits, keep, background_weights(device, only=True)))


def optimise_rows(nets: Networks, noise: Noise, params: BarbershopParams, start: Tensor, tail: Tensor,
                  steps: int, streams, loss_fn: Callable[[Tensor, Tensor], Tensor]
                  ) -> tuple[Tensor, Tensor, Trace]:
    """Optimise W+ rows 0..5 (``start``) with the rest fixed (``tail``); ``loss_fn(image, logits) -> [B]``.

    Returns (the last forward's latent, its parser logits, trace); with 0 steps the start latent and its logits.
    """
    rows = start.detach().clone().requires_grad_(True)
    optimizer = make_optimizer(params.opt_name, [rows], params.learning_rate)
    history, used, logits = [], None, None
    for _ in range(steps):
        optimizer.zero_grad()
        latent = torch.cat([rows, tail], dim=1)
        used = latent.detach().clone()
        image = render(nets, latent, noise(streams))
        logits = parser_logits(nets, image, params.parser_size, real=False)
        loss = loss_fn(image, logits)
        loss.sum().backward()
        optimizer.step()
        history.append(loss.detach())
    if used is None:
        used = torch.cat([rows.detach(), tail], dim=1)
        with torch.no_grad():
            logits = parser_logits(nets, render(nets, used, noise(streams)), params.parser_size, real=False)
    return used, logits.detach(), Trace.of(history, start.shape[0])


@dataclass
class TargetSegmentation:
    target: Tensor  # [B,P,P] long, final
    hair_target: Tensor  # [B,1,P,P] float
    hair_face: Tensor  # [B,1,P,P] float
    hair_other: Tensor  # [B,1,P,P] float
    occluded: Tensor  # [B,P,P] bool


def target_segmentation(nets: Networks, noise: Noise, params: BarbershopParams, labels_face: Tensor,
                        labels_other: Tensor, keys: Sequence[str]) -> tuple[TargetSegmentation, list[Trace]]:
    """The target segmentation of aligning face to image 2 (``create_target_segmentation_mask``)."""
    init = initial_target(labels_face, labels_other)
    batch = labels_face.shape[0]
    g = nets.generator
    start = nets.latent_avg.detach().reshape(1, 1, -1).repeat(batch, g.n_latent, 1)
    realistic = params.sign == "realistic"
    steps = params.steps("mask_steps")

    def auto_inpaint(target: Tensor, stage: str) -> tuple[Tensor, Trace]:
        def loss_fn(image, logits):
            return segmentation_loss(nets, params, logits, target, init.keep if realistic else None)

        _, logits, trace = optimise_rows(nets, noise, params, start[:, :ALIGN_ROWS], start[:, ALIGN_ROWS:], steps,
                                         noise.streams(stage, keys), loss_fn)
        return logits.argmax(dim=1), trace

    generated, trace1 = auto_inpaint(init.target, "mask1")
    free = init.hair_face & ~init.hair_other
    previous = torch.where(free, generated, init.target)
    second_target = torch.where(init.occluded, torch.zeros_like(previous), previous)
    generated, trace2 = auto_inpaint(second_target, "mask2")
    final = torch.where(init.occluded & (generated != BACKGROUND), generated, previous)
    result = TargetSegmentation(final, hair_of(final), init.hair_face.float()[:, None],
                                init.hair_other.float()[:, None], init.occluded)
    return result, [trace1, trace2]


def mixing_weight(mask: Tensor, params: BarbershopParams, dilate: bool) -> Tensor:
    """``1 - bicubic_32(dilate_or_erode(nearest_L(mask), smooth))``: the weight of the second F in a mix."""
    dilated, eroded = dilate_erode(nearest(mask, params.low_size), params.smooth)
    return 1 - resize_bicubic(dilated if dilate else eroded, F_SIZE)


def align(nets: Networks, noise: Noise, params: BarbershopParams, face: EmbeddingResult, other: EmbeddingResult,
          seg: TargetSegmentation, keys: Sequence[str]) -> tuple[Tensor, list[Trace]]:
    """Align the face embeddings to the target segmentations (``align_images``) -> mixed F ``[B,512,32,32]``."""
    low = params.low_size

    def ce(image, logits):
        return segmentation_loss(nets, params, logits, seg.target)

    latent1, _, trace1 = optimise_rows(nets, noise, params, face.w_plus[:, :ALIGN_ROWS], face.latent[:, ALIGN_ROWS:],
                                       params.steps("align_steps1"), noise.streams("align1", keys), ce)
    streams = noise.streams("align2", keys)
    with torch.no_grad():
        start = torch.cat([other.w_plus[:, :ALIGN_ROWS], other.latent[:, ALIGN_ROWS:]], dim=1)
        structure = render(nets, start, noise(streams))
        hair_structure = nearest(hair_of(parser_logits(nets, structure, params.parser_size, False).argmax(1)), low)
    style = MaskedStyle(nets.style, downsample_to(structure, low), hair_structure)

    def ce_and_style(image, logits):
        hair_generated = nearest(hair_of(logits.detach().argmax(dim=1)), low)
        return ce(image, logits) + params.style_lambda * style(downsample_to(image, low), hair_generated)

    latent2, _, trace2 = optimise_rows(nets, noise, params, other.w_plus[:, :ALIGN_ROWS],
                                       other.latent[:, ALIGN_ROWS:], params.steps("align_steps2"), streams,
                                       ce_and_style)
    with torch.no_grad():
        f_step1 = render_f(nets, latent1, noise(noise.streams("align1_f", keys)))
        f_step2 = render_f(nets, latent2, noise(noise.streams("align2_f", keys)))
    union = 1 - (1 - seg.hair_face) * (1 - seg.hair_target)
    weight = mixing_weight(union, params, dilate=True)
    mixed = f_step1 + weight * (face.feat - f_step1)
    if not params.align_more_region:
        weight = mixing_weight(seg.hair_target, params, dilate=False)
    mixed = f_step2 + weight * (mixed - f_step2)
    weight = mixing_weight(nearest(seg.hair_other * seg.hair_target, low), params, dilate=False)
    mixed = other.feat + weight * (mixed - other.feat)
    return mixed, [trace1, trace2]


# ---------------------------------------------------------------- stage 4: blending

@dataclass
class BlendResult:
    image: Tensor  # [B,3,size,size] in [-1,1]
    interpolation: Tensor  # u [B,18,512]
    latent: Tensor  # [B,18,512]
    mask_face: Tensor  # [B,1,L,L]
    mask_hair: Tensor  # [B,1,L,L]
    trace: Trace


def blend(nets: Networks, noise: Noise, params: BarbershopParams, face_latent: Tensor, color_latent: Tensor,
          feat_color: Tensor, feat_shape: Tensor, face_lo: Tensor, color_lo: Tensor, hair_face: Tensor,
          hair_color: Tensor, keys: Sequence[str]) -> BlendResult:
    """Stage 4 (``blend_images``). ``feat_color`` / ``feat_shape``: F of the face aligned to the colour / shape
    image; ``hair_face`` / ``hair_color``: hair masks ``[B,1,P,P]`` of the input images."""
    low, iterations = params.low_size, params.blend_mask_iterations
    streams = noise.streams("blend", keys)
    face_dilated, _ = dilate_erode(nearest(hair_face, low), iterations)
    color_dilated, color_eroded = dilate_erode(nearest(hair_color, low), iterations)
    with torch.no_grad():
        blended = render_from_f(nets, face_latent, feat_color, noise(streams))
        hair_blended = nearest(hair_of(parser_logits(nets, blended, params.parser_size, False).argmax(1)), low)
        blended_dilated, _ = dilate_erode(hair_blended, iterations)
    mask_face = (1 - face_dilated) * (1 - color_dilated) * (1 - blended_dilated)
    mask_hair = color_eroded
    face_target = PerceptualTarget(nets.lpips, face_lo, MASKED_LPIPS_BLOCKS)
    color_target = PerceptualTarget(nets.lpips, color_lo, MASKED_LPIPS_BLOCKS)
    face_weight, hair_weight = params.blend_weights
    u = torch.zeros_like(face_latent).requires_grad_(True)
    optimizer = ClampOptimizer(torch.optim.Adam, [u], lr=params.learning_rate)
    direction = (color_latent - face_latent).detach()
    used, history = face_latent.detach().clone(), []
    for _ in range(params.steps("blend_steps")):
        optimizer.zero_grad()
        latent = face_latent + u * direction
        used = latent.detach().clone()
        image = downsample_to(render_from_f(nets, latent, feat_color, noise(streams)), low)
        loss = face_weight * face_target.masked(image, mask_face) + hair_weight * color_target.masked(image, mask_hair)
        loss.sum().backward()
        optimizer.step()
        history.append(loss.detach())
    with torch.no_grad():
        image = render_from_f(nets, used, feat_shape, noise(streams))
    return BlendResult(image, u.detach(), used, mask_face, mask_hair, Trace.of(history, face_latent.shape[0]))
