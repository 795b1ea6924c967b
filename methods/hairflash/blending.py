"""Blending-encoder architectures of the report's section 8.2: where the shape image's information enters.

The official blending encoder (:class:`methods.hairflash.encoders.ClipBlendingModel`) modulates the face image's
S rows 6..17 (the *stream*) with a *conditioning* made of the colour image's S rows and two CLIP embeddings (the
face image outside any hair, the colour image's hair). The report tried two places for information about the
shape image's hair (its S rows, or the CLIP embedding of its hair region):

1. joined to the face image's S rows, the colour information then mixed into that -- ``WithS`` / ``WithClipEmbeds``
   (``stream_latent`` / ``stream_embed``);
2. mixed in together with the colour information -- ``AdmixS`` / ``AdmixClipEmbeds`` (``cond_latent`` /
   ``cond_embed``).

:class:`BlendingArch` says which; :class:`BlendingEncoder` runs any of them. The report gives no code or weights
for the variants, so the details are ours:

* conditioning: ``cat(S_color rows, [S_shape rows], CLIP(face * target_mask), CLIP(colour * hair), [CLIP(shape
  hair)])`` per row (the official order, extras after their kind) -> width 1536 + 512 per extra;
* stream: ``cat(PixelNorm_rows(S_face rows), [PixelNorm_rows(S_shape rows)], [CLIP(shape hair) on every row])``;
  only the first modulation module's ``fc`` changes (``Linear(width, 512)``); the embedding joins *after* the
  row-wise PixelNorm (normalising a row-constant over the rows would leave only its signs);
* result ``S_face rows + 0.1 * dt`` as the official.

With no extra input :class:`BlendingEncoder` is exactly the official model (same keys, same numbers). Weights
files use the official layout ``{'model_state_dict': <non-CLIP keys>}`` (:func:`blending_checkpoint_dict`), CLIP
comes from ``ViT-B-32.pt``; :func:`load_blending_encoder` loads either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from harness.method import Checkpoint
from methods.hairflash import encoders
from methods.hairflash.encoders import (
    CLIP_PREFIX,
    DT_SCALE,
    BlendingConfig,
    ClipBlendingModel,
    modulation_stack,
    pixel_norm_rows,
)
from methods.nets.clip import CLIP, ClipConfig, Precision


@dataclass(frozen=True)
class BlendingArch:
    """Which extra shape-image inputs the blending encoder takes, and where (see the module docstring)."""

    stream_latent: bool = False  # WithS: S_shape rows joined to S_face rows
    stream_embed: bool = False  # WithClipEmbeds: CLIP(shape hair) joined to S_face rows
    cond_latent: bool = False  # AdmixS: S_shape rows in the conditioning
    cond_embed: bool = False  # AdmixClipEmbeds: CLIP(shape hair) in the conditioning

    @property
    def uses_shape_latent(self) -> bool:
        return self.stream_latent or self.cond_latent

    @property
    def uses_shape_embed(self) -> bool:
        return self.stream_embed or self.cond_embed

    def config(self, rows: int = 12, clip: ClipConfig | None = None) -> BlendingConfig:
        """The encoders' :class:`BlendingConfig` (conditioning sizes) for ``rows`` edited S rows."""
        clip = clip or ClipConfig()
        n_latents = 1 + self.cond_latent
        n_embeds = 2 + self.cond_embed
        return BlendingConfig(rows=rows, n_latents=n_latents, n_image_embeds=n_embeds,
                              cond_dim=n_latents * 512 + n_embeds * clip.embed_dim, clip=clip)

    def stream_dim(self, config: BlendingConfig) -> int:
        """Width of the modulated stream (the first module's ``fc`` input)."""
        return config.dim * (1 + self.stream_latent) + config.clip.embed_dim * self.stream_embed


OFFICIAL_ARCH = BlendingArch()


def modulation_modules(arch: BlendingArch, config: BlendingConfig) -> nn.ModuleList:
    """The five modulation modules (official keys); the first ``fc`` reads the (possibly wider) stream."""
    blocks = modulation_stack(config.modulation)
    width = arch.stream_dim(config)
    if width != config.dim:
        blocks[0].fc = nn.Linear(width, config.dim)
    return blocks


class ModulationPart(nn.Module):
    """The non-CLIP part of a :class:`BlendingEncoder`: exactly the keys of a blending checkpoint."""

    def __init__(self, arch: BlendingArch, config: BlendingConfig):
        super().__init__()
        self.modulation_module_list = modulation_modules(arch, config)


class BlendingEncoder(ClipBlendingModel):
    """:class:`ClipBlendingModel` with the shape-image inputs of :class:`BlendingArch`."""

    def __init__(self, arch: BlendingArch = OFFICIAL_ARCH, config: BlendingConfig | None = None,
                 clip_model: CLIP | None = None, modulation: nn.ModuleList | None = None):
        config = config or arch.config()
        super().__init__(config, clip_model, modulation if modulation is not None
                         else modulation_modules(arch, config))
        self.arch = arch

    def clip_inputs(self, target_face: Tensor, hair_color: Tensor, hair_shape: Tensor | None = None
                    ) -> list[Tensor]:
        """The masked images this encoder embeds with CLIP, in its order (the shape image's hair only for the
        shape-aware architectures)."""
        if self.arch.uses_shape_embed and hair_shape is None:
            raise ValueError("this blending encoder needs hair_shape (the shape image masked to its hair)")
        return [target_face, hair_color] + ([hair_shape] if self.arch.uses_shape_embed else [])

    def embeds(self, target_face: Tensor, hair_color: Tensor, hair_shape: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor | None]:
        """CLIP embeddings of the masked face / colour (/ shape) images in one CLIP pass."""
        images = self.clip_inputs(target_face, hair_color, hair_shape)
        parts = self.get_image_embed(torch.cat(images)).chunk(len(images))
        return parts[0], parts[1], (parts[2] if len(parts) > 2 else None)

    def forward(self, latent_face: Tensor, latent_color: Tensor, target_face: Tensor, hair_color: Tensor,
                latent_shape: Tensor | None = None, hair_shape: Tensor | None = None) -> Tensor:
        """S rows 6..17 of face / colour (/ shape) image and the masked [-1, 1] images -> new face S rows."""
        if self.arch.uses_shape_latent and latent_shape is None:
            raise ValueError("this blending encoder needs latent_shape (the shape image's S rows)")
        e_face, e_color, e_shape = self.embeds(target_face, hair_color, hair_shape)
        return self.blend_embeds(latent_face, latent_color, e_face, e_color, latent_shape, e_shape)

    def blend_embeds(self, latent_face: Tensor, latent_color: Tensor, e_face: Tensor, e_color: Tensor,
                     latent_shape: Tensor | None = None, e_shape: Tensor | None = None) -> Tensor:
        """The modulation part on precomputed CLIP embeddings (training caches them)."""
        arch, rows = self.arch, self.config.rows
        latents = [latent_color] + ([latent_shape] if arch.cond_latent else [])
        embeds = [e_face, e_color] + ([e_shape] if arch.cond_embed else [])
        condition = self.condition(latents, embeds)
        stream = [pixel_norm_rows(latent_face)]
        if arch.stream_latent:
            stream.append(pixel_norm_rows(latent_shape))
        if arch.stream_embed:
            stream.append(e_shape.to(latent_face.dtype).unsqueeze(1).expand(-1, rows, -1))
        dt = torch.cat(stream, dim=-1) if len(stream) > 1 else stream[0]
        for block in self.modulation_module_list:
            dt = block(dt, condition)
        return latent_face + DT_SCALE * dt


# ---------------------------------------------------------------- weights

def blending_state_dict(model: BlendingEncoder) -> dict[str, Tensor]:
    """The non-CLIP entries (what a blending checkpoint holds)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(CLIP_PREFIX)}


def blending_checkpoint_dict(model: BlendingEncoder, **extra: Any) -> dict[str, Any]:
    """``{'model_state_dict': non-CLIP keys, 'arch': ..., 'rows': ..., **extra}``: the official file layout plus
    what identifies the architecture (ignored when loading)."""
    return {"model_state_dict": blending_state_dict(model), "arch": asdict(model.arch), "rows": model.config.rows,
            **extra}


def load_blending_encoder(weights, checkpoint: Checkpoint, arch: BlendingArch = OFFICIAL_ARCH, rows: int = 12,
                          device: str | torch.device = "cpu", clip_precision: Precision = "fp16_weights",
                          clip: ClipConfig | None = None) -> BlendingEncoder:
    """The blending encoder of ``arch`` with its non-CLIP weights from ``checkpoint`` (strict; a file holding every
    ``clip_model.*`` key too takes CLIP from there) and CLIP from ``ViT-B-32.pt``; filled by the parity rule under
    namespace ``checkpoint.key`` (CLIP under ``clip_vitb32``) when ``weights.fill``. Eval, no grad. ``clip``: another
    CLIP configuration (tests)."""
    config = arch.config(rows, clip)
    part = ModulationPart(arch, config)
    clip_model = encoders.load_part_and_clip(part, weights, checkpoint, clip_precision, config.clip)
    model = BlendingEncoder(arch, config, clip_model, part.modulation_module_list)
    model.modulation_module_list.float()
    return model.to(device).eval().requires_grad_(False)
