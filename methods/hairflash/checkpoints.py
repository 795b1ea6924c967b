"""The weight files of the ``hairflash`` method, found also at their places in HairFast's ``pretrained_models/``.

The shared networks' paths inside ``pretrained_models/`` and the :class:`OfficialLayout` lookup live in
:mod:`methods.nets.hairfast_files` (``clip-opt`` and the balding step read the same files); the HairFast-only
checkpoints carry their ``official_path`` themselves. So ``--weights-dir`` may point at an unpacked official folder.

Not in ``pretrained_models/``: ``ViT-B-32.pt`` (the ``clip`` package downloads it to ``~/.cache/clip``) and the
SEAN median style codes (in the source tree; see :mod:`methods.hairflash.sean`): put them in a weight directory.
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.method import Checkpoint
from methods.hairflash import encoders, sean, shape_adaptor
from methods.nets import bisenet, clip, e4e, hairmapper, iresnet, stylegan2
from methods.nets.hairfast_files import HAIRFAST_PATHS, OfficialLayout, official

__all__ = ["HAIRFAST_PATHS", "OfficialLayout", "official", "trained_blending", "unique"]


GENERATOR = official(stylegan2.CHECKPOINT)
E4E = official(e4e.CHECKPOINT)
PARSER = official(bisenet.BISENET19)
FSE = official(iresnet.FSE_CHECKPOINT)
PSP = official(iresnet.PSP_CHECKPOINT)
ROTATE = official(encoders.ROTATE_CHECKPOINT)
SHAPE_ADAPTOR = official(shape_adaptor.CHECKPOINT)
SEAN = official(sean.CHECKPOINT)
SEAN_MEDIAN_CODES = sean.MEDIAN_CODES_CHECKPOINT
CLIP = clip.CHECKPOINT
BLENDING = official(encoders.BLENDING_CHECKPOINT)
POSTPROCESS = official(encoders.POSTPROCESS_CHECKPOINT)
POSTPROCESS_LATENT_AVG = official(encoders.POSTPROCESS_LATENT_AVG)

# Every stage but blending (the blending encoder is the variant's own, plus CLIP).
COMMON = (GENERATOR, FSE, PSP, E4E, PARSER, ROTATE, SHAPE_ADAPTOR, SEAN, SEAN_MEDIAN_CODES, CLIP, POSTPROCESS,
          POSTPROCESS_LATENT_AVG)

TRAIN_COMMAND = "harness train hairflash-blending --variant {variant}"


def trained_blending(variant: str, description: str) -> Checkpoint:
    """A blending encoder with no released weights: ours, made by the training command."""
    slug = variant.replace("-", "_")
    return Checkpoint(
        key=f"hairflash_blending_{slug}",
        filename=f"blending_{slug}.pth",
        source=f"ours: train with `{TRAIN_COMMAND.format(variant=variant)} --data DIR --out blending_{slug}.pth` "
               "(no official weights exist)",
        purpose=f"HairFlash blending encoder, variant {variant}: {description}; {{'model_state_dict': ...}} "
                "without CLIP (needs ViT-B-32.pt too)",
    )


HAIRMAPPER = hairmapper.CHECKPOINT
HAIRMAPPER_GENERATOR = hairmapper.GENERATOR_CHECKPOINT


def unique(checkpoints: Iterable[Checkpoint]) -> tuple[Checkpoint, ...]:
    """Checkpoints without repeats (by key), in order."""
    seen: dict[str, Checkpoint] = {}
    for ckpt in checkpoints:
        seen.setdefault(ckpt.key, ckpt)
    return tuple(seen.values())
