"""The ``cyclegan`` method: CycleGAN hair-domain translators as a hair-transfer baseline (a lower bound).

The standard use of CycleGAN as an attribute baseline (StarGAN's comparisons): one CycleGAN per pair of hair
domains (:mod:`methods.cyclegan.domains`: colour black / brown / blond / red / grey, style short / long).
``transfer(face, shape, color)``:

1. classify the three images (their label maps: ``requires = {"labels"}``);
2. if shape's style domain differs from face's, run the face->shape style translator;
3. if color's colour domain differs from face's, run the (face's colour)->color colour translator on the result.

Same class: no translation (a role played by the face image itself, as in the ``color``, ``shape`` and ``rec``
tasks, never asks for one). The domains and the translations go to the unit's record (``extras.cyclegan``). An
image without a domain (bald, hidden by a hat, a dyed colour outside the five) when one is needed, or a missing
translator, fails that item with the reason.

Each translator runs at its training size (``size`` in ``cyclegan.json``; inputs area-resized, [-1, 1]).
``composite=True`` (default): each translator's change ``G(x) - x`` is upsampled (bicubic) and added to the
full-resolution image, and the result is pasted into the face image inside the union of face's hair mask and, when
the style translator ran, shape's hair mask, grown by ``mask_grow_px`` and feathered by ``feather_px`` (both at
1024 px, scaled with the image). ``composite=False``: the raw whole-image output, upsampled.

It transfers a class, not the reference's exact shape or shade: a blond reference gives "blond" as the shipped
translator learned it, a long one "long". Read its numbers as a lower bound for learned methods.

Weights: ``cyclegan.json`` and its generators. ``checkpoints=""`` uses the pairs shipped in the package (trained by
``harness train cyclegan`` on synthetic portraits, see ``methods/cyclegan/pretrained/cyclegan.json``); a folder
written by the trainer, or holding official junyanz files listed in a ``cyclegan.json``, replaces them. Generator
files are also looked up in ``--weights-dir`` under their ``<pair>/latest_net_G_A.pth`` names (junyanz's
``checkpoints/<name>/`` layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import torch
from PIL import Image

from harness import annotations, unit
from harness.annotations import HAIR
from harness.method import Checkpoint, Method
from harness.timing import stages
from harness.weights import WeightStore, filled_state_dict, load_state_dict_into
from methods.cyclegan.bundle import BUNDLE_FILE, SHIPPED_DIR, Bundle, Translator, read_bundle
from methods.cyclegan.domains import HairDomains, classify
from methods.cyclegan.train import to_signed, to_training_size
from methods.nets.cyclegan import GeneratorConfig, ResnetGenerator, fill_recipe, generator_from_file

REFERENCE_SIDE = 1024


@dataclass(frozen=True)
class CycleGANParams:
    """``checkpoints``: a folder with ``cyclegan.json`` ("" = the shipped pairs); ``composite``: paste the
    upsampled changes inside the feathered union of hair masks (False: the raw whole-image output);
    ``mask_grow_px`` / ``feather_px``: at 1024 px."""

    checkpoints: str = ""
    composite: bool = True
    mask_grow_px: float = 24.0
    feather_px: float = 12.0

    def __post_init__(self):
        if self.mask_grow_px < 0 or self.feather_px < 0:
            raise ValueError("cyclegan: mask_grow_px and feather_px must be >= 0")


class DomainError(ValueError):
    """A triplet the translators cannot serve (no domain, or no translator for it)."""


def _labels(image: Image.Image, role: str) -> np.ndarray:
    labels = annotations.of(image).labels
    if labels is None:
        raise ValueError(f"cyclegan: the {role} image has no label map (the domains are read off label maps)")
    return labels


def _same_image(a: Image.Image, b: Image.Image) -> bool:
    return a is b or (a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))))


def plan_translations(face: HairDomains, shape: HairDomains | None, color: HairDomains | None, bundle: Bundle
                      ) -> list[Translator]:
    """The translators to apply, in order (``shape`` / ``color`` None: that role is the face image itself)."""
    steps = []
    for axis, other, role in (("style", shape, "shape"), ("color", color, "color")):
        if other is None:
            continue
        want, have = other.of(axis), face.of(axis)
        if want == have:
            continue
        if want is None:
            raise DomainError(f"cyclegan: the {role} image has no {axis} domain: {other.why}")
        if have is None:
            raise DomainError(f"cyclegan: the face image has no {axis} domain: {face.why}")
        try:
            steps.append(bundle.translator(have, want))
        except LookupError as exc:
            raise DomainError(f"cyclegan: {exc}") from None
    return steps


def paste_mask(masks: list[np.ndarray], grow: float, feather: float) -> np.ndarray:
    """Soft alpha [H, W]: the union of ``masks`` grown by ``grow`` px and Gaussian-feathered by ``feather`` px."""
    union = np.logical_or.reduce(masks).astype(np.uint8)
    if grow >= 0.5:
        k = 2 * round(grow) + 1
        union = cv2.dilate(union, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    alpha = union.astype(np.float32)
    if feather >= 0.3:
        k = 2 * round(3 * feather) + 1
        alpha = cv2.GaussianBlur(alpha, (k, k), feather)
    return alpha


class CycleGAN(Method):
    """Hair-domain CycleGAN translators (style, then colour) as a hair-transfer baseline; see the module docstring."""

    name: ClassVar[str] = "cyclegan"
    description: ClassVar[str] = ("baseline: CycleGAN translators between hair domains (short/long, black/brown/"
                                  "blond/red/grey), face->shape style then ->color colour; transfers a class")
    Params: ClassVar[type] = CycleGANParams
    requires: ClassVar[frozenset[str]] = frozenset({"labels"})

    def bundle(self) -> Bundle | None:
        try:
            return read_bundle(self.params.checkpoints or None)
        except FileNotFoundError:
            return None

    def checkpoints(self) -> list[Checkpoint]:
        found = self.bundle()
        if found is not None:
            return found.checkpoints()
        root = self.params.checkpoints or str(SHIPPED_DIR)
        return [Checkpoint(key="cyclegan:pairs", filename=BUNDLE_FILE, local_path=f"{root}/{BUNDLE_FILE}",
                           source="written by `harness train cyclegan --out DIR` (see `harness train cyclegan -h`)",
                           purpose="the CycleGAN pairs: their domains, sizes and generator files",
                           used_by=("cyclegan",))]

    def setup(self, device, weights: WeightStore) -> None:
        bundle = self.bundle()
        if bundle is None:
            raise FileNotFoundError(f"no {BUNDLE_FILE} at {self.params.checkpoints or SHIPPED_DIR}")
        self.device = torch.device(device)
        self.bundle_ = bundle
        self.generators: dict[tuple[str, str], ResnetGenerator] = {}
        configs = {p.get("name"): p.get("training", {}).get("options", {}).get("generator") for p in bundle.pairs}
        for key, translator in bundle.translators.items():
            if weights.fill:
                generator = ResnetGenerator(GeneratorConfig(**(configs.get(translator.pair) or {})))
                load_state_dict_into(generator, filled_state_dict(generator, translator.checkpoint.key, fill_recipe),
                                     "filled weights")
                generator = generator.to(self.device).eval().requires_grad_(False)
            else:
                generator = generator_from_file(weights.path(translator.checkpoint), self.device)
            self.generators[key] = generator

    @torch.no_grad()
    def translate(self, translator: Translator, rgb: np.ndarray) -> np.ndarray:
        """float RGB [H, W, 3] in [0, 1] -> (the translator's change at full size, its raw output at full size)."""
        h, w = rgb.shape[:2]
        small = to_training_size(np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8), translator.size)
        x = to_signed(torch.from_numpy(small).permute(2, 0, 1)[None]).to(self.device)
        y = self.generators[translator.source, translator.target](x)
        out = ((y[0].permute(1, 2, 0).cpu().numpy() + 1.0) / 2.0).astype(np.float32)
        before = (x[0].permute(1, 2, 0).cpu().numpy() + 1.0) / 2.0
        resize = (lambda a: cv2.resize(a, (w, h), interpolation=cv2.INTER_CUBIC)) if translator.size != h else \
            (lambda a: a)
        return resize(out - before), resize(out)

    def transfer(self, face: Image.Image, shape: Image.Image, color: Image.Image) -> Image.Image:
        face_labels = _labels(face, "face")
        with stages("classify"):
            face_rgb8 = np.asarray(face.convert("RGB"))
            face_dom = classify(face_rgb8, face_labels)
            shape_dom = None if _same_image(shape, face) else classify(np.asarray(shape.convert("RGB")),
                                                                       _labels(shape, "shape"))
            color_dom = None if _same_image(color, face) else classify(np.asarray(color.convert("RGB")),
                                                                       _labels(color, "color"))
        record = {"face": face_dom.to_json(), "shape": shape_dom.to_json() if shape_dom else "face",
                  "color": color_dom.to_json() if color_dom else "face"}
        try:
            steps = plan_translations(face_dom, shape_dom, color_dom, self.bundle_)
        except DomainError as exc:
            unit.note(cyclegan={**record, "translations": None, "error": str(exc)})
            raise
        unit.note(cyclegan={**record, "translations": [t.label for t in steps]})
        current = face_rgb8.astype(np.float32) / 255.0
        if not steps:
            return face.convert("RGB").copy()
        with stages("translate"):
            for translator in steps:
                change, raw = self.translate(translator, current)
                current = current + change if self.params.composite else raw
        current = np.clip(current, 0.0, 1.0)
        if self.params.composite:
            with stages("composite"):
                px = face.width / REFERENCE_SIDE
                masks = [face_labels == HAIR]
                if any(t.axis == "style" for t in steps):
                    masks.append(_labels(shape, "shape") == HAIR)
                alpha = paste_mask(masks, self.params.mask_grow_px * px, self.params.feather_px * px)[..., None]
                base = face_rgb8.astype(np.float32) / 255.0
                current = alpha * current + (1.0 - alpha) * base
        return Image.fromarray(np.clip(np.round(current * 255.0), 0, 255).astype(np.uint8), "RGB")
