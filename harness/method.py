"""The method interface every hair-transfer plugin implements.

Size contract: ``transfer`` receives three RGB ``PIL.Image`` objects of the protocol's size (all three square
and equal in size) and must return an RGB image of exactly the face image's size. A method that works at a
fixed resolution (HairFast and Barbershop work at 1024) resizes internally. Per-image side information
(label maps, landmarks, synthetic ground-truth specs) is reachable through :func:`harness.annotations.of`, and
the unit being run (output paths for intermediates, a way to add facts to its record) through
:func:`harness.unit.current` / :func:`harness.unit.note`.

Text references: a task may give the shape and/or colour role as text (``--shape-text "afro hairstyle"``). Such a
role reaches ``transfer`` as a :class:`TextPrompt` instead of an image, and only for the roles a method lists in
``accepts_text``; the runner skips the unit for any other method, with the reason.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image


@dataclass(frozen=True)
class Checkpoint:
    """A weight file the project can use, with where it officially comes from."""

    key: str  # registry key, e.g. "stylegan2_ffhq"
    filename: str  # file name looked up in the weight directories
    source: str  # official URL or repository path
    purpose: str  # what it is for
    size: int | None = None  # bytes, when known
    sha256: str | None = None
    used_by: tuple[str, ...] = ()
    # Where the official repository keeps it, relative to its weights folder (e.g. "Blending/checkpoint.pth"
    # inside HairFast's pretrained_models/), so --weights-dir can point at an unpacked official folder.
    official_path: str = ""
    # A fixed location tried after the weight directories: a file shipped inside a package (the CycleGAN
    # translators) or named by a method parameter. Absolute.
    local_path: str = ""
    # Where `harness weights download` fetches it from, tried in order: "https://..." (a direct link),
    # "gdrive:<file id>" (Google Drive), "hf:<owner>/<repo>/<path in repo>" (a Hugging Face Hub model repository).
    # Empty: no automatic source (form-gated, ours to train, or no published link); ``source`` says why.
    download: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextPrompt:
    """A shape or colour role given as text instead of an image, e.g. ``TextPrompt("purple hair")``."""

    text: str

    def __post_init__(self):
        if not self.text.strip():
            raise ValueError("a text reference must not be empty")

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class NoParams:
    """Parameters of a method that has none."""


Reference = Image.Image | TextPrompt  # what the shape and colour roles may be
Triplet = tuple[Image.Image, Reference, Reference]
TEXT_ROLES = ("shape", "color")


class Method:
    """Base class of a hair-transfer method. Subclass, set ``name`` and implement :meth:`transfer`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    variants: ClassVar[tuple[str, ...]] = ()
    default_variant: ClassVar[str | None] = None
    # What the method needs from the dataset: "synthetic" (ground-truth specs) or "labels" (label maps).
    requires: ClassVar[frozenset[str]] = frozenset()
    # Roles ("shape", "color") this method may be given as a TextPrompt; for a role not listed, text is refused.
    accepts_text: ClassVar[frozenset[str]] = frozenset()
    # Triplets handed to transfer_batch at once (1: the runner calls transfer).
    batch_size: ClassVar[int] = 1
    # Untimed warm-up calls before timing (None: the protocol's runner.warmup; 0 for methods whose call is too
    # expensive to repeat). Warm-up calls run with harness.unit.current().warmup set: do not fill caches then.
    warmup_calls: ClassVar[int | None] = None
    plugin: ClassVar[str] = ""  # set by the plugin manager

    def __init__(self, params: Any = None, variant: str | None = None):
        if variant is not None and variant not in self.variants:
            known = ", ".join(self.variants) or "none"
            raise ValueError(f"{self.name}: unknown variant {variant!r} (variants: {known})")
        self.variant = variant if variant is not None else self.default_variant
        self.params = params if params is not None else self.Params()

    @property
    def label(self) -> str:
        """``name`` or ``name:variant``."""
        return f"{self.name}:{self.variant}" if self.variant else self.name

    def checkpoints(self) -> Sequence[Checkpoint]:
        """Weight files this method (in its variant) needs."""
        return ()

    def setup(self, device, weights) -> None:
        """Load networks onto ``device`` (a ``torch.device``); ``weights`` is a ``harness.weights.WeightStore``."""

    def transfer(self, face: Image.Image, shape: Reference, color: Reference) -> Image.Image:
        """``shape`` / ``color`` are images, or :class:`TextPrompt` for the roles listed in ``accepts_text``."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release networks and caches after the run (default: drop every attribute but params and variant)."""
        for name in list(vars(self)):
            if name not in ("params", "variant"):
                delattr(self, name)

    def transfer_batch(self, triplets: Sequence[Triplet]) -> list[Image.Image]:
        """Batched form; the default calls :meth:`transfer` per triplet."""
        return [self.transfer(*t) for t in triplets]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"hairflash:final"`` -> ``("hairflash", "final")``."""
    name, _, variant = spec.strip().partition(":")
    return name, (variant or None)


def _coerce(value: Any, annotation: Any, field: str) -> Any:
    """Convert ``value`` (often a CLI string) to the field's annotated type."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation.split("|")[0].strip(), Any)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        annotation = args[0] if args else Any
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise ValueError(f"{field}: {value!r} is not one of {typing.get_args(annotation)}")
        return value
    if annotation is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{field}: {value!r} is not a boolean")
        return bool(value)
    if annotation in (int, float, str):
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise ValueError(f"{field}: {value!r} is not a valid {annotation.__name__}") from None
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def make_params(cls: type, overrides: Mapping[str, Any]) -> Any:
    """Build a frozen parameter dataclass from its defaults plus ``overrides`` (type-checked by name)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(fields) or 'none'}")
    return cls(**{k: _coerce(v, hints.get(k, Any), k) for k, v in overrides.items()})


def params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}
