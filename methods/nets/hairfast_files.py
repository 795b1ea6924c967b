"""Where HairFast's ``pretrained_models/`` folder keeps the files of the shared networks, so ``--weights-dir`` may
point at an unpacked official folder for every method that uses them (``hairflash``, ``clip-opt``, the balding
step).

The shared network modules declare their checkpoints without HairFast's layout (other methods use them too);
:func:`official` adds the relative path inside ``pretrained_models/`` (facts from the official ``hair_swap.py``,
``models/Embedding.py``, ``models/Net.py``, ``models/Encoders.py``, ``models/FeatureStyleEncoder/FSencoder.py``),
and :class:`OfficialLayout` makes the modules' own loaders look there too. HairFast-only checkpoints carry their
``official_path`` themselves.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.method import Checkpoint
from harness.weights import WeightStore
from methods.nets import bisenet, e4e, iresnet, stylegan2

HAIRFAST_PATHS: dict[str, str] = {
    stylegan2.CHECKPOINT.key: "StyleGAN/ffhq.pt",
    e4e.CHECKPOINT.key: "encoder4editing/e4e_ffhq_encode.pt",
    bisenet.BISENET19.key: "BiSeNet/face_parsing_79999_iter.pth",
    iresnet.FSE_CHECKPOINT.key: "FeatureStyleEncoder/143_enc.pth",
    iresnet.PSP_CHECKPOINT.key: "FeatureStyleEncoder/psp_ffhq_encode.pt",
}


def official(ckpt: Checkpoint) -> Checkpoint:
    """``ckpt`` with its path inside HairFast's ``pretrained_models/`` (unchanged when it has none there)."""
    path = HAIRFAST_PATHS.get(ckpt.key, ckpt.official_path)
    return ckpt if path == ckpt.official_path else replace(ckpt, official_path=path)


class OfficialLayout(WeightStore):
    """A view of ``base`` (same directories, same fill mode) whose lookups also try each checkpoint's path inside
    HairFast's ``pretrained_models/`` (:func:`official`), so loaders that hold the networks' own
    :class:`Checkpoint` objects find official files too."""

    def __init__(self, base: WeightStore):
        self.search_dirs = list(base.search_dirs)
        self.fill = base.fill

    def find(self, ckpt: Checkpoint) -> Path | None:
        return super().find(official(ckpt))
