"""Procedural portraits with ground truth: the embedded dataset.

A deterministic generator of stylised portraits (numpy / OpenCV / SciPy / PIL, no learned weights). Every
picture is a pure function of a :class:`PortraitSpec` and a size, and comes with a pixel-aligned 19-class label
map in CelebAMask-HQ order (:data:`harness.annotations.LABELS`) and 68 dlib-order landmarks.

API: :func:`sample_spec` (a random spec from a numpy ``Generator``), :func:`render` (image + labels),
:func:`landmarks`, :func:`combine` (the ground truth of a face/shape/color triplet), :func:`generate` (a folder
of PNGs, what ``harness data synth`` writes), :func:`contact_sheet` and :data:`LABEL_COLORS` (to look at them).

Factors (frozen dataclasses; ``PortraitSpec.to_json()`` / ``from_json()``):

* :class:`Identity` -- face shape (cheek/jaw/chin width, chin depth), skin tone, eyes (size, openness, tilt, iris,
  lashes), brows, nose, mouth (lips, smile, open), ears, blush, freckles, glasses, earrings;
* :class:`Pose` -- small yaw (features shift and the far side compresses), roll (degrees), shift;
* :class:`Background` (flat, gradients, stripes, dots, bokeh), :class:`Clothing` (crew, v-neck, collar, hoodie,
  turtleneck; plain or striped);
* :class:`Hairstyle` -- family (:data:`HAIR_FAMILIES`: long, short, bob, curly, bun, bald, ponytail, afro, buzz),
  parting (left/right/centre/none), fringe (none/straight/side/curtain), volume, length, flare, curl size,
  raggedness -- and the **headwear** (none/beanie/cap/brimmed hat, ~15% of samples);
* :class:`HairColor` -- natural (black, browns, auburn, ginger, blond, platinum, grey, white) or dyed (blue,
  pink, purple, green, teal, red, lilac), with shadow/highlight tones and optional ombre tips;
* :class:`HairTexture` -- strand density, wave frequency/amplitude (also the ringlets' twist), clumping, shine,
  contrast, strand direction.

Ground truth for hair transfer: ``combine(face, shape, color)`` takes identity, pose, background and clothing
from *face*, the hairstyle **and the headwear** from *shape* (headwear travels with the hairstyle: a hat is part
of the "shape" that is transferred) and hair colour and texture from *color*. The hair geometry depends only on
the hairstyle and the pose (the cranium is the same for every identity; identities differ below the hairline),
so the combined picture is well defined: the shape image's hair, on the face image's head, in its pose. Outside
the hair and headwear (and the soft shadows they cast) the result has the face image's pixels exactly.

Conventions: "left"/"right" (partings, ``l_eye``/``l_brow``/``l_ear``) mean the viewer's left/right, i.e. the
image's left half. Eyes and brows seen through glasses keep their labels (CelebAMask-HQ's order); ``eye_g``
covers frames and lenses elsewhere; ``ear_r`` marks earrings; hair hidden behind the face or clothes is not
labelled. Landmarks are pixel coordinates with the centre of pixel ``i`` at ``i`` (like dlib). Framing is
roughly FFHQ-like (eyes at y ~ 0.45, inter-ocular distance ~ 0.21 of the width).

Size independence: geometry lives in a head frame (origin between the eyes) and is rasterised as anti-aliased
polygons at the requested size; textures are sampled from small fixed tables, band-limited for the size; smooth
fields (shading, shadows) are computed at a fixed resolution. The same spec at 256 and 1024 pixels is the same
picture (the larger with finer strands). Speed (one CPU thread, AMD EPYC): ~20 ms at 256, ~0.2 s at 1024.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, PngImagePlugin
from scipy import ndimage

from harness.annotations import LABELS, SYNTH_KEY

GENERATOR_VERSION = "synth-1"

HAIR_FAMILIES = ("long", "short", "bob", "curly", "bun", "bald", "ponytail", "afro", "buzz")
FAMILY_WEIGHTS = (0.16, 0.15, 0.12, 0.12, 0.09, 0.08, 0.09, 0.09, 0.10)
PARTINGS = ("left", "right", "centre", "none")
FRINGES = ("none", "straight", "side", "curtain")
HEADWEAR = ("none", "beanie", "cap", "brimmed")
BACKGROUNDS = ("flat", "vertical", "radial", "stripes", "dots", "bokeh")
CLOTHES = ("crew", "vneck", "collar", "hoodie", "turtleneck")

# CelebAMask-HQ's own palette, in LABELS order (hair is blue, skin dark red).
LABEL_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204), (0, 255, 255),
    (255, 204, 204), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0), (0, 0, 153), (0, 0, 204),
    (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51), (0, 204, 0))

L = {name: i for i, name in enumerate(LABELS)}
RGB = tuple[float, float, float]

# ------------------------------------------------------------------------------------------------ the factors


@dataclass(frozen=True)
class Identity:
    """Who the person is: everything below the hairline that does not depend on pose or scene."""

    skin: RGB
    face_width: float   # half-width at the cheekbones (head units; the cranium is 0.285)
    jaw_width: float    # half-width at the jaw corners
    chin_width: float   # half-width of the chin
    chin_y: float       # depth of the chin below the eyes
    eye_size: float
    eye_open: float     # eye height / eye width
    eye_tilt: float     # outer corners up (+) or down (-)
    iris: RGB
    lashes: float
    brow_color: RGB
    brow_thickness: float
    brow_arch: float
    brow_tilt: float
    brow_height: float
    nose_length: float
    nose_width: float
    mouth_width: float
    lip_upper: float
    lip_lower: float
    lip_color: RGB
    smile: float
    mouth_open: float
    ear_size: float
    blush: float
    freckles: float
    glasses: str        # none | round | square
    glasses_color: RGB
    earrings: str       # none | stud | hoop
    seed: int


@dataclass(frozen=True)
class Pose:
    """Small head pose changes: yaw shifts/compresses features horizontally, roll rotates the head."""

    yaw: float          # about -0.25..0.25 (positive: the face turns to the image right)
    roll: float         # degrees
    shift_x: float      # image fractions
    shift_y: float


@dataclass(frozen=True)
class Background:
    kind: str
    color_a: RGB
    color_b: RGB
    seed: int


@dataclass(frozen=True)
class Clothing:
    kind: str
    color: RGB
    accent: RGB
    pattern: str        # plain | stripes


@dataclass(frozen=True)
class Hairstyle:
    """The hair's shape (and the headwear, which travels with it). Scalars are in [0, 1] unless noted."""

    family: str
    parting: str
    fringe: str
    fringe_length: float
    volume: float
    length: float
    flare: float
    curl_size: float
    raggedness: float
    side: float         # -1..1: which side a ponytail hangs / a bun leans
    headwear: str
    headwear_color: RGB
    seed: int


@dataclass(frozen=True)
class HairColor:
    name: str
    base: RGB
    shadow: RGB
    highlight: RGB
    tips: RGB
    ombre: float        # 0: no ombre; 1: the ends are fully ``tips``


@dataclass(frozen=True)
class HairTexture:
    density: float      # strand fineness, 0..1
    wave_freq: float    # waves per head unit along the strands
    wave_amp: float     # head units
    clump: float
    shine: float
    contrast: float
    direction: float    # strand tilt
    seed: int


@dataclass(frozen=True)
class PortraitSpec:
    identity: Identity
    pose: Pose
    background: Background
    clothing: Clothing
    hairstyle: Hairstyle
    hair_color: HairColor
    hair_texture: HairTexture

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (colours as lists) with the generator version."""
        def plain(x):
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            return [plain(v) for v in x] if isinstance(x, tuple | list) else x
        return {"version": GENERATOR_VERSION, **plain(asdict(self))}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PortraitSpec:
        parts = {}
        for f in fields(cls):
            sub = _FACTORS[f.name]
            given = d[f.name]
            unknown = set(given) - {g.name for g in fields(sub)}
            if unknown:
                raise ValueError(f"{f.name}: unknown keys {sorted(unknown)}")
            parts[f.name] = sub(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
        return cls(**parts)


_FACTORS = {"identity": Identity, "pose": Pose, "background": Background, "clothing": Clothing,
            "hairstyle": Hairstyle, "hair_color": HairColor, "hair_texture": HairTexture}


def combine(face: PortraitSpec, shape: PortraitSpec, color: PortraitSpec) -> PortraitSpec:
    """The true hair-transfer result: face's person and scene, shape's hairstyle and headwear, color's hair."""
    return PortraitSpec(identity=face.identity, pose=face.pose, background=face.background,
                        clothing=face.clothing, hairstyle=shape.hairstyle, hair_color=color.hair_color,
                        hair_texture=color.hair_texture)


# ------------------------------------------------------------------------------------------------- sampling

SKIN_TONES = ((0.99, 0.87, 0.78), (0.96, 0.80, 0.68), (0.90, 0.70, 0.56), (0.80, 0.58, 0.43),
              (0.66, 0.45, 0.32), (0.50, 0.33, 0.23), (0.36, 0.23, 0.16))
IRIS_COLORS = ((0.25, 0.14, 0.07), (0.42, 0.26, 0.12), (0.45, 0.40, 0.18), (0.27, 0.45, 0.30),
               (0.25, 0.45, 0.70), (0.45, 0.52, 0.58))
BROW_COLORS = ((0.08, 0.06, 0.05), (0.20, 0.13, 0.08), (0.36, 0.24, 0.14), (0.55, 0.42, 0.27))
NATURAL_HAIR = {
    "black": (0.055, 0.05, 0.05), "dark_brown": (0.17, 0.10, 0.06), "brown": (0.33, 0.20, 0.11),
    "light_brown": (0.52, 0.36, 0.21), "auburn": (0.46, 0.18, 0.09), "ginger": (0.78, 0.36, 0.13),
    "blond": (0.86, 0.69, 0.42), "platinum": (0.93, 0.89, 0.78), "grey": (0.60, 0.60, 0.60),
    "white": (0.88, 0.88, 0.86)}
DYED_HAIR = {
    "blue": (0.16, 0.34, 0.86), "pink": (0.96, 0.44, 0.70), "purple": (0.50, 0.24, 0.76),
    "green": (0.18, 0.66, 0.36), "teal": (0.08, 0.58, 0.62), "red": (0.82, 0.09, 0.14),
    "lilac": (0.76, 0.64, 0.92)}
HAT_COLORS = ((0.75, 0.14, 0.14), (0.12, 0.16, 0.30), (0.20, 0.20, 0.20), (0.85, 0.80, 0.68),
              (0.30, 0.45, 0.25), (0.95, 0.72, 0.20), (0.55, 0.35, 0.20), (0.85, 0.85, 0.88))


# Words a colour prompt may wrap a palette name in ("purple hair", "dyed light brown hair colour").
_COLOR_PROMPT_FILLER = frozenset({"a", "an", "the", "with", "hair", "hairs", "haircolor", "haircolour", "color",
                                  "colour", "colored", "coloured", "dyed", "tone", "toned", "shade"})
_COLOR_ALIASES = {"blonde": "blond", "gray": "grey", "silver": "platinum", "violet": "purple", "ginger_red": "ginger"}


def color_words(prompt: str) -> list[str]:
    """The words of a colour prompt that name the colour: ``"Light-Brown hair colour"`` -> ``["light", "brown"]``."""
    return [w for w in re.findall(r"[a-z]+", prompt.lower()) if w not in _COLOR_PROMPT_FILLER]


def named_hair_color(prompt: str) -> HairColor | None:
    """The synthetic palette colour a colour prompt names (``"purple hair"``, ``"light brown hair"``,
    ``"Blonde"``), as the generator shades it (base tone without jitter, no ombre); ``None`` when the prompt names
    no palette colour (:data:`NATURAL_HAIR`, :data:`DYED_HAIR`, or an alias such as blonde / gray)."""
    words = "_".join(color_words(prompt))
    name = _COLOR_ALIASES.get(words, words)
    dyed = name in DYED_HAIR
    base = DYED_HAIR.get(name) or NATURAL_HAIR.get(name)
    if base is None:
        return None
    shadow, highlight = _shade_family(np.asarray(base, dtype=float), dyed)
    return HairColor(name=name, base=_rgb(base), shadow=shadow, highlight=highlight, tips=_rgb(base), ombre=0.0)


def _r(x: float) -> float:
    return round(float(x), 4)


def _rgb(c) -> RGB:
    return tuple(_r(min(max(v, 0.0), 1.0)) for v in c)  # type: ignore[return-value]


def _hsv(h: float, s: float, v: float) -> RGB:
    import colorsys
    return _rgb(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _jitter(rng: np.random.Generator, c, amount: float) -> RGB:
    return _rgb(np.asarray(c) + rng.uniform(-amount, amount, 3))


def _sample_identity(rng: np.random.Generator) -> Identity:
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = min(int(t), len(SKIN_TONES) - 2)
    skin = np.asarray(SKIN_TONES[i]) * (1 - (t - i)) + np.asarray(SKIN_TONES[i + 1]) * (t - i)
    skin = np.asarray(_jitter(rng, skin, 0.02))
    lip_mix = rng.uniform(0.3, 0.6)
    lip = skin * (1 - lip_mix) + np.array([0.78, 0.30, 0.33]) * lip_mix
    lip = lip * rng.uniform(0.8, 0.95)
    glasses = str(rng.choice(["none", "round", "square"], p=[0.86, 0.07, 0.07]))
    return Identity(
        skin=_rgb(skin), face_width=_r(rng.uniform(0.24, 0.29)), jaw_width=_r(rng.uniform(0.16, 0.24)),
        chin_width=_r(rng.uniform(0.04, 0.11)), chin_y=_r(rng.uniform(0.36, 0.44)),
        eye_size=_r(rng.uniform(0.88, 1.15)), eye_open=_r(rng.uniform(0.34, 0.5)),
        eye_tilt=_r(rng.uniform(-0.05, 0.09)), iris=_jitter(rng, IRIS_COLORS[rng.integers(len(IRIS_COLORS))], 0.04),
        lashes=_r(rng.uniform(0, 1)), brow_color=_jitter(rng, BROW_COLORS[rng.integers(len(BROW_COLORS))], 0.03),
        brow_thickness=_r(rng.uniform(0.7, 1.3)), brow_arch=_r(rng.uniform(0.2, 1.2)),
        brow_tilt=_r(rng.uniform(-0.012, 0.015)), brow_height=_r(rng.uniform(-0.01, 0.01)),
        nose_length=_r(rng.uniform(0.8, 1.2)), nose_width=_r(rng.uniform(0.85, 1.25)),
        mouth_width=_r(rng.uniform(0.85, 1.15)), lip_upper=_r(rng.uniform(0.7, 1.3)),
        lip_lower=_r(rng.uniform(0.7, 1.3)), lip_color=_rgb(lip), smile=_r(rng.uniform(-0.2, 1.0)),
        mouth_open=_r(0.0 if rng.uniform() < 0.7 else rng.uniform(0.3, 1.0)),
        ear_size=_r(rng.uniform(0.85, 1.15)), blush=_r(rng.uniform(0, 1)),
        freckles=_r(0.0 if rng.uniform() < 0.85 else rng.uniform(0.4, 1.0)), glasses=glasses,
        glasses_color=_jitter(rng, [(0.08, 0.08, 0.08), (0.35, 0.2, 0.1), (0.75, 0.6, 0.3), (0.6, 0.1, 0.12),
                                    (0.15, 0.2, 0.45)][rng.integers(5)], 0.03),
        earrings=str(rng.choice(["none", "stud", "hoop"], p=[0.82, 0.09, 0.09])), seed=int(rng.integers(2**31)))


def _sample_pose(rng: np.random.Generator) -> Pose:
    return Pose(yaw=_r(rng.uniform(-0.22, 0.22)), roll=_r(rng.uniform(-6, 6)),
                shift_x=_r(rng.uniform(-0.015, 0.015)), shift_y=_r(rng.uniform(-0.015, 0.015)))


def _sample_background(rng: np.random.Generator) -> Background:
    kind = str(rng.choice(BACKGROUNDS, p=[0.2, 0.22, 0.2, 0.12, 0.12, 0.14]))
    h = rng.uniform()
    a = _hsv(h, rng.uniform(0.08, 0.5), rng.uniform(0.55, 0.95))
    if rng.uniform() < 0.5:
        b = _hsv(h + rng.uniform(-0.08, 0.08), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.8))
    else:
        b = _hsv(h + rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.5), rng.uniform(0.5, 0.95))
    return Background(kind=kind, color_a=a, color_b=b, seed=int(rng.integers(2**31)))


def _sample_clothing(rng: np.random.Generator) -> Clothing:
    kind = str(rng.choice(CLOTHES))
    h = rng.uniform()
    color = _hsv(h, rng.uniform(0.0, 0.8), rng.uniform(0.15, 0.95))
    accent = _hsv(h + rng.uniform(0.3, 0.7), rng.uniform(0.0, 0.6), rng.uniform(0.5, 1.0))
    return Clothing(kind=kind, color=color, accent=accent,
                    pattern=str(rng.choice(["plain", "stripes"], p=[0.78, 0.22])))


def _sample_hairstyle(rng: np.random.Generator) -> Hairstyle:
    family = str(rng.choice(HAIR_FAMILIES, p=FAMILY_WEIGHTS))
    parting = str(rng.choice(PARTINGS, p=[0.28, 0.28, 0.24, 0.2]))
    fringe_p = {"long": [0.4, 0.2, 0.2, 0.2], "short": [0.5, 0.15, 0.35, 0.0], "bob": [0.35, 0.45, 0.1, 0.1],
                "curly": [0.6, 0.2, 0.0, 0.2], "bun": [0.7, 0.0, 0.1, 0.2], "ponytail": [0.6, 0.2, 0.1, 0.1]}
    fringe = str(rng.choice(FRINGES, p=fringe_p[family])) if family in fringe_p else "none"
    if family in ("bald", "buzz", "afro"):
        parting = "none"
    if fringe == "curtain":
        parting = "centre"
    elif fringe == "side" and parting in ("centre", "none"):
        parting = str(rng.choice(["left", "right"]))
    headwear = str(rng.choice(HEADWEAR, p=[0.85, 0.06, 0.05, 0.04]))
    return Hairstyle(
        family=family, parting=parting, fringe=fringe, fringe_length=_r(rng.uniform(0.3, 1.0)),
        volume=_r(rng.uniform()), length=_r(rng.uniform()), flare=_r(rng.uniform()),
        curl_size=_r(rng.uniform()), raggedness=_r(rng.uniform()), side=_r(rng.uniform(-1, 1)),
        headwear=headwear, headwear_color=_jitter(rng, HAT_COLORS[rng.integers(len(HAT_COLORS))], 0.05),
        seed=int(rng.integers(2**31)))


def _shade_family(base: np.ndarray, dyed: bool) -> tuple[RGB, RGB]:
    lum = float(base @ [0.3, 0.55, 0.15])
    shadow = base * (0.38 if lum > 0.2 else 0.55)
    if dyed:
        shadow = shadow * 0.8
    highlight = base + (1 - base) * (0.5 if lum < 0.15 else 0.38)
    if lum < 0.15:
        highlight = highlight * np.array([0.85, 0.88, 1.0])
    return _rgb(shadow), _rgb(highlight)


def _sample_hair_color(rng: np.random.Generator) -> HairColor:
    dyed = rng.uniform() < 0.25
    names = list(DYED_HAIR if dyed else NATURAL_HAIR)
    p = None if dyed else [0.16, 0.16, 0.14, 0.1, 0.06, 0.07, 0.14, 0.05, 0.07, 0.05]
    name = str(rng.choice(names, p=p))
    base = np.asarray(_jitter(rng, (DYED_HAIR if dyed else NATURAL_HAIR)[name], 0.03))
    shadow, highlight = _shade_family(base, dyed)
    ombre = 0.0
    tips = tuple(base)
    if rng.uniform() < 0.12:
        ombre = rng.uniform(0.6, 1.0)
        if dyed:
            tips = DYED_HAIR[str(rng.choice([n for n in DYED_HAIR if n != name]))]
        else:
            tips = NATURAL_HAIR[str(rng.choice(["blond", "platinum", "light_brown"]))]
    return HairColor(name=name, base=_rgb(base), shadow=shadow, highlight=highlight, tips=_rgb(tips),
                     ombre=_r(ombre))


def _sample_hair_texture(rng: np.random.Generator) -> HairTexture:
    wavy = rng.uniform() < 0.5
    return HairTexture(density=_r(rng.uniform()), wave_freq=_r(rng.uniform(2.5, 7.0)),
                       wave_amp=_r(rng.uniform(0.006, 0.02) if wavy else 0.0), clump=_r(rng.uniform(0.3, 1.0)),
                       shine=_r(rng.uniform(0.25, 1.0)), contrast=_r(rng.uniform(0.6, 1.2)),
                       direction=_r(rng.uniform(-0.15, 0.15)), seed=int(rng.integers(2**31)))


def sample_spec(rng: np.random.Generator) -> PortraitSpec:
    """A random portrait (headwear on ~15%, bald ~8%); the factors are drawn independently."""
    return PortraitSpec(identity=_sample_identity(rng), pose=_sample_pose(rng), background=_sample_background(rng),
                        clothing=_sample_clothing(rng), hairstyle=_sample_hairstyle(rng),
                        hair_color=_sample_hair_color(rng), hair_texture=_sample_hair_texture(rng))


# ------------------------------------------------------------------------------------------------ geometry

# Head frame: origin between the eyes, x to the image right, y down, units of the image width at SCALE 1.
SCALE = 0.92
ORIGIN = (0.5, 0.45)         # where the head frame's origin lands in the image (before pose)
ROLL_PIVOT_Y = 0.3           # the head rolls about a point at the chin
YAW_RADIUS = 0.45
EYE_X = 0.115
SKULL_CY, SKULL_RX, SKULL_RY = -0.03, 0.285, 0.375
HAIRLINE_Y = -0.215
WORK_RES = 128               # smooth fields (shading, shadows) are computed at this many pixels per image width
LIGHT = np.array([-0.45, -0.6, 0.66]) / np.linalg.norm([-0.45, -0.6, 0.66])


def _bump(t: np.ndarray) -> np.ndarray:
    c = np.cos(np.clip(t, -1.0, 1.0) * (math.pi / 2))
    return c * c


@dataclass(frozen=True)
class _Frame:
    """Head-frame points <-> pixel coordinates (pixel centres at integers)."""

    size: int
    cx: float
    cy: float
    roll: float   # radians
    yaw: float

    def warp(self, x):
        return x + self.yaw * YAW_RADIUS * _bump(x / YAW_RADIUS)

    def unwarp(self, xw):
        if self.yaw == 0:
            return xw
        grid = np.linspace(-3.0, 3.0, 6001)
        return np.interp(xw, self.warp(grid), grid)

    def to_px(self, pts) -> np.ndarray:
        pts = np.asarray(pts, np.float64)
        x = self.warp(pts[..., 0])
        y = pts[..., 1] - ROLL_PIVOT_Y
        c, s = math.cos(self.roll), math.sin(self.roll)
        xi = self.cx + SCALE * (c * x - s * y)
        yi = self.cy + SCALE * (s * x + c * y + ROLL_PIVOT_Y)
        return np.stack([xi * self.size - 0.5, yi * self.size - 0.5], axis=-1)

    def from_px(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = ((px + 0.5) / self.size - self.cx) / SCALE
        y = ((py + 0.5) / self.size - self.cy) / SCALE - ROLL_PIVOT_Y
        c, s = math.cos(self.roll), math.sin(self.roll)
        xh = c * x + s * y
        yh = -s * x + c * y + ROLL_PIVOT_Y
        return self.unwarp(xh).astype(np.float32), yh.astype(np.float32)


def _frames(spec: PortraitSpec, size: int) -> tuple[_Frame, _Frame]:
    p = spec.pose
    # Recentre so that the eyes stay near the middle when the face turns (as an aligned crop would).
    cx = ORIGIN[0] + p.shift_x - 0.6 * SCALE * p.yaw * YAW_RADIUS
    cy = ORIGIN[1] + p.shift_y
    head = _Frame(size, cx, cy, math.radians(p.roll), p.yaw)
    body = _Frame(size, cx + 0.25 * SCALE * p.yaw * YAW_RADIUS, cy, math.radians(p.roll) * 0.25, 0.0)
    return head, body


def _catmull(points, n: int = 10, closed: bool = True) -> np.ndarray:
    """A Catmull-Rom spline through ``points`` (n samples per segment)."""
    p = np.asarray(points, np.float64)
    if closed:
        ext = np.concatenate([p[-1:], p, p[:2]])
        segs = len(p)
    else:
        ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
        segs = len(p) - 1
    t = np.linspace(0, 1, n, endpoint=False)[None, :, None]
    p0, p1, p2, p3 = (ext[i:i + segs, None, :] for i in range(4))
    out = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                 + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3)
    out = out.reshape(-1, 2)
    return out if closed else np.concatenate([out, p[-1:]])


def _mirror(pts) -> np.ndarray:
    """Points of the image-right half, mirrored to the left half and reversed (to close a symmetric outline)."""
    p = np.asarray(pts, np.float64)
    return (p * [-1, 1])[::-1]


def _stroke(pts, widths) -> np.ndarray:
    """A polygon around a polyline with per-point widths (tapered pen stroke)."""
    p = np.asarray(pts, np.float64)
    w = np.broadcast_to(np.asarray(widths, np.float64), (len(p),))
    t = np.gradient(p, axis=0)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)
    n = np.stack([-t[:, 1], t[:, 0]], axis=1) * (w[:, None] / 2)
    return np.concatenate([p + n, (p - n)[::-1]])


def _ellipse(cx, cy, rx, ry, n: int = 48, angle: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _skull_point(theta, off=0.0) -> np.ndarray:
    """Point on the cranium ellipse (theta=0 at the top, +pi/2 at the image right), pushed out by ``off``."""
    theta = np.asarray(theta, np.float64)
    off = np.broadcast_to(np.asarray(off, np.float64), theta.shape)
    return np.stack([np.sin(theta) * (SKULL_RX + off), SKULL_CY - np.cos(theta) * (SKULL_RY + off)], axis=-1)


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    x = ndimage.gaussian_filter1d(rng.standard_normal(n), sigma, mode="wrap")
    return x / (x.std() + 1e-9)


def _displace(poly: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """Push a closed polygon's points along their outward normals (counter-clockwise in y-down = outward)."""
    t = np.roll(poly, -1, axis=0) - np.roll(poly, 1, axis=0)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)
    n = np.stack([t[:, 1], -t[:, 0]], axis=1)
    area = 0.5 * np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
    if area < 0:
        n = -n
    return poly - n * amount[:, None]


def _resample(poly: np.ndarray, step: float, closed: bool = True) -> np.ndarray:
    """Points evenly spaced by ``step`` along a polyline."""
    p = np.concatenate([poly, poly[:1]]) if closed else poly
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    n = max(int(s[-1] / step), 8)
    q = np.linspace(0, s[-1], n, endpoint=not closed)
    return np.stack([np.interp(q, s, p[:, 0]), np.interp(q, s, p[:, 1])], axis=1)


@dataclass(frozen=True)
class _Face:
    """The identity's facial geometry in the (frontal) head frame."""

    outline: np.ndarray
    eyes: tuple[tuple[np.ndarray, np.ndarray], ...]   # per eye (image-left first): (upper lid, lower lid)
    brows: tuple[np.ndarray, ...]                      # centre lines, inner to outer
    brow_widths: np.ndarray
    nose_tip: tuple[float, float]
    nose_width: float
    mouth_y: float
    mouth_w: float
    lip_top: np.ndarray      # upper lip's top edge, left to right
    lip_line: np.ndarray     # the line between the lips (closed mouth) / upper inner edge
    lip_inner_low: np.ndarray
    lip_bottom: np.ndarray
    ears: tuple[np.ndarray, np.ndarray]


def _lid(inner, outer, height, a, b, n=16) -> np.ndarray:
    s = np.linspace(0, 1, n)
    f = s ** a * (1 - s) ** b
    f = f / f.max()
    base = np.asarray(inner)[None] + s[:, None] * (np.asarray(outer) - np.asarray(inner))[None]
    return base + np.stack([np.zeros(n), -height * f], axis=1)


def _face_geometry(idn: Identity) -> _Face:
    right = [_skull_point(math.radians(40)), _skull_point(math.radians(72)), (SKULL_RX * 0.995, 0.0),
             (idn.face_width, 0.09), (0.5 * (idn.face_width + idn.jaw_width) + 0.01, 0.19),
             (idn.jaw_width, 0.27), (0.5 * (idn.jaw_width + idn.chin_width), idn.chin_y - 0.04),
             (idn.chin_width, idn.chin_y - 0.01), (0.0, idn.chin_y)]
    top = _skull_point(0.0)
    ctrl = [top, *right[:-1], right[-1], *_mirror(right[:-1])]
    outline = _catmull(ctrl, 14)

    eyes = []
    ew = 0.092 * idn.eye_size
    eh = ew * idn.eye_open
    for side in (-1, 1):
        inner = (side * (EYE_X - ew * 0.48), 0.004)
        outer = (side * (EYE_X + ew * 0.52), 0.004 - idn.eye_tilt * ew)
        upper = _lid(inner, outer, eh * 0.66, 0.8, 1.0)
        lower = _lid(inner, outer, -eh * 0.36, 1.1, 0.9)
        eyes.append((upper, lower))

    brows = []
    by = -0.074 + idn.brow_height
    arch = 0.01 + 0.014 * idn.brow_arch
    s = np.linspace(0, 1, 16)
    lift = np.where(s < 0.65, 0.4 + 0.6 * np.sin(s / 0.65 * math.pi / 2),
                    1 - 0.6 * (np.clip(s - 0.65, 0, None) / 0.35) ** 1.5)
    for side in (-1, 1):
        x = side * (EYE_X - 0.052 + s * 0.118)
        y = by - arch * lift - idn.brow_tilt * (s - 0.3)
        brows.append(np.stack([x, y], axis=1))
    bw = 0.016 * idn.brow_thickness * (1 - 0.65 * s ** 1.5) * np.sqrt(np.minimum(1.0, 0.3 + s * 6))

    tip_y = 0.105 + 0.03 * idn.nose_length
    nose_w = 0.046 * idn.nose_width

    my = max(0.235 + 0.012 * (idn.nose_length - 1), tip_y + 0.085)
    mw = 0.072 * idn.mouth_width
    x = np.linspace(-1, 1, 21)
    smile = idn.smile
    line = my + smile * (0.004 - 0.018 * x ** 2) - 0.002 * (1 - x ** 2)
    gap = 0.022 * idn.mouth_open
    ul = 0.017 * idn.lip_upper
    ll = 0.022 * idn.lip_lower
    bow = np.abs(x)
    top_off = ul * (1 - bow ** 2.2) * (0.75 + 0.35 * np.clip(bow / 0.3, 0, 1) - 0.1 * np.clip((bow - 0.3) / 0.7, 0, 1))
    upper_inner = line - gap * 0.35 * (1 - x ** 2)
    lower_inner = line + gap * 0.65 * (1 - x ** 2) ** 0.8
    lip_top = np.stack([x * mw, upper_inner - top_off - 0.001], axis=1)
    lip_bottom = np.stack([x * mw, lower_inner + ll * (1 - x ** 2) ** 0.75], axis=1)

    ear_ctrl = np.array([(0.268, -0.035), (0.296, -0.06), (0.322, -0.048), (0.334, -0.005), (0.33, 0.06),
                         (0.316, 0.118), (0.298, 0.156), (0.279, 0.152), (0.266, 0.1), (0.262, 0.03)])
    c = np.array([0.29, 0.05])
    ear = (ear_ctrl - c) * idn.ear_size + c
    ear = _catmull(ear, 8)
    return _Face(outline=outline, eyes=tuple(eyes), brows=tuple(brows), brow_widths=bw, nose_tip=(0.0, tip_y),
                 nose_width=nose_w, mouth_y=my, mouth_w=mw, lip_top=lip_top,
                 lip_line=np.stack([x * mw, upper_inner], axis=1),
                 lip_inner_low=np.stack([x * mw, lower_inner], axis=1), lip_bottom=lip_bottom,
                 ears=(_mirror(ear)[::-1], ear))


# ------------------------------------------------------------------------------------------------- canvas


Box = tuple[int, int, int, int]


class _Canvas:
    """The image being painted (float RGB) and its label map, with helpers working on boxes."""

    def __init__(self, size: int):
        self.size = size
        self.img = np.zeros((size, size, 3), np.float32)
        self.lab = np.zeros((size, size), np.uint8)

    def box(self, polys_px, margin: float = 2.0) -> Box | None:
        pts = np.concatenate([np.asarray(p).reshape(-1, 2) for p in polys_px])
        x0 = max(int(math.floor(pts[:, 0].min() - margin)), 0)
        y0 = max(int(math.floor(pts[:, 1].min() - margin)), 0)
        x1 = min(int(math.ceil(pts[:, 0].max() + margin)) + 1, self.size)
        y1 = min(int(math.ceil(pts[:, 1].max() + margin)) + 1, self.size)
        if x1 <= x0 or y1 <= y0:
            return None
        return y0, y1, x0, x1

    @staticmethod
    def fill(polys_px, box: Box) -> np.ndarray:
        """Anti-aliased coverage of the union of polygons, in ``box``."""
        y0, y1, x0, x1 = box
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for p in polys_px:
            q = np.round((np.asarray(p) - (x0, y0)) * 16).astype(np.int32)
            cv2.fillPoly(m, [q], 255, lineType=cv2.LINE_AA, shift=4)
        return m.astype(np.float32) * (1 / 255)

    def paint(self, box: Box, alpha: np.ndarray, color, label: int | None = None) -> None:
        y0, y1, x0, x1 = box
        reg = self.img[y0:y1, x0:x1]
        col = np.asarray(color, np.float32)
        reg += alpha[..., None] * (col - reg)
        if label is not None:
            self.lab[y0:y1, x0:x1][alpha > 0.5] = label

    def coords(self, frame: _Frame, box: Box) -> tuple[np.ndarray, np.ndarray]:
        y0, y1, x0, x1 = box
        px, py = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        return frame.from_px(px, py)

    def soft(self, a: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian blur with ``sigma`` in image widths, computed at WORK_RES (size independent)."""
        return _up(_blur_small(_down(a, self.size), sigma), a.shape)

    def relief(self, a: np.ndarray, sigma: float, depth: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(height, lambert) of a mask seen as a soft bump: a blurred mask and its diffuse shading."""
        small = _blur_small(_down(a, self.size), sigma)
        gy, gx = np.gradient(small)
        k = depth * sigma * WORK_RES
        nx, ny, nz = -gx * k, -gy * k, np.ones_like(gx)
        norm = np.sqrt(nx * nx + ny * ny + nz * nz)
        lam = (nx * LIGHT[0] + ny * LIGHT[1] + nz * LIGHT[2]) / norm
        return _up(small, a.shape), _up(lam.astype(np.float32), a.shape)


def _down(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape
    f = WORK_RES / size
    sh, sw = max(int(round(h * f)), 2), max(int(round(w * f)), 2)
    return cv2.resize(a, (sw, sh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def _blur_small(a: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(a, (0, 0), sigma * WORK_RES, borderType=cv2.BORDER_REPLICATE)


def _up(a: np.ndarray, shape) -> np.ndarray:
    return cv2.resize(a, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@functools.lru_cache(maxsize=96)
def _base_table(kind: int, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    t = np.random.default_rng(1000 + kind).standard_normal(shape).astype(np.float32)
    t = ndimage.gaussian_filter(t, sigma, mode="wrap")
    t = (t - t.mean()) / (t.std() + 1e-9)
    t.setflags(write=False)
    return t


def _quant(sigma: float) -> float:
    """Blur widths are quantised (quarter octaves) so the noise tables can be cached."""
    return round(0.5 * 2 ** (round(math.log2(max(sigma, 0.5) / 0.5) * 4) / 4), 4)


def _table(kind: int, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """A periodic noise table (zero mean, unit std) blurred by ``sigma`` (rows, cols) cells; one per kind."""
    return _base_table(kind, shape, (_quant(sigma[0]), _quant(sigma[1])))


def _sample(table: np.ndarray, mx: np.ndarray, my: np.ndarray, seed: int = 0) -> np.ndarray:
    """Bilinear lookup at table cells (mx, my), wrapping; ``seed`` picks a random offset into the table."""
    h, w = table.shape
    off = np.random.default_rng(seed).uniform(0, 1, 2)
    mx = np.mod(mx + off[0] * w, w).astype(np.float32)
    my = np.mod(my + off[1] * h, h).astype(np.float32)
    return cv2.remap(table, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def _band_sigma(cells_per_unit: float, size: int, base: float) -> float:
    """Blur (in table cells) so a table sampled at ``cells_per_unit`` does not alias at ``size``."""
    per_px = cells_per_unit / (size * SCALE)
    return math.sqrt(base * base + (0.5 * per_px) ** 2)


# ---------------------------------------------------------------------------------------------- background


def _draw_background(cv: _Canvas, bg: Background) -> None:
    n = cv.size
    u = (np.arange(n, dtype=np.float32) + 0.5) / n
    x, y = np.meshgrid(u, u)
    a, b = np.asarray(bg.color_a, np.float32), np.asarray(bg.color_b, np.float32)
    rng = np.random.default_rng(bg.seed)
    if bg.kind == "flat":
        t = 0.25 * ((x - 0.5) ** 2 + (y - 0.45) ** 2)
    elif bg.kind == "vertical":
        t = _smoothstep(-0.1, 1.1, y)
    elif bg.kind == "radial":
        t = np.clip(np.sqrt((x - 0.5) ** 2 + (y - 0.4) ** 2) * 1.3, 0, 1)
    elif bg.kind == "stripes":
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(0.08, 0.18)
        d = (x * math.cos(ang) + y * math.sin(ang)) / period
        t = 0.5 + 0.5 * np.clip(np.sin(2 * math.pi * d) * 3, -1, 1)
        t = t * 0.7
    elif bg.kind == "dots":
        period = rng.uniform(0.08, 0.14)
        r = period * rng.uniform(0.18, 0.3)
        off = rng.uniform(0, period, 2)
        gx = np.mod(x - off[0], period) - period / 2
        row = np.floor((y - off[1]) / period)
        gx = np.mod(x - off[0] + (row % 2) * period / 2, period) - period / 2
        gy = np.mod(y - off[1], period) - period / 2
        d = np.sqrt(gx * gx + gy * gy)
        t = np.clip((r - d) * n / 1.5 + 0.5, 0, 1) * 0.8 + 0.08 * y
    else:  # bokeh
        t = 0.6 * _smoothstep(0, 1, y)
        img = (a * (1 - t[..., None]) + b * t[..., None])
        for _ in range(14):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.1)
            d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
            blob = np.clip((r - d) / (0.25 * r), 0, 1) * rng.uniform(0.15, 0.35)
            img = img + blob[..., None] * (np.array([1, 1, 0.95], np.float32) - img)
        cv.img[:] = img
        return
    cv.img[:] = a * (1 - t[..., None]) + b * t[..., None]


# ------------------------------------------------------------------------------------------------ the body


def _draw_neck_and_clothes(cv: _Canvas, spec: PortraitSpec, face: _Face, head: _Frame, body: _Frame) -> None:
    idn, cl = spec.identity, spec.clothing
    skin = np.asarray(idn.skin, np.float32)
    nw = 0.118 + 0.12 * (idn.jaw_width - 0.17)
    neck = np.array([(-nw, 0.1), (nw, 0.1), (nw * 1.01, 0.36), (nw + 0.05, 0.47), (nw + 0.14, 0.7),
                     (-nw - 0.14, 0.7), (-nw - 0.05, 0.47), (-nw * 1.01, 0.36)])
    neck = _catmull(neck, 6)
    npx = body.to_px(neck)
    neck_cov = np.zeros((cv.size, cv.size), np.float32)
    box = cv.box([npx])
    if box is not None:
        a = cv.fill([npx], box)
        # shadow under the jaw: the face outline pushed down, blurred
        shadow = cv.fill([head.to_px(face.outline + [0, 0.045])], box)
        shadow = cv.soft(shadow, 0.014)
        _, lam = cv.relief(a, 0.03)
        X, _ = cv.coords(body, box)
        col = skin * (0.8 + 0.12 * lam[..., None]) * (1 - 0.35 * shadow[..., None])
        col = col * (1 - 0.1 * _smoothstep(0.3, 1.0, np.abs(X) / nw))[..., None]
        cv.paint(box, a, col, L["neck"])
        neck_cov[box[0]:box[1], box[2]:box[3]] = a

    # clothes: shoulders and a neckline that depends on the kind
    sh = [(-0.95, 0.64), (-0.6, 0.54), (-0.38, 0.49), (-nw - 0.05, 0.445)]
    if cl.kind == "vneck":
        neckline = [(-nw - 0.03, 0.44), (-0.02, 0.56), (0.02, 0.56), (nw + 0.03, 0.44)]
    elif cl.kind == "turtleneck":
        neckline = [(-nw - 0.015, 0.3), (0.0, 0.305), (nw + 0.015, 0.3)]
    else:
        neckline = [(-nw - 0.03, 0.44), (-nw * 0.5, 0.49), (0.0, 0.5), (nw * 0.5, 0.49), (nw + 0.03, 0.44)]
    outline = [(-1.0, 1.2), *sh, *neckline, *_mirror(sh), (1.0, 1.2)]
    if cl.kind == "turtleneck":
        outline = [(-1.0, 1.2), *sh[:-1], (-nw - 0.05, 0.42), (-nw - 0.02, 0.34), *neckline,
                   (nw + 0.02, 0.34), (nw + 0.05, 0.42), *_mirror(sh[:-1]), (1.0, 1.2)]
    cpts = _catmull(outline, 6)
    cpx = body.to_px(cpts)
    box = cv.box([cpx])
    if box is None:
        return
    a = cv.fill([cpx], box)
    X, Y = cv.coords(body, box)
    base = np.asarray(cl.color, np.float32)
    acc = np.asarray(cl.accent, np.float32)
    _, lam = cv.relief(a, 0.04)
    col = np.broadcast_to(base, a.shape + (3,)).copy()
    if cl.pattern == "stripes":
        st = np.clip(np.sin(Y * 2 * math.pi * 22) * 4, -1, 1) * 0.5 + 0.5
        col = col * (1 - st[..., None]) + acc * st[..., None]
    if cl.kind == "turtleneck":
        folds = 0.5 + 0.5 * np.sin((Y - 0.3) * 2 * math.pi * 30)
        fold_zone = _smoothstep(0.43, 0.4, Y) * _smoothstep(0.0, 0.02, nw + 0.04 - np.abs(X))
        col = col * (1 - 0.12 * (folds * fold_zone)[..., None])
    col = col * (0.72 + 0.32 * lam[..., None])
    cv.paint(box, a, col, L["cloth"])
    # trims and details
    if cl.kind in ("crew", "vneck"):
        trim = body.to_px(_stroke(_catmull(neckline, 6, closed=False), 0.018))
        tb = cv.box([trim])
        if tb is not None:
            cv.paint(tb, cv.fill([trim], tb), base * 0.72 + acc * 0.12, L["cloth"])
    elif cl.kind == "collar":
        white = np.clip(acc * 0.25 + 0.75 * np.array([0.96, 0.96, 0.95]), 0, 1).astype(np.float32)
        for s in (-1, 1):
            flap = np.array([(s * (nw + 0.03), 0.405), (s * (nw + 0.005), 0.43), (s * 0.012, 0.5),
                             (s * 0.055, 0.565), (s * (nw + 0.1), 0.48), (s * (nw + 0.07), 0.43)])
            fpx = body.to_px(flap)
            fb = cv.box([fpx], margin=0.02 * cv.size)
            if fb is not None:
                fa = cv.fill([fpx], fb)
                cv.paint(fb, cv.soft(fa, 0.008) * 0.35, np.zeros(3, np.float32))
                _, fl = cv.relief(fa, 0.015)
                cv.paint(fb, fa, white * (0.8 + 0.2 * fl[..., None]), L["cloth"])
    elif cl.kind == "hoodie":
        outer = [(-0.36, 0.62), (-0.3, 0.45), (-nw - 0.075, 0.35), (0.0, 0.315), (nw + 0.075, 0.35),
                 (0.3, 0.45), (0.36, 0.62)]
        inner = [(0.22, 0.62), (0.19, 0.48), (nw + 0.012, 0.4), (0.0, 0.385), (-nw - 0.012, 0.4),
                 (-0.19, 0.48), (-0.22, 0.62)]
        hood = np.concatenate([_catmull(outer, 6, False), _catmull(inner, 6, False)])
        hpx = body.to_px(hood)
        hb = cv.box([hpx])
        if hb is not None:
            ha = cv.fill([hpx], hb) * (1 - neck_cov[hb[0]:hb[1], hb[2]:hb[3]])
            _, hl = cv.relief(ha, 0.02)
            cv.paint(hb, cv.soft(ha, 0.01) * 0.3, np.zeros(3, np.float32))
            cv.paint(hb, ha, base * (0.68 + 0.4 * hl[..., None]), L["cloth"])
        for s in (-1, 1):
            cord = body.to_px(_stroke([(s * 0.06, 0.47), (s * 0.065, 0.56), (s * 0.058, 0.7)], 0.008))
            cb = cv.box([cord])
            if cb is not None:
                cv.paint(cb, cv.fill([cord], cb), acc, L["cloth"])


# ------------------------------------------------------------------------------------------------ the face


def _draw_face(cv: _Canvas, spec: PortraitSpec, face: _Face, head: _Frame) -> np.ndarray:
    """Skin of face and scalp; returns the face's coverage over the whole image."""
    idn = spec.identity
    skin = np.asarray(idn.skin, np.float32)
    fpx = head.to_px(face.outline)
    box = cv.box([fpx])
    full = np.zeros((cv.size, cv.size), np.float32)
    if box is None:
        return full
    a = cv.fill([fpx], box)
    X, Y = cv.coords(head, box)
    _, lam = cv.relief(a, 0.06, depth=0.8)
    shade = 0.8 + 0.25 * lam
    col = skin * shade[..., None]
    # cheeks, forehead, temples
    for s in (-1, 1):
        d = ((X - s * 0.15) / 0.07) ** 2 + ((Y - 0.135) / 0.045) ** 2
        blush = np.exp(-d) * (0.12 + 0.2 * idn.blush)
        col = col + blush[..., None] * (np.array([0.92, 0.42, 0.42], np.float32) - col)
    fh = np.exp(-(((X + 0.05) / 0.12) ** 2 + ((Y + 0.17) / 0.06) ** 2)) * 0.08
    col = col + fh[..., None] * (1 - col)
    # eye sockets: a soft darkening above/around the eyes
    for s in (-1, 1):
        d = ((X - s * EYE_X) / 0.06) ** 2 + ((Y + 0.012) / 0.03) ** 2
        col = col * (1 - 0.07 * np.exp(-d))[..., None]
    # nose sides and the shadow under the nose
    tx, ty = face.nose_tip
    side = np.exp(-(((X - 0.032) / 0.014) ** 2) - ((Y - (ty - 0.03)) / 0.06) ** 2)
    under = np.exp(-((X / 0.035) ** 2) - ((Y - (ty + 0.048)) / 0.009) ** 2)
    lip_sh = np.exp(-((X / (face.mouth_w * 0.9)) ** 2) - ((Y - (face.mouth_y + 0.05)) / 0.012) ** 2)
    col = col * (1 - (0.12 * side + 0.14 * under + 0.1 * lip_sh))[..., None]
    if idn.freckles > 0:
        tab = _table(1, (64, 64), (0.6, 0.6))
        fr = _sample(tab, X * 160, Y * 160, idn.seed)
        zone = np.exp(-((X / 0.2) ** 2) - ((Y - 0.1) / 0.06) ** 2)
        spots = _smoothstep(1.6, 2.2, fr) * zone * idn.freckles * 0.5
        col = col + spots[..., None] * (skin * np.array([0.7, 0.5, 0.4], np.float32) - col)
    cv.paint(box, a, col, L["skin"])
    full[box[0]:box[1], box[2]:box[3]] = a
    return full


def _draw_features(cv: _Canvas, spec: PortraitSpec, face: _Face, head: _Frame) -> None:
    idn = spec.identity
    skin = np.asarray(idn.skin, np.float32)
    dark = np.asarray(idn.brow_color, np.float32) * 0.6 + skin * 0.05
    px = cv.size / 256  # strokes are sized in head units; this only sets box margins

    # ---- eyes
    for k, (upper, lower) in enumerate(face.eyes):
        label = L["l_eye"] if k == 0 else L["r_eye"]
        poly = np.concatenate([upper, lower[::-1][1:-1]])
        ppx = head.to_px(poly)
        box = cv.box([ppx], margin=6 * px + 0.03 * cv.size)
        if box is None:
            continue
        a = cv.fill([ppx], box)
        X, Y = cv.coords(head, box)
        sclera = np.array([0.95, 0.93, 0.91], np.float32) * 0.9 + skin * 0.1
        cv.paint(box, a, sclera, label)
        ex = 0.5 * (upper[0, 0] + upper[-1, 0])
        ey = 0.5 * (upper[0, 1] + upper[-1, 1])
        ew = abs(upper[-1, 0] - upper[0, 0])
        eh = float(np.max(lower[:, 1]) - np.min(upper[:, 1]))
        ic = (ex + 0.04 * ew, ey - 0.02 * eh + 0.004)
        r = 0.22 * ew
        d = np.sqrt((X - ic[0]) ** 2 + (Y - ic[1]) ** 2)
        aa = 1.5 / (cv.size * SCALE)
        iris = np.clip((r - d) / aa + 0.5, 0, 1) * a
        ring = _smoothstep(0.55 * r, r, d)
        irc = np.asarray(idn.iris, np.float32)
        icol = irc[None, None] * (1.05 - 0.55 * ring[..., None])
        rays = 0.5 + 0.5 * np.sin(np.arctan2(Y - ic[1], X - ic[0]) * 18)
        icol = icol * (0.9 + 0.15 * rays[..., None])
        cv.paint(box, iris, icol)
        pupil = np.clip((0.45 * r - d) / aa + 0.5, 0, 1) * a
        cv.paint(box, pupil, np.array([0.03, 0.02, 0.02], np.float32))
        hl = np.sqrt((X - ic[0] + 0.35 * r) ** 2 + (Y - ic[1] + 0.35 * r) ** 2)
        cv.paint(box, np.clip((0.22 * r - hl) / aa + 0.5, 0, 1) * a * 0.95, np.ones(3, np.float32))
        # shadow under the upper lid
        lid_sh = cv.fill([head.to_px(_stroke(upper, eh * 0.55))], box) * a
        cv.paint(box, cv.soft(lid_sh, 0.004) * 0.3, np.array([0.2, 0.12, 0.1], np.float32))
        # crease, lids, lashes
        crease = upper + [0, -eh * 0.42]
        crease = crease[2:-1]
        cpoly = head.to_px(_stroke(crease, 0.0035 * np.sin(np.linspace(0.2, 2.9, len(crease)))))
        cv.paint(box, cv.fill([cpoly], box) * 0.35, skin * 0.6)
        wlid = 0.0055 * (0.6 + 0.8 * np.sin(np.linspace(0.25, 2.6, len(upper))) ** 0.5)
        wlid = wlid * (0.8 + 0.5 * idn.lashes)
        lid = head.to_px(_stroke(upper, wlid))
        cv.paint(box, cv.fill([lid], box), dark * 0.7)
        low = head.to_px(_stroke(lower[2:-2], 0.0022))
        cv.paint(box, cv.fill([low], box) * 0.35, skin * 0.55)
        if idn.lashes > 0.55:
            out = upper[-1]
            sgn = 1 if out[0] > ex else -1
            for j, t in enumerate((0.62, 0.78, 0.92)):
                i = int(t * (len(upper) - 1))
                p0 = upper[i]
                p1 = p0 + np.array([sgn * (0.004 + 0.004 * j), -0.008 - 0.002 * j])
                lash = head.to_px(_stroke(_catmull([p0, p0 + (p1 - p0) * 0.6 + [0, -0.001], p1], 3, False),
                                          np.linspace(0.0028, 0.0008, 7)))
                cv.paint(box, cv.fill([lash], box), dark * 0.6)

    # ---- brows
    for k, line in enumerate(face.brows):
        label = L["l_brow"] if k == 0 else L["r_brow"]
        poly = head.to_px(_stroke(line, face.brow_widths))
        box = cv.box([poly], margin=4 * px)
        if box is None:
            continue
        a = cv.fill([poly], box)
        X, Y = cv.coords(head, box)
        tab = _table(2, (32, 256), (0.5, 1.2))
        hairs = _sample(tab, (X * 2.2 + Y * (1 if k else -1)) * 600, Y * 300, idn.seed + k)
        col = np.asarray(idn.brow_color, np.float32) * (1 + 0.12 * hairs[..., None])
        soft = cv.soft(a, 0.0015)
        cv.paint(box, np.minimum(a, soft * 1.15) * 0.92, col, label)

    # ---- nose
    tx, ty = face.nose_tip
    nw = face.nose_width
    nose = np.array([(-0.018, -0.005), (0.018, -0.005), (0.026, ty - 0.045), (nw * 0.95, ty + 0.0),
                     (nw * 0.85, ty + 0.026), (0.0, ty + 0.034), (-nw * 0.85, ty + 0.026), (-nw * 0.95, ty),
                     (-0.026, ty - 0.045)])
    npx = head.to_px(_catmull(nose, 6))
    box = cv.box([npx], margin=6 * px)
    if box is not None:
        cv.lab[box[0]:box[1], box[2]:box[3]][cv.fill([npx], box) > 0.5] = L["nose"]
        X, Y = cv.coords(head, box)
        for s in (-1, 1):
            ala = np.array([(s * nw * 0.45, ty - 0.02), (s * nw * 0.95, ty + 0.004), (s * nw * 0.8, ty + 0.024),
                            (s * nw * 0.45, ty + 0.028)])
            ala = _catmull(ala, 5, closed=False)
            sp = head.to_px(_stroke(ala, 0.0045 * np.sin(np.linspace(0.3, 2.8, len(ala)))))
            cv.paint(box, cv.soft(cv.fill([sp], box), 0.0012) * 0.45, skin * 0.62)
            nos = head.to_px(_ellipse(s * nw * 0.42, ty + 0.022, 0.011, 0.0055, 24, s * 0.35))
            cv.paint(box, cv.fill([nos], box) * 0.8, skin * 0.35)
        tip = np.exp(-(((X + 0.008) / 0.013) ** 2 + ((Y - ty + 0.004) / 0.011) ** 2)) * 0.22
        cv.paint(box, tip, np.ones(3, np.float32))
        bridge = np.exp(-(((X + 0.004) / 0.006) ** 2)) * _smoothstep(0.0, 0.04, Y) * _smoothstep(ty, ty - 0.06, Y)
        cv.paint(box, bridge * 0.1, np.ones(3, np.float32))

    # ---- mouth
    lip = np.asarray(idn.lip_color, np.float32)
    up = np.concatenate([face.lip_top, face.lip_line[::-1]])
    lo = np.concatenate([face.lip_inner_low, face.lip_bottom[::-1]])
    upx, lpx = head.to_px(up), head.to_px(lo)
    box = cv.box([upx, lpx], margin=6 * px)
    if box is not None:
        X, Y = cv.coords(head, box)
        if idn.mouth_open > 0:
            inner = head.to_px(np.concatenate([face.lip_line, face.lip_inner_low[::-1]]))
            ia = cv.fill([inner], box)
            cv.paint(box, ia, np.array([0.35, 0.1, 0.1], np.float32), L["mouth"])
            teeth = cv.fill([head.to_px(np.concatenate([face.lip_line, (face.lip_line + [0, 0.012])[::-1]]))], box)
            cv.paint(box, teeth * ia * 0.95, np.array([0.96, 0.94, 0.9], np.float32))
        ua = cv.fill([upx], box)
        cv.paint(box, ua, lip * 0.85, L["u_lip"])
        la = cv.fill([lpx], box)
        gl = np.exp(-(((X + 0.01) / (face.mouth_w * 0.4)) ** 2)
                    - ((Y - face.lip_bottom[10, 1] + 0.012) / 0.006) ** 2) * 0.25
        lcol = lip[None, None] * 1.0 + gl[..., None] * (1 - lip)
        cv.paint(box, la, lcol, L["l_lip"])
        mline = head.to_px(_stroke(face.lip_line, 0.0032 * (1 - 0.4 * np.abs(np.linspace(-1, 1, 21)))))
        cv.paint(box, cv.fill([mline], box) * 0.7, lip * 0.35)
        for s in (-1, 1):
            c = face.lip_line[0 if s < 0 else -1]
            dimple = head.to_px(_stroke([c + [s * 0.002, -0.004], c + [s * 0.008, 0.004]], 0.0025))
            cv.paint(box, cv.fill([dimple], box) * 0.3 * (0.3 + idn.smile), skin * 0.6)


def _draw_ears(cv: _Canvas, spec: PortraitSpec, face: _Face, head: _Frame, face_cov: np.ndarray) -> None:
    idn = spec.identity
    skin = np.asarray(idn.skin, np.float32)
    for k, ear in enumerate(face.ears):
        label = L["l_ear"] if k == 0 else L["r_ear"]
        epx = head.to_px(ear)
        box = cv.box([epx])
        if box is None:
            continue
        a = cv.fill([epx], box) * (1 - face_cov[box[0]:box[1], box[2]:box[3]])
        _, lam = cv.relief(cv.fill([epx], box), 0.012)
        s = -1 if k == 0 else 1
        c = np.array([0.29, 0.05])
        inner = (np.array([(0.298, -0.03), (0.314, 0.0), (0.316, 0.05), (0.306, 0.1), (0.292, 0.12)]) - c) \
            * idn.ear_size + c
        inner = inner * [s, 1]
        ipx = head.to_px(_stroke(_catmull(inner, 5, False), 0.009 * idn.ear_size))
        col = skin * (0.78 + 0.2 * lam[..., None])
        cv.paint(box, a, col, label)
        cv.paint(box, cv.soft(cv.fill([ipx], box), 0.003) * a * 0.55, skin * 0.55)
        if idn.earrings != "none":
            lobe = (np.array([0.292, 0.15]) - c) * idn.ear_size + c
            lobe = lobe * [s, 1]
            gold = np.array([0.9, 0.75, 0.35], np.float32)
            if idn.earrings == "stud":
                ring = _ellipse(lobe[0], lobe[1], 0.007, 0.007, 20)
            else:
                ring = _stroke(_ellipse(lobe[0], lobe[1] + 0.022, 0.018, 0.022, 40)[list(range(40)) + [0]], 0.004)
            rpx = head.to_px(ring)
            rb = cv.box([rpx])
            if rb is not None:
                ra = cv.fill([rpx], rb)
                cv.paint(rb, ra, gold, L["ear_r"])


def _draw_glasses(cv: _Canvas, spec: PortraitSpec, face: _Face, head: _Frame) -> None:
    idn = spec.identity
    if idn.glasses == "none":
        return
    frame_col = np.asarray(idn.glasses_color, np.float32)
    polys = []
    for upper, lower in face.eyes:
        ex = 0.5 * (upper[0, 0] + upper[-1, 0])
        ey = 0.5 * (upper[0, 1] + lower[0, 1]) - 0.002
        if idn.glasses == "round":
            rim = _ellipse(ex, ey, 0.056, 0.047, 48)
        else:
            t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
            cx, cy = np.cos(t), np.sin(t)
            rim = np.stack([ex + 0.06 * np.sign(cx) * np.abs(cx) ** 0.45,
                            ey + 0.042 * np.sign(cy) * np.abs(cy) ** 0.45], 1)
        polys.append(rim)
    lens = [head.to_px(p) for p in polys]
    rims = [head.to_px(_stroke(np.concatenate([p, p[:1]]), 0.0075)) for p in polys]
    xs = [float(p[:, 0].max()) for p in polys[:1]] + [float(p[:, 0].min()) for p in polys[1:]]
    bridge = head.to_px(_stroke(_catmull([(xs[0], -0.006), (0.0, -0.014), (xs[1], -0.006)], 5, False), 0.006))
    arms = []
    for k, p in enumerate(polys):
        s = -1 if k == 0 else 1
        edge = p[np.argmax(s * p[:, 0])]
        arms.append(head.to_px(_stroke([edge + [0, -0.01], (s * 0.275, -0.012)], 0.006)))
    allp = lens + rims + [bridge] + arms
    box = cv.box(allp)
    if box is None:
        return
    la = cv.fill(lens, box)
    X, Y = cv.coords(head, box)
    glare = np.clip(np.sin((X * 0.7 + Y) * 2 * math.pi * 6) * 3 - 2.2, 0, 1) * 0.25
    fa = cv.fill(rims + [bridge] + arms, box)
    cv.paint(box, la * 0.12, np.array([0.75, 0.85, 0.95], np.float32))
    cv.paint(box, la * glare, np.ones(3, np.float32))
    cv.paint(box, fa, frame_col)
    # CelebAMask-HQ order: eyes and brows seen through the glasses keep their labels
    lab = cv.lab[box[0]:box[1], box[2]:box[3]]
    keep = np.isin(lab, [L["l_eye"], L["r_eye"], L["l_brow"], L["r_brow"]])
    lab[(np.maximum(la, fa) > 0.5) & ~keep] = L["eye_g"]


# ------------------------------------------------------------------------------------------------- the hair


@dataclass(frozen=True)
class _Piece:
    """One lock of hair: an outline (minus a face window) with a strand flow and a texture."""

    outline: np.ndarray
    layer: str                       # back | mid | under_ears | front
    flow: str                        # fan | arcs | radial | axis
    origin: tuple[float, float] = (0.0, -0.45)
    window: np.ndarray | None = None
    texture: str = "strands"         # strands | curls | coils | stubble
    sheen: float = 0.16              # where the highlight band sits along the strands (v)
    darken: float = 1.0
    parting: tuple[float, float] | None = None   # (x, lowest y) of a visible parting line
    axis: np.ndarray | None = None   # centre line for flow == "axis"
    wave: float = 1.0                # how much of the texture's waves this piece shows (tight hair: none)


def _ragged(poly: np.ndarray, style: Hairstyle, amp: float, seed: int, step: float = 0.004) -> np.ndarray:
    """A closed outline made irregular (strands sticking out), amplitude scaled by the style's raggedness."""
    p = _resample(poly, step)
    rng = np.random.default_rng(seed)
    n = len(p)
    d = amp * (0.5 + style.raggedness) * (0.6 * _smooth_noise(rng, n, 3.0) + 0.4 * _smooth_noise(rng, n, 1.0))
    return _displace(p, d * 0.5)


def _scallop(poly: np.ndarray, size: float, amp: float, seed: int) -> np.ndarray:
    """Bumpy outline: about one bump per ``size`` of arc length (curls)."""
    p = _resample(poly, size / 8)
    rng = np.random.default_rng(seed)
    n = len(p)
    phase = np.cumsum(1 + 0.3 * rng.standard_normal(n)) / 8
    bump = np.abs(np.sin(math.pi * phase)) ** 0.6
    bump = bump * (0.7 + 0.3 * _smooth_noise(rng, n, 4.0)) * amp
    return _displace(p, bump - amp * 0.4)


def _tufts(edge: np.ndarray, period: float, amp: float, seed: int) -> np.ndarray:
    """An open edge (left to right) with pointed locks hanging down from it."""
    p = _resample(edge, period / 10, closed=False)
    rng = np.random.default_rng(seed)
    n = len(p)
    phase = np.cumsum(np.full(n, 0.1) * (1 + 0.25 * rng.standard_normal(n)))
    tri = 1 - np.abs(2 * (phase - np.floor(phase)) - 1)
    lengths = 0.55 + 0.45 * _smooth_noise(rng, n, 6.0).clip(-1, 1)
    return p + np.stack([np.zeros(n), amp * tri ** 1.6 * lengths], axis=1)


def _parting_x(style: Hairstyle) -> float:
    return {"left": -0.095, "right": 0.095, "centre": 0.0, "none": 0.0}[style.parting]


def _natural_top(style: Hairstyle, spiky: float = 0.0) -> np.ndarray:
    """The natural hairline across the forehead (left to right), optionally with small locks."""
    xs = np.linspace(-0.22, 0.22, 23)
    top = np.stack([xs, HAIRLINE_Y + 0.45 * xs ** 2 + 0.9 * np.maximum(np.abs(xs) - 0.12, 0) ** 1.5], axis=1)
    if spiky > 0:
        top = _tufts(top, 0.03, spiky, style.seed + 21)
    return top


def _parted_top(style: Hairstyle, px: float) -> np.ndarray:
    """An arch from the parting down to the temples: hair falling to both sides of a parting."""
    xs = np.linspace(-0.215, 0.215, 29)
    apex = HAIRLINE_Y - 0.03
    heavy = 0.075 + 0.04 * style.volume
    light = 0.03 if px != 0 else heavy
    d_right = heavy if px <= 0 else light
    d_left = heavy if px >= 0 else light
    a_r = (d_right + 0.03) / (0.215 - px) ** 2
    a_l = (d_left + 0.03) / (0.215 + px) ** 2
    ys = apex + np.where(xs >= px, a_r, a_l) * (xs - px) ** 2
    return np.stack([xs, ys], axis=1)


def _window(top: np.ndarray, right_side) -> np.ndarray:
    """The opening where the face shows through the hair: ``top`` edge (left to right), sides going down."""
    right = np.asarray(right_side, np.float64)
    right = np.concatenate([[(right[0, 0], top[-1, 1] + right[0, 1])], right[1:]])
    left = right * [-1, 1]
    left[0, 1] = top[0, 1] + right_side[0][1]
    return np.concatenate([left[::-1], top, right, [(right[-1, 0], 3.0), (left[-1, 0], 3.0)]])


def _cap_outline(vol_top: float, vol_side: float, theta: float, heavy: float = 0.0) -> np.ndarray:
    """Hair over the cranium from -theta to +theta (radians), volume tapering from top to sides; ``heavy``
    (-1..1) adds volume to the image-left (-) or right (+) side."""
    th = np.linspace(-theta, theta, 41)
    off = vol_side + (vol_top - vol_side) * np.cos(th / theta * math.pi / 2) ** 1.5
    off = off + 0.012 * heavy * np.sin(th)
    return _skull_point(th, off)


def _fringe_pieces(style: Hairstyle, px: float) -> list[_Piece]:
    if style.fringe == "none":
        return []
    fl = style.fringe_length
    seed = style.seed
    if style.fringe == "straight":
        bottom_y = HAIRLINE_Y + 0.06 + 0.095 * fl
        xs = np.linspace(-0.232, 0.232, 25)
        bottom = np.stack([xs, bottom_y + 0.025 * (xs / 0.232) ** 4 - 0.012 * (xs / 0.232) ** 2], axis=1)
        bottom = _tufts(bottom, 0.032, 0.018 + 0.012 * style.raggedness, seed + 11)[::-1]
        top = _skull_point(np.linspace(-1.0, 1.0, 15), 0.01)
        poly = np.concatenate([top, [(0.262, bottom_y - 0.03)], bottom, [(-0.262, bottom_y - 0.03)]])
        return [_Piece(poly, "front", "fan", origin=(0.0, HAIRLINE_Y - 0.45), sheen=0.3, wave=0.3)]
    if style.fringe == "side":
        s = -1.0 if px < 0 else 1.0
        end_y = HAIRLINE_Y + 0.08 + 0.09 * fl
        far = -s * 0.262
        pts = [(px + s * 0.03, HAIRLINE_Y - 0.12), (px + s * 0.004, HAIRLINE_Y - 0.01),
               (px - s * 0.08, HAIRLINE_Y + 0.035 + 0.03 * fl), (-s * 0.17, end_y - 0.012),
               (far + s * 0.012, end_y), (far - s * 0.02, end_y - 0.06), (far, HAIRLINE_Y - 0.05),
               (-s * 0.1, HAIRLINE_Y - 0.13)]
        poly = _ragged(_catmull(pts, 6), style, 0.004, seed + 12, 0.003)
        return [_Piece(poly, "front", "arcs", origin=(px + s * 0.16, HAIRLINE_Y - 0.32), sheen=0.3)]
    out = []
    for s in (-1.0, 1.0):   # curtain: parted in the middle, sweeping out to both temples
        end_y = HAIRLINE_Y + 0.1 + 0.08 * fl
        pts = [(s * 0.012, HAIRLINE_Y - 0.08), (s * 0.004, HAIRLINE_Y + 0.0),
               (s * 0.07, HAIRLINE_Y + 0.03 + 0.025 * fl), (s * 0.17, end_y - 0.03), (s * 0.24, end_y),
               (s * 0.275, HAIRLINE_Y), (s * 0.15, HAIRLINE_Y - 0.1)]
        poly = _ragged(_catmull(pts, 6), style, 0.003, seed + 13 + int(s), 0.003)
        out.append(_Piece(poly, "front", "arcs", origin=(-s * 0.12, HAIRLINE_Y - 0.3), sheen=0.28))
    return out


SHORT_SIDES = [(0.232, 0.05), (0.252, -0.04), (0.26, 0.04), (0.7, 0.05)]
TOP_Y = SKULL_CY - SKULL_RY


def _hair_pieces(style: Hairstyle) -> list[_Piece]:
    """The hairstyle as pieces in the frontal head frame (independent of identity)."""
    fam = style.family
    if fam == "bald":
        return []
    px = _parting_x(style)
    parted = style.parting != "none"
    heavy = 0.0 if style.parting in ("centre", "none") else -math.copysign(1.0, px)
    pieces: list[_Piece] = []
    seed = style.seed

    if fam == "buzz":
        cap = _cap_outline(0.006, 0.004, math.radians(98))
        cap = np.concatenate([[(cap[0, 0], 0.0)], cap, [(cap[-1, 0], 0.0)]])
        win = _window(_natural_top(style), [(0.23, 0.035), (0.252, -0.06), (0.262, 0.02), (0.7, 0.025)])
        return [_Piece(cap, "under_ears", "radial", origin=(0.0, -1.2), window=win, texture="stubble")]

    if fam in ("short", "bun", "ponytail"):
        vt = {"short": 0.022 + 0.05 * style.volume, "bun": 0.02, "ponytail": 0.02}[fam]
        vs = {"short": 0.012 + 0.012 * style.volume, "bun": 0.01, "ponytail": 0.01}[fam]
        cap = _cap_outline(vt, vs, math.radians(100), heavy)
        cap = np.concatenate([[(cap[0, 0], 0.04)], cap, [(cap[-1, 0], 0.04)]])
        if fam == "short":
            cap = _ragged(cap, style, 0.006, seed + 1)
            win = _window(_natural_top(style, 0.012 * style.raggedness if style.fringe == "none" else 0.0),
                          SHORT_SIDES)
            origin = (px, TOP_Y - vt - 0.05) if parted else (0.0, -1.0)
            pieces.append(_Piece(cap, "under_ears", "fan", origin=origin, window=win, sheen=0.12 + vt,
                                 parting=(px, HAIRLINE_Y) if parted else None))
        else:
            cap = _ragged(cap, style, 0.003, seed + 1)
            win = _window(_natural_top(style), SHORT_SIDES)
            pieces.append(_Piece(cap, "under_ears", "radial", origin=(0.0, -1.1), window=win, sheen=0.8,
                                 parting=(px, HAIRLINE_Y) if parted else None, wave=0.0))
            if fam == "bun":
                r = 0.085 + 0.05 * style.volume
                bx = 0.06 * style.side
                by = TOP_Y - 0.55 * r
                bun = _ragged(_ellipse(bx, by, r * 1.12, r * 0.9, 64), style, 0.004, seed + 2)
                pieces.insert(0, _Piece(bun, "back", "arcs", origin=(bx, by), sheen=0.55 * r, wave=0.0))
            else:
                s = 1.0 if style.side >= 0 else -1.0
                ln = 0.35 + 0.35 * style.length
                w0 = 0.05 + 0.03 * style.volume
                axis = _catmull([(s * 0.2, -0.08), (s * 0.3, 0.08), (s * 0.335, 0.25),
                                 (s * 0.33, 0.25 + ln * 0.6), (s * 0.31, 0.25 + ln)], 8, False)
                t = np.linspace(0, 1, len(axis))
                widths = w0 * (0.8 + 1.0 * np.sin(np.clip(t * 1.3, 0, 1) * math.pi) ** 0.7) * (1 - t ** 3) + 0.006
                tail = _ragged(_stroke(axis, widths), style, 0.004, seed + 3)
                pieces.insert(0, _Piece(tail, "mid", "axis", axis=axis, sheen=0.25))
        pieces.extend(_fringe_pieces(style, px))
        return pieces

    if fam == "afro":
        vol = 0.1 + 0.1 * style.volume
        cy = -0.07 + 0.03 * style.length
        rx, ry = SKULL_RX + vol, SKULL_RY + 0.9 * vol
        th = np.linspace(math.radians(-140), math.radians(140), 29)
        ring = np.stack([np.sin(th) * rx, cy - np.cos(th) * ry], axis=1)
        outline = _catmull(np.concatenate([ring, [(0.0, ring[-1, 1] + 0.02)]]), 6)
        outline = _scallop(outline, 0.035 + 0.03 * style.curl_size, 0.016, seed + 4)
        win = _window(_natural_top(style), [(0.232, 0.05), (0.255, -0.02), (0.262, 0.12), (0.28, 0.3),
                                            (0.7, 0.32)])
        pieces.append(_Piece(outline, "back", "radial", origin=(0, -1.2), texture="coils", darken=0.7))
        pieces.append(_Piece(outline, "front", "radial", origin=(0, -1.2), window=win, texture="coils"))
        return pieces

    # long, bob, curly: a cap falling to a length
    if fam == "bob":
        vt, vs = 0.03 + 0.03 * style.volume, 0.02 + 0.015 * style.volume
        length = 0.17 + 0.18 * style.length
        flare = 0.01 + 0.03 * style.flare
    elif fam == "long":
        vt, vs = 0.02 + 0.04 * style.volume, 0.015 + 0.02 * style.volume
        length = 0.38 + 0.5 * style.length
        flare = 0.02 + 0.06 * style.flare
    else:  # curly
        vt, vs = 0.06 + 0.07 * style.volume, 0.05 + 0.05 * style.volume
        length = 0.15 + 0.4 * style.length
        flare = 0.03 + 0.07 * style.flare
    cap = _cap_outline(vt, vs, math.radians(80), heavy)
    we = max(SKULL_RX + vs + 0.03, 0.365)
    if fam == "bob":
        rs = [(we, 0.04), (we + flare * 0.6, length - 0.07), (we - 0.005 + flare * 0.4, length - 0.02),
              (we - 0.06, length + 0.004), (we - 0.14, length - 0.012), (0.0, length - 0.012)]
    elif fam == "curly":
        rs = [(we, 0.05), (we + flare * 0.5, min(0.2, length - 0.08)), (we + flare, length - 0.05),
              (we + flare * 0.5, length + 0.01), (we - 0.1, length), (0.12, length - 0.03), (0.0, length - 0.03)]
    else:
        rs = [(we, 0.05), (we + flare * 0.4, 0.3), (we + flare, length - 0.1), (we + flare * 0.8, length - 0.02),
              (we - 0.06 + flare * 0.5, length), (0.14, length - 0.04), (0.0, length - 0.04)]
    rs = np.asarray([(we - 0.015, -0.07), *rs])   # over the ears
    ls = (rs * [-1, 1])[::-1]
    rs_h = rs + [[0.012 * max(heavy, 0), 0]]
    ls_h = ls - [[0.012 * max(-heavy, 0), 0]]
    outline = _catmull(np.concatenate([ls_h[:-1], cap[::4], rs_h[:-1]]), 8)
    if fam == "curly":
        outline = _scallop(outline, 0.03 + 0.04 * style.curl_size, 0.018 + 0.01 * style.curl_size, seed + 5)
        tex = "curls"
    else:
        outline = _ragged(outline, style, 0.006, seed + 6)
        tex = "strands"
    if fam == "bob":
        sides = [(0.228, 0.035), (0.242, 0.0), (0.236, 0.12), (0.212, 0.24), (0.195, 0.4), (0.2, 0.6)]
    else:
        sides = [(0.228, 0.035), (0.245, 0.0), (0.245, 0.14), (0.25, 0.3), (0.29, 0.5), (0.33, 0.8)]
    use_arch = parted and style.fringe == "none"
    top = _parted_top(style, px) if use_arch else _natural_top(style)
    win = _window(top, sides)
    origin = (px, TOP_Y - vt - 0.05) if parted else (0.0, -1.0)
    part = (px, HAIRLINE_Y - 0.03) if use_arch else ((px, HAIRLINE_Y) if parted else None)
    pieces.append(_Piece(outline, "back", "fan", origin=origin, texture=tex, darken=0.6, sheen=0.12 + vt))
    pieces.append(_Piece(outline, "front", "fan", origin=origin, window=win, texture=tex, sheen=0.12 + vt,
                         parting=part))
    pieces.extend(_fringe_pieces(style, px))
    return pieces


def _flow(piece: _Piece, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, v): u is constant along strands (head units across), v runs along them (head units)."""
    ox, oy = piece.origin
    dx, dy = X - ox, Y - oy
    if piece.flow == "fan":
        d = np.maximum(dy, 0.0) + 0.02
        u = dx * np.sqrt(0.35 / d)
        v = np.sqrt(dx * dx + dy * dy)
    elif piece.flow == "arcs":
        u = np.sqrt(dx * dx + dy * dy)
        v = np.arctan2(dx, -dy) * 0.3
    elif piece.flow == "radial":
        r = np.sqrt(dx * dx + dy * dy)
        u = np.arctan2(dx, dy) * r.mean()
        v = r
    else:  # axis
        ax = piece.axis
        assert ax is not None
        order = np.argsort(ax[:, 1])
        u = X - np.interp(Y, ax[order, 1], ax[order, 0])
        v = Y - float(ax[0, 1])
    return u.astype(np.float32), v.astype(np.float32)


@dataclass
class _PieceMask:
    box: Box
    alpha: np.ndarray      # hard (anti-aliased) coverage: the label
    window: np.ndarray     # soft coverage of the face window (0 where there is none)


def _hair_alpha(cv: _Canvas, piece: _Piece, head: _Frame, clip: np.ndarray | None) -> _PieceMask | None:
    opx = head.to_px(piece.outline)
    box = cv.box([opx], margin=4)
    if box is None:
        return None
    a = cv.fill([opx], box)
    if clip is not None:
        a *= 1 - cv.fill([head.to_px(clip)], box)
    win = np.zeros_like(a)
    if piece.window is not None:
        win = cv.fill([head.to_px(piece.window)], box)
        a *= 1 - win
    if a.max() < 0.5:
        return None
    return _PieceMask(box, a, win)


def _curl_layer(x: np.ndarray, y: np.ndarray, seed: int, shift: float, px: float) -> tuple[np.ndarray, ...]:
    """One staggered grid of jittered curl blobs in cell units: (dome height, C-shaped highlight, gap shade).

    ``px`` is the pixel size in cell units: edges are never sharper than about a pixel (size-consistent AA)."""
    gx, gy = x + shift, y + shift
    ix, iy = np.floor(gx), np.floor(gy)
    jit = np.random.default_rng(seed).uniform(-0.22, 0.22, (3, 64, 64)).astype(np.float32)
    hx = ix.astype(np.int64) % 64
    hy = iy.astype(np.int64) % 64
    dx = gx - ix - 0.5 - jit[0][hy, hx]
    dy = gy - iy - 0.5 - jit[1][hy, hx]
    rad = 0.56 + jit[2][hy, hx] * 0.4
    r = np.sqrt(dx * dx + dy * dy) / rad
    w = max(0.12, 1.2 * px)
    dome = _smoothstep(1.0, 1.0 - w, r) * (1.1 - 0.6 * r * r)
    # a highlight arc on the upper left of each curl, and a curl line curving into it
    ang = np.arctan2(dy, dx)
    facing = np.maximum(np.cos(ang + 2.3), 0.0) ** 1.5
    ring_w = max(0.14, 1.0 * px)
    arc = np.exp(-(((r - 0.62) / ring_w) ** 2)) * facing
    curl = np.exp(-(((r - 0.3 - 0.08 * np.sin(ang * 2)) / ring_w) ** 2)) * np.maximum(np.cos(ang - 0.9), 0)
    fade = _smoothstep(0.5, 0.2, px)          # curl lines finer than the pixels fade out
    return dome, (arc + 0.6 * curl) * fade, r


def _draw_hair_piece(cv: _Canvas, spec: PortraitSpec, piece: _Piece, head: _Frame, pm: _PieceMask) -> None:
    style, hc, tx = spec.hairstyle, spec.hair_color, spec.hair_texture
    box, a = pm.box, pm.alpha
    X, Y = cv.coords(head, box)
    u, v = _flow(piece, X, Y)
    size = cv.size
    u = u + tx.direction * v * 0.3
    wave_amp = tx.wave_amp * piece.wave if piece.texture == "strands" else 0.0
    if wave_amp > 0:
        u = u + wave_amp * np.sin(2 * math.pi * tx.wave_freq * v + 4.0 * u)

    height, lam = cv.relief(a, 0.03, depth=1.0)
    inner = cv.soft(pm.window, 0.02) if piece.window is not None else 0.0
    ao = 0.4 + 0.6 * _smoothstep(0.0, 0.7, height)
    shade = (0.6 + 0.5 * lam) * ao * (1 - 0.35 * inner) * piece.darken

    dens = 480 + 560 * tx.density
    fine_t = _table(3, (48, 2048), (2.0, _band_sigma(dens, size, 0.7)))
    fine = _sample(fine_t, u * dens, v * 30, tx.seed)
    if piece.texture == "strands":
        clump_t = _table(4, (24, 512), (1.5, _band_sigma(dens / 8, size, 1.2)))
        clump = _sample(clump_t, u * dens / 8, v * 10, tx.seed + 1)
        tex = 0.5 * fine + 0.65 * tx.clump * clump
        sheen_tex = np.clip(0.55 + 0.3 * fine + 0.3 * clump, 0, 1.3)
    elif piece.texture == "curls":    # corkscrew ringlets hanging along the strands
        lock_d = 30 - 12 * style.curl_size
        wob = (0.25 / lock_d) * np.sin(2 * math.pi * v * 5 + 6 * u)
        lu = (u + wob) * lock_d
        idx = np.floor(lu)
        t = lu - idx
        rnd = np.random.default_rng(tx.seed).uniform(0, 1, (2, 256)).astype(np.float32)
        k = idx.astype(np.int64) % 256
        f = lock_d * (0.9 + 0.5 * rnd[1][k]) * (1.0 + 0.2 * tx.wave_freq / 12)
        phase = v * f + 0.45 * np.cos(math.pi * (t - 0.5)) + rnd[0][k]
        c = np.cos(2 * math.pi * phase)
        px = lock_d / (size * SCALE)                    # pixel size in lock widths
        vis = _smoothstep(0.5, 0.18, px * f / lock_d)   # springs finer than pixels fade to their mean
        prof = np.sin(math.pi * t) ** 0.8
        hl = np.maximum(c, 0) ** 3 * prof * vis
        tex = 1.5 * (prof - 0.62) + 0.9 * c * prof * vis + 0.2 * fine
        sheen_tex = np.clip(0.2 + 1.2 * hl, 0, 1.3)
    elif piece.texture == "coils":
        cell = 0.014 + 0.01 * style.curl_size
        px = 1.0 / (cell * size * SCALE)
        d1, h1, _ = _curl_layer(X / cell, Y / cell, tx.seed, 0.0, px)
        d2, h2, _ = _curl_layer(X / cell, Y / cell, tx.seed + 1, 0.5, px)
        top = d2 > d1
        dome = np.maximum(d1, d2)
        hl = np.where(top, h2, h1)
        tex = 1.6 * (dome - 0.55) + 0.5 * hl
        sheen_tex = np.clip(0.3 + hl, 0, 1.3)
    else:  # stubble
        cells = 260.0
        t1 = _table(7, (256, 256), (_band_sigma(cells, size, 0.5),) * 2)
        n1 = _sample(t1, X * cells, Y * cells, tx.seed)
        tex = 0.35 * n1 - 0.25
        sheen_tex = np.full_like(n1, 0.4)

    lum = shade * (1 + 0.32 * tx.contrast * tex)
    if piece.parting is not None:
        pxp, pyp = piece.parting
        line = np.exp(-(((X - pxp) / 0.0065) ** 2)) * _smoothstep(pyp + 0.01, pyp - 0.03, Y)
        lum = lum * (1 - 0.6 * line)
    band = np.exp(-(((v - piece.sheen) / 0.045) ** 2))
    if wave_amp > 0:
        band = band + 0.7 * np.maximum(np.sin(2 * math.pi * tx.wave_freq * v + 4.0 * u), 0) ** 4 \
            * _smoothstep(0.25, 0.4, v)
    spec_l = (0.35 + 0.65 * tx.shine) * band * sheen_tex * np.clip(lam + 0.15, 0, 1.2) * piece.darken

    base = np.asarray(hc.base, np.float32)
    sh = np.asarray(hc.shadow, np.float32)
    hi = np.asarray(hc.highlight, np.float32)
    if hc.ombre > 0:
        tips = np.asarray(hc.tips, np.float32)
        tsh, thi = _shade_family(tips, False)
        w = (hc.ombre * _smoothstep(0.0, 0.5, Y))[..., None]
        base = base * (1 - w) + tips * w
        sh = sh * (1 - w) + np.asarray(tsh, np.float32) * w
        hi = hi * (1 - w) + np.asarray(thi, np.float32) * w
    lum = np.clip(lum, 0, 1.6)[..., None]
    col = sh + (base - sh) * np.clip(lum / 0.8, 0, 1) + (hi - base) * np.clip((lum - 0.8) / 0.6, 0, 1)
    col = np.clip(col + spec_l[..., None] * 0.6 * (hi * 1.1 - col), 0, 1)
    alpha = a
    if piece.window is not None:   # a soft, wispy hairline
        ws = cv.soft(pm.window, 0.0025)
        alpha = np.minimum(a, np.clip(1 - ws * (1.6 + 0.8 * fine), 0, 1) * (a > 0.02))
    if piece.texture == "stubble":
        alpha = alpha * np.clip(0.8 + 0.12 * n1, 0.5, 1.0)
    cv.paint(box, alpha, col)
    cv.lab[box[0]:box[1], box[2]:box[3]][a > 0.5] = L["hair"]


# ---------------------------------------------------------------------------------------------- headwear


def _hat_parts(style: Hairstyle) -> tuple[list[tuple[np.ndarray, str]], np.ndarray]:
    """(polygons with a role, region above the hat band where no hair shows) of the headwear (head frame)."""
    kind = style.headwear
    top = TOP_Y

    def band_curve(xs, band_y, end):
        return band_y + (end[1] - band_y) * (xs / end[0]) ** 4

    if kind == "beanie":
        band_y = HAIRLINE_Y + 0.02
        th = np.linspace(math.radians(-84), math.radians(84), 41)
        dome = _skull_point(th, 0.03 + 0.035 * np.cos(th) ** 2)
        end = dome[-1]
        xs = np.linspace(end[0], -end[0], 21)
        body = np.concatenate([dome, np.stack([xs, band_curve(xs, band_y, end)], 1)])
        xc = np.linspace(-end[0] - 0.008, end[0] + 0.008, 21)
        cuff = np.concatenate([np.stack([xc, band_curve(np.clip(xc, -end[0], end[0]), band_y, end) - 0.075], 1),
                               np.stack([xc[::-1], band_curve(np.clip(xc[::-1], -end[0], end[0]), band_y, end)
                                         + 0.004], 1)])
        parts = [(body, "knit"), (cuff, "rib")]
        if style.seed % 2 == 0:
            pom = _ragged(_ellipse(0.0, top - 0.075, 0.06, 0.055, 48), style, 0.01, style.seed + 7, 0.003)
            parts.insert(0, (pom, "pom"))
    elif kind == "cap":
        band_y = HAIRLINE_Y - 0.01
        th = np.linspace(math.radians(-80), math.radians(80), 41)
        dome = _skull_point(th, 0.024)
        end = dome[-1]
        xs = np.linspace(end[0], -end[0], 21)
        body = np.concatenate([dome, np.stack([xs, band_curve(xs, band_y, end)], 1)])
        s = 1.0 if style.side >= 0 else -1.0
        bx = np.linspace(-0.31, 0.31, 25)
        visor = np.concatenate([np.stack([bx + 0.015 * s, band_y - 0.012 + 0.02 * (bx / 0.31) ** 2], 1),
                                np.stack([bx[::-1] + 0.015 * s, band_y + 0.085 - 0.055 * (bx[::-1] / 0.31) ** 2], 1)])
        button = _ellipse(0.0, top - 0.02, 0.022, 0.012, 24)
        parts = [(body, "panels"), (visor, "visor"), (button, "button")]
    else:  # brimmed
        band_y = HAIRLINE_Y - 0.03
        crown = _catmull([(-0.26, band_y), (-0.27, band_y - 0.12), (-0.22, top - 0.09), (-0.06, top - 0.1),
                          (0.0, top - 0.07), (0.06, top - 0.1), (0.22, top - 0.09), (0.27, band_y - 0.12),
                          (0.26, band_y)], 6)
        brim = _ellipse(0.0, band_y - 0.005, 0.52, 0.085, 64)
        ribbon = np.array([(-0.265, band_y - 0.055), (0.265, band_y - 0.055), (0.262, band_y), (-0.262, band_y)])
        parts = [(brim, "brim"), (crown, "crown"), (ribbon, "ribbon")]
        end = (0.3, band_y)
    xs = np.linspace(-0.9, 0.9, 37)
    edge = band_curve(np.clip(xs, -end[0], end[0]), band_y, end) if kind != "brimmed" else np.full_like(xs, band_y)
    edge = np.where(np.abs(xs) > end[0], end[1], edge)
    clip = np.concatenate([np.stack([xs, np.full_like(xs, -2.0)], 1), np.stack([xs[::-1], edge[::-1]], 1)])
    return parts, clip


def _draw_hat(cv: _Canvas, spec: PortraitSpec, head: _Frame) -> None:
    style = spec.hairstyle
    parts, _ = _hat_parts(style)
    base = np.asarray(style.headwear_color, np.float32)
    for poly, role in parts:
        ppx = head.to_px(poly)
        box = cv.box([ppx], margin=4)
        if box is None:
            continue
        a = cv.fill([ppx], box)
        X, Y = cv.coords(head, box)
        _, lam = cv.relief(a, 0.03, depth=0.8)
        col = base * (0.65 + 0.4 * lam[..., None])
        if role == "knit":
            knit = np.abs(np.sin(X * 2 * math.pi * 45 + np.abs(np.sin(Y * 2 * math.pi * 40)) * 1.5))
            col = col * (0.85 + 0.2 * knit[..., None])
        elif role == "rib":
            rib = 0.5 + 0.5 * np.sin(X * 2 * math.pi * 55)
            col = col * (0.8 + 0.25 * rib[..., None])
        elif role == "pom":
            t = _table(8, (64, 64), (0.8, 0.8))
            col = col * (0.9 + 0.12 * _sample(t, X * 300, Y * 300, style.seed)[..., None])
        elif role == "panels":
            seams = sum(np.exp(-(((X - k * 0.12 * (1 + (Y - HAIRLINE_Y) * 0)) / 0.004) ** 2)) for k in (-1, 1))
            col = col * (1 - 0.25 * seams[..., None])
        elif role == "brim":
            col = col * 0.95
        elif role == "visor":
            under = _smoothstep(0.0, 1.0, (Y - HAIRLINE_Y) / 0.08)
            col = col * (0.95 - 0.3 * under[..., None])
        elif role == "button":
            col = col * 0.8
        elif role == "ribbon":
            col = np.clip(base * 0.3 + 0.05, 0, 1) * (0.8 + 0.3 * lam[..., None])
        cv.paint(box, a, col, L["hat"])


# ------------------------------------------------------------------------------------------------- render


def render(spec: PortraitSpec, size: int = 256) -> tuple[Image.Image, np.ndarray]:
    """The portrait (RGB) and its pixel-aligned uint8 [size, size] label map (CelebAMask-HQ order).

    Deterministic: the same spec and size give the same pixels. Painted back to front: background, hair behind
    the head, neck and clothes, a ponytail over the shoulder, face and features, glasses, the hair's shadow,
    hair over the scalp, ears, hair over the ears and face, headwear."""
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    cv = _Canvas(size)
    head, body = _frames(spec, size)
    face = _face_geometry(spec.identity)
    style = spec.hairstyle

    _draw_background(cv, spec.background)
    pieces = _hair_pieces(style)
    clip = None
    if style.headwear != "none":
        _, clip = _hat_parts(style)
    masks = [_hair_alpha(cv, p, head, clip) for p in pieces]

    def draw(layer: str) -> None:
        for p, pm in zip(pieces, masks, strict=True):
            if p.layer == layer and pm is not None:
                _draw_hair_piece(cv, spec, p, head, pm)

    draw("back")
    _draw_neck_and_clothes(cv, spec, face, head, body)
    draw("mid")
    face_cov = _draw_face(cv, spec, face, head)
    _draw_features(cv, spec, face, head)
    _draw_glasses(cv, spec, face, head)
    # shadows of the front hair and the hat on the face
    occ = np.zeros((size, size), np.float32)
    for p, pm in zip(pieces, masks, strict=True):
        if p.layer in ("front", "under_ears") and pm is not None and p.texture != "stubble":
            y0, y1, x0, x1 = pm.box
            occ[y0:y1, x0:x1] = np.maximum(occ[y0:y1, x0:x1], pm.alpha)
    if style.headwear != "none":
        parts, _ = _hat_parts(style)
        polys = [head.to_px(pp) for pp, _ in parts]
        box = cv.box(polys)
        if box is not None:
            y0, y1, x0, x1 = box
            occ[y0:y1, x0:x1] = np.maximum(occ[y0:y1, x0:x1], cv.fill(polys, box))
    if occ.any():
        shift = int(round(0.01 * size))
        shadow = cv.soft(occ, 0.008)
        shadow[shadow < 0.01] = 0.0   # no faint tails: pixels away from the hair stay exactly the same
        shadow = np.roll(shadow, shift, axis=0)
        shadow[:shift] = 0
        on_face = np.isin(cv.lab, [L[n] for n in ("skin", "nose", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g",
                                                    "l_ear", "r_ear", "neck", "u_lip", "l_lip", "mouth")])
        cv.img *= (1 - 0.4 * shadow * (1 - occ) * on_face)[..., None]
    draw("under_ears")
    _draw_ears(cv, spec, face, head, face_cov)
    draw("front")
    if style.headwear != "none":
        _draw_hat(cv, spec, head)
    out = np.clip(cv.img * 255 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB"), cv.lab


# ---------------------------------------------------------------------------------------------- landmarks


def landmarks(spec: PortraitSpec, size: int = 256) -> np.ndarray:
    """float32 [68, 2] (x, y) pixel coordinates in dlib order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
    mouth 48-67) of the portrait ``render(spec, size)`` draws; "left" points (0, 17, 36, 48) on the image left."""
    face = _face_geometry(spec.identity)
    head, _ = _frames(spec, size)
    pts = []
    # jaw: along the outline from the image-left side at eye level, round the chin, to the image right
    seg = face.outline[face.outline[:, 1] >= -0.005]
    # order the lower outline from the left side to the right side via angle around the head centre
    seg = seg[np.argsort(np.arctan2(seg[:, 0], seg[:, 1] - 0.05))]
    arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(seg, axis=0), axis=1))])
    q = np.linspace(0, arc[-1], 17)
    pts += list(np.stack([np.interp(q, arc, seg[:, 0]), np.interp(q, arc, seg[:, 1])], 1))
    for k, line in enumerate(face.brows):   # image-left brow outer->inner, then right brow inner->outer
        idx = np.linspace(0, len(line) - 1, 5).round().astype(int)
        b = line[idx]
        pts += list(b[::-1] if k == 0 else b)
    tx, ty = face.nose_tip
    nw = face.nose_width
    pts += [(0.0, 0.0 + 0.005), (0.0, ty * 0.33), (0.0, ty * 0.66), (tx, ty)]
    pts += [(-nw * 0.7, ty + 0.02), (-nw * 0.35, ty + 0.03), (0.0, ty + 0.034), (nw * 0.35, ty + 0.03),
            (nw * 0.7, ty + 0.02)]
    for k, (upper, lower) in enumerate(face.eyes):
        n = len(upper)
        i1, i2 = int(round(n / 3)), int(round(2 * n / 3))
        if k == 0:   # image-left: outer corner first; upper lid outer->inner, lower lid inner->outer
            pts += [upper[-1], upper[i2], upper[i1], upper[0], lower[i1], lower[i2]]
        else:        # image-right: inner corner first
            pts += [upper[0], upper[i1], upper[i2], upper[-1], lower[i2], lower[i1]]
    top, line, low, bot = face.lip_top, face.lip_line, face.lip_inner_low, face.lip_bottom
    ix = [0, 4, 7, 10, 13, 16, 20]
    pts += [top[i] for i in ix]                       # 48-54: left corner, upper lip, right corner
    pts += [bot[i] for i in (16, 13, 10, 7, 4)]       # 55-59: lower lip right to left
    pts += [line[2], line[6], line[10], line[14], line[18]]  # 60-64: inner upper
    pts += [low[14], low[10], low[6]]                 # 65-67: inner lower, right to left
    pts[48] = top[0]
    pts[54] = top[-1]
    return head.to_px(np.asarray(pts, np.float64)).astype(np.float32)


# -------------------------------------------------------------------------------------------- files, sheets


def _png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=6)
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def generate(n: int, size: int, seed: int, out_dir: str | Path) -> list[dict[str, Any]]:
    """Write ``n`` portraits to ``out_dir``; returns ``[{id, image, labels, spec}]`` (paths as strings).

    ``images/sNNNN.png`` carries ``json.dumps(spec.to_json())`` in the PNG text chunk ``harness.synth``
    (:data:`harness.annotations.SYNTH_KEY`), ``labels/sNNNN.png`` is the uint8 label map and ``specs.jsonl`` has
    one ``{"id", "spec"}`` line per image. Image ``i``'s spec comes from ``default_rng([seed, i])``, so prefixes
    and subsets are stable; a file that already holds the same bytes is not rewritten."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    rows = []
    lines = []
    for i in range(n):
        spec = sample_spec(np.random.default_rng([seed, i]))
        js = spec.to_json()
        name = f"s{i:04d}"
        img, lab = render(spec, size)
        ip, lp = out / "images" / f"{name}.png", out / "labels" / f"{name}.png"
        _write_if_changed(ip, _png_bytes(img, {SYNTH_KEY: json.dumps(js)}))
        _write_if_changed(lp, _png_bytes(Image.fromarray(lab, "L")))
        rows.append({"id": name, "image": str(ip), "labels": str(lp), "spec": js})
        lines.append(json.dumps({"id": name, "spec": js}))
    _write_if_changed(out / "specs.jsonl", ("\n".join(lines) + "\n").encode())
    return rows


def colorize(labels: np.ndarray) -> np.ndarray:
    """RGB visualisation of a label map with :data:`LABEL_COLORS`."""
    return np.asarray(LABEL_COLORS, np.uint8)[labels]


def contact_sheet(images, cols: int = 8, labels=None) -> Image.Image:
    """A grid of images (PIL or arrays); with ``labels``, each image is blended half-and-half with its map."""
    ims = [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im, np.uint8) for im in images]
    if not ims:
        raise ValueError("no images")
    h, w = ims[0].shape[:2]
    rows = math.ceil(len(ims) / cols)
    sheet = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for k, im in enumerate(ims):
        if im.shape[:2] != (h, w):
            im = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
        if labels is not None:
            lab = np.asarray(labels[k])
            if lab.shape != (h, w):
                lab = cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)
            im = ((im.astype(np.uint16) + colorize(lab)) // 2).astype(np.uint8)
        r, c = divmod(k, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return Image.fromarray(sheet, "RGB")
