"""Real-photo preparation: FFHQ face alignment (dlib 68 landmarks + quad warp) and pasting results back.

The recipe is the one HairFast's ``align_face`` uses (the FFHQ dataset recipe), checked bit-exactly against
the ``ffhq_align`` parity fixture:

1. dlib's frontal HOG detector (image upsampled ``upsample`` times); the largest box wins; 68 landmarks.
2. An oriented square from the eye centres and mouth corners (:func:`ffhq_quad`).
3. Optional integer Lanczos shrink, crop to the quad plus a border, reflect-pad + blur + median blending where
   the quad leaves the photo.
4. PIL QUAD warp to ``transform_size`` (bilinear), Lanczos down to ``output_size``.

Every step is recorded in an :class:`AlignTransform` (JSON-serialisable) that maps aligned-image coordinates
back to the photo; :func:`paste_back` uses it to put an edited aligned image back into the original photo.

Coordinates: *pixel* coordinates (dlib, OpenCV, landmarks) put the centre of pixel ``i`` at ``i``; PIL's
*continuous* coordinates put it at ``i + 0.5`` (an image of width ``w`` spans ``[0, w]``).

CLI helpers: :func:`align_folder` (``harness data align SRC DST``) and :func:`paste_back`
(``harness data paste-back``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from harness.hookspecs import hookimpl

PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SIDECAR_SUFFIX = ".align.json"
TRANSFORM_VERSION = 1


class NoFaceError(ValueError):
    """dlib found no face in the image."""


# --------------------------------------------------------------------------------------------- dlib models


def dlib_model_path(name: str) -> Path:
    """Path of a dlib model file shipped in ``face_recognition_models`` (or ``name`` itself if it is a file).

    ``import face_recognition_models`` fails on current setuptools (``pkg_resources``), so the package folder
    is located without importing it.
    """
    if Path(name).is_file():
        return Path(name)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"dlib model {name!r}: the face_recognition_models package is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / Path(name).name
    if not path.is_file():
        raise FileNotFoundError(f"dlib model {name!r} not found at {path}")
    return path


@dataclass(frozen=True)
class DlibModels:
    """dlib's frontal face detector and a landmark predictor."""

    detector: Any
    predictor: Any


@functools.cache
def dlib_models(predictor: str = PREDICTOR_68) -> DlibModels:
    """The detector and the landmark predictor, loaded once per predictor file (cached)."""
    import dlib

    return DlibModels(dlib.get_frontal_face_detector(), dlib.shape_predictor(str(dlib_model_path(predictor))))


# --------------------------------------------------------------------------------------------- images


def load_rgb(image: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """A path (EXIF orientation applied), PIL image or array -> uint8 RGB array ``[H, W, 3]``."""
    if isinstance(image, str | Path):
        with Image.open(image) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an [H, W, 3] RGB image, got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


# --------------------------------------------------------------------------------------------- landmarks


def detect_landmarks(image: np.ndarray, upsample: int = 1, models: DlibModels | None = None
                     ) -> tuple[np.ndarray | None, int]:
    """``(landmarks [68, 2] int64 of the largest face or None, number of faces detected)``."""
    models = models or dlib_models()
    rgb = np.ascontiguousarray(load_rgb(image))
    faces = list(models.detector(rgb, upsample))
    if not faces:
        return None, 0
    largest = max(faces, key=lambda r: r.width() * r.height())  # first of equals, like the official max()
    shape = models.predictor(rgb, largest)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.int64), len(faces)


def landmarks_68(image: str | Path | Image.Image | np.ndarray, upsample: int = 1) -> np.ndarray | None:
    """dlib's 68 landmarks (pixel coordinates, int64 ``[68, 2]``) of the largest face, or None if no face."""
    return detect_landmarks(load_rgb(image), upsample)[0]


# --------------------------------------------------------------------------------------------- alignment


@dataclass(frozen=True)
class AlignParams:
    """FFHQ alignment settings (official: 1024 output, 4096 transform, padding, detector upsampled once)."""

    output_size: int = 1024
    transform_size: int = 4096
    enable_padding: bool = True
    upsample: int = 1
    predictor: str = PREDICTOR_68


def ffhq_quad(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """The oriented square (corners TL, BL, BR, TR, ``[4, 2]`` float64) and its side ``qsize``."""
    lm = np.asarray(landmarks)
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    def rot90(v: np.ndarray) -> np.ndarray:
        return np.array([-v[1], v[0]])

    x = eye_to_eye - rot90(eye_to_mouth)
    x = x / np.hypot(*x)
    x = x * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


@dataclass(frozen=True)
class AlignTransform:
    """Where an aligned image came from: enough to map its pixels back into the source photo.

    ``corners`` are the source-photo *continuous* coordinates of the aligned image's corners (TL, BL, BR,
    TR), valid for an aligned image of any size. The other fields record the steps (``quad``: initial quad in
    source pixel coordinates; ``quad_final``: the quad warped, in the shrunk/cropped/padded image;
    ``crop``/``pad`` with ``cropped``/``padded`` saying whether they were applied).
    """

    source_size: tuple[int, int]
    output_size: int
    corners: np.ndarray
    quad: np.ndarray
    quad_final: np.ndarray
    qsize: float
    shrink: int
    shrunk_size: tuple[int, int]
    crop: tuple[int, int, int, int]
    pad: tuple[int, int, int, int]
    cropped: bool
    padded: bool
    source: str | None = None

    def homography(self, size: int | None = None) -> np.ndarray:
        """3x3 matrix: aligned pixel coordinates (image of side ``size``) -> source pixel coordinates."""
        size = self.output_size if size is None else size
        square = np.array([[0, 0], [0, size], [size, size], [size, 0]], dtype=np.float64)
        return _homography_4pt(square - 0.5, np.asarray(self.corners, dtype=np.float64) - 0.5)

    def aligned_to_source(self, points: np.ndarray, size: int | None = None) -> np.ndarray:
        """Map ``[N, 2]`` pixel coordinates in an aligned image of side ``size`` to the source photo."""
        return _apply_homography(self.homography(size), points)

    def source_to_aligned(self, points: np.ndarray, size: int | None = None) -> np.ndarray:
        """Map ``[N, 2]`` source pixel coordinates into an aligned image of side ``size``."""
        return _apply_homography(np.linalg.inv(self.homography(size)), points)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": TRANSFORM_VERSION,
            "source": self.source,
            "source_size": list(self.source_size),
            "output_size": self.output_size,
            "corners": np.asarray(self.corners, dtype=float).tolist(),
            "quad": np.asarray(self.quad, dtype=float).tolist(),
            "quad_final": np.asarray(self.quad_final, dtype=float).tolist(),
            "qsize": self.qsize,
            "shrink": self.shrink,
            "shrunk_size": list(self.shrunk_size),
            "crop": list(self.crop),
            "pad": list(self.pad),
            "cropped": self.cropped,
            "padded": self.padded,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignTransform:
        return cls(
            source_size=tuple(int(v) for v in data["source_size"]),
            output_size=int(data["output_size"]),
            corners=np.asarray(data["corners"], dtype=np.float64),
            quad=np.asarray(data["quad"], dtype=np.float64),
            quad_final=np.asarray(data["quad_final"], dtype=np.float64),
            qsize=float(data["qsize"]),
            shrink=int(data["shrink"]),
            shrunk_size=tuple(int(v) for v in data["shrunk_size"]),
            crop=tuple(int(v) for v in data["crop"]),
            pad=tuple(int(v) for v in data["pad"]),
            cropped=bool(data["cropped"]),
            padded=bool(data["padded"]),
            source=data.get("source"),
        )

    @classmethod
    def load(cls, transform: str | Path | dict | AlignTransform) -> AlignTransform:
        """From a sidecar JSON path, its parsed dict, or an AlignTransform."""
        if isinstance(transform, AlignTransform):
            return transform
        if isinstance(transform, dict):
            return cls.from_dict(transform)
        return cls.from_dict(json.loads(Path(transform).read_text()))


@dataclass(frozen=True)
class AlignResult:
    """The aligned image (PIL, RGB, ``output_size`` square) and every intermediate of the recipe."""

    image: Image.Image
    landmarks: np.ndarray
    transform: AlignTransform
    border: int
    n_faces: int

    @property
    def quad(self) -> np.ndarray:
        return self.transform.quad

    @property
    def quad_final(self) -> np.ndarray:
        return self.transform.quad_final

    @property
    def crop(self) -> tuple[int, int, int, int]:
        return self.transform.crop

    @property
    def pad(self) -> tuple[int, int, int, int]:
        return self.transform.pad

    @property
    def meta(self) -> np.ndarray:
        """``[qsize, shrink, border, cropped, padded, n_faces]`` (the fixture's layout)."""
        t = self.transform
        return np.array([t.qsize, t.shrink, self.border, t.cropped, t.padded, self.n_faces], dtype=np.float64)

    def sidecar(self) -> dict[str, Any]:
        """The JSON written next to an aligned image: the transform plus landmarks and meta."""
        return {**self.transform.to_dict(), "border": self.border, "n_faces": self.n_faces,
                "landmarks": self.landmarks.tolist()}


def _blend_padding(img: np.ndarray, pad: np.ndarray, qsize: float) -> np.ndarray:
    """Reflect-pad (left, top, right, bottom); fade the new border to a blur and the median (uint8 out)."""
    import scipy.ndimage

    img = np.pad(img.astype(np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), mode="reflect")
    h, w, _ = img.shape
    ys, xs, _ = np.ogrid[:h, :w, :1]
    # weight 0 inside the original image, growing to 1 at the far edge of the padding
    mask = np.maximum(1.0 - np.minimum(np.float32(xs) / pad[0], np.float32(w - 1 - xs) / pad[2]),
                      1.0 - np.minimum(np.float32(ys) / pad[1], np.float32(h - 1 - ys) / pad[3]))
    sigma = qsize * 0.02
    img += (scipy.ndimage.gaussian_filter(img, [sigma, sigma, 0]) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
    return np.uint8(np.clip(np.rint(img), 0, 255))


def align_from_landmarks(image: str | Path | Image.Image | np.ndarray, landmarks: np.ndarray,
                         params: AlignParams = AlignParams(), n_faces: int = 1,
                         source: str | None = None) -> AlignResult:
    """Run the FFHQ warp for given 68 landmarks (pixel coordinates) of ``image``."""
    rgb = load_rgb(image)
    source_size = (rgb.shape[1], rgb.shape[0])
    img = Image.fromarray(rgb)
    quad0, qsize = ffhq_quad(landmarks)
    quad = quad0.copy()

    shrink = int(np.floor(qsize / params.output_size * 0.5))
    if shrink > 1:
        shrunk = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(shrunk, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink
    shrunk_size = img.size

    border = max(int(np.rint(qsize * 0.1)), 3)
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0),
            min(hi[0] + border, img.size[0]), min(hi[1] + border, img.size[1]))
    cropped = crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]
    if cropped:
        img = img.crop(crop)
        quad -= crop[0:2]

    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    pad = np.array([max(border - lo[0], 0), max(border - lo[1], 0),
                    max(hi[0] - img.size[0] + border, 0), max(hi[1] - img.size[1] + border, 0)])
    padded = params.enable_padding and int(pad.max()) > border - 4
    if padded:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = Image.fromarray(_blend_padding(np.asarray(img), pad, qsize), "RGB")
        quad += pad[:2]

    size = params.transform_size
    img = img.transform((size, size), Image.Transform.QUAD, tuple((quad + 0.5).flatten()),
                        Image.Resampling.BILINEAR)
    if params.output_size < size:
        img = img.resize((params.output_size, params.output_size), Image.Resampling.LANCZOS)

    # continuous coordinates of the warped corners, back through pad, crop and shrink
    corners = quad + 0.5
    if padded:
        corners = corners - pad[:2]
    if cropped:
        corners = corners + np.array(crop[:2])
    corners = corners * (np.array(source_size, dtype=np.float64) / np.array(shrunk_size, dtype=np.float64))

    transform = AlignTransform(
        source_size=source_size, output_size=img.size[0], corners=corners, quad=quad0, quad_final=quad,
        qsize=float(qsize), shrink=shrink, shrunk_size=tuple(shrunk_size),
        crop=tuple(int(v) for v in crop), pad=tuple(int(v) for v in pad), cropped=bool(cropped),
        padded=bool(padded), source=source)
    return AlignResult(image=img, landmarks=np.asarray(landmarks), transform=transform, border=border,
                       n_faces=n_faces)


def align_face(image: str | Path | Image.Image | np.ndarray, params: AlignParams = AlignParams(),
               source: str | None = None) -> AlignResult:
    """FFHQ-align the largest face of ``image``. Raises :class:`NoFaceError` when dlib finds none."""
    rgb = load_rgb(image)
    if source is None and isinstance(image, str | Path):
        source = str(image)
    landmarks, n_faces = detect_landmarks(rgb, params.upsample, dlib_models(params.predictor))
    if landmarks is None:
        raise NoFaceError("no face found" + (f" in {source}" if source else ""))
    return align_from_landmarks(rgb, landmarks, params, n_faces=n_faces, source=source)


# --------------------------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class AlignOutcome:
    """One file of :func:`align_folder`: the written image and sidecar, or the error message."""

    source: Path
    output: Path | None = None
    sidecar: Path | None = None
    n_faces: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _image_files(src: Path, extensions: Iterable[str]) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or folder")
    exts = {e.lower() for e in extensions}
    return sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in exts)


def align_folder(src: str | Path, dst: str | Path, params: AlignParams = AlignParams(), *,
                 extensions: Iterable[str] = IMAGE_EXTENSIONS,
                 on_result: Callable[[AlignOutcome], None] | None = None) -> list[AlignOutcome]:
    """Align every image of folder ``src`` (or the one file ``src``) into folder ``dst``.

    Writes ``dst/<stem>.png`` (the aligned ``output_size`` image) and ``dst/<stem>.align.json`` (the sidecar:
    :class:`AlignTransform` fields — source path and size, quad, quad_final, crop, pad, shrink, corners — plus
    landmarks, border and n_faces), largest face when several. Per-file problems (unreadable file, no face,
    name clash) are returned as outcomes with ``error`` set; the folder always runs to the end. ``on_result``
    is called after each file (for progress output). Files are processed in name order; only ``extensions``
    are considered in a folder.
    """
    src, dst = Path(src), Path(dst)
    files = _image_files(src, extensions)
    dst.mkdir(parents=True, exist_ok=True)
    outcomes: list[AlignOutcome] = []
    written: dict[Path, Path] = {}
    for path in files:
        output = dst / f"{path.stem}.png"
        sidecar = dst / f"{path.stem}{SIDECAR_SUFFIX}"
        outcome: AlignOutcome
        if output in written:
            clash = written[output].name
            outcome = AlignOutcome(path, error=f"output name {output.name} already used by {clash}")
        elif output.resolve() == path.resolve():
            outcome = AlignOutcome(path, error="output would overwrite the source image (choose another DST)")
        else:
            outcome = _align_one(path, output, sidecar, params)
            if outcome.ok:
                written[output] = path
        outcomes.append(outcome)
        if on_result is not None:
            on_result(outcome)
    return outcomes


def align_photo(path: Path, output: Path, sidecar: Path, params: AlignParams, *,
                one_face: bool = False) -> AlignOutcome:
    """Align one photo into ``output`` + ``sidecar`` (see :func:`align_folder`); problems come back as the outcome's
    ``error``. ``one_face``: a photo where dlib finds several faces is an error (``harness run --align``: which
    person a benchmark item shows must not be a guess) instead of aligning the largest."""
    return _align_one(path, output, sidecar, params, one_face)


def _align_one(path: Path, output: Path, sidecar: Path, params: AlignParams, one_face: bool = False) -> AlignOutcome:
    try:
        rgb = load_rgb(path)
    except Exception as exc:
        return AlignOutcome(path, error=f"unreadable image ({type(exc).__name__}: {exc})")
    try:
        result = align_face(rgb, params, source=str(path.resolve()))
    except NoFaceError:
        return AlignOutcome(path, error="no face found")
    except Exception as exc:
        return AlignOutcome(path, error=f"alignment failed ({type(exc).__name__}: {exc})")
    if one_face and result.n_faces > 1:
        return AlignOutcome(path, n_faces=result.n_faces,
                            error=f"{result.n_faces} faces found: crop the photo to one person")
    result.image.save(output)
    sidecar.write_text(json.dumps(result.sidecar(), indent=1))
    return AlignOutcome(path, output=output, sidecar=sidecar, n_faces=result.n_faces)


# --------------------------------------------------------------------------------------------- paste back


def _homography_4pt(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map sending 4 points ``src`` to ``dst`` (float64)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def _apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    mapped = np.c_[pts, np.ones(len(pts))] @ matrix.T
    return mapped[:, :2] / mapped[:, 2:3]


def feather_mask(size: int, feather: float) -> np.ndarray:
    """``[size, size]`` float32: 1 inside, a smooth ramp to 0 over ``feather * size`` pixels at the edges."""
    width = max(feather * size, 1e-6)
    centres = np.arange(size, dtype=np.float64) + 0.5
    ramp = np.clip(np.minimum(centres, size - centres) / width, 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep
    return np.outer(ramp, ramp).astype(np.float32)


def paste_back(result_image: str | Path | Image.Image | np.ndarray,
               transform_json: str | Path | dict | AlignTransform,
               original_photo: str | Path | Image.Image | np.ndarray, *,
               feather: float = 0.05, mask: np.ndarray | None = None) -> Image.Image:
    """Warp an aligned result back into the photo it was aligned from.

    ``result_image`` is a square image in the aligned frame (any size: the transform is scale-free),
    ``transform_json`` the sidecar written by :func:`align_folder` (path, dict or :class:`AlignTransform`),
    ``original_photo`` the source photo (same size as recorded). The result is warped by the inverse of the
    alignment (a projective map of the quad) and blended with a mask that is 1 inside the face quad and fades
    to 0 over ``feather`` x the quad side at its edges; pixels outside the quad keep the photo's exact values.
    ``mask`` (optional, ``[h, w]`` in [0, 1] in the aligned frame, e.g. a hair+face segmentation) limits the
    pasted region further.
    """
    import cv2

    transform = AlignTransform.load(transform_json)
    photo = load_rgb(original_photo)
    height, width = photo.shape[:2]
    if (width, height) != tuple(transform.source_size):
        raise ValueError(f"original photo is {width}x{height}, the transform was made for "
                         f"{transform.source_size[0]}x{transform.source_size[1]}")
    result = Image.fromarray(load_rgb(result_image))
    if result.size[0] != result.size[1]:
        raise ValueError(f"the aligned result must be square, got {result.size[0]}x{result.size[1]}")

    # downscale with Lanczos first where the face is smaller in the photo than in the result (no aliasing)
    side = float(np.max(np.hypot(*(np.roll(transform.corners, -1, axis=0) - transform.corners).T)))
    size = result.size[0]
    if side < size:
        size = max(int(np.ceil(side)), 1)
        result = result.resize((size, size), Image.Resampling.LANCZOS)
    weight = feather_mask(size, feather)
    if mask is not None:
        user = np.asarray(mask, dtype=np.float32)
        user = np.asarray(Image.fromarray(user, mode="F").resize((size, size), Image.Resampling.BILINEAR))
        weight = weight * np.clip(user, 0.0, 1.0)

    matrix = transform.homography(size)
    warped = cv2.warpPerspective(np.asarray(result, dtype=np.float32), matrix, (width, height),
                                 flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpPerspective(weight, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    alpha = np.clip(alpha, 0.0, 1.0)[:, :, None]
    blended = photo.astype(np.float32) + (warped - photo.astype(np.float32)) * alpha
    out = np.where(alpha > 0, np.clip(np.rint(blended), 0, 255).astype(np.uint8), photo)
    return Image.fromarray(out, "RGB")


# --------------------------------------------------------------------------------------------- parity


def _params_from_constructor(constructor: dict) -> AlignParams:
    detector = str(constructor.get("detector", ""))
    upsample = re.search(r"upsample_num_times\s*=\s*(\d+)", detector)
    predictor = re.search(r"[\w.-]+\.dat", str(constructor.get("predictor", "")))
    return AlignParams(output_size=int(constructor.get("output_size", 1024)),
                       transform_size=int(constructor.get("transform_size", 4096)),
                       enable_padding=bool(constructor.get("enable_padding", True)),
                       upsample=int(upsample.group(1)) if upsample else 1,
                       predictor=predictor.group(0) if predictor else PREDICTOR_68)


def block_mean(image: np.ndarray, block: int = 4) -> np.ndarray:
    """Mean over non-overlapping ``block`` x ``block`` tiles of an ``[H, W, C]`` image (float32)."""
    h, w, c = image.shape
    tiles = np.asarray(image, dtype=np.float64).reshape(h // block, block, w // block, block, c)
    return tiles.mean(axis=(1, 3)).astype(np.float32)


def ffhq_align_parity(fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """Parity adapter for the ``ffhq_align`` fixture (no weights: the state dict is empty)."""
    params = _params_from_constructor(fixture.constructor)
    dlib_models(params.predictor)  # fail at build time if the model is missing

    def run(case: dict) -> dict[str, np.ndarray]:
        (arg,) = case["inputs"]
        result = align_face(fixture.input(case, arg), params)
        aligned = np.asarray(result.image)
        resized = {}  # aligned<N>: the aligned image block-averaged to its reference's size
        for name, target in case["outputs"].items():
            if name.startswith("aligned"):
                ref = fixture.reference(target)
                block = aligned.shape[0] // int((ref["shape"] if isinstance(ref, dict) else ref.shape)[0])
                resized[name] = aligned.astype(np.float32) if block == 1 else block_mean(aligned, block)
        outputs = {
            "landmarks": result.landmarks.astype(np.float32),
            "quad": result.quad.astype(np.float32),
            "quad_final": result.quad_final.astype(np.float32),
            "crop": np.array(result.crop, dtype=np.float32),
            "pad": np.array(result.pad, dtype=np.float32),
            "meta": result.meta.astype(np.float32),
            **resized,
        }
        return {name: outputs[name] for name in case["outputs"]}

    return run


@hookimpl
def register_parity(register):
    register("ffhq_align", ffhq_align_parity)


__all__ = [
    "AlignOutcome", "AlignParams", "AlignResult", "AlignTransform", "DlibModels", "NoFaceError",
    "align_face", "align_folder", "align_from_landmarks", "detect_landmarks", "dlib_model_path",
    "dlib_models", "feather_mask", "ffhq_quad", "landmarks_68", "load_rgb", "paste_back",
]
