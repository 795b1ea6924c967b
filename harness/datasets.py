"""Benchmark images: building the image set of a protocol, drawing triplets, and reading images safely.

Every input image is normalised once (:func:`load_image`) into ``RUN/inputs/<id>.png``: EXIF orientation applied,
any mode (grayscale, palette, RGBA, 16-bit, CMYK) converted to 8-bit RGB, non-square images centre-cropped, then
resized to the protocol size. What cannot be normalised (not an image, truncated, tiny, decompression-bomb sized)
raises :class:`InputError` with a message that says why; the runner records it per item and goes on.
"""

from __future__ import annotations

import re
import shlex
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from harness.store import Triplet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # 8000 x 8000; larger files are refused as decompression bombs
MIN_SIDE = 32


class InputError(ValueError):
    """An input image that cannot be used, with the reason."""


@dataclass(frozen=True)
class ImageEntry:
    """One image of the benchmark set."""

    id: str
    source: Path
    labels: Path | None = None  # label map (CelebAMask-HQ order), if the dataset provides one
    synth: dict | None = None  # synthetic spec, for ground truth


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode in ("I", "F") and arr.max() > 65535:
            top = float(arr.max())
        arr8 = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        notes.append(f"converted {mode} to 8-bit RGB")
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"composited {mode} over white")
        return Image.alpha_composite(background, rgba).convert("RGB")
    notes.append(f"converted {mode} to RGB")
    return img.convert("RGB")


def load_image(path: str | Path, size: int | None = None) -> tuple[Image.Image, list[str]]:
    """Read ``path`` as an RGB image (square, ``size`` px if given) and list what was normalised."""
    path = Path(path)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise InputError(f"{path.name}: {w}x{h} = {w * h:,} pixels exceeds the {MAX_PIXELS:,}-pixel limit "
                                 "(decompression-bomb guard)")
            img.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{path.name}: refused by the decompression-bomb guard ({exc})") from None
    except UnidentifiedImageError:
        raise InputError(f"{path.name}: not an image file (or an unsupported format)") from None
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path.name}: unreadable image ({exc})") from None
    transposed = ImageOps.exif_transpose(img)
    if transposed is not img and transposed.size != img.size:
        notes.append("applied EXIF orientation")
    img = _to_rgb(transposed, notes)
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise InputError(f"{path.name}: {w}x{h} is too small (the shorter side must be at least {MIN_SIDE} px)")
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        notes.append(f"centre-cropped {w}x{h} to {side}x{side}")
    if size is not None and img.size != (size, size):
        notes.append(f"resized {img.size[0]} to {size}")
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img, notes


_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def image_ids(paths: Sequence[Path]) -> list[str]:
    """File-name-safe, unique ids from file stems (``a.png`` and ``a.jpg`` become ``a`` and ``a-2``)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        base = _SAFE_ID.sub("_", p.stem) or "image"
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def draw_triplets(ids: Sequence[str], n: int, seed: int,
                  accept: Callable[[str, str, str], bool] | None = None) -> list[Triplet]:
    """``n`` triplets of three distinct images, drawn deterministically from ``seed``.

    ``accept(face, shape, color)`` may reject draws (rejection sampling; an error if too few are acceptable).
    """
    if len(ids) < 3:
        raise InputError(f"need at least 3 images to draw triplets, found {len(ids)}")
    rng = np.random.default_rng(seed)
    out: list[Triplet] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * max(n, 1):
            raise InputError(f"only {len(out)} of {n} triplets pass the protocol's triplet rule in "
                             f"{tries - 1} draws: use more images")
        a, b, c = (ids[i] for i in rng.choice(len(ids), size=3, replace=False))
        if accept is None or accept(a, b, c):
            out.append(Triplet(f"t{len(out):04d}", a, b, c))
    return out


def read_triplet_file(path: Path, root: Path) -> tuple[list[ImageEntry], list[Triplet]]:
    """A "face shape color" per-line file (names relative to ``root``; ``#`` comments and blank lines ignored).

    Fields are split as a shell does (quote names with spaces). The shape and color fields may be text
    references, ``text:<prompt>`` (e.g. ``face.png "text:afro hairstyle" color.png``; see :mod:`harness.text`)."""
    from harness.text import PromptError, check_prompt, prompt_of, text_id

    entries: dict[Path, ImageEntry] = {}
    rows: list[tuple[Path | str, ...]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        try:
            parts = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: {exc}") from None
        if not parts:
            continue
        if len(parts) != 3:
            raise InputError(f"{path}:{lineno}: expected 'face shape color', got {line.strip()!r}")
        if prompt_of(parts[0]) is not None:
            raise InputError(f"{path}:{lineno}: the face must be an image, not a text reference")
        row: list[Path | str] = [root / parts[0]]
        for role, part in zip(("shape", "color"), parts[1:], strict=True):
            prompt = prompt_of(part)
            try:
                row.append(root / part if prompt is None else text_id(check_prompt(prompt, role)))
            except PromptError as exc:
                raise InputError(f"{path}:{lineno}: {exc}") from None
        rows.append(tuple(row))
    unique = list(dict.fromkeys(p for row in rows for p in row if isinstance(p, Path)))
    for p, image_id in zip(unique, image_ids(unique), strict=True):
        entries[p] = ImageEntry(image_id, p)
    triplets = [Triplet(f"t{i:04d}", *(entries[p].id if isinstance(p, Path) else p for p in row))
                for i, row in enumerate(rows)]
    return list(entries.values()), triplets
