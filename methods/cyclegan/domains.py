"""Hair domains of a portrait, from its label map and pixels: the classifier the CycleGAN baseline trains and runs by.

Two axes, each a set of domains; a CycleGAN translates between two domains of one axis.

**Colour** (:data:`COLOR_DOMAINS`): the median CIELAB colour (D65) of the hair pixels, the hair mask eroded by one
pixel per 128 of image side (edge pixels mix with skin and background); chroma ``C = hypot(a, b)``, hue
``h = atan2(b, a)`` in degrees. Tried in this order:

* ``black``: ``L < 20``
* ``grey`` (grey and white): ``C < 10`` and ``L >= 35``
* ``red`` (red, ginger, auburn): ``0 <= h < 58`` and ``C >= 27``
* ``blond`` (blond, platinum): ``L >= 58`` and ``58 <= h < 120``
* ``brown`` (dark to light brown): ``L < 58`` and ``20 <= h < 120`` and ``C < 35``, or ``L < 35`` and ``C < 12``
* anything else (blue, green, teal, purple, lilac, pink dyes): no domain.

**Style** (:data:`STYLE_DOMAINS`): how far the hair reaches down, for FFHQ-aligned portraits. ``reach`` = (the 98th
percentile row of the hair pixels - the lowest face-skin row) / image height: ``long`` when ``reach >= -0.25`` (the
hair ends less than a quarter of the image above the chin, or below it: long hair, ponytails, bobs, curls, afros),
``short`` otherwise (crops, buzz cuts, buns).

Either axis has no domain when the hair covers less than :data:`MIN_HAIR_FRACTION` of the image (bald, or hidden
under a hat); the style axis also when there is no face skin. The thresholds were read off the synthetic
portraits' named colours and hair families (500 portraits at 128 px: e.g. black L 4-27, grey C 2-7, blond L 65-80
and h 70-88, ginger C 51-61; short/buzz/bun reach -0.43..-0.30, bob -0.21..-0.04, long/ponytail -0.05..0.20): a class
of colour or length, not a shade or a shape. Version :data:`CLASSIFIER_VERSION` is recorded with every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from harness.annotations import HAIR, LABELS

CLASSIFIER_VERSION = "hair-domains-1"
COLOR_DOMAINS = ("black", "brown", "blond", "red", "grey")
STYLE_DOMAINS = ("short", "long")
AXES = {"color": COLOR_DOMAINS, "style": STYLE_DOMAINS}
MIN_HAIR_FRACTION = 0.005
LONG_REACH = -0.25
SKIN = LABELS.index("skin")


@dataclass(frozen=True)
class HairDomains:
    """One image's classification; ``None`` where an axis has no domain (``why`` says why)."""

    color: str | None
    style: str | None
    lab: tuple[float, float, float] | None  # median hair colour
    reach: float | None
    hair_fraction: float
    why: str = ""

    def of(self, axis: str) -> str | None:
        return self.color if axis == "color" else self.style

    def to_json(self) -> dict:
        return {"color": self.color, "style": self.style, "hair_fraction": round(self.hair_fraction, 5),
                "lab": None if self.lab is None else [round(v, 2) for v in self.lab],
                "reach": None if self.reach is None else round(self.reach, 4), "why": self.why}


def axis_of(domain: str) -> str:
    """``"color"`` or ``"style"`` for a domain name (``ValueError`` for an unknown one)."""
    for axis, names in AXES.items():
        if domain in names:
            return axis
    known = ", ".join(f"{a}: {', '.join(n)}" for a, n in AXES.items())
    raise ValueError(f"unknown hair domain {domain!r} ({known})")


def color_domain(lab: tuple[float, float, float]) -> str | None:
    """The colour domain of a median hair colour (the rules of the module docstring)."""
    L, a, b = lab
    chroma = math.hypot(a, b)
    hue = math.degrees(math.atan2(b, a))
    if L < 20:
        return "black"
    if chroma < 10 and L >= 35:
        return "grey"
    if 0 <= hue < 58 and chroma >= 27:
        return "red"
    if L >= 58 and 58 <= hue < 120:
        return "blond"
    if (L < 58 and 20 <= hue < 120 and chroma < 35) or (L < 35 and chroma < 12):
        return "brown"
    return None


def median_hair_lab(rgb: np.ndarray, hair: np.ndarray) -> tuple[float, float, float]:
    """Median CIELAB of ``rgb`` (uint8 [H, W, 3]) inside ``hair``, eroded by one pixel per 128 of the side."""
    radius = max(1, round(hair.shape[0] / 128))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    inner = cv2.erode(hair.astype(np.uint8), kernel).astype(bool)
    pixels = rgb[inner if inner.sum() >= 16 else hair]
    lab = cv2.cvtColor(pixels.reshape(-1, 1, 3).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(-1, 3)
    return tuple(float(v) for v in np.median(lab, axis=0))  # type: ignore[return-value]


def classify(rgb: np.ndarray, labels: np.ndarray) -> HairDomains:
    """The colour and style domains of one portrait (uint8 RGB [H, W, 3], label map [H, W], CelebAMask-HQ order)."""
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"label map {labels.shape} does not match the image {rgb.shape[:2]}")
    hair = labels == HAIR
    fraction = float(hair.mean())
    if fraction < MIN_HAIR_FRACTION:
        return HairDomains(None, None, None, None, fraction,
                           f"hair covers {fraction:.2%} of the image (< {MIN_HAIR_FRACTION:.1%}): bald or covered")
    lab = median_hair_lab(rgb, hair)
    color = color_domain(lab)
    skin_rows = np.nonzero((labels == SKIN).any(axis=1))[0]
    reach = None
    if len(skin_rows):
        reach = float((np.percentile(np.nonzero(hair)[0], 98) - skin_rows.max()) / labels.shape[0])
    style = None if reach is None else ("long" if reach >= LONG_REACH else "short")
    why = []
    if color is None:
        why.append(f"hair colour Lab ({lab[0]:.0f}, {lab[1]:.0f}, {lab[2]:.0f}) is in no colour domain "
                   f"({', '.join(COLOR_DOMAINS)})")
    if style is None:
        why.append("no face skin in the label map to measure the hair length against")
    return HairDomains(color, style, lab, reach, fraction, "; ".join(why))
