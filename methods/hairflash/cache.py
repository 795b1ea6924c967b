"""Stage results by content key: an in-memory LRU in front of an on-disk store.

Entries are dicts of tensors. In memory they stay on the device (an LRU of ``capacity`` entries per kind); on disk
they are ``.npz`` files under ``ROOT/<kind>/<key[:2]>/<key>.npz`` (``ROOT`` = ``cache_dir()/hairflash``), written
to a temporary name and renamed, so runs, shards and ``--resume`` share them and a crash never leaves a partial
entry. Keys are sha256 digests of everything a result depends on (:func:`cache_key`): content keys of the
images, the parameters that matter, the identity of the weights and :data:`CACHE_VERSION`.

(Barbershop's ``methods/barbershop/cache.py`` has the same on-disk layout and key scheme; the two could share a
``methods/cache.py``.)
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness.store import atomic_write_bytes

CACHE_VERSION = 1  # bump when a cached stage's computation changes


def cache_key(*parts: Any) -> str:
    """sha256 of the JSON of ``parts`` (with :data:`CACHE_VERSION`)."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def image_key(pixels: np.ndarray) -> str:
    """Content key of an image array (shape, dtype and bytes)."""
    digest = hashlib.sha256(f"{pixels.shape}|{pixels.dtype}|".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


class StageCache:
    """``get(kind, key, device)`` / ``put(kind, key, tensors)``; ``root=None`` keeps memory only,
    ``enabled=False`` turns both off. ``stats`` counts ``<kind>:memory``, ``<kind>:disk`` hits and
    ``<kind>:miss``."""

    def __init__(self, root: str | Path | None, capacity: int = 64, enabled: bool = True):
        self.root = Path(root) if root is not None else None
        self.capacity = capacity
        self.enabled = enabled
        self.memory: dict[str, OrderedDict[str, dict[str, Tensor]]] = {}
        self.stats: Counter = Counter()

    def path(self, kind: str, key: str) -> Path:
        if self.root is None:
            raise ValueError("the cache has no directory")
        return self.root / kind / key[:2] / f"{key}.npz"

    def get(self, kind: str, key: str, device: torch.device | str = "cpu") -> dict[str, Tensor] | None:
        if not self.enabled:
            return None
        lru = self.memory.setdefault(kind, OrderedDict())
        if key in lru:
            lru.move_to_end(key)
            self.stats[f"{kind}:memory"] += 1
            return dict(lru[key])
        arrays = self._load(kind, key)
        if arrays is None:
            self.stats[f"{kind}:miss"] += 1
            return None
        self.stats[f"{kind}:disk"] += 1
        tensors = {name: torch.from_numpy(value).to(device) for name, value in arrays.items()}
        self._remember(kind, key, tensors)
        return dict(tensors)

    def put(self, kind: str, key: str, tensors: Mapping[str, Tensor]) -> None:
        if not self.enabled:
            return
        tensors = {name: t.detach() for name, t in tensors.items()}
        self._remember(kind, key, tensors)
        if self.root is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **{name: t.cpu().numpy() for name, t in tensors.items()})
            atomic_write_bytes(self.path(kind, key), buffer.getvalue())

    def clear_memory(self) -> None:
        self.memory.clear()

    def _remember(self, kind: str, key: str, tensors: dict[str, Tensor]) -> None:
        lru = self.memory.setdefault(kind, OrderedDict())
        lru[key] = tensors
        lru.move_to_end(key)
        while len(lru) > self.capacity:
            lru.popitem(last=False)

    def _load(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        if self.root is None:
            return None
        try:
            with np.load(self.path(kind, key), allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # absent or unreadable: recompute
            return None
