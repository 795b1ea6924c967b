"""The weight files of the ``hairflash`` method, found also at their places in HairFast's ``pretrained_models/``.

The network modules declare their checkpoints without HairFast's folder layout (some are shared with other
methods). :func:`official` adds the relative path inside HairFast's ``pretrained_models/`` (facts from the
official ``hair_swap.py``, ``models/Embedding.py``, ``models/Net.py``, ``models/Encoders.py``,
``models/FeatureStyleEncoder/FSencoder.py``), so ``--weights-dir`` may point at an unpacked official folder, and
:class:`OfficialLayout` makes the modules' own loaders look there too.

Not in ``pretrained_models/``: ``ViT-B-32.pt`` (the ``clip`` package downloads it to ``~/.cache/clip``) and the
SEAN median style codes (in the source tree; see :mod:`methods.hairflash.sean`): put them in a weight directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from harness.method import Checkpoint
from harness.weights import WeightStore
from methods.hairflash import encoders, iresnet, sean, shape_adaptor
from methods.nets import bisenet, clip, e4e, hairmapper, stylegan2

HAIRFAST_PATHS: dict[str, str] = {
    stylegan2.CHECKPOINT.key: "StyleGAN/ffhq.pt",
    e4e.CHECKPOINT.key: "encoder4editing/e4e_ffhq_encode.pt",
    bisenet.BISENET19.key: "BiSeNet/face_parsing_79999_iter.pth",
    iresnet.FSE_CHECKPOINT.key: "FeatureStyleEncoder/143_enc.pth",
    iresnet.PSP_CHECKPOINT.key: "FeatureStyleEncoder/psp_ffhq_encode.pt",
    encoders.ROTATE_CHECKPOINT.key: "Rotate/rotate_best.pth",
    encoders.BLENDING_CHECKPOINT.key: "Blending/checkpoint.pth",
    encoders.POSTPROCESS_CHECKPOINT.key: "PostProcess/pp_model.pth",
    encoders.POSTPROCESS_LATENT_AVG.key: "PostProcess/latent_avg.pt",
    shape_adaptor.CHECKPOINT.key: "ShapeAdaptor/mask_generator.pth",
    sean.CHECKPOINT.key: "sean_checkpoints/CelebA-HQ_pretrained/latest_net_G.pth",
}


def official(ckpt: Checkpoint) -> Checkpoint:
    """``ckpt`` with its path inside HairFast's ``pretrained_models/`` (unchanged when it has none there)."""
    path = HAIRFAST_PATHS.get(ckpt.key, ckpt.official_path)
    return ckpt if path == ckpt.official_path else replace(ckpt, official_path=path)


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


class OfficialLayout(WeightStore):
    """A view of ``base`` (same directories, same fill mode) whose lookups also try each checkpoint's path inside
    HairFast's ``pretrained_models/`` (by key, :data:`HAIRFAST_PATHS`), so loaders that hold the networks'
    own :class:`Checkpoint` objects find official files too."""

    def __init__(self, base: WeightStore):
        self.search_dirs = list(base.search_dirs)
        self.fill = base.fill

    def find(self, ckpt: Checkpoint) -> Path | None:
        return super().find(official(ckpt))


def unique(checkpoints: Iterable[Checkpoint]) -> tuple[Checkpoint, ...]:
    """Checkpoints without repeats (by key), in order."""
    seen: dict[str, Checkpoint] = {}
    for ckpt in checkpoints:
        seen.setdefault(ckpt.key, ckpt)
    return tuple(seen.values())
