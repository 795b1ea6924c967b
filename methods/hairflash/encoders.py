"""HairFast's latent-space encoders: the modulation family of ``models/Encoders.py`` (AIRI-Institute/HairFastGAN).

Key names follow the official modules, so the released files load unchanged:

* :class:`RotateModel` (``Rotate/rotate_best.pth`` = ``{'model_state_dict': ...}``): turns rows 0..5 of the shape
  image's W+ toward the face image's pose.
* :class:`ClipBlendingModel` (``Blending/checkpoint.pth`` = ``{'model_state_dict': ...}`` without the
  ``clip_model.*`` keys; CLIP comes from OpenAI's ``ViT-B-32.pt`` through :mod:`methods.nets.clip`): new S rows
  6..17 for the face image, conditioned on the colour image's S rows and CLIP embeddings of two masked images.
* :class:`PostProcessModel` (``PostProcess/pp_model.pth`` = ``{'model_state_dict', 'D', 'cur_iter'}``, plus
  ``PostProcess/latent_avg.pt``): re-encodes face and blend image into the final S [B,18,512] and F [B,512,64,64].

Shared pieces (:mod:`methods.nets.modulation`, HairCLIP's mapper family): PixelNorm over the rows, five
:class:`ModulationModule` per model (a LeakyReLU after every module but the last); each model returns
``base + 0.1 * dt`` (PostProcess: ``latent_avg + 0.1 * (dt_face + dt_blend)``).

Blending variants (report section 8; only the official one has released weights and a parity fixture). The
conditioning is ``cat(latents..., CLIP embeddings...)`` per row; :class:`BlendingConfig` gives its parts as
``n_latents`` / ``n_image_embeds`` and its width ``cond_dim``, so variants differ only in inputs and sizes:

* ``official``: ``cat(S_color rows, CLIP(face * target_mask), CLIP(color * colour hair))`` -> 1536.
* ``with_clip_embeds`` ("WithClipEmbeds", also the architecture of the report's "Final"): a third embedding, CLIP of
  the shape image's hair region, is appended -> 2048. Our reading of the report; no official code or weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.method import Checkpoint
from harness.parity import Fixture, fill_value, to_numpy
from harness.weights import filled_state_dict, load_state_dict_into, safe_load
from methods.nets import clip as clip_net
from methods.nets import iresnet, modulation
from methods.nets.clip import CLIP, CLIP_MEAN, CLIP_STD, ClipConfig, Precision
from methods.nets.clip import init_scale_fill_recipe as clip_fill_recipe
from methods.nets.iresnet import (
    POSTPROCESS_ENCODER_CONFIG,
    EncoderConfig,
    FeatureEncoder,
    IBasicBlock,
    config_from_state,
    latent_avg_from,
)
from methods.nets.modulation import (  # noqa: F401  (re-exported: HairFast's modules import them from here)
    DT_SCALE,
    LAYER_NORM_EPS,
    LEAKY_SLOPE,
    PIXEL_NORM_EPS,
    ModulationConfig,
    ModulationModule,
    modulate,
    modulation_mlp,
    modulation_stack,
    pixel_norm_rows,
)

HF_REPO = iresnet.HF_REPO
CLIP_PREFIX = "clip_model."

ROTATE_CHECKPOINT = Checkpoint(
    key="hairfast_rotate",
    filename="rotate_best.pth",
    source=f"{HF_REPO} pretrained_models/Rotate/rotate_best.pth (26.3 MB on the Hub)",
    purpose="HairFast rotate encoder (pose alignment of the shape image's W+ rows 0..5); {'model_state_dict': ...}",
    official_path="Rotate/rotate_best.pth",
    download=("hf:AIRI-Institute/HairFastGAN/pretrained_models/Rotate/rotate_best.pth",),
)
BLENDING_CHECKPOINT = Checkpoint(
    key="hairfast_blending",
    filename="checkpoint.pth",
    source=f"{HF_REPO} pretrained_models/Blending/checkpoint.pth (89.3 MB on the Hub; the folder also holds "
           "checkpoint_old.pth and checkpoint_old2.pth, unused)",
    purpose="HairFast blending encoder (ClipBlendingModel) without its CLIP part; {'model_state_dict': ...}. "
            "Needs clip_vitb32 (ViT-B-32.pt) too",
    official_path="Blending/checkpoint.pth",
    download=("hf:AIRI-Institute/HairFastGAN/pretrained_models/Blending/checkpoint.pth",),
)
POSTPROCESS_CHECKPOINT = Checkpoint(
    key="hairfast_postprocess",
    filename="pp_model.pth",
    source=f"{HF_REPO} pretrained_models/PostProcess/pp_model.pth (797 MB on the Hub)",
    purpose="HairFast post-processing encoder; {'model_state_dict', 'D' (training discriminator), 'cur_iter'}",
    official_path="PostProcess/pp_model.pth",
    download=("hf:AIRI-Institute/HairFastGAN/pretrained_models/PostProcess/pp_model.pth",),
)
POSTPROCESS_LATENT_AVG = Checkpoint(
    key="hairfast_postprocess_latent_avg",
    filename="latent_avg.pt",
    source=f"{HF_REPO} pretrained_models/PostProcess/latent_avg.pt (2.8 kB on the Hub, i.e. about 512 float32 "
           "values: a W mean broadcast over the 18 rows)",
    purpose="average latent added to the post-processing encoder's final S",
    official_path="PostProcess/latent_avg.pt",
    download=("hf:AIRI-Institute/HairFastGAN/pretrained_models/PostProcess/latent_avg.pt",),
)
CHECKPOINTS = [ROTATE_CHECKPOINT, BLENDING_CHECKPOINT, POSTPROCESS_CHECKPOINT, POSTPROCESS_LATENT_AVG]

def _check_rows(x: Tensor, rows: int, what: str) -> None:
    if x.dim() != 3 or x.shape[1] != rows:
        raise ValueError(f"{what}: expected [B, {rows}, dim], got {tuple(x.shape)}")


# ---------------------------------------------------------------- rotate

ROTATE_CONFIG = ModulationConfig(rows=6)


class RotateModel(nn.Module):
    """``latent_from + 0.1 * modulate(PixelNorm(latent_from), condition=latent_to)`` on ``[B, 6, 512]`` rows."""

    def __init__(self, config: ModulationConfig = ROTATE_CONFIG):
        super().__init__()
        self.config = config
        self.modulation_module_list = modulation_stack(config)

    def forward(self, latent_from: Tensor, latent_to: Tensor) -> Tensor:
        """``latent_from``: shape image W+ rows 0..5; ``latent_to``: face image W+ rows 0..5."""
        _check_rows(latent_from, self.config.rows, "latent_from")
        return latent_from + DT_SCALE * modulate(self.modulation_module_list, latent_from, latent_to)

    def rotate_wplus(self, w_shape: Tensor, w_face: Tensor) -> Tensor:
        """Full W+ of the shape image with its first ``rows`` rows turned toward the face's pose."""
        rows = self.config.rows
        return torch.cat([self(w_shape[:, :rows], w_face[:, :rows]), w_shape[:, rows:]], dim=1)


# ---------------------------------------------------------------- blending

@dataclass(frozen=True)
class BlendingConfig:
    """``rows`` S rows are edited (the last ``rows`` of 18: 6..17); the conditioning per row is
    ``n_latents`` code rows (the colour image's S; 512 each) and ``n_image_embeds`` CLIP embeddings
    (``clip.embed_dim`` each), ``cond_dim`` wide in total."""

    rows: int = 12
    n_latents: int = 1
    n_image_embeds: int = 2
    cond_dim: int = 1536
    middle: int = 1024
    dim: int = 512
    n_blocks: int = 5
    clip: ClipConfig = field(default_factory=ClipConfig)

    def __post_init__(self):
        expected = self.n_latents * self.dim + self.n_image_embeds * self.clip.embed_dim
        if self.cond_dim != expected:
            raise ValueError(f"cond_dim {self.cond_dim} != {self.n_latents} x {self.dim} + "
                             f"{self.n_image_embeds} x {self.clip.embed_dim} = {expected}")

    @property
    def modulation(self) -> ModulationConfig:
        return ModulationConfig(self.rows, self.cond_dim, self.middle, self.dim, self.n_blocks)


BLENDING_CONFIG = BlendingConfig()
BLENDING_VARIANTS: dict[str, BlendingConfig] = {
    "official": BLENDING_CONFIG,
    "with_clip_embeds": BlendingConfig(n_image_embeds=3, cond_dim=2048),
}


class ClipBlendingModel(nn.Module):
    """HairFast's blending encoder; ``clip_model`` is a :class:`methods.nets.clip.CLIP` (keys ``clip_model.*``).

    :meth:`forward` is the official call ``(latent_face, latent_color, target_face, hair_color)``; with
    ``n_image_embeds = 3`` (WithClipEmbeds) ``hair_shape`` (the shape image masked to its hair) is required.
    """

    def __init__(self, config: BlendingConfig = BLENDING_CONFIG, clip_model: CLIP | None = None,
                 modulation: nn.ModuleList | None = None):
        super().__init__()
        self.config = config
        self.clip_model = clip_model if clip_model is not None else CLIP(config.clip)
        self.modulation_module_list = modulation if modulation is not None else modulation_stack(config.modulation)
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def get_image_embed(self, image: Tensor) -> Tensor:
        """[-1, 1] image -> CLIP embedding [B, 512] (float32): adaptive average pool to 224x224, to [0, 1],
        CLIP mean/std, ``encode_image`` (in the CLIP model's dtype)."""
        size = self.clip_model.visual.input_resolution
        x = F.adaptive_avg_pool2d(image.float(), (size, size)) * 0.5 + 0.5
        x = (x - self.clip_mean) / self.clip_std
        return self.clip_model.encode_image(x).float()

    def condition(self, latents: Sequence[Tensor], embeds: Sequence[Tensor]) -> Tensor:
        """``cat(latents..., embeds repeated over the rows...)`` on the last dim -> ``[B, rows, cond_dim]``."""
        rows = self.config.rows
        parts = list(latents) + [e.unsqueeze(1).expand(-1, rows, -1) for e in embeds]
        condition = torch.cat(parts, dim=-1)
        if condition.shape[-1] != self.config.cond_dim:
            raise ValueError(f"conditioning is {condition.shape[-1]} wide, the model takes {self.config.cond_dim}")
        return condition

    def blend(self, latent_face: Tensor, condition: Tensor) -> Tensor:
        """``latent_face + 0.1 * modulate(PixelNorm(latent_face), condition)``."""
        _check_rows(latent_face, self.config.rows, "latent_face")
        return latent_face + DT_SCALE * modulate(self.modulation_module_list, latent_face, condition)

    def forward(self, latent_face: Tensor, latent_color: Tensor, target_face: Tensor, hair_color: Tensor,
                hair_shape: Tensor | None = None) -> Tensor:
        """S rows 6..17 of face and colour image, masked [-1, 1] face and colour images (and, for the
        WithClipEmbeds variant, the masked shape image) -> new face S rows 6..17 ``[B, 12, 512]``."""
        images = [target_face, hair_color] + ([] if hair_shape is None else [hair_shape])
        if len(images) != self.config.n_image_embeds:
            raise ValueError(f"this blending model takes {self.config.n_image_embeds} images, got {len(images)}")
        embeds = self.get_image_embed(torch.cat(images)).chunk(len(images))  # one CLIP pass for all images
        return self.blend(latent_face, self.condition([latent_color], embeds))


class ModulationPart(nn.Module):
    """The non-CLIP part of a :class:`ClipBlendingModel`: exactly the keys of the released checkpoint."""

    def __init__(self, config: BlendingConfig = BLENDING_CONFIG):
        super().__init__()
        self.modulation_module_list = modulation_stack(config.modulation)


# ---------------------------------------------------------------- post-processing

@dataclass(frozen=True)
class PostProcessConfig:
    """``encoder``: the shared face/blend encoder; ``to_feature``: stride-1 :class:`IBasicBlock` groups
    ``(width, blocks)`` from ``2 * 512`` concatenated content channels; modulation over ``rows`` = 18 rows."""

    encoder: EncoderConfig = POSTPROCESS_ENCODER_CONFIG
    to_feature: tuple[tuple[int, int], ...] = ((1024, 2), (768, 2), (512, 2))
    middle: int = 512
    n_blocks: int = 5

    @property
    def modulation(self) -> ModulationConfig:
        dim = self.encoder.style_dim
        return ModulationConfig(self.encoder.n_styles, dim, self.middle, dim, self.n_blocks)


class FeatureResNet(nn.Module):
    """HairFast's ``FeatureiResnet``: stride-1 blocks ``res_blocks.res_block_{n}_{k}``, a 1x1 conv + BN
    projection where the width changes."""

    def __init__(self, blocks: Sequence[tuple[int, int]], inplanes: int = 1024):
        super().__init__()
        layers = {}
        for n, (planes, count) in enumerate(blocks, start=1):
            for k in range(1, count + 1):
                layers[f"res_block_{n}_{k}"] = IBasicBlock(inplanes, planes, 1, project=inplanes != planes)
                inplanes = planes
        self.res_blocks = nn.ModuleDict(layers)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.res_blocks.values():
            x = block(x)
        return x

    @property
    def first_block(self) -> IBasicBlock:
        return next(iter(self.res_blocks.values()))

    def forward_from_parts(self, x: Tensor, parts: Sequence[Tensor]) -> Tensor:
        """:meth:`forward` of ``x`` given the first block's ``conv1`` parts of its channel groups
        (:meth:`IBasicBlock.conv1_part`)."""
        first, *rest = self.res_blocks.values()
        x = first.after_conv1(x, first.conv1_from_parts(parts))
        for block in rest:
            x = block(x)
        return x


POSTPROCESS_CONFIG = PostProcessConfig()


class PostProcessModel(nn.Module):
    """``(source, target)`` = normalised face image and blend image at 256 -> ``(S_final [B,18,512],
    F_final [B,512,64,64])``. ``latent_avg`` is a non-persistent buffer (``[18,512]`` or ``[1,512]``)."""

    def __init__(self, config: PostProcessConfig = POSTPROCESS_CONFIG):
        super().__init__()
        self.config = config
        self.encoder_face = FeatureEncoder(config.encoder)
        self.to_feature = FeatureResNet(config.to_feature, 2 * config.encoder.content_channels)
        self.to_latent_1 = modulation_stack(config.modulation)
        self.to_latent_2 = modulation_stack(config.modulation)
        enc = config.encoder
        self.register_buffer("latent_avg", torch.zeros(enc.n_styles, enc.style_dim), persistent=False)

    def set_latent_avg(self, latent_avg: Tensor) -> None:
        """Accepts ``[18, 512]``, ``[1, 18, 512]``, ``[512]`` or ``[1, 512]`` (broadcast over the rows)."""
        value = torch.as_tensor(latent_avg).detach().float()
        enc = self.config.encoder
        if value.numel() == enc.style_dim:
            value = value.reshape(1, enc.style_dim)
        elif value.numel() == enc.n_styles * enc.style_dim:
            value = value.reshape(enc.n_styles, enc.style_dim)
        else:
            raise ValueError(f"latent_avg of shape {tuple(value.shape)} does not fit [{enc.n_styles}, {enc.style_dim}]")
        self.latent_avg = value.to(self.latent_avg.device)

    def forward(self, source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The official computation: one encoder pass for both images, ``to_feature`` on their concatenation."""
        styles, content = self.encode(torch.cat([source, target]))
        s_face, s_blend = styles.chunk(2)
        return self.final_styles(s_face, s_blend), self.to_feature(torch.cat(content.chunk(2), dim=1))

    def final_styles(self, s_face: Tensor, s_blend: Tensor) -> Tensor:
        """``S_final`` from the face's and the blend's encoder styles."""
        dt_face = modulate(self.to_latent_1, s_face, s_blend)
        dt_blend = modulate(self.to_latent_2, s_blend, s_face)
        return self.latent_avg.to(dt_face.dtype) + DT_SCALE * (dt_face + dt_blend)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The shared encoder alone: normalised 256 images -> ``(styles, content)``. The face image's codes depend
        on the face only, so a pipeline may compute them once per face (:meth:`combine` takes them)."""
        return self.encoder_face(images)

    def face_feature_part(self, content_face: Tensor) -> Tensor:
        """The face's share of ``to_feature``'s first convolution (``[B,C,64,64]``): it depends on the face
        alone, so a pipeline may compute it once per face too (:meth:`combine` takes it)."""
        return self.to_feature.first_block.conv1_part(content_face, 0)

    def combine(self, face: tuple[Tensor, Tensor], blend: tuple[Tensor, Tensor],
                face_feature_part: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`forward` from the encoder outputs ``(styles, content)`` of the face and the blend images, with
        ``to_feature``'s first convolution split over the two images' channels (:meth:`face_feature_part`; equal
        to the whole convolution up to float rounding)."""
        (s_face, f_face), (s_blend, f_blend) = face, blend
        s_final = self.final_styles(s_face, s_blend)
        if face_feature_part is None:
            face_feature_part = self.face_feature_part(f_face)
        blend_part = self.to_feature.first_block.conv1_part(f_blend, f_face.shape[1])
        f_final = self.to_feature.forward_from_parts(torch.cat([f_face, f_blend], dim=1),
                                                     [face_feature_part, blend_part])
        return s_final, f_final


# ---------------------------------------------------------------- fill recipe (parity rule, --fill-weights)

def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Fill of one entry of any of the three models, identical to the ``hairfast_rotate``,
    ``hairfast_blending`` and ``hairfast_postprocess`` recipes: linears ``1/sqrt(fan_in)`` with 0.01 biases,
    LayerNorm weight 1 +- 0.1 and bias 0.1, ``clip_model.*`` by :func:`clip_fill_recipe`, encoder and
    ``to_feature`` entries by :func:`methods.nets.iresnet.fill_recipe` (also the extra ``latent_avg``)."""
    if key.startswith(CLIP_PREFIX):
        return clip_fill_recipe(key[len(CLIP_PREFIX):], shape)
    if modulation.is_layernorm(key):
        return modulation.fill_recipe(key, shape)
    return iresnet.fill_recipe(key, shape)


# ---------------------------------------------------------------- loading

def _model_state_dict(obj: Any) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping) or "model_state_dict" not in obj:
        raise ValueError("expected a dict with 'model_state_dict'")
    return obj["model_state_dict"]


def load_rotate(weights, device: str | torch.device = "cpu", config: ModulationConfig = ROTATE_CONFIG
                ) -> RotateModel:
    """:class:`RotateModel` from ``rotate_best.pth`` (strict), or filled by the rule (namespace
    ``hairfast_rotate``) when ``weights.fill``; eval, no grad, on ``device``."""
    model = RotateModel(config)
    weights.load_network(model, ROTATE_CHECKPOINT, extract=_model_state_dict, recipe=fill_recipe)
    return model.float().to(device).eval().requires_grad_(False)


def load_part_and_clip(part: nn.Module, weights, checkpoint: Checkpoint, clip_precision: Precision,
                       clip_config: ClipConfig) -> CLIP:
    """Load ``part`` (a blending model's non-CLIP modules) from ``checkpoint``'s ``model_state_dict`` (strict on
    the released keys) and return its CLIP: from the same file when it holds every ``clip_model.*`` key, else from
    ``ViT-B-32.pt``. With ``weights.fill``: ``part`` filled under ``checkpoint.key``, CLIP by its own rule."""
    if weights.fill:
        load_state_dict_into(part, filled_state_dict(part, checkpoint.key, fill_recipe), "filled weights")
        return clip_net.load_clip(weights, "cpu", clip_precision, clip_config)
    state = dict(_model_state_dict(safe_load(weights.path(checkpoint))))
    clip_state = {k[len(CLIP_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(CLIP_PREFIX)}
    load_state_dict_into(part, state, checkpoint.filename)  # before CLIP: a wrong file fails on its own keys
    if not clip_state:
        return clip_net.load_clip(weights, "cpu", clip_precision, clip_config)
    clip_model = CLIP(clip_config)
    load_state_dict_into(clip_model, clip_state, f"{checkpoint.filename} (clip_model.*)")
    return clip_net.apply_precision(clip_model, clip_precision)


def load_blending(weights, device: str | torch.device = "cpu", clip_precision: Precision = "fp16_weights",
                  config: BlendingConfig = BLENDING_CONFIG, checkpoint: Checkpoint = BLENDING_CHECKPOINT
                  ) -> ClipBlendingModel:
    """:class:`ClipBlendingModel` from ``Blending/checkpoint.pth`` (its ``model_state_dict`` must hold exactly the
    non-CLIP keys) and CLIP from ``ViT-B-32.pt`` (:func:`methods.nets.clip.load_clip`). A file that also holds
    every ``clip_model.*`` key (a full state dict) takes CLIP from there instead.

    ``clip_precision`` (see :mod:`methods.nets.clip`): ``"fp16_weights"`` (default) is the official CPU path
    (weights rounded through float16, a no-op for the float16 release), ``"fp16"`` the official CUDA path,
    ``"fp32"`` the parity fixtures. With ``weights.fill`` the non-CLIP part is filled under namespace
    ``checkpoint.key`` and CLIP by its own rule (namespace ``clip_vitb32``). Variants (``config``) have no
    released weights: pass their own ``checkpoint`` or fill them."""
    part = ModulationPart(config)
    clip_model = load_part_and_clip(part, weights, checkpoint, clip_precision, config.clip)
    model = ClipBlendingModel(config, clip_model, part.modulation_module_list)
    model.modulation_module_list.float()
    return model.to(device).eval().requires_grad_(False)


def load_postprocess(weights, device: str | torch.device = "cpu", config: PostProcessConfig = POSTPROCESS_CONFIG
                     ) -> PostProcessModel:
    """:class:`PostProcessModel` from ``pp_model.pth`` (``model_state_dict``, strict; ``D`` and ``cur_iter`` are
    ignored) and ``latent_avg.pt``; with ``weights.fill`` filled under namespace ``hairfast_postprocess``, the
    average latent being the rule's fill of key ``latent_avg`` there (as the fixture does)."""
    model = PostProcessModel(config)
    weights.load_network(model, POSTPROCESS_CHECKPOINT, extract=_model_state_dict, recipe=fill_recipe)
    if weights.fill:
        enc = config.encoder
        shape = (enc.n_styles, enc.style_dim)
        fill = fill_recipe("latent_avg", shape)
        latent_avg = torch.from_numpy(fill_value(POSTPROCESS_CHECKPOINT.key, "latent_avg", shape,
                                                 fill["mean"], fill["std"]))
    else:
        latent_avg = latent_avg_from(safe_load(weights.path(POSTPROCESS_LATENT_AVG)))
    model.set_latent_avg(latent_avg)
    return model.float().to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------- parity

def _word(name: str) -> str:
    """First word of a case's input/output name (``"F_final (sampled)"`` -> ``F_final``)."""
    return re.split(r"[\s(]", name.strip(), maxsplit=1)[0]


def _inputs(fixture: Fixture, case: Mapping) -> dict[str, Tensor]:
    return {_word(name): torch.from_numpy(np.ascontiguousarray(fixture.data[key])).float()
            for name, key in case.get("inputs", {}).items()}


def _outputs(case: Mapping, values: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """Our values by the case's output names; a name matches a value key exactly or by prefix
    (``rotated_rows_0_5`` <- ``rotated_rows``)."""
    out = {}
    for name in case.get("outputs", {}):
        word = _word(name)
        key = word if word in values else next((k for k in values if word.startswith(k)), None)
        if key is not None:
            out[name] = to_numpy(values[key])
    return out


def _shapes(fixture: Fixture, prefix: str = "") -> dict[str, Any]:
    return {e["key"][len(prefix):]: _Shape(tuple(e["shape"])) for e in fixture.spec["state_dict"]
            if e["key"].startswith(prefix)}


@dataclass(frozen=True)
class _Shape:
    shape: tuple[int, ...]


def modulation_config_from(shapes: Mapping[str, Any], prefix: str, rows: int) -> ModulationConfig:
    """A :class:`ModulationConfig` whose sizes follow a state dict's ``{prefix}N.*`` entries."""
    n_blocks = len({m.group(1) for k in shapes if (m := re.fullmatch(rf"{re.escape(prefix)}(\d+)\.fc\.weight", k))})
    middle, cond_dim = shapes[f"{prefix}0.gamma_function.0.weight"].shape
    return ModulationConfig(rows, cond_dim, middle, shapes[f"{prefix}0.fc.weight"].shape[0], n_blocks)


def _layernum(fixture: Fixture, default: int) -> int:
    text = " ".join(str(v) for v in fixture.constructor.values())
    match = re.search(r"layernum=(\d+)", text)
    return int(match.group(1)) if match else default


def _extra_tensor(fixture: Fixture, key: str) -> Tensor:
    entry = next(e for e in fixture.spec.get("extra_tensors", []) if e["key"] == key)
    fill = entry["fill"]
    return torch.from_numpy(fill_value(fixture.namespace, key, entry["shape"], fill.get("mean", 0.0),
                                       fill.get("std", 1.0)))


def _load_fixture(model: nn.Module, fixture: Fixture) -> None:
    load_state_dict_into(model, fixture.torch_state_dict(), f"fixture {fixture.name}")
    model.float().eval()


def rotate_parity_adapter(fixture: Fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """``hairfast_rotate``: ``rot = model(W_shape[:, :rows], W_face[:, :rows])``, the full rotated W+, the delta."""
    model = RotateModel(modulation_config_from(_shapes(fixture), "modulation_module_list.", _layernum(fixture, 6)))
    _load_fixture(model, fixture)
    rows = model.config.rows

    def run(case: dict) -> dict[str, np.ndarray]:
        x = _inputs(fixture, case)
        with torch.no_grad():
            rotated = model(x["W_shape"][:, :rows], x["W_face"][:, :rows])
            values = {"rotated_rows": rotated, "W_rotated_full": torch.cat([rotated, x["W_shape"][:, rows:]], 1),
                      "delta_rows": rotated - x["W_shape"][:, :rows]}
        return _outputs(case, values)

    return run


def blending_parity_adapter(fixture: Fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """``hairfast_blending``: CLIP from the spec's hyper-parameters (float32), strict load of the full state
    dict; the Blending stage call on ``S[:, n - rows:]`` and the masked 256 images."""
    hparams = dict(fixture.constructor.get("clip_model_hparams") or {})
    heads = hparams.pop("vision_heads", None)
    clip_config = ClipConfig.from_mapping(hparams)
    if heads is not None and heads != clip_config.vision_heads:
        raise ValueError(f"vision_heads {heads} != vision_width // 64 = {clip_config.vision_heads}")
    shapes = _shapes(fixture)
    mod = modulation_config_from(shapes, "modulation_module_list.", _layernum(fixture, 12))
    n_embeds = (mod.cond_dim - mod.dim) // clip_config.embed_dim
    config = BlendingConfig(mod.rows, 1, n_embeds, mod.cond_dim, mod.middle, mod.dim, mod.n_blocks, clip_config)
    model = ClipBlendingModel(config)
    _load_fixture(model, fixture)
    rows = config.rows

    def run(case: dict) -> dict[str, np.ndarray]:
        x = _inputs(fixture, case)
        face = x["I_face_norm_256"] * x["target_mask"]
        color = x["I_color_norm_256"] * x["HM_3E"]
        s_face = x["S_face"]
        start = s_face.shape[1] - rows
        with torch.no_grad():
            out = model(s_face[:, start:], x["S_color"][:, start:], face, color)
            values = {"S_blend_rows": out, "S_blend_full": torch.cat([s_face[:, :start], out], 1),
                      "delta_rows": out - s_face[:, start:], "clip_embed_face": model.get_image_embed(face),
                      "clip_embed_color": model.get_image_embed(color)}
        return _outputs(case, values)

    return run


def postprocess_parity_adapter(fixture: Fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """``hairfast_postprocess``: sizes from the state dict, strict load, the extra ``latent_avg``;
    ``S_final, F_final = model(source, target)`` and the encoder's styles/content of the face image."""
    shapes = _shapes(fixture)
    encoder = config_from_state(_shapes(fixture, "encoder_face."), content_stride=1, resize_to=256)
    to_feature = []
    for key in shapes:
        if (m := re.fullmatch(r"to_feature\.res_blocks\.res_block_(\d+)_(\d+)\.bn2\.weight", key)):
            n, k = int(m.group(1)), int(m.group(2))
            while len(to_feature) < n:
                to_feature.append([0, 0])
            to_feature[n - 1] = [shapes[key].shape[0], max(to_feature[n - 1][1], k)]
    mod = modulation_config_from(shapes, "to_latent_1.", _layernum(fixture, encoder.n_styles))
    config = PostProcessConfig(encoder, tuple(tuple(b) for b in to_feature), mod.middle, mod.n_blocks)
    model = PostProcessModel(config)
    _load_fixture(model, fixture)
    model.set_latent_avg(_extra_tensor(fixture, "latent_avg"))

    def run(case: dict) -> dict[str, np.ndarray]:
        x = _inputs(fixture, case)
        with torch.no_grad():
            s_final, f_final = model(x["source"], x["target"])
            styles, content = model.encoder_face(x["source"])
            values = {"S_final": s_final, "S_final_minus_latent_avg": s_final - model.latent_avg,
                      "F_final": f_final, "enc_styles_face": styles, "enc_content_face": content}
        return _outputs(case, values)

    return run


PARITY = {
    "hairfast_rotate": rotate_parity_adapter,
    "hairfast_blending": blending_parity_adapter,
    "hairfast_postprocess": postprocess_parity_adapter,
}
