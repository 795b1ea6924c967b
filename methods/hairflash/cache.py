"""Stage results by content key: an in-memory LRU in front of an on-disk store.

Entries are dicts of tensors. In memory they stay on the device (an LRU of ``capacity`` entries per kind); on disk
they are ``.npz`` files under ``ROOT/<kind>/<key[:2]>/<key>.npz`` (``ROOT`` = ``cache_dir()/hairflash``), written
to a temporary name and renamed, so runs, shards and ``--resume`` share them and a crash never leaves a partial
entry. Keys are sha256 digests of everything a result depends on (:func:`cache_key`): content keys of the
images, the parameters that matter, the identity of the weights and :data:`CACHE_VERSION`.

The on-disk layout and key scheme are :mod:`methods.cache`'s, shared with Barbershop.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.unit import in_warmup
from methods.cache import NpzStore, image_key
from methods.cache import cache_key as versioned_key

__all__ = ["CACHE_VERSION", "StageCache", "cache_key", "image_key"]

CACHE_VERSION = 1  # bump when a cached stage's computation changes


def cache_key(*parts: Any) -> str:
    """:func:`methods.cache.cache_key` with HairFlash's :data:`CACHE_VERSION`."""
    return versioned_key(CACHE_VERSION, *parts)


class StageCache:
    """``get(kind, key, device)`` / ``put(kind, key, tensors)``; ``root=None`` keeps memory only,
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

    def clear_memory(self) -> None:
        self.memory.clear()

    def _remember(self, kind: str, key: str, tensors: dict[str, Tensor]) -> None:
        lru = self.memory.setdefault(kind, OrderedDict())
        lru[key] = tensors
        lru.move_to_end(key)
        while len(lru) > self.capacity:
            lru.popitem(last=False)
