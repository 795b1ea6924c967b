"""The ``hairflash:<variant>`` variants (report section 8; tables 8.1-8.5, 9.1).

A variant changes only what differs from the official pipeline: whether the colour image gets its own hair-shape
step (``color_alignment``), the blending encoder's architecture (:class:`BlendingArch`) and weights, and the
optional balding pre-processing. Everything else is shared (:mod:`methods.hairflash.pipeline`).

* ``baseline`` -- the official HairFast pipeline and its released blending encoder.
* ``no-color-align`` -- "WithoutColorAlignment" (8.1): no hair-shape step for the colour image; the blending
  target mask is ``(1 - dil(hair face)) * (1 - dil(hair colour))``. Its blending encoder was retrained that way.
* ``clip-embeds`` -- "WithClipEmbeds" (8.2): the CLIP embedding of the shape image's hair joined to the face
  image's S rows; ``with-s`` -- "WithS": the shape image's S rows joined there instead; ``admix-clip`` /
  ``admix-s`` -- "AdmixClipEmbeds" / "AdmixS": the same information mixed in with the colour conditioning.
* ``final`` -- "Final" (section 9): no-color-align + the clip-embeds architecture, weights trained with the
  extra Sobel CosSim shape loss.
* ``balding`` -- "WithBalding" (8.3): HairMapper removes hair and headwear from the face image first
  (:mod:`methods.balding`), then the baseline pipeline runs on the bald face with the released blending encoder.

Variants other than ``baseline`` have no released blending weights: each declares its own file (made by
``harness train hairflash-blending --variant V``).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.method import Checkpoint
from methods.hairflash import checkpoints
from methods.hairflash.blending import OFFICIAL_ARCH, BlendingArch


@dataclass(frozen=True)
class Variant:
    """What a ``hairflash`` variant changes (see the module docstring)."""

    name: str
    report_name: str
    summary: str
    color_alignment: bool = True
    arch: BlendingArch = OFFICIAL_ARCH
    blending: Checkpoint = checkpoints.BLENDING
    # Training only: the extra shape loss of this variant's weights (None: CLIP colour + face losses only).
    shape_loss: str | None = None
    balding: bool = False

    @property
    def checkpoints(self) -> tuple[Checkpoint, ...]:
        extra = (checkpoints.HAIRMAPPER, checkpoints.HAIRMAPPER_GENERATOR) if self.balding else ()
        return checkpoints.unique((*checkpoints.COMMON, self.blending, *extra))


def _variant(name: str, report_name: str, summary: str, **changes) -> Variant:
    blending = changes.pop("blending", None) or checkpoints.trained_blending(name, summary)
    return Variant(name, report_name, summary, blending=blending, **changes)


WITH_CLIP_EMBEDS = BlendingArch(stream_embed=True)

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("baseline", "Baseline", "the official HairFast pipeline and blending encoder"),
    _variant("no-color-align", "WithoutColorAlignment",
             "no hair-shape step for the colour image; target mask = not-hair(face) x not-hair(colour)",
             color_alignment=False),
    _variant("clip-embeds", "WithClipEmbeds",
             "CLIP embedding of the shape image's hair joined to the face image's S rows", arch=WITH_CLIP_EMBEDS),
    _variant("with-s", "WithS", "the shape image's S rows joined to the face image's S rows",
             arch=BlendingArch(stream_latent=True)),
    _variant("admix-clip", "AdmixClipEmbeds",
             "CLIP embedding of the shape image's hair mixed in with the colour conditioning",
             arch=BlendingArch(cond_embed=True)),
    _variant("admix-s", "AdmixS", "the shape image's S rows mixed in with the colour conditioning",
             arch=BlendingArch(cond_latent=True)),
    _variant("final", "Final", "no-color-align + clip-embeds architecture, trained with the Sobel CosSim shape loss",
             color_alignment=False, arch=WITH_CLIP_EMBEDS, shape_loss="sobel_cossim"),
    Variant("balding", "WithBalding",
            "HairMapper removes hair and headwear from the face image before the official pipeline", balding=True),
)}
DEFAULT_VARIANT = "final"
