"""Reference methods that bracket every real method: ``identity`` (lower bound) and ``oracle`` (upper bound).

``identity`` returns the face image unchanged: any method worth running should beat it on hair shape and colour
while matching it on identity and background. ``oracle`` exists only for synthetic portraits: it renders the
ground-truth answer (face's portrait with shape's hairstyle and color's hair colour) from the generating specs,
so every metric's best reachable value on the synthetic protocol can be read off its row.

Text references: ``identity`` takes any role as text (it ignores the references), so text runs keep their lower
bound; ``oracle`` takes a colour prompt that names a synthetic palette colour (``"purple hair"``,
:func:`harness.synthetic.named_hair_color`) and renders the run's ground truth for it (the face's hair texture in
that colour); a prompt naming no palette colour fails the item with the reason.
"""

from __future__ import annotations

from typing import ClassVar

from PIL import Image

import harness
from harness import annotations
from harness.method import Method, Reference, TextPrompt


class Identity(Method):
    """Returns the face image as is (the lower bound: no transfer at all)."""

    name: ClassVar[str] = "identity"
    description: ClassVar[str] = "lower bound: returns the face image unchanged"
    accepts_text: ClassVar[frozenset[str]] = frozenset({"shape", "color"})

    def transfer(self, face: Image.Image, shape: Reference, color: Reference) -> Image.Image:
        return face.convert("RGB").copy()


class MissingSpecError(ValueError):
    """An input image of the oracle carries no synthetic spec."""


def synthetic_spec(image: Image.Image, role: str) -> dict:
    """The synthetic generator's spec attached to ``image`` (a clear error when there is none)."""
    spec = annotations.of(image).synth
    if spec is None:
        raise MissingSpecError(
            f"oracle: the {role} image has no synthetic spec (it works on synthetic portraits only: "
            f"annotations.of(image).synth or the PNG text chunk {annotations.SYNTH_KEY!r})")
    return spec


class Oracle(Method):
    """Renders the synthetic ground truth ``render(combine(face, shape, color), size)`` (the upper bound).

    Needs the synthetic specs of all three inputs (``requires = {"synthetic"}``); raises
    :class:`MissingSpecError` otherwise. The output has the face image's size.
    """

    name: ClassVar[str] = "oracle"
    description: ClassVar[str] = "upper bound on synthetic data: renders the ground-truth result from the specs"
    requires: ClassVar[frozenset[str]] = frozenset({"synthetic"})
    accepts_text: ClassVar[frozenset[str]] = frozenset({"color"})

    def transfer(self, face: Image.Image, shape: Image.Image, color: Reference) -> Image.Image:
        import dataclasses

        from harness import synthetic  # imported on use: listing methods need not load the generator

        face_spec, shape_spec = (synthetic.PortraitSpec.from_json(synthetic_spec(img, role))
                                 for img, role in ((face, "face"), (shape, "shape")))
        if isinstance(color, TextPrompt):
            named = synthetic.named_hair_color(color.text)
            if named is None:
                raise ValueError(f"oracle: the colour prompt {color.text!r} names no synthetic palette colour "
                                 f"({', '.join(sorted(synthetic.NATURAL_HAIR | synthetic.DYED_HAIR))})")
            color_spec = dataclasses.replace(face_spec, hair_color=named)
        else:
            color_spec = synthetic.PortraitSpec.from_json(synthetic_spec(color, "color"))
        specs = (face_spec, shape_spec, color_spec)
        if face.width != face.height:
            raise ValueError(f"oracle: synthetic portraits are square, got face size {face.size}")
        image, _labels = synthetic.render(synthetic.combine(*specs), face.width)
        return image.convert("RGB")


@harness.hookimpl
def register_methods(register):
    register(Identity)
    register(Oracle)
