"""Content-keyed stores of per-image (and per-pair) results shared by the methods: :class:`NpzStore` on disk,
:class:`StageCache` (an in-memory LRU of tensors in front of it).

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
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

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


class StageCache:
    """Entries are dicts of tensors: an in-memory LRU of ``capacity`` entries per kind (on the device) in front of an
    :class:`NpzStore`. ``get(kind, key, device)`` / ``put(kind, key, tensors)``; ``root=None`` keeps memory only,
    ``enabled=False`` turns both off. ``stats`` counts ``<kind>:memory``, ``<kind>:disk`` hits and
    ``<kind>:miss``."""

    def __init__(self, root: str | Path | None, capacity: int = 64, enabled: bool = True):
        self.disk = NpzStore(root)
        self.root = self.disk.root
        self.capacity = capacity
        self.enabled = enabled
        self.memory: dict[str, OrderedDict[str, dict[str, Tensor]]] = {}
        self.stats: Counter = Counter()

    def path(self, kind: str, key: str) -> Path:
        return self.disk.path(kind, key)

    def get(self, kind: str, key: str, device: torch.device | str = "cpu") -> dict[str, Tensor] | None:
        if not self.enabled:
            return None
        lru = self.memory.setdefault(kind, OrderedDict())
        if key in lru:
            lru.move_to_end(key)
            self.stats[f"{kind}:memory"] += 1
            return dict(lru[key])
        arrays = self.disk.load(kind, key)
        if arrays is None:
            self.stats[f"{kind}:miss"] += 1
            return None
        self.stats[f"{kind}:disk"] += 1
        tensors = {name: torch.from_numpy(value).to(device) for name, value in arrays.items()}
        self._remember(kind, key, tensors)
        return dict(tensors)

    def put(self, kind: str, key: str, tensors: Mapping[str, Tensor]) -> None:
        if not self.enabled or in_warmup():  # a warm-up call must not make the timed calls cheaper
            return
        tensors = {name: t.detach() for name, t in tensors.items()}
        self._remember(kind, key, tensors)
        self.disk.save(kind, key, {name: t.cpu().numpy() for name, t in tensors.items()})

    def get_or_compute(self, kind: str, key: str | None, compute: Callable[[], Mapping[str, Tensor]],
                       device: torch.device | str = "cpu") -> tuple[dict[str, Tensor], bool]:
        """``(entry, computed)``: the entry under ``key``, else ``compute()`` stored under it (``key=None``: computed
        and not stored)."""
        hit = None if key is None else self.get(kind, key, device)
        if hit is not None:
            return hit, False
        entry = dict(compute())
        if key is not None:
            self.put(kind, key, entry)
        return entry, True

    def clear_memory(self) -> None:
        self.memory.clear()

    def _remember(self, kind: str, key: str, tensors: dict[str, Tensor]) -> None:
        lru = self.memory.setdefault(kind, OrderedDict())
        lru[key] = tensors
        lru.move_to_end(key)
        while len(lru) > self.capacity:
            lru.popitem(last=False)
