"""Weight-free image metrics: PSNR, SSIM, CIEDE2000 of mean hair colours, masked PSNR.

All functions take RGB arrays ``[H, W, 3]`` (uint8 in 0..255, or float with an explicit ``data_range``) that
have already been brought to the protocol's evaluation size (:func:`load_rgb` does that).

Definitions (written down so numbers can be compared across runs and papers):

- **PSNR**: ``10 log10(R^2 / MSE)`` with the MSE over all pixels and the three channels, ``R = 255`` for uint8.
  Identical images have MSE 0; PSNR is then capped at :data:`PSNR_CAP_DB` (100 dB) so that means stay finite.
  (For a 256x256 uint8 image, a single pixel off by one level already gives about 101 dB.)
- **SSIM**: Wang et al. 2004 with a Gaussian window (sigma 1.5, 11x11 taps), K1 = 0.01, K2 = 0.03, population
  (not sample) covariances, computed per RGB channel and averaged over channels and over the valid (uncropped)
  window positions; scikit-image's ``structural_similarity`` does the work.
- **Masked PSNR**: the MSE only over the pixels where a boolean mask is true (all three channels).
- **Hair colour dE00**: CIEDE2000 (Sharma, Wu, Dalal 2005; kL = kC = kH = 1) between the mean CIELAB colour
  (sRGB, D65) of two images inside one mask. Means are taken in Lab, not in RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PSNR_CAP_DB = 100.0
SSIM_SIGMA = 1.5
# Masks (hair) are dilated by this fraction of the image side before "outside hair" comparisons: 5 px at 256.
DILATE_FRACTION = 0.02
# A ground-truth hair region smaller than this fraction of the image counts as bald: hair colour undefined.
MIN_HAIR_FRACTION = 0.001


# ----------------------------------------------------------------------------------------------- images


def load_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """An image file as uint8 RGB ``[size, size, 3]`` (PIL bicubic resize when its size differs)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8).copy()


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB array to ``[size, size, 3]`` (PIL bicubic; unchanged when already that size)."""
    if image.shape[:2] == (size, size):
        return image
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def load_labels(path: str | Path, size: int | None = None) -> np.ndarray:
    """A label map PNG as uint8 ``[size, size]`` (nearest-neighbour resize when its size differs)."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            image = image.convert("L")
        labels = np.asarray(image, dtype=np.uint8)
    return resize_labels(labels, size) if size is not None else labels.copy()


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape[:2] == (size, size):
        return labels.astype(np.uint8, copy=False)
    pil = Image.fromarray(labels.astype(np.uint8))
    return np.asarray(pil.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def _default_range(a: np.ndarray) -> float:
    return 255.0 if np.asarray(a).dtype == np.uint8 else 1.0


# ----------------------------------------------------------------------------------------------- metrics


def psnr_from_mse(mse: float, data_range: float = 255.0) -> float:
    if not np.isfinite(mse):
        return float("nan")
    if mse <= 0:
        return PSNR_CAP_DB
    return float(min(PSNR_CAP_DB, 10.0 * np.log10(data_range**2 / mse)))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """PSNR in dB over all pixels and channels (capped at :data:`PSNR_CAP_DB`)."""
    data_range = data_range if data_range is not None else _default_range(a)
    x, y = _pair(a, b)
    return psnr_from_mse(float(np.mean((x - y) ** 2)), data_range)


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray, data_range: float | None = None) -> float:
    """PSNR over the pixels where ``mask`` ``[H, W]`` is true; NaN when the mask is empty."""
    data_range = data_range if data_range is not None else _default_range(a)
    x, y = _pair(a, b)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {x.shape[:2]}")
    if not mask.any():
        return float("nan")
    diff = (x - y)[mask]
    return psnr_from_mse(float(np.mean(diff**2)), data_range)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """Gaussian-window SSIM (Wang et al. 2004), mean over RGB channels."""
    from skimage.metrics import structural_similarity

    data_range = data_range if data_range is not None else _default_range(a)
    x, y = _pair(a, b)
    return float(structural_similarity(x, y, data_range=data_range, channel_axis=-1 if x.ndim == 3 else None,
                                       gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False))


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference of Lab colours ``[..., 3]`` (kL = kC = kH = 1)."""
    from skimage.color import deltaE_ciede2000

    return np.asarray(deltaE_ciede2000(np.asarray(lab1, np.float64), np.asarray(lab2, np.float64)))


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """sRGB (uint8, or float in 0..1) to CIELAB (D65) ``[H, W, 3]``."""
    from skimage.color import rgb2lab

    image = np.asarray(image)
    rgb = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    return rgb2lab(rgb)


def mean_lab(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean Lab colour of ``image`` inside ``mask`` (NaN when the mask is empty)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(3, np.nan)
    return rgb_to_lab(image)[mask].mean(axis=0)


def hair_color_de(result: np.ndarray, truth: np.ndarray, hair_mask: np.ndarray,
                  min_fraction: float = MIN_HAIR_FRACTION) -> float:
    """CIEDE2000 between the mean Lab colours of ``result`` and ``truth`` inside the ground-truth hair mask.

    NaN (undefined) when the mask covers less than ``min_fraction`` of the image (bald ground truth).
    """
    mask = np.asarray(hair_mask, dtype=bool)
    if mask.sum() < max(1.0, min_fraction * mask.size):
        return float("nan")
    return float(ciede2000(mean_lab(result, mask), mean_lab(truth, mask)))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a disk of ``radius`` pixels."""
    import cv2

    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def dilation_radius(size: int, fraction: float = DILATE_FRACTION) -> int:
    return max(1, int(round(fraction * size)))


def outside_hair_mask(*hair_masks: np.ndarray, size: int | None = None) -> np.ndarray:
    """Pixels outside the dilated union of the given hair masks (radius :func:`dilation_radius`)."""
    union = np.zeros_like(np.asarray(hair_masks[0], dtype=bool))
    for m in hair_masks:
        union |= np.asarray(m, dtype=bool)
    return ~dilate(union, dilation_radius(size or union.shape[0]))


__all__ = [
    "DILATE_FRACTION", "MIN_HAIR_FRACTION", "PSNR_CAP_DB", "SSIM_SIGMA", "ciede2000", "dilate", "dilation_radius",
    "hair_color_de", "load_labels", "load_rgb", "masked_psnr", "mean_lab", "outside_hair_mask", "psnr",
    "psnr_from_mse", "resize_labels", "resize_rgb", "rgb_to_lab", "ssim",
]
