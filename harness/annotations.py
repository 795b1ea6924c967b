"""Side information attached to input images: label maps, landmarks, synthetic specs.

The runner attaches an :class:`Annotations` to every input ``PIL.Image`` it hands to a method
(``image.info["harness.annotations"]``); methods read it with :func:`of`. Synthetic portraits also carry their
generating spec as JSON in a PNG text chunk (``harness.synth``), so :func:`of` works on a plain
``Image.open`` of a synthetic file too.

Label maps use the CelebAMask-HQ order (:data:`LABELS`, hair = 13), the order HairFast works in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

LABELS = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
          "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
HAIR = LABELS.index("hair")
HAT = LABELS.index("hat")
INFO_KEY = "harness.annotations"
SYNTH_KEY = "harness.synth"


@dataclass(frozen=True)
class Annotations:
    image_id: str | None = None
    labels: np.ndarray | None = None  # uint8 [H, W], CelebAMask-HQ order, at the image's size
    landmarks: np.ndarray | None = None  # float32 [68, 2] (x, y) in pixels, dlib order
    synth: dict[str, Any] | None = None  # the synthetic generator's spec (JSON-able)

    @property
    def hair_mask(self) -> np.ndarray | None:
        return None if self.labels is None else self.labels == HAIR


def attach(image: Image.Image, annotations: Annotations) -> Image.Image:
    image.info[INFO_KEY] = annotations
    return image


def of(image: Image.Image) -> Annotations:
    """The annotations of ``image`` (empty when it has none)."""
    found = image.info.get(INFO_KEY)
    if isinstance(found, Annotations):
        return found
    synth = image.info.get(SYNTH_KEY)
    return Annotations(synth=json.loads(synth) if isinstance(synth, str) else None)
