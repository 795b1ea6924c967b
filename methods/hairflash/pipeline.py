"""HairFast's four stages as plain functions over a :class:`HairFastNets` bundle (one StyleGAN2 for everything).

Data flow (``/work/shared/parity/HAIRFAST_PIPELINE.md``; shapes for the 1024 model, ``n`` = 18 W+/S rows):

1. :func:`embed_images` (per image, batched): e4e W ``[B,n,512]``; FS encoder S ``[B,n,512]`` and content
   ``[B,512,16,16]`` -> ``F_fs = G(S, 3..3, content)`` ``[B,512,32,32]``; ``F_w = G(W, 0..3)``; BiSeNet labels
   ``[B,1,256,256]`` (CelebAMask-HQ ids). :func:`mixed_features` applies the F mixing of triplets with more than
   one distinct image.
2. :func:`hair_shape` (per (face, other) pair): rotate ``W_other`` toward the face's pose, render at full size,
   re-parse, shape adaptor -> target labels. :func:`inpaint` (per (face, shape) pair): SEAN re-renders both images
   on the target layout, e4e + ``G(., 0..3)`` re-encode them. :func:`align_features` blends the four F.
3. :func:`blending_batch` + :func:`blend`: CLIP embeddings of the masked images (:func:`clip_images`), blending
   encoder on S rows, ``I_blend = G(S_blend, 4..end, F_align)``.
4. :func:`post_process`: post-processing encoders on (face, I_blend at 256), ``I_final = G(S_final, 5..end,
   F_final)``, mapped to [0, 1].

Differences from the official code that do not change its numbers: one generator instance for every stage; no
throw-away renders (the FS encoder's image); the colour step and the alignment share the (face, other) work; a
(face, shape) pair made of one image is inpainted once. Differences that move its numbers by float rounding only:
BatchNorms folded into the convolutions before them and channels-last weights (:func:`load_nets`); the
post-processing stage's face-only work done apart from the blend image's (:class:`FaceCodes`), so that it is
computed once per face.

Noise (:class:`Noise`): ``"buffers"`` uses the generator's stored noise and no SEAN noise; ``"seeded"`` gives
every work item (an image, a pair, a triplet) its own ``torch.Generator`` from which each generator call of that
item draws fresh noise, so batching and caching never change the noise a result sees. They can still move its
floats: CPU and GPU kernels pick other summation orders for other batch sizes (an image embedded alone or with two
others differs by ~1e-5 in ``F``), which shows as at most one 8-bit level in rare pixels of the final image.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
from torch import Tensor
from torch.nn.utils.fusion import fuse_conv_bn_eval

from harness.weights import WeightStore
from methods.hairflash import encoders, masks, sean, shape_adaptor
from methods.hairflash.blending import BlendingEncoder, load_blending_encoder
from methods.hairflash.checkpoints import GENERATOR, OfficialLayout
from methods.hairflash.encoders import POSTPROCESS_ENCODER_CONFIG, PostProcessConfig, PostProcessModel, RotateModel
from methods.hairflash.params import HairFlashParams
from methods.hairflash.sean import SEANGenerator
from methods.hairflash.shape_adaptor import ShapeAdaptor
from methods.hairflash.variants import Variant
from methods.nets import bisenet, e4e, iresnet, stylegan2
from methods.nets.bisenet import BISENET19_TO_CELEBAMASKHQ, BiSeNet, imagenet_normalize, remap_labels
from methods.nets.e4e import E4EConfig, Encoder4Editing
from methods.nets.iresnet import EncoderConfig, FSEncoder
from methods.nets.stylegan2 import Generator, NoiseSpec
from methods.ops import HAIR_MASK_SIZE, bicubic_downsample, dilate_erode, hair_mask, resize_labels

HAIR = 13  # CelebAMask-HQ hair label
MASK_SIZE = HAIR_MASK_SIZE  # 256: masks, SEAN, e4e and the encoders' input resolution
PARSER_SIZE = 512  # BiSeNet input of the embedding stage
ROTATED_ROWS = 6  # W+ rows the rotate encoder edits; S rows below the blending encoder's


# ---------------------------------------------------------------- networks

@dataclass
class HairFastNets:
    """Every network of the pipeline, on one device, frozen."""

    generator: Generator
    fse: FSEncoder
    e4e: Encoder4Editing
    parser: BiSeNet
    rotate: RotateModel
    shape_adaptor: ShapeAdaptor
    sean: SEANGenerator
    blending: BlendingEncoder
    postprocess: PostProcessModel

    @property
    def device(self) -> torch.device:
        return self.generator.input.input.device

    @property
    def size(self) -> int:
        return self.generator.size

    @property
    def n_latent(self) -> int:
        return self.generator.n_latent


def load_generator(weights: WeightStore, params: HairFlashParams, device: torch.device) -> Generator:
    """StyleGAN2 (``g_ema`` of ``StyleGAN/ffhq.pt``) with the parameters' sizes, frozen."""
    gen = Generator(params.size, params.latent, params.n_mlp, params.channel_multiplier)
    weights.load_network(gen, GENERATOR, extract=lambda o: o["g_ema"], recipe=stylegan2.fill_recipe)
    return gen.to(device).eval().requires_grad_(False)


def load_nets(weights: WeightStore, device: torch.device | str, params: HairFlashParams, variant: Variant, *,
              blending: bool = True, postprocess: bool = True) -> HairFastNets:
    """Build and load every network for ``params`` / ``variant``; ``weights`` may point at an official
    ``pretrained_models/`` folder (:class:`OfficialLayout`). Sizes other than 1024 need filled weights.
    ``blending`` / ``postprocess`` False: those networks are left ``None`` (stages 1-2 only, as training the
    blending encoder prepares its data)."""
    device = torch.device(device)
    if params.size != 1024 and not weights.fill:
        raise ValueError(f"size={params.size} builds networks no released checkpoint fits: use filled weights")
    store = weights if isinstance(weights, OfficialLayout) else OfficialLayout(weights)
    n = params.n_latent
    halvings = int(math.log2(params.size // MASK_SIZE))
    pp_config = PostProcessConfig(encoder=replace(POSTPROCESS_ENCODER_CONFIG, n_styles=n))
    return HairFastNets(
        generator=load_generator(store, params, device),
        fse=channels_last(fold_batchnorms(iresnet.load_fse(store, device, EncoderConfig.fse(n_styles=n), halvings))),
        e4e=channels_last(fold_batchnorms(e4e.load_e4e(store, device, E4EConfig(stylegan_size=params.size))[0])),
        parser=channels_last(bisenet.load_bisenet(store, device, "bisenet19")),
        rotate=encoders.load_rotate(store, device),
        shape_adaptor=channels_last(shape_adaptor.load_shape_adaptor(store, device)),
        sean=channels_last(sean.load_sean(store, device)),
        blending=load_blending_encoder(store, variant.blending, variant.arch, n - ROTATED_ROWS, device,
                                       params.clip_precision) if blending else None,
        postprocess=channels_last(fold_batchnorms(encoders.load_postprocess(store, device, pp_config)))
        if postprocess else None,
    )


def fold_batchnorms(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it (its output is then the
    convolution's, up to float rounding): ``Sequential`` runs (conv, BN) and the iresnet blocks' ``conv1 -> bn2``,
    ``conv2 -> bn3``. BatchNorms before a convolution stay (zero padding forbids folding their shift). Inference
    only: the folded module no longer has the checkpoint's keys."""
    for child in list(module.modules()):
        if isinstance(child, iresnet.IBasicBlock):
            child.conv1, child.bn2 = fuse_conv_bn_eval(child.conv1, child.bn2), torch.nn.Identity()
            child.conv2, child.bn3 = fuse_conv_bn_eval(child.conv2, child.bn3), torch.nn.Identity()
        elif isinstance(child, torch.nn.Sequential):
            for i in range(len(child) - 1):
                conv, bn = child[i], child[i + 1]
                if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                    child[i], child[i + 1] = fuse_conv_bn_eval(conv, bn), torch.nn.Identity()
    return module


def channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Convolution weights in channels-last memory format: oneDNN convolutions run several times faster on CPU
    (post-processing encoder 7.5 s -> 1.9 s here); results move by float rounding only (< 3e-6 relative)."""
    return module.to(memory_format=torch.channels_last)


# ---------------------------------------------------------------- noise

class Noise:
    """StyleGAN / SEAN noise of every call: stored buffers, or one seeded generator per work item."""

    def __init__(self, mode: Literal["seeded", "buffers"], seed: int = 3407):
        if mode not in ("seeded", "buffers"):
            raise ValueError(f"noise must be 'seeded' or 'buffers', got {mode!r}")
        self.mode = mode
        self.seed = seed

    @property
    def identity(self) -> str:
        """What cached results depend on."""
        return "buffers" if self.mode == "buffers" else f"seeded:{self.seed}"

    def item(self, stage: str, *keys: str) -> torch.Generator | None:
        """The generator of one work item (``None`` in buffers mode)."""
        if self.mode == "buffers":
            return None
        digest = hashlib.sha256("/".join((str(self.seed), stage, *keys)).encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    def items(self, stage: str, keys: Sequence[Sequence[str]]) -> list[torch.Generator | None]:
        return [self.item(stage, *k) for k in keys]


def noise_layers(start: int, end: int) -> list[int]:
    """Noise-buffer indices a synthesis from stage ``start`` to ``end`` uses."""
    layers = [0] if start == 0 else []
    return layers + [j for k in range(max(start, 1), end + 1) for j in (2 * k - 1, 2 * k)]


def gan_noise(generator: Generator, items: Sequence[torch.Generator | None], start: int = 0,
              end: int | None = None) -> NoiseSpec:
    """Noise of one synthesis call for a batch whose sample ``i`` belongs to work item ``items[i]``: the buffers
    when the items have no generator, else fresh N(0, 1) maps drawn from each item's generator in layer order."""
    if all(g is None for g in items):
        return "buffers"
    end = generator.last_stage if end is None else min(end, generator.last_stage)
    out: list[Tensor | None] = [None] * generator.num_noise_layers
    layers = noise_layers(start, end)
    draws = []
    for g in items:
        draws.append({i: torch.randn(1, 1, *getattr(generator.noises, f"noise_{i}").shape[2:], generator=g)
                      for i in layers})
    device = generator.input.input.device
    for i in layers:
        out[i] = torch.cat([d[i] for d in draws]).to(device)
    return out


def sean_noise(item: torch.Generator | None) -> sean.Noise:
    return "zero" if item is None else item


# ---------------------------------------------------------------- images and masks

def downsample_to(images: Tensor, size: int) -> Tensor:
    """HairFast's strided bicubic filter from the working size to ``size`` (identity when equal)."""
    factor = images.shape[-1] // size
    return bicubic_downsample(images, factor) if factor > 1 else images


def normalize(images: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1]."""
    return (images - 0.5) / 0.5


def parse(nets: HairFastNets, images: Tensor) -> Tensor:
    """BiSeNet labels of [0, 1] images at their own resolution -> CelebAMask-HQ ids ``[B,1,256,256]`` (int64):
    argmax, renaming, nearest resize (HairFast's ``get_segmentation``)."""
    logits = nets.parser(imagenet_normalize(images))[0]
    labels = remap_labels(logits.argmax(dim=1), BISENET19_TO_CELEBAMASKHQ)
    return resize_labels(labels[:, None], MASK_SIZE)


def hair_of(labels: Tensor) -> Tensor:
    """Float hair mask ``[B,1,256,256]``."""
    return hair_mask(labels, MASK_SIZE)


# ---------------------------------------------------------------- 1. embedding

class TensorRecord:
    """A dataclass of tensors sharing a batch axis: its field names, one row, concatenation, the dict form."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def __getitem__(self, index: int | slice):
        index = slice(index, index + 1) if isinstance(index, int) else index
        return type(self)(*(getattr(self, f)[index] for f in self.names()))

    @classmethod
    def cat(cls, parts: Sequence):
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in cls.names()))

    def tensors(self) -> dict[str, Tensor]:
        return {f: getattr(self, f) for f in self.names()}


@dataclass
class Embedding(TensorRecord):
    """Per-image results of the embedding stage (batch axis first)."""

    W: Tensor  # e4e W+ + latent_avg [B,n,512]
    S: Tensor  # FS encoder styles + latent_avg [B,n,512]
    F_fs: Tensor  # G(S, 3..3, content) [B,512,32,32]
    F_w: Tensor  # G(W, 0..3) [B,512,32,32]
    labels: Tensor  # BiSeNet labels, CelebAMask-HQ ids [B,1,256,256] (int64)


@torch.no_grad()
def embed_images(nets: HairFastNets, images: Tensor, items: Sequence[torch.Generator | None]) -> Embedding:
    """Stage 1 for a batch of distinct images ``[B,3,size,size]`` in [0, 1] (``items[i]``: image i's noise)."""
    gen = nets.generator
    im_256 = downsample_to(images, MASK_SIZE)
    W = nets.e4e.encode(normalize(im_256))
    S, content = nets.fse.embed(normalize(images))
    F_fs = gen.synthesis(S, start_layer=3, end_layer=3, layer_in=content, noise=gan_noise(gen, items, 3, 3)).features
    F_w = gen.synthesis(W, end_layer=3, noise=gan_noise(gen, items, 0, 3)).features
    labels = parse(nets, downsample_to(images, min(PARSER_SIZE, images.shape[-1])))
    return Embedding(W, S, F_fs.contiguous(), F_w.contiguous(), labels)


def mixed_features(embedding: Embedding, mixing: float, multi: bool) -> Tensor:
    """The F each role carries on: pulled toward ``F_w`` inside the hair when the triplet has more than one
    distinct image (official behaviour), else the FS feature itself."""
    if not multi:
        return embedding.F_fs
    return masks.mix_embedding_features(embedding.F_fs, embedding.F_w, embedding.labels, mixing)[0]


# ---------------------------------------------------------------- 2. alignment

@dataclass
class HairShape:
    """The shape module's result for (face, other) pairs."""

    rotated_labels: Tensor  # labels of the other image re-rendered in the face's pose [B,1,256,256]
    target: Tensor  # target labels: face layout + the other image's hair [B,1,256,256] (int64)

    @property
    def hair_target(self) -> Tensor:
        """``HM_X`` [B,1,256,256] float."""
        return (self.target == HAIR).float()


@torch.no_grad()
def hair_shape(nets: HairFastNets, W_face: Tensor, W_other: Tensor, labels_face: Tensor,
               items: Sequence[torch.Generator | None]) -> HairShape:
    """Rotate ``W_other`` rows 0..5 toward the face, render at full size, parse it there (the official code parses
    the 1024 render without resizing), shape adaptor on (face's face code, rotated hair code)."""
    gen = nets.generator
    W_rot = nets.rotate.rotate_wplus(W_other, W_face)
    image = gen.synthesis(W_rot, noise=gan_noise(gen, items)).rgb
    rotated = parse(nets, ((image + 1) / 2).clamp(0, 1))
    target = nets.shape_adaptor.transfer_shape(labels_face, rotated)
    return HairShape(rotated, target)


@dataclass
class Inpainting:
    """SEAN re-renderings of face and shape image on the target layout and their e4e re-encodings (row 0: face,
    row 1: shape)."""

    images: Tensor  # [2,3,256,256] in (-1, 1)
    W: Tensor  # [2,n,512]
    F: Tensor  # [2,512,32,32]


@torch.no_grad()
def inpaint(nets: HairFastNets, image_256: Tensor, labels: Tensor, target: Tensor,
            item: torch.Generator | None, same_image: bool = False) -> Inpainting:
    """One (face, shape) pair: ``image_256`` [2,3,256,256] in [0, 1], their ``labels`` [2,1,256,256], ``target``
    [1,1,256,256]. ``same_image``: both rows are one image, so it is inpainted and re-encoded once."""
    gen = nets.generator
    count = 1 if same_image else 2
    codes = nets.sean.encode_styles(image_256[:count], labels[:count])
    images = nets.sean.decode(codes, target, sean_noise(item))
    W = nets.e4e.encode(images)
    F = gen.synthesis(W, end_layer=3, noise=gan_noise(gen, [item] * count, 0, 3)).features.contiguous()
    if same_image:
        images, W, F = (t.expand(2, *t.shape[1:]).contiguous() for t in (images, W, F))
    return Inpainting(images, W, F)


def align_features(F_face: Tensor, F_shape: Tensor, inpainting_F: Tensor, labels_face: Tensor,
                   labels_shape: Tensor, hair_target: Tensor, smooth: int) -> tuple[Tensor, masks.AlignmentMasks]:
    """``F_align`` [B,512,32,32] of B (face, shape) pairs; ``inpainting_F`` is ``[2B,...]`` (face row, shape row
    per pair, see :class:`Inpainting`)."""
    inp = inpainting_F.reshape(-1, 2, *inpainting_F.shape[1:])
    m = masks.alignment_masks(hair_of(labels_face), hair_of(labels_shape), hair_target, F_face.shape[-2:], smooth)
    return masks.blend_alignment_features(F_face, F_shape, inp[:, 0], inp[:, 1], m.low), m


# ---------------------------------------------------------------- 3. blending

@dataclass
class BlendingBatch:
    """Everything the blending encoder and the render need, for B triplets."""

    S_face: Tensor  # [B,n,512]
    S_color: Tensor
    S_shape: Tensor
    face_norm_256: Tensor  # [B,3,256,256] in [-1, 1]
    color_norm_256: Tensor
    shape_norm_256: Tensor
    masks: masks.BlendingMasks  # target_mask, HM_3E, ... [B,1,256,256]
    hair_shape_eroded: Tensor  # the shape image's eroded hair [B,1,256,256] (shape-aware variants)
    F_align: Tensor  # [B,512,32,32]

    @property
    def target_face(self) -> Tensor:
        """The face image outside any hair: the blending encoder's face input."""
        return self.face_norm_256 * self.masks.target_mask

    @property
    def hair_color(self) -> Tensor:
        """The colour image's (eroded) hair."""
        return self.color_norm_256 * self.masks.hair_color_eroded

    @property
    def hair_shape(self) -> Tensor:
        """The shape image's (eroded) hair (WithClipEmbeds / AdmixClipEmbeds input)."""
        return self.shape_norm_256 * self.hair_shape_eroded


def blending_batch(S_face: Tensor, S_color: Tensor, S_shape: Tensor, face_norm_256: Tensor, color_norm_256: Tensor,
                   shape_norm_256: Tensor, labels_face: Tensor, labels_color: Tensor, labels_shape: Tensor,
                   hair_target: Tensor | None, F_align: Tensor, smooth: int) -> BlendingBatch:
    """Masks of the blending stage. ``hair_target`` (HM_X of the colour step) ``None``: the no-color-align
    target mask ``(1 - HM_1D)(1 - HM_3D)``."""
    if hair_target is None:
        hair_target = torch.zeros_like(hair_of(labels_face))
    blend_masks = masks.blending_masks(labels_face, labels_color, hair_target, smooth)
    _, shape_eroded = dilate_erode(hair_of(labels_shape), smooth)
    return BlendingBatch(S_face, S_color, S_shape, face_norm_256, color_norm_256, shape_norm_256, blend_masks,
                         shape_eroded, F_align)


def clip_images(nets: HairFastNets, batch: BlendingBatch) -> list[Tensor]:
    """The masked images whose CLIP embeddings the blending encoder takes, in its order (``[B,3,256,256]`` in
    [-1, 1] each): the face outside any hair, the colour image's hair (and the shape image's hair for the
    shape-aware architectures)."""
    return nets.blending.clip_inputs(batch.target_face, batch.hair_color, batch.hair_shape)


@torch.no_grad()
def blend(nets: HairFastNets, batch: BlendingBatch, items: Sequence[torch.Generator | None],
          embeds: tuple[Tensor, Tensor, Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
    """``(S_blend [B,n,512], I_blend [B,3,size,size] in about [-1, 1])``: S rows 6.. from the blending encoder
    (always run, as the official code), rendered from ``F_align``. ``embeds``: the CLIP embeddings ``(face,
    colour, shape or None)`` of :func:`clip_images` when computed elsewhere (cached); else one CLIP pass here, as
    the official model's forward."""
    encoder = nets.blending
    start = batch.S_face.shape[1] - encoder.config.rows
    e_face, e_color, e_shape = embeds or encoder.embeds(*clip_images(nets, batch))
    rows = encoder.blend_embeds(batch.S_face[:, start:], batch.S_color[:, start:], e_face, e_color,
                                batch.S_shape[:, start:] if encoder.arch.uses_shape_latent else None, e_shape)
    S_blend = torch.cat([batch.S_face[:, :start], rows], dim=1)
    gen = nets.generator
    image = gen.synthesis(S_blend, start_layer=4, layer_in=batch.F_align, noise=gan_noise(gen, items, 4)).rgb
    return S_blend, image


# ---------------------------------------------------------------- 4. post-processing

@dataclass
class Final:
    S: Tensor  # S_final [B,n,512]
    F: Tensor  # F_final [B,512,64,64]
    image: Tensor  # [B,3,size,size] in [0, 1]


@dataclass
class FaceCodes(TensorRecord):
    """What the post-processing stage computes from the face image alone (per image, so cacheable): the encoder's
    ``styles`` [B,n,512] and ``content`` [B,512,64,64], and the face's share of ``to_feature``'s first convolution
    ``feature_part`` [B,1024,64,64]."""

    styles: Tensor
    content: Tensor
    feature_part: Tensor


@torch.no_grad()
def postprocess_face_codes(nets: HairFastNets, face_norm_256: Tensor) -> FaceCodes:
    """The post-processing stage's work on face images (:class:`FaceCodes`)."""
    styles, content = nets.postprocess.encode(face_norm_256)
    return FaceCodes(styles, content, nets.postprocess.face_feature_part(content))


@torch.no_grad()
def post_process(nets: HairFastNets, face: FaceCodes, blend_image: Tensor,
                 items: Sequence[torch.Generator | None]) -> Final:
    """Post-processing encoders on (face, ``I_blend`` bicubic-downsampled to 256), render from stage 5. The face's
    share comes in as ``face`` (:func:`postprocess_face_codes`); the official code encodes face and blend in one
    batch of two and runs ``to_feature``'s first convolution on both at once, which differs from the split form by
    float rounding only."""
    blend_codes = nets.postprocess.encode(downsample_to(blend_image, MASK_SIZE))
    S_final, F_final = nets.postprocess.combine((face.styles, face.content), blend_codes, face.feature_part)
    gen = nets.generator
    image = gen.synthesis(S_final, start_layer=5, layer_in=F_final, noise=gan_noise(gen, items, 5)).rgb
    return Final(S_final, F_final, ((image + 1) / 2).clamp(0, 1))
