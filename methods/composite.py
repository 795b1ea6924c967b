"""``composite``: a classical, weight-free hair-transfer baseline (cut, recolour, inpaint, paste).

It works on real images as well as synthetic ones, given label maps (CelebAMask-HQ order) for the three inputs:

1. **align** — a similarity transform (rotation, uniform scale, translation) from shape's face to face's face,
   estimated with ``cv2.estimateAffinePartial2D`` (least squares over all points) from corresponding
   keypoints: eye centres, nose bridge/tip/base, mouth corners and lip middles from the 68 dlib landmarks
   when *both* images carry them; otherwise the centroids of the label regions (left/right eye, or the brow
   when an eye is not visible, nose, mouth) of both label maps. With fewer than two shared regions it falls
   back to matching the face-skin regions' centroids and extents (square root of the area; no rotation), and
   with no skin either to the identity. Shape's pixels, label map and hair mask are warped onto face's frame.
2. **recolor** — the warped hair is recoloured towards color's hair: Lab statistics transfer (per-channel mean
   and standard deviation of L, a, b inside the two hair masks matched, the source std floored so nearly grey
   hair is not blown up into colour fringes) or Lab histogram matching. When the color image has no hair
   (bald), there is no colour to take: **shape's hair keeps its own colour**. Headwear is never recoloured.
3. **inpaint** — all of face's hair (and headwear; grown by a margin so its soft edge and cast shadow go too)
   is filled with OpenCV inpainting (Telea or Navier-Stokes), so old hair shows neither where the new hair
   ends nor through its soft edge. The fill is layered: revealed pixels nearer the background (or where the
   warped shape image shows background) are filled from background pixels only, the rest from the body
   (skin, neck, clothes) only, which avoids skin/background smears.
4. **blend** — the recoloured hair is laid onto the inpainted face with a feathered alpha (Gaussian-blurred
   mask; the layer's mixed outer ring is re-filled from inside so no shape background shows) or Poisson
   blending (``cv2.seamlessClone``, its correction confined to a band at the seam so the hair keeps its new
   colour). Face's eyes, nose and mouth stay in front of the new hair (``protect_features``).

A colour prompt (text reference, ``--color-text "purple hair"``) recolours to the colour it names: the synthetic
palette's base tone (:func:`harness.synthetic.named_hair_color`), else the CSS colour of that name (matplotlib's
``CSS4_COLORS``, e.g. "dark red hair" -> ``darkred``): the Lab mean of the hair moves to that colour, its spread is
kept. A prompt naming no colour fails the item with the reason. Shape prompts are not taken (nothing to cut).

Headwear (label ``hat``) travels with the hairstyle by default, as in the synthetic ground truth: face's is
removed and shape's is pasted. Limits, by design of a cut-and-paste baseline: hair hidden in the shape image
(behind the neck, under a hat) cannot appear; ears or forehead hidden under face's hair are guessed by
inpainting; shape's hair is pasted over face's cheeks and clothes where face and shape differ in outline.
Pixel lengths in :class:`CompositeParams` are for a 1024-pixel image and scale with the face image's side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import cv2
import numpy as np
from PIL import Image

import harness
from harness import annotations
from harness.annotations import HAIR, HAT, LABELS
from harness.method import Method, Reference, TextPrompt
from harness.timing import stages

REFERENCE_SIDE = 1024  # pixel lengths in CompositeParams are given at this image side

# dlib 68-landmark indices of the alignment keypoints (eyes are averaged to their centres).
LEFT_EYE = tuple(range(36, 42))
RIGHT_EYE = tuple(range(42, 48))
NOSE_AND_MOUTH = (27, 30, 33, 48, 54, 51, 57)  # nose bridge, tip, base; mouth corners; upper/lower lip middle

# Label-map regions used as keypoints when landmarks are missing: (region labels, fallback labels).
_label = LABELS.index
KEYPOINT_REGIONS: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (
    ((_label("l_eye"),), (_label("l_brow"),)),
    ((_label("r_eye"),), (_label("r_brow"),)),
    ((_label("nose"),), ()),
    ((_label("mouth"), _label("u_lip"), _label("l_lip")), ()),
)
SKIN = _label("skin")
BACKGROUND = _label("background")
EARS = (_label("l_ear"), _label("r_ear"), _label("ear_r"))
# Face features the new hair never covers when protect_features is on.
PROTECTED = (_label("l_eye"), _label("r_eye"), _label("eye_g"), _label("nose"), _label("mouth"),
             _label("u_lip"), _label("l_lip"))


@dataclass(frozen=True)
class CompositeParams:
    """Parameters of the composite baseline (pixel lengths at a 1024-pixel image; they scale with size)."""

    recolor: Literal["lab", "histogram", "none"] = "lab"  # how shape's hair takes color's hair colour
    blend: Literal["feather", "poisson"] = "feather"
    feather_px: float = 4.0  # Gaussian sigma of the alpha edge (feather blending)
    poisson_band_px: float = 12.0  # Poisson blending: how far inwards the seam correction fades out
    edge_trim_px: float = 4.0  # the pasted layer's outer ring (mixed with shape's skin/background) is re-filled
    inpaint: Literal["telea", "ns"] = "telea"
    inpaint_radius: float = 12.0  # OpenCV inpainting neighbourhood radius
    inpaint_margin_px: float = 16.0  # old hair mask grown by this much (its soft edge and shadow go too)
    inpaint_max_side: int = 512  # inpaint on a copy downscaled to at most this side (speed; fill is smooth)
    stats_erode_px: float = 4.0  # hair masks shrunk by this much for colour statistics (edge pixels are mixed)
    protect_features: bool = True  # keep face's eyes, nose and mouth in front of the new hair
    headwear: bool = True  # headwear travels with the hairstyle (moved from shape, removed from face; not recoloured)
    layered_inpaint: bool = True  # fill the revealed background from background only, the rest from the body
    body_reach_px: float = 32.0  # layered: below the eyes, revealed body reaches this far from face's own at most

    def __post_init__(self):
        choices = {"recolor": ("lab", "histogram", "none"), "blend": ("feather", "poisson"), "inpaint": ("telea", "ns")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"composite: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("feather_px", "poisson_band_px", "edge_trim_px", "inpaint_radius", "inpaint_margin_px",
                     "stats_erode_px", "body_reach_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"composite: {name} must be >= 0, got {getattr(self, name)}")
        if self.inpaint_max_side < 16:
            raise ValueError(f"composite: inpaint_max_side must be >= 16, got {self.inpaint_max_side}")


def _odd(n: float) -> int:
    k = max(1, int(round(n)))
    return k if k % 2 else k + 1


def _disk(radius: float) -> np.ndarray:
    k = 2 * max(1, int(round(radius))) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius < 0.5:
        return mask
    return cv2.dilate(mask.astype(np.uint8), _disk(radius)).astype(bool)


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius < 0.5:
        return mask
    return cv2.erode(mask.astype(np.uint8), _disk(radius)).astype(bool)


def to_float(image: Image.Image) -> np.ndarray:
    """RGB float32 in [0, 1], [H, W, 3]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------------- alignment

def landmark_keypoints(landmarks: np.ndarray) -> np.ndarray:
    """Alignment keypoints [9, 2] from 68 dlib landmarks: eye centres, nose, mouth."""
    lm = np.asarray(landmarks, dtype=np.float32).reshape(68, 2)
    eyes = np.stack([lm[list(LEFT_EYE)].mean(0), lm[list(RIGHT_EYE)].mean(0)])
    return np.concatenate([eyes, lm[list(NOSE_AND_MOUTH)]]).astype(np.float32)


def eye_centres(ann: annotations.Annotations) -> np.ndarray | None:
    """Image-left and image-right eye centres [2, 2] from landmarks or the eye labels (None if unknown)."""
    if ann.landmarks is not None:
        return landmark_keypoints(ann.landmarks)[:2]
    if ann.labels is None:
        return None
    points = [_region_centroid(ann.labels, ids, 4) for ids, _ in KEYPOINT_REGIONS[:2]]
    if any(p is None for p in points):
        return None
    return np.stack(sorted(points, key=lambda p: p[0]))


def _region_centroid(labels: np.ndarray, ids: tuple[int, ...], min_pixels: int) -> np.ndarray | None:
    ys, xs = np.nonzero(np.isin(labels, ids))
    if len(xs) < min_pixels:
        return None
    return np.array([xs.mean(), ys.mean()], dtype=np.float32)


def matched_label_keypoints(src_labels: np.ndarray, dst_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corresponding region centroids of two label maps, [K, 2] each (a region seen in only one is skipped)."""
    src_pts, dst_pts = [], []
    for ids, fallback in KEYPOINT_REGIONS:
        for region in (ids, fallback):
            if not region:
                continue
            a = _region_centroid(src_labels, region, max(4, src_labels.size // 40000))
            b = _region_centroid(dst_labels, region, max(4, dst_labels.size // 40000))
            if a is not None and b is not None:
                src_pts.append(a)
                dst_pts.append(b)
                break
    return np.array(src_pts, np.float32).reshape(-1, 2), np.array(dst_pts, np.float32).reshape(-1, 2)


def _skin_transform(src_labels: np.ndarray, dst_labels: np.ndarray) -> np.ndarray:
    """Translation + scale matching the skin regions' centroids and extents (identity if a skin is missing)."""
    src_skin, dst_skin = src_labels == SKIN, dst_labels == SKIN
    if src_skin.sum() < 16 or dst_skin.sum() < 16:
        return np.array([[1, 0, 0], [0, 1, 0]], np.float64)
    scale = float(np.sqrt(dst_skin.sum() / src_skin.sum()))
    sy, sx = np.nonzero(src_skin)
    dy, dx = np.nonzero(dst_skin)
    return np.array([[scale, 0, dx.mean() - scale * sx.mean()], [0, scale, dy.mean() - scale * sy.mean()]])


def similarity_transform(src_points: np.ndarray, dst_points: np.ndarray) -> np.ndarray | None:
    """Least-squares similarity [2, 3] mapping ``src_points`` to ``dst_points`` (None if under two points).

    ``cv2.estimateAffinePartial2D`` with a reprojection threshold larger than any distance keeps every point an
    inlier, so its final refinement is the plain least-squares fit over all keypoints: two different faces never
    match exactly, and no keypoint should be thrown away as an outlier.
    """
    if len(src_points) < 2:
        return None
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(src_points, np.float32), np.asarray(dst_points, np.float32),
                                            method=cv2.RANSAC, ransacReprojThreshold=1e6)
    return matrix


def estimate_alignment(face: annotations.Annotations, shape: annotations.Annotations) -> tuple[np.ndarray, str]:
    """Similarity [2, 3] mapping shape's pixel coordinates onto face's, and how it was found."""
    if face.landmarks is not None and shape.landmarks is not None:
        matrix = similarity_transform(landmark_keypoints(shape.landmarks), landmark_keypoints(face.landmarks))
        if matrix is not None:
            return matrix, "landmarks"
    src, dst = matched_label_keypoints(shape.labels, face.labels)
    matrix = similarity_transform(src, dst)
    if matrix is not None:
        return matrix, "label centroids"
    return _skin_transform(shape.labels, face.labels), "skin extent"


# ------------------------------------------------------------------------------------------------- recolour

def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """float RGB [0, 1] -> Lab (L in [0, 100], a/b roughly [-127, 127]); any leading shape."""
    return cv2.cvtColor(np.ascontiguousarray(rgb, np.float32).reshape(-1, 1, 3), cv2.COLOR_RGB2Lab).reshape(
        np.shape(rgb))


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(np.ascontiguousarray(lab, np.float32).reshape(-1, 1, 3), cv2.COLOR_Lab2RGB)
    return np.clip(rgb.reshape(np.shape(lab)), 0.0, 1.0)


def lab_statistics_transfer(source: np.ndarray, reference: np.ndarray, pixels: np.ndarray | None = None,
                            min_std: float = 3.0) -> np.ndarray:
    """Lab statistics transfer: the per-channel map ``(x - mean_s) * std_r / std_s + mean_r`` (in Lab) fitted
    so ``source`` pixels take ``reference``'s Lab mean/std, applied to ``pixels`` (default: ``source``).

    All arrays are float RGB [N, 3] in [0, 1]. The source std is floored at ``min_std`` Lab units: a nearly
    flat channel (grey hair has almost no a/b spread) would otherwise get a huge gain that turns its few mixed
    edge pixels (hair blended with skin) into coloured fringes; such a channel is mostly shifted instead.
    """
    src, ref = rgb_to_lab(source), rgb_to_lab(reference)
    target = src if pixels is None else rgb_to_lab(pixels)
    mu_s, sd_s = src.mean(0), src.std(0)
    mu_r, sd_r = ref.mean(0), ref.std(0)
    gain = sd_r / np.maximum(sd_s, min_std)
    return lab_to_rgb((target - mu_s) * gain + mu_r)


def lab_histogram_transfer(source: np.ndarray, reference: np.ndarray, pixels: np.ndarray | None = None,
                           bins: int = 256) -> np.ndarray:
    """Lab histogram matching: per channel, the quantile map taking ``source``'s distribution to
    ``reference``'s, applied to ``pixels`` (default: ``source``). Float RGB [N, 3] in [0, 1]."""
    src, ref = rgb_to_lab(source), rgb_to_lab(reference)
    target = src if pixels is None else rgb_to_lab(pixels)
    q = np.linspace(0.0, 1.0, bins + 1)
    out = np.empty_like(target)
    for c in range(3):
        src_q, ref_q = np.quantile(src[:, c], q), np.quantile(ref[:, c], q)
        # Equal quantiles (flat stretches of the source) would make the map ill-defined: keep the first of each.
        keep = np.concatenate([[True], np.diff(src_q) > 1e-6])
        if keep.sum() > 1:
            out[:, c] = np.interp(target[:, c], src_q[keep], ref_q[keep])
        else:  # a flat source channel: shift it to the reference median
            out[:, c] = target[:, c] - src_q[0] + ref_q[bins // 2]
    return lab_to_rgb(out)


COLOR_TRANSFERS = {"lab": lab_statistics_transfer, "histogram": lab_histogram_transfer}


def recolor(image: np.ndarray, source_mask: np.ndarray, reference: np.ndarray, reference_mask: np.ndarray,
            mode: str = "lab") -> np.ndarray:
    """``image`` (float RGB [H, W, 3]) recoloured inside ``source_mask`` towards ``reference`` inside
    ``reference_mask`` ("lab": mean/std statistics, "histogram": histogram matching, "none": unchanged).

    The statistics are those of the two masked regions; pixels outside ``source_mask`` are returned unchanged.
    An empty mask (no hair to recolour, or a bald reference) returns ``image`` unchanged.
    """
    out = image.copy()
    if mode == "none" or not source_mask.any() or not reference_mask.any():
        return out
    if mode not in COLOR_TRANSFERS:
        raise ValueError(f"recolor: unknown mode {mode!r} (lab, histogram, none)")
    out[source_mask] = COLOR_TRANSFERS[mode](image[source_mask], reference[reference_mask])
    return out


def _shrink(mask: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` eroded by ``radius`` (mixed edge pixels out), or ``mask`` itself if that leaves too little."""
    eroded = _erode(mask, radius)
    return eroded if eroded.sum() >= max(16, 0.1 * mask.sum()) else mask


# ----------------------------------------------------------------------------------------- inpaint + blend

def inpaint(image: np.ndarray, mask: np.ndarray, radius: float, method: str, max_side: int) -> np.ndarray:
    """Fill ``mask`` of float RGB ``image`` with OpenCV inpainting, on a copy downscaled to ``max_side``."""
    if not mask.any():
        return image.copy()
    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}.get(method)
    if flag is None:
        raise ValueError(f"inpaint: unknown method {method!r} (telea, ns)")
    h, w = mask.shape
    factor = min(1.0, max_side / max(h, w))
    small_size = (max(1, round(w * factor)), max(1, round(h * factor)))
    image8 = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    mask8 = mask.astype(np.uint8) * 255
    if factor < 1.0:
        image8 = cv2.resize(image8, small_size, interpolation=cv2.INTER_AREA)
        mask8 = (cv2.resize(mask8, small_size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8) * 255
    filled = cv2.inpaint(image8, mask8, max(1.0, radius * factor), flag)
    if factor < 1.0:
        filled = cv2.resize(filled, (w, h), interpolation=cv2.INTER_CUBIC)
    out = image.copy()
    out[mask] = filled[mask].astype(np.float32) / 255.0
    return out


def layered_inpaint(image: np.ndarray, labels: np.ndarray, hole: np.ndarray, radius: float, method: str,
                    max_side: int, to_body: np.ndarray | None = None, soften: float = 0.0) -> np.ndarray:
    """Inpaint ``hole`` in two layers so that background and body colours do not smear into each other.

    Hole pixels in ``to_body`` (default: those whose nearest known pixel is a body pixel) are filled from the
    body only (skin, neck, clothes: every label but background), the others from the background only (the
    body masked out as well); the two fills meet in a seam blurred by ``soften`` px (Gaussian sigma). Without
    known pixels of one kind this is plain :func:`inpaint`.
    """
    known_bg = (labels == BACKGROUND) & ~hole
    known_body = ~known_bg & ~hole
    if known_bg.sum() < 16 or known_body.sum() < 16:
        return inpaint(image, hole, radius, method, max_side)
    if to_body is None:
        dist_bg, dist_body = _distances(labels, hole)
        to_body = dist_body <= dist_bg
    to_body = hole & to_body
    out = image.copy()
    if not to_body.any():
        out[hole] = inpaint(image, ~known_bg, radius, method, max_side)[hole]
    elif not (hole & ~to_body).any():
        out[hole] = inpaint(image, ~known_body, radius, method, max_side)[hole]
    else:  # both layers, with a soft seam between them (a hard cut looks like a pasted slab)
        weight = (to_body | known_body).astype(np.float32)  # known pixels count as their own layer
        if soften > 0.3:
            k = _odd(6 * soften + 1)
            weight = cv2.GaussianBlur(weight, (k, k), soften)
        weight = weight[hole][:, None]
        from_bg = inpaint(image, ~known_bg, radius, method, max_side)[hole]
        from_body = inpaint(image, ~known_body, radius, method, max_side)[hole]
        out[hole] = weight * from_body + (1.0 - weight) * from_bg
    return out


def _distances(labels: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the distance to the nearest known background pixel and to the nearest known body pixel."""
    known_bg = (labels == BACKGROUND) & ~hole
    known_body = ~known_bg & ~hole
    return (cv2.distanceTransform((~known_bg).astype(np.uint8), cv2.DIST_L2, 5),
            cv2.distanceTransform((~known_body).astype(np.uint8), cv2.DIST_L2, 5))


def revealed_body(labels: np.ndarray, hole: np.ndarray, guide: np.ndarray, eyes: np.ndarray | None,
                  reach: float) -> np.ndarray:
    """Which pixels of ``hole`` (face's removed hair) show the person's body rather than the background.

    ``guide`` is shape's label map warped onto face: the new head's layout. A pixel is body where the guide
    shows body above the line through face's ``eyes`` (forehead and scalp: the cranium lines up after
    alignment) or an ear; elsewhere where the guide shows body and face's own body is the nearest known pixel
    within ``reach`` pixels (below the eyes face's own outline decides: a wider face in the shape image must not
    widen this one). Where the guide shows hair or headwear (mostly covered by the new hair) nearness decides;
    where it shows background, background.
    """
    dist_bg, dist_body = _distances(labels, hole)
    nearest_body = dist_body <= dist_bg
    guide_style = np.isin(guide, (HAIR, HAT))
    guide_body = (guide != BACKGROUND) & ~guide_style
    body = (guide_style & nearest_body) | (guide_body & nearest_body & (dist_body <= reach)) | np.isin(guide, EARS)
    if eyes is not None:
        (x0, y0), (x1, y1) = eyes
        ys, xs = np.mgrid[: labels.shape[0], : labels.shape[1]]
        # side of the eye line away from the chin (the eyes are ordered image-left to image-right; y points down)
        above = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) < 0
        body |= above & guide_body
    return hole & body


def extend_layer(layer: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """``layer`` with its pixels outside ``mask`` replaced by a mask-weighted blur of the pixels inside.

    A feathered edge lets a little of the pasted layer show outside its mask: this makes that little be hair
    colour, not shape's background.
    """
    weight = mask.astype(np.float32)
    k = _odd(6 * sigma + 1)
    num = cv2.GaussianBlur(layer * weight[..., None], (k, k), sigma)
    den = cv2.GaussianBlur(weight, (k, k), sigma)[..., None]
    fill = num / np.maximum(den, 1e-6)
    fill = np.where(den > 1e-4, fill, layer)
    return np.where(mask[..., None], layer, fill).astype(np.float32)


def feather_alpha(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Soft alpha [H, W] of ``mask``: its Gaussian blur (``sigma`` px), 0.5 on the mask's edge.

    The half of the soft edge that lies outside the mask shows the layer made by :func:`extend_layer`.
    """
    if sigma < 0.3:
        return mask.astype(np.float32)
    k = _odd(6 * sigma + 1)
    return cv2.GaussianBlur(mask.astype(np.float32), (k, k), sigma)


def poisson_blend(layer: np.ndarray, base: np.ndarray, mask: np.ndarray, band: float) -> np.ndarray:
    """``layer`` laid into ``base`` inside ``mask`` with a Poisson-smoothed seam (``cv2.seamlessClone``).

    Plain Poisson cloning keeps only the layer's gradients and takes its absolute colour from the base at the
    seam, which would undo the recolouring (hair turns the colour of the skin and background around it). So
    only the seam is smoothed: the correction that cloning adds to the layer (a smooth membrane,
    ``cloned - layer``) is applied in full at the mask's edge and fades out over ``band`` pixels inwards.
    """
    if mask.sum() < 4:
        return base.copy()
    pad = 4  # seamlessClone needs the mask off the image border
    src = cv2.copyMakeBorder(np.clip(np.round(layer * 255), 0, 255).astype(np.uint8), pad, pad, pad, pad,
                             cv2.BORDER_REFLECT)
    dst = cv2.copyMakeBorder(np.clip(np.round(base * 255), 0, 255).astype(np.uint8), pad, pad, pad, pad,
                             cv2.BORDER_REFLECT)
    mask8 = cv2.copyMakeBorder(mask.astype(np.uint8) * 255, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    x, y, w, h = cv2.boundingRect(mask8)
    cloned = cv2.seamlessClone(src, dst, mask8, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    membrane = cloned[pad:-pad, pad:-pad].astype(np.float32) / 255.0 - layer
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    weight = np.exp(-depth / max(band, 1e-3))[..., None]
    return np.where(mask[..., None], np.clip(layer + weight * membrane, 0.0, 1.0), base).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- method

def _require_labels(image: Image.Image, role: str) -> annotations.Annotations:
    found = annotations.of(image)
    if found.labels is None:
        raise ValueError(f"composite: the {role} image has no label map (the method needs labels for all three "
                         "images; annotations.of(image).labels)")
    if found.labels.shape != (image.height, image.width):
        raise ValueError(f"composite: the {role} label map is {found.labels.shape}, the image "
                         f"{image.height}x{image.width}")
    return found


def named_color(prompt: str) -> np.ndarray:
    """Float RGB [3] in [0, 1] of the colour a prompt names (synthetic palette first, then CSS colour names);
    ``ValueError`` when it names none."""
    from matplotlib.colors import CSS4_COLORS, to_rgb

    from harness import synthetic

    palette = synthetic.named_hair_color(prompt)
    if palette is not None:
        return np.asarray(palette.base, np.float32)
    css = "".join(synthetic.color_words(prompt)).replace("grey", "gray")
    if css in CSS4_COLORS:
        return np.asarray(to_rgb(CSS4_COLORS[css]), np.float32)
    raise ValueError(f"composite: the colour prompt {prompt!r} names no known colour (a synthetic palette name: "
                     f"{', '.join(sorted(synthetic.NATURAL_HAIR | synthetic.DYED_HAIR))}; or a CSS colour name)")


def prompt_reference(source: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Reference hair pixels for a named colour: ``source`` (float RGB [N, 3]) with its Lab mean moved to
    ``color``'s Lab, its spread kept, so a statistics transfer shifts the mean only."""
    lab = rgb_to_lab(source)
    return lab_to_rgb(lab - lab.mean(0) + rgb_to_lab(color[None])[0])


def composite(face: Image.Image, shape: Image.Image, color: Reference,
              params: CompositeParams = CompositeParams()) -> Image.Image:
    """The composite baseline on one triplet (see the module docstring); returns an RGB image of face's size."""
    face_ann = _require_labels(face, "face")
    shape_ann = _require_labels(shape, "shape")
    prompt_color = named_color(color.text) if isinstance(color, TextPrompt) else None
    color_ann = None if prompt_color is not None else _require_labels(color, "color")
    face_rgb, shape_rgb = to_float(face), to_float(shape)
    h, w = face_rgb.shape[:2]
    px = w / REFERENCE_SIDE

    with stages("align"):
        matrix, _ = estimate_alignment(face_ann, shape_ann)
        shape_hair = shape_ann.labels == HAIR
        shape_style = shape_hair | (shape_ann.labels == HAT) if params.headwear else shape_hair
        warped_rgb = cv2.warpAffine(shape_rgb, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT)
        # Nearest-neighbour warp of the labels tells hair from headwear; the masks are > 0.5 cuts of linear warps.
        warped_labels = cv2.warpAffine(shape_ann.labels, matrix, (w, h), flags=cv2.INTER_NEAREST,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND)
        new_style = cv2.warpAffine(shape_style.astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0.5
        if params.protect_features:
            new_style &= ~_dilate(np.isin(face_ann.labels, PROTECTED), 2 * px)
        new_hair = new_style & (warped_labels != HAT)

    with stages("recolor"):
        # Statistics of shape's hair in its own frame (no resampling blur); applied to the warped hair pixels.
        source_pixels = shape_rgb[_shrink(shape_hair, params.stats_erode_px * px)]
        if prompt_color is not None:
            reference_pixels = prompt_reference(source_pixels, prompt_color) if len(source_pixels) else source_pixels
        else:
            color_hair = color_ann.labels == HAIR
            reference_pixels = to_float(color)[_shrink(color_hair, params.stats_erode_px * px)]
        hair_layer = warped_rgb.copy()
        if params.recolor != "none" and len(source_pixels) and len(reference_pixels) and new_hair.any():
            hair_layer[new_hair] = COLOR_TRANSFERS[params.recolor](source_pixels, reference_pixels,
                                                                   warped_rgb[new_hair])

    with stages("inpaint"):
        # All of face's old hair is filled, also where the new hair will cover it: the fill must come from
        # skin and background only (a hole that left old hair around it would be filled with old hair), and
        # the new hair's soft edge shows a little of what lies under it.
        old_style = np.isin(face_ann.labels, (HAIR, HAT) if params.headwear else (HAIR,))
        hole = _dilate(old_style, params.inpaint_margin_px * px)
        radius = params.inpaint_radius * px
        if params.layered_inpaint:
            to_body = revealed_body(face_ann.labels, hole, warped_labels, eye_centres(face_ann),
                                    params.body_reach_px * px)
            base = layered_inpaint(face_rgb, face_ann.labels, hole, radius, params.inpaint, params.inpaint_max_side,
                                   to_body, soften=params.feather_px * px)
        else:
            base = inpaint(face_rgb, hole, radius, params.inpaint, params.inpaint_max_side)

    with stages("blend"):
        if not new_style.any():
            out = base
        elif params.blend == "feather":
            alpha = feather_alpha(new_style, params.feather_px * px)[..., None]
            layer = extend_layer(hair_layer, _shrink(new_style, params.edge_trim_px * px),
                                 max(1.0, params.feather_px * px))
            out = alpha * layer + (1.0 - alpha) * base
        elif params.blend == "poisson":
            out = poisson_blend(hair_layer, base, new_style, params.poisson_band_px * px)
        else:
            raise ValueError(f"composite: unknown blend {params.blend!r} (feather, poisson)")
    return to_image(out)


class Composite(Method):
    """Classical baseline: similarity-warped, recoloured hair pasted onto the inpainted face (no weights).

    Needs label maps for the three images (``requires = {"labels"}``); uses landmarks when both face and shape
    carry them. A bald color image leaves shape's hair colour unchanged. See :mod:`methods.composite`.
    """

    name: ClassVar[str] = "composite"
    description: ClassVar[str] = ("classical baseline: warp shape's hair by a landmark similarity, Lab-recolour "
                                  "it to color's hair, inpaint face's old hair, feather/Poisson blend")
    Params: ClassVar[type] = CompositeParams
    requires: ClassVar[frozenset[str]] = frozenset({"labels"})
    accepts_text: ClassVar[frozenset[str]] = frozenset({"color"})

    def transfer(self, face: Image.Image, shape: Image.Image, color: Reference) -> Image.Image:
        return composite(face, shape, color, self.params)


@harness.hookimpl
def register_methods(register):
    register(Composite)
