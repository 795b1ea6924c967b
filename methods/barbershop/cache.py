"""On-disk cache of Barbershop's per-image (and per-pair) optimisation results.

Entries are ``.npz`` files under ``ROOT/<kind>/<key[:2]>/<key>.npz`` (``ROOT`` = ``cache_dir()/barbershop``;
kinds ``embeddings/w_plus``, ``embeddings/fs``, ``alignments``), written to a temporary name and renamed, so
several runs and shards can share the cache and a crash never leaves a partial entry. Keys are sha256 digests of
everything the result depends on (:func:`cache_key`): the image pixels at the working size, the parameters that
affect the stage, the identity of the weights (file sha256, or the fill rule) and :data:`CACHE_VERSION`.
Results computed on another device differ by float noise only.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness.store import atomic_write_bytes

CACHE_VERSION = 1  # bump when a stage's computation changes


def cache_key(*parts: Any) -> str:
    """sha256 of the JSON of ``parts`` (with :data:`CACHE_VERSION`)."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def image_key(pixels: np.ndarray) -> str:
    """Content key of an RGB uint8 ``[H,W,3]`` image."""
    digest = hashlib.sha256(f"{pixels.shape}|{pixels.dtype}|".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


class ResultCache:
    """``load(kind, key)`` / ``save(kind, key, arrays)``; ``root=None`` disables the cache."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root is not None else None

    def path(self, kind: str, key: str) -> Path:
        if self.root is None:
            raise ValueError("the cache is disabled")
        return self.root / kind / key[:2] / f"{key}.npz"

    def load(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        if self.root is None:
            return None
        path = self.path(kind, key)
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # absent or unreadable: recompute
            return None

    def save(self, kind: str, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        if self.root is None:
            return
        buffer = io.BytesIO()
        np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
        atomic_write_bytes(self.path(kind, key), buffer.getvalue())
