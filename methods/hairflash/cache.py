"""HairFlash's stage cache: :class:`methods.cache.StageCache` under ``cache_dir()/hairflash`` with keys carrying
:data:`CACHE_VERSION` (:func:`cache_key`): content keys of the images, the parameters that matter and the identity
of the weights."""

from __future__ import annotations

from typing import Any

from methods.cache import StageCache, image_key
from methods.cache import cache_key as versioned_key

__all__ = ["CACHE_VERSION", "StageCache", "cache_key", "image_key"]

CACHE_VERSION = 1  # bump when a cached stage's computation changes


def cache_key(*parts: Any) -> str:
    """:func:`methods.cache.cache_key` with HairFlash's :data:`CACHE_VERSION`."""
    return versioned_key(CACHE_VERSION, *parts)
