"""Identity preservation: dlib face-descriptor similarity between a result and its face image.

dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, 128-d, trained so that the same
person is within Euclidean distance 0.6) on the largest face found by dlib's HOG frontal detector, aligned with
the 5-point ``shape_predictor_5_face_landmarks.dat`` (both from the ``face_recognition_models`` package, located
without importing it). **Similarity = 1 - Euclidean distance** of the two descriptors (1 = identical; 0.4 is dlib's
same-person threshold). Pairs where either image has no detected face are left out; the metric's status says how
many pairs had faces.

The detector finds faces down to about 80 px; images are upsampled ``detection_upsample(size)`` times (each
doubles the side) so that an FFHQ-aligned face at the evaluation size is comfortably above that.
Descriptors of the input images are cached by file content under ``cache_dir()/identity/``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.store import atomic_write_bytes
from harness.weights import cache_dir, sha256_file

DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_5 = "shape_predictor_5_face_landmarks.dat"
MIN_DETECTION_SIDE = 400  # upsample until the image side is at least this
MAX_UPSAMPLE = 3
CACHE_VERSION = 1
ENABLE_HINT = "pip install dlib-bin face_recognition_models"


class IdentityUnavailable(RuntimeError):
    """dlib or its model files are missing."""


def model_file(name: str) -> Path:
    """A model file of the ``face_recognition_models`` package (:func:`harness.align.dlib_model_path`)."""
    from harness.align import dlib_model_path

    try:
        return dlib_model_path(name)
    except FileNotFoundError as exc:
        raise IdentityUnavailable(f"{exc} ({ENABLE_HINT})") from None


def detection_upsample(size: int) -> int:
    """Detector upsampling for images of side ``size``: 0 at >= 400 px, 1 at 256, 2 at 128."""
    n = 0
    while size * 2**n < MIN_DETECTION_SIDE and n < MAX_UPSAMPLE:
        n += 1
    return n


@dataclass(frozen=True)
class _Models:
    detector: Any
    landmarks: Any
    encoder: Any


@functools.cache
def _models() -> _Models:
    try:
        import dlib
    except ImportError as exc:
        raise IdentityUnavailable(f"needs dlib ({ENABLE_HINT}): {exc}") from None
    return _Models(dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model_file(LANDMARKS_5))),
                   dlib.face_recognition_model_v1(str(model_file(DESCRIPTOR_MODEL))))


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """1 - Euclidean distance of two descriptors."""
    return float(1.0 - np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


class FaceDescriber:
    """128-d descriptors of the largest face in uint8 RGB images of one evaluation size."""

    def __init__(self, size: int, use_cache: bool = True):
        self.models = _models()
        self.size = size
        self.upsample = detection_upsample(size)
        self.use_cache = use_cache
        self._by_file: dict[str, np.ndarray | None] = {}

    def describe(self, image: np.ndarray) -> np.ndarray | None:
        """The descriptor of the largest detected face, or None when no face is found."""
        rgb = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[:, :, :3])
        faces = list(self.models.detector(rgb, self.upsample))
        if not faces:
            return None
        largest = max(faces, key=lambda r: r.width() * r.height())
        shape = self.models.landmarks(rgb, largest)
        return np.asarray(self.models.encoder.compute_face_descriptor(rgb, shape), dtype=np.float64)

    def describe_file(self, path: Path, image: np.ndarray) -> np.ndarray | None:
        """Descriptor of an input file (``image``: its pixels at the evaluation size), cached by content."""
        key = str(path)
        if key in self._by_file:
            return self._by_file[key]
        cached = None
        if self.use_cache:
            digest = sha256_file(path)
            cached = cache_dir() / "identity" / f"v{CACHE_VERSION}-{digest}-s{self.size}-u{self.upsample}.npy"
            if cached.is_file():
                try:
                    value = np.load(cached)
                    result = value if value.size else None
                    self._by_file[key] = result
                    return result
                except (OSError, ValueError):
                    pass
        result = self.describe(image)
        if cached is not None:
            import io

            buf = io.BytesIO()
            np.save(buf, result if result is not None else np.zeros(0))
            atomic_write_bytes(cached, buf.getvalue())
        self._by_file[key] = result
        return result


__all__ = ["DESCRIPTOR_MODEL", "LANDMARKS_5", "FaceDescriber", "IdentityUnavailable", "detection_upsample",
           "model_file", "similarity"]
