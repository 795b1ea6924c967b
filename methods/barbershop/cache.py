"""Barbershop's stage cache: :mod:`methods.cache` under ``cache_dir()/barbershop``.

Kinds ``embeddings/w_plus``, ``embeddings/fs``, ``alignments`` and ``pca``; keys bind :data:`CACHE_VERSION`.
"""

from __future__ import annotations

from typing import Any

from methods.cache import NpzStore, image_key
from methods.cache import cache_key as versioned_key

__all__ = ["CACHE_VERSION", "NpzStore", "cache_key", "image_key"]

CACHE_VERSION = 1  # bump when a stage's computation changes


def cache_key(*parts: Any) -> str:
    """:func:`methods.cache.cache_key` with Barbershop's :data:`CACHE_VERSION`."""
    return versioned_key(CACHE_VERSION, *parts)
