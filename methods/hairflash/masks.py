"""HairFast's mask and feature-mixing formulas (AIRI-Institute/HairFastGAN ``models/Embedding.py``,
``models/Alignment.py``, ``models/Blending.py``), batched and device-agnostic.

Masks are ``[B,1,H,W]`` float 0/1 at 256x256 (:data:`methods.ops.HAIR_MASK_SIZE`); label maps are CelebAMask-HQ
ids (hair 13); F tensors are the FS-space features ``[B,512,32,32]`` (any channel count and size: the masks are
resized to the features' size). ``smooth`` is ``opts.smooth`` (5): the rounds of :func:`methods.ops.dilate_erode`.

Embedding: ``F <- F_FS + mixing * m * (F_W - F_FS)`` with ``m`` the 256 hair mask PyTorch-bicubic-resized to 32
(can leave [0, 1]) and ``mixing = 0.95``.

Alignment: three masks ``(hair_face OR hair_target)``, ``hair_target``, ``(hair_shape AND hair_target)``; the first
is dilated, the other two eroded; each is bicubic-resized to the feature size and inverted (``low = 1 - m``):
``F = F_face_inp + low0 * (F_face - F_face_inp)``, ``F = F_shape_inp + low1 * (F - F_shape_inp)``,
``F_align = F_shape + low2 * (F - F_shape)``.

Blending: dilated hair of face (HM_1D) and colour (HM_3D), eroded colour hair (HM_3E), dilated target hair
(HM_XD); ``target_mask = (1 - HM_1D)(1 - HM_3D)(1 - HM_XD)``, the part of the face image certainly free of hair.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from harness.parity import Fixture, Op, arg_word, call_arg, calls, case_op, to_numpy
from methods.ops import (
    BISENET19_TO_CELEBAMASKHQ,
    HAIR_MASK_SIZE,
    bicubic_downsample,
    bicubic_taps,
    bisenet_to_celeba,
    case_input,
    case_outputs,
    dilate_erode,
    hair_mask,
    reference_shape,
    resize_bicubic,
    resize_labels,
)

MIXING = 0.95  # opts.mixing
SMOOTH = 5  # opts.smooth


# ---------------------------------------------------------------- embedding

def embedding_hair_mask(labels: Tensor, size: int | tuple[int, int]) -> Tensor:
    """``(labels == 13)`` ``[B,1,256,256]`` -> PyTorch-bicubic resized to the feature ``size`` (not clamped)."""
    return resize_bicubic(hair_mask(labels, tuple(labels.shape[-2:])), size)


def mix_features(f_fs: Tensor, f_w: Tensor, mask: Tensor, mixing: float = MIXING) -> Tensor:
    """``f_fs + mixing * mask * (f_w - f_fs)``: pull the FS feature toward the e4e W+ feature inside ``mask``."""
    return f_fs + mixing * mask * (f_w - f_fs)


def mix_embedding_features(f_fs: Tensor, f_w: Tensor, labels: Tensor, mixing: float = MIXING
                           ) -> tuple[Tensor, Tensor]:
    """Embedding-stage F mixing -> ``(F_mixed, hair_mask_32)``; ``labels`` ``[B,1,256,256]`` CelebAMask-HQ ids."""
    mask = embedding_hair_mask(labels, f_fs.shape[-2:]).to(f_fs.dtype)
    return mix_features(f_fs, f_w, mask, mixing), mask


# ---------------------------------------------------------------- alignment

class AlignmentMasks(NamedTuple):
    """Masks of the Alignment-stage F blend, each ``[3B,1,...]`` in the order union, target, shape-and-target."""

    masks: Tensor  # the three hair masks at mask resolution
    free: Tensor  # masks[:B] dilated, masks[B:] eroded
    low: Tensor  # 1 - bicubic(free) at feature resolution


def alignment_masks(hair_face: Tensor, hair_shape: Tensor, hair_target: Tensor, feature_size: int | tuple[int, int],
                    smooth: int = SMOOTH) -> AlignmentMasks:
    """The three masks of the F blend for ``B`` (face, shape) pairs, concatenated along the batch like the
    official ``cat([1-(1-HM1)*(1-HMX), HMX, HM2*HMX])``."""
    count = hair_face.shape[0]
    masks = torch.cat([1 - (1 - hair_face) * (1 - hair_target), hair_target, hair_shape * hair_target])
    dilated, eroded = dilate_erode(masks, smooth)
    free = torch.cat([dilated[:count], eroded[count:]])
    low = 1 - resize_bicubic(free, feature_size)
    return AlignmentMasks(masks, free, low)


def blend_alignment_features(f_face: Tensor, f_shape: Tensor, f_face_inpainted: Tensor, f_shape_inpainted: Tensor,
                             low: Tensor) -> Tensor:
    """``F_align``: face features outside the hair, the re-encoded inpainted shape image inside the target hair,
    the shape image's own features where it really has that hair. ``low`` from :func:`alignment_masks`.

    ``f_face_inpainted`` / ``f_shape_inpainted`` are the F of the e4e re-encodings of the SEAN-inpainted face /
    shape images (official names ``F_intermediate_align`` / ``F_out_new``).
    """
    low_union, low_target, low_shape = low.chunk(3)
    blended = f_face_inpainted + low_union * (f_face - f_face_inpainted)
    blended = f_shape_inpainted + low_target * (blended - f_shape_inpainted)
    return f_shape + low_shape * (blended - f_shape)


# ---------------------------------------------------------------- blending

class BlendingMasks(NamedTuple):
    """Masks of the Blending stage, each ``[B,1,256,256]``."""

    hair_face_dilated: Tensor  # HM_1D
    hair_color_dilated: Tensor  # HM_3D
    hair_color_eroded: Tensor  # HM_3E: the colour image's region fed to the blending encoder
    hair_target_dilated: Tensor  # HM_XD
    target_mask: Tensor  # (1-HM_1D)(1-HM_3D)(1-HM_XD): the face image's region fed to the blending encoder


def blending_masks(labels_face: Tensor, labels_color: Tensor, hair_target: Tensor, smooth: int = SMOOTH
                   ) -> BlendingMasks:
    """Blending-stage masks from the face / colour label maps (CelebAMask-HQ ids, nearest-resized to 256) and the
    target hair mask ``[B,1,256,256]``."""
    count = labels_face.shape[0]
    hair = hair_mask(torch.cat([labels_face, labels_color]), HAIR_MASK_SIZE)
    dilated, eroded = dilate_erode(hair, smooth)
    target_dilated, _ = dilate_erode(hair_target, smooth)
    face_d, color_d, color_e = dilated[:count], dilated[count:], eroded[count:]
    target_mask = (1 - face_d) * (1 - color_d) * (1 - target_dilated)
    return BlendingMasks(face_d, color_d, color_e, target_dilated, target_mask)


# ---------------------------------------------------------------- parity (fixture hairfast_ops)

#: the ops of ``hairfast_ops`` and how a case shows which one it exercises (see :func:`harness.parity.case_op`)
PARITY_OPS = {
    "bicubic_downsample": Op(call=(r"BicubicDownSample",)),
    "label_remap_and_hair_mask": Op(call=(r"swap_parsing_label_to_celeba_mask",)),
    "dilate_erosion_smooth5": Op(call=(r"DilateErosion",)),
    "embedding_F_mixing": Op(inputs=("F_FS", "F_from_W")),
    "alignment_F_blend": Op(call=(r"DilateErosion", r"\bF_align\b")),
    "blending_target_mask": Op(call=(r"DilateErosion", r"hair_from_mask")),
}


def _constructor_int(text: str, name: str, default: int) -> int:
    match = re.search(rf"{name}\s*=\s*(\d+)", text)
    return int(match.group(1)) if match else default


def _only_input(fixture: Fixture, case: Mapping) -> tuple[str, np.ndarray]:
    """The word and array of a case's single input."""
    if len(case.get("inputs", {})) != 1:
        raise KeyError(f"case {case['name']!r}: expected one input, got {sorted(case.get('inputs', {}))}")
    name, key = next(iter(case["inputs"].items()))
    return arg_word(name), fixture.data[key]


def bicubic_case(fixture: Fixture, case: Mapping, callee: str = "BicubicDownSample") -> dict[str, Tensor]:
    """A ``BicubicDownSample`` case: every output by its factor (the call's ``word = callee(factor=f)``, the
    call's only factor, else input size / reference size), stored taps (``const/...<f>``) under their npz keys.
    An integer input (or one divided by 255 in the call) is scaled to [0, 1] first."""
    word, array = _only_input(fixture, case)
    x = torch.from_numpy(np.array(array)).float()
    if not np.issubdtype(array.dtype, np.floating) or re.search(rf"\b{re.escape(word)}\s*/\s*255", case["call"]):
        x = x / 255.0
    given = [(c.targets, int(f)) for c in calls(case, callee) if (f := c.arg("factor", 0)) is not None]
    assigned = {t: f for targets, f in given for t in targets}
    out: dict[str, Tensor] = {}
    for name, target in case["outputs"].items():
        keys = [k.strip() for k in target.split(",")]
        if all(k.startswith("const/") for k in keys):  # stored taps, by the factor ending their key
            out.update({k: bicubic_taps(int(re.search(r"(\d+)$", k).group(1))) for k in keys})
            continue
        out_word = arg_word(name)
        factor = assigned.get(out_word, given[0][1] if len(given) == 1 else None)
        if factor is None:
            factor = x.shape[-1] // reference_shape(fixture, case, out_word)[-1]
        out[name] = bicubic_downsample(x, factor)
    return out


def parity_adapter(fixture: Fixture) -> Callable[[Mapping], dict[str, np.ndarray]]:
    """Fixture ``hairfast_ops``: pure functions, nothing to load. Smoothing rounds and mixing follow the
    constructor (else the case's call, else the defaults); the op of each case, its factors and output sizes
    follow the case's spec entry."""
    ctor = fixture.constructor
    stated_smooth = _constructor_int(str(ctor.get("DilateErosion", "")), "dilate_erosion", 0)
    mixing = float(ctor.get("mixing", MIXING))

    def tensor(case: Mapping, word: str) -> Tensor:
        return torch.from_numpy(np.array(case_input(fixture, case, word)))

    def floats(case: Mapping, word: str) -> Tensor:
        return tensor(case, word).float()

    def size(case: Mapping, word: str) -> tuple[int, int]:
        return reference_shape(fixture, case, word)[-2:]

    def run(case: Mapping) -> dict[str, np.ndarray]:
        op = case_op(case, PARITY_OPS)
        rounds = call_arg(case, "DilateErosion", "dilate_erosion", 0)
        smooth = stated_smooth or (int(rounds) if rounds is not None and rounds.isdigit() else SMOOTH)
        words = [arg_word(n) for n in case["outputs"]]
        out: dict[str, Tensor | np.ndarray] = {}
        with torch.no_grad():
            if op == "bicubic_downsample":
                return {k: to_numpy(v) for k, v in bicubic_case(fixture, case).items()}
            if op == "label_remap_and_hair_mask":
                celeba = bisenet_to_celeba(tensor(case, _only_input(fixture, case)[0]))
                celeba = celeba[:, None] if celeba.dim() == 3 else celeba
                for word in words:  # celeba_<size> / hair_mask_<size> at the reference size, the id table
                    if word.startswith("celeba"):
                        out[word] = resize_labels(celeba, size(case, word))
                    elif word.startswith("hair"):
                        out[word] = hair_mask(celeba, size(case, word))
                    elif word == "table":
                        out[word] = np.asarray(BISENET19_TO_CELEBAMASKHQ, dtype=np.uint8)
            elif op == "dilate_erosion_smooth5":
                dilated, eroded = dilate_erode(floats(case, _only_input(fixture, case)[0]), smooth)
                out = {w: dilated if w.startswith("dilat") else eroded for w in words
                       if w.startswith(("dilat", "erod"))}
            elif op == "embedding_F_mixing":
                out["F_mixed"], out["hair_mask_32"] = mix_embedding_features(
                    floats(case, "F_FS"), floats(case, "F_from_W"), tensor(case, "labels"), mixing)
                out.update({w: out["hair_mask_32"] for w in words if w.startswith("hair_mask")})
            elif op == "alignment_F_blend":
                f_face = floats(case, "F_1")
                masks = alignment_masks(floats(case, "HM1"), floats(case, "HM2"), floats(case, "HMX"),
                                        f_face.shape[-2:], smooth)
                out = {"masks": masks.masks, "free_mask": masks.free, "interpolation_low": masks.low,
                       "F_align": blend_alignment_features(f_face, floats(case, "F_2"), floats(case, "F_inter"),
                                                           floats(case, "F_out_new"), masks.low)}
            elif op == "blending_target_mask":
                m = blending_masks(tensor(case, "labels_face"), tensor(case, "labels_color"),
                                   floats(case, "HM_X"), smooth)
                out = {"HM_1D": m.hair_face_dilated, "HM_3D": m.hair_color_dilated, "HM_3E": m.hair_color_eroded,
                       "HM_XD": m.hair_target_dilated, "target_mask": m.target_mask}
        return {k: to_numpy(v) for k, v in case_outputs(case, out).items()}

    return run


PARITY = {"hairfast_ops": parity_adapter}
