"""Image and mask operations shared by the method plugins (HairFast ``hairflash``, Barbershop, HairCLIP).

All functions are pure, vectorised over leading (batch/channel) dimensions and device-agnostic.

* :func:`bicubic_downsample` / :func:`bicubic_taps`: the strided bicubic filter both official repositories
  copy from PULSE (``utils/bicubic.py`` ``BicubicDownSample``): ``4f`` taps of the Keys cubic (a = -0.5) sampled at
  ``(i - 2f + 0.5) / f`` and normalised; reflect padding of ``3f`` rows/columns split ``floor(3f/2)`` before and the
  rest after; rows first (stride ``f``), then columns. The official module is fixed to 3 channels; ours takes any
  channel count. One implementation lives in :mod:`methods.nets.bisenet` (the face parser's preprocessing) and
  is re-exported here.
* :func:`dilate_erode`: HairFast's ``DilateErosion.mask``.
* :func:`tensor_to_pil`: a [0, 1] image to PIL, rounded as torchvision's ``save_image``.
* :data:`BISENET19_TO_CELEBAMASKHQ`, :func:`bisenet_to_celeba`: HairFast's renaming of BiSeNet-19 ids to the
  CelebAMask-HQ order of CtrlHair (hair 17 -> 13).
* :func:`resize_labels`, :func:`hair_mask`: nearest resizing of label maps and hair masks (512 -> 256 keeps
  rows/columns 0, 2, 4, ...).
* :func:`resize_bicubic`: PyTorch's ``F.interpolate(mode="bicubic")`` as both methods use it for masks. It is
  *not* the Keys a = -0.5 filter above: cubic convolution with A = -0.75, ``align_corners=False`` (source
  coordinate ``(i + 0.5) * in / out - 0.5``), border indices clamped, no antialiasing. Down-sizing a 256 mask to
  32 therefore samples it (no averaging), and the result of a binary mask can leave [0, 1] (overshoot near
  edges). The official code never clamps it; neither do we.

At the end: small helpers the parity adapters of both plugins share to read fixture cases.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from harness.parity import Fixture
from methods.nets.bisenet import (
    BISENET19_TO_CELEBAMASKHQ,
    CELEBAMASKHQ_HAIR,
    bicubic_downsample,
    bicubic_taps,
    keys_cubic,
    remap_labels,
)

__all__ = [
    "BISENET19_TO_CELEBAMASKHQ", "CELEBAMASKHQ_HAIR", "HAIR_MASK_SIZE", "PLUS_KERNEL", "bicubic_downsample",
    "bicubic_taps", "bisenet_to_celeba", "dilate_erode", "hair_mask", "keys_cubic", "remap_labels",
    "resize_bicubic", "resize_labels",
]

# HairFast computes hair masks at 256x256 (``DilateErosion.hair_from_mask``, ``get_segmentation``).
HAIR_MASK_SIZE = 256
# The 3x3 plus-shaped structuring element of DilateErosion.
PLUS_KERNEL = ((0.0, 1.0, 0.0), (1.0, 1.0, 1.0), (0.0, 1.0, 0.0))


def tensor_to_pil(image: Tensor) -> Image.Image:
    """``[3,H,W]`` in [0, 1] -> RGB PIL (rounded, as torchvision's ``save_image``)."""
    x = image.detach().float().clamp(0, 1).mul(255).add(0.5).floor().byte()
    return Image.fromarray(x.permute(1, 2, 0).cpu().numpy(), "RGB")


def resized_pixels(image: Image.Image, size: int, resample: Image.Resampling) -> np.ndarray:
    """RGB pixels ``[size,size,3]`` (uint8) of ``image`` resized to ``size`` (unchanged when already that size)."""
    rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), resample)
    return np.array(rgb, dtype=np.uint8)


def unit_tensor(pixels: np.ndarray) -> Tensor:
    """uint8 ``[H,W,3]`` -> ``[1,3,H,W]`` float in [0, 1] (``ToTensor``)."""
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().div(255)[None]


def signed_tensor(pixels: np.ndarray) -> Tensor:
    """uint8 ``[H,W,3]`` -> ``[1,3,H,W]`` in [-1, 1] (``ToTensor`` then mean/std 0.5, as pSp/e4e preprocess)."""
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)[None]


def dilate_erode(mask: Tensor, n: int = 5) -> tuple[Tensor, Tensor]:
    """``(dilated, eroded)`` masks after ``n`` rounds of a 3x3 plus-shaped convolution with zero padding.

    Each round a pixel of the dilated mask becomes ``conv > 0`` and one of the eroded mask ``conv == 5`` (all
    five plus-neighbours set), so a mask touching the image border erodes there (outside counts as 0).
    ``mask`` is ``[..., H, W]`` (typically ``[B,1,H,W]``) with values 0/1; both results have its shape and a
    floating dtype (the input's, float32 for integer/bool input). Not differentiable (thresholds).
    """
    dtype = mask.dtype if mask.is_floating_point() else torch.float32
    shape = mask.shape
    x = mask.to(dtype).reshape(-1, 1, *shape[-2:])
    if n <= 0:
        return x.reshape(shape), x.clone().reshape(shape)
    count = x.shape[0]
    kernel = torch.tensor(PLUS_KERNEL, dtype=dtype, device=mask.device).view(1, 1, 3, 3)
    both = torch.cat([x, x])  # first half dilates, second half erodes: one convolution per round
    for _ in range(n):
        total = F.conv2d(both, kernel, padding=1)
        both = torch.cat([total[:count] > 0, total[count:] == 5]).to(dtype)
    return both[:count].reshape(shape), both[count:].reshape(shape)


def bisenet_to_celeba(labels: Tensor) -> Tensor:
    """BiSeNet-19 ids -> CelebAMask-HQ ids (int64, same shape), HairFast's ``swap_parsing_label_to_celeba_mask``."""
    return remap_labels(labels, BISENET19_TO_CELEBAMASKHQ)


def _as_nchw(x: Tensor) -> Tensor:
    """``[H,W]`` / ``[B,H,W]`` -> ``[B,1,H,W]``; 4-D tensors pass through."""
    if x.dim() == 2:
        return x[None, None]
    if x.dim() == 3:
        return x[:, None]
    return x


def resize_labels(labels: Tensor, size: int | tuple[int, int] = HAIR_MASK_SIZE) -> Tensor:
    """Nearest resize of integer label maps (``[B,1,H,W]``, ``[B,H,W]`` or ``[H,W]`` -> ``[B,1,size,size]``).

    PyTorch's legacy ``nearest``: source index ``floor(i * in / out)``; 512 -> 256 keeps rows/columns 0, 2, 4, ...
    The dtype is kept (the resize runs on a float copy: CPU nearest interpolation refuses int64).
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    labels = _as_nchw(labels)
    if tuple(labels.shape[-2:]) == size:
        return labels
    return F.interpolate(labels.float(), size=size, mode="nearest").to(labels.dtype)


def hair_mask(labels: Tensor, size: int | tuple[int, int] = HAIR_MASK_SIZE, hair_label: int = CELEBAMASKHQ_HAIR
              ) -> Tensor:
    """Float 0/1 hair mask ``[B,1,size,size]`` of CelebAMask-HQ label maps (``label == 13``, nearest resize)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    mask = (_as_nchw(labels) == hair_label).float()
    if tuple(mask.shape[-2:]) == size:
        return mask
    return F.interpolate(mask, size=size, mode="nearest")


def resize_bicubic(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """PyTorch bicubic resize (A = -0.75, ``align_corners=False``, no antialias); see the module docstring."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


# ---------------------------------------------------------------- parity helpers (hairflash / barbershop adapters)

def _word(name: str) -> str:
    """First word of a case's argument/output name (``"bisenet_ids (uint8 [1,512,512])"`` -> ``bisenet_ids``)."""
    return re.split(r"[\s(]", name.strip(), maxsplit=1)[0]


def _expand(target: str) -> list[str]:
    """``"in/feat_x_{0..3}"`` -> ``["in/feat_x_0", ..., "in/feat_x_3"]``; other keys unchanged."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", target)
    if not match:
        return [target]
    first, last = int(match.group(1)), int(match.group(2))
    return [target[:match.start()] + str(i) + target[match.end():] for i in range(first, last + 1)]


def case_inputs(fixture: Fixture, case: Mapping, word: str) -> list[np.ndarray]:
    """All arrays of the case input whose name starts with ``word`` (brace ranges expanded); [] if absent."""
    for name, target in case.get("inputs", {}).items():
        if _word(name) == word:
            return [fixture.data[key] for key in _expand(target)]
    return []


def case_input(fixture: Fixture, case: Mapping, word: str) -> np.ndarray:
    """The one array of the case input whose name starts with ``word``."""
    arrays = case_inputs(fixture, case, word)
    if len(arrays) != 1:
        raise KeyError(f"case {case['name']!r}: expected one input named {word!r}, found {len(arrays)}")
    return arrays[0]


def case_outputs(case: Mapping, values: Mapping[str, Any]) -> dict[str, Any]:
    """Map ``{first word: value}`` onto the case's full output names (outputs we did not compute are left out)."""
    return {name: values[_word(name)] for name in case.get("outputs", {}) if _word(name) in values}


def reference_shape(fixture: Fixture, case: Mapping, word: str) -> tuple[int, ...]:
    """Shape of the stored official output named ``word`` (sampled outputs: their recorded full shape)."""
    for name, target in case.get("outputs", {}).items():
        if _word(name) == word:
            key = target.split(",")[0].strip().removesuffix("/*")
            if key not in fixture.data and f"{key}/shape" in fixture.data:  # a sampled output
                return tuple(int(s) for s in fixture.data[f"{key}/shape"])
            return tuple(fixture.data[key].shape)
    raise KeyError(f"case {case['name']!r} has no output {word!r}")
