"""Content-keyed on-disk store of per-image (and per-pair) results, shared by the methods' stage caches.

Entries are ``.npz`` files under ``ROOT/<kind>/<key[:2]>/<key>.npz``, written to a temporary name and renamed
(:func:`harness.store.atomic_write_bytes`), so several runs, shards and ``--resume`` share one cache and a crash
never leaves a partial entry. Keys are sha256 digests of everything a result depends on (:func:`cache_key`):
content keys of the images (:func:`image_key`), the parameters that matter, the identity of the weights (file
sha256 or the fill rule) and the method's cache version. Results computed on another device differ by float
noise only. Nothing is written during the runner's untimed warm-up calls (:func:`harness.unit.in_warmup`), so
that the first timed call computes what it would have computed without them.
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
from harness.unit import in_warmup


def cache_key(version: int, *parts: Any) -> str:
    """sha256 of the JSON of ``[version, *parts]``; bump ``version`` when a stage's computation changes."""
    text = json.dumps([version, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def image_key(pixels: np.ndarray) -> str:
    """Content key of an image array (shape, dtype and bytes)."""
    digest = hashlib.sha256(f"{pixels.shape}|{pixels.dtype}|".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


class NpzStore:
    """``load(kind, key)`` / ``save(kind, key, arrays)`` of named numpy arrays; ``root=None`` stores nothing."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root is not None else None

    def path(self, kind: str, key: str) -> Path:
        if self.root is None:
            raise ValueError("the cache has no directory")
        return self.root / kind / key[:2] / f"{key}.npz"

    def load(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        """The stored arrays, or ``None`` when absent or unreadable (the caller recomputes)."""
        if self.root is None:
            return None
        try:
            with np.load(self.path(kind, key), allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None

    def save(self, kind: str, key: str, arrays: Mapping[str, Any]) -> None:
        if self.root is None or in_warmup():
            return
        buffer = io.BytesIO()
        np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
        atomic_write_bytes(self.path(kind, key), buffer.getvalue())
