"""Writing report files atomically (via :mod:`harness.store`) and readable like ordinary files.

``harness.store``'s atomic writers go through ``mkstemp``, which creates files with mode 0600; report files are
meant to be served or shared, so they get the usual ``0666 & ~umask``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from PIL import Image

from harness.store import atomic_save_image, atomic_write_bytes, atomic_write_text


@functools.cache
def _file_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)
    os.chmod(path, _file_mode())


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    os.chmod(path, _file_mode())


def save_image(path: Path, image: Image.Image, **save_args: Any) -> None:
    atomic_save_image(path, image, **save_args)
    os.chmod(path, _file_mode())
