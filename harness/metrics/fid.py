"""Distribution metrics with clean-fid: FID and KID (Inception-v3) and FID_CLIP (CLIP ViT-B/32 features).

Pipeline per image set (results of one method x task, or the real set = every input image of the run):

1. each image is read as RGB and resized to the protocol's evaluation size (PIL bicubic, uint8);
2. clean-fid's data pipeline (``cleanfid.fid.get_files_features``, ``mode="clean"``) resizes it for the
   feature network — 299x299 PIL bicubic on float channels for Inception, or the plugin network's own
   ``fn_resize`` (the CLIP extractor's is clean-fid's CLIP-mode 224 resize + centre crop) — and batches it
   as float 0..255;
3. the feature network is passed to clean-fid as ``custom_feat_extractor``-style callable, so clean-fid never
   builds (or downloads) its own: Inception comes from a local file found by the :class:`WeightStore`
   (:mod:`harness.metrics.inception`), CLIP from the ``"clip_vitb32"`` feature-extractor plugin.

FID is the Frechet distance of the two Gaussian fits (``np.cov``, as clean-fid). It is computed exactly, without
``scipy.linalg.sqrtm``: with ``S_ref = F F^T``, ``tr sqrt(S_gen S_ref)`` is the nuclear norm of
``Xc_gen F / sqrt(n - 1)`` (``Xc_gen``: centred generated features), found from the eigenvalues of a small Gram
matrix. This equals clean-fid's ``frechet_distance`` (tests check it), is more accurate when covariances are rank
deficient (fewer images than feature dimensions, where ``sqrtm`` loses digits), and takes a fraction of a second
instead of ~40 s per 2048-d FID on two CPU cores — which makes the bootstrap affordable.

KID is clean-fid's ``kernel_distance`` estimator (cubic polynomial kernel, unbiased MMD^2 averaged over 100
subsets of at most 1000 features), reported x1000.

Intervals: percentile bootstrap over the generated set (resampled with replacement; reference fixed). Resampling
duplicates images, so the FID replicates are biased upward — at small n the interval may lie above the point
estimate; that bias is real (FID itself is biased at small n) and visible rather than hidden. For KID the
replicates use the unbiased MMD^2 of the resampled set (pairs of the same original image left out) against a
fixed reference subset.

Reference features are cached under ``harness.weights.cache_dir()/features/`` keyed by extractor, its weights'
fingerprint, evaluation size, clean-fid version and the dataset's content hash (sorted sha256 of input files).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.method import Checkpoint
from harness.metrics.quality import resize_rgb
from harness.metrics.stats import percentile_interval, row_seed
from harness.metrics.table import Row, failed, one_line, skipped
from harness.store import atomic_write_bytes
from harness.weights import MissingWeights, WeightStore, cache_dir, sha256_file

# The URL clean-fid 0.1.35 downloads from (cleanfid/downloads_helper.py ``inception_url``).
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION = Checkpoint(
    key="inception_fid",
    filename="inception-2015-12-05.pt",
    source=INCEPTION_URL,
    purpose="Inception-v3 feature network (TensorFlow 2015-12-05 graph as TorchScript) for FID and KID "
            "(clean-fid, StyleGAN2-ADA)",
    used_by=("metrics: fid, kid",),
    download=(INCEPTION_URL,),
)
INCEPTION_NAME = "inception"
CLIP_NAME = "clip_vitb32"  # feature-extractor plugin; its checkpoint (ViT-B-32.pt) is declared by the CLIP module
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SCALE = 1000.0
FEATURES_DIR = "features"
ENABLE_HINT = "put it in --weights-dir DIR or a directory listed in $HARNESS_WEIGHTS"


class Unavailable(Exception):
    """A network a metric needs cannot be had here; the message says why and how to enable it."""


# ----------------------------------------------------------------------------------------- extractors


@dataclass(frozen=True)
class Extractor:
    """A feature network in clean-fid's ``custom_feat_extractor`` contract.

    ``model(batch)`` takes a float tensor ``[B, 3, h, w]`` with values 0..255 (on the metric device) and returns
    features ``[B, D]``; ``fn_resize(uint8 HxWx3) -> HxWx3`` is clean-fid's ``custom_fn_resize`` (None: clean-fid's
    ``clean`` 299x299 resizer; plugin networks provide it as their ``fn_resize`` attribute). ``fingerprint``
    identifies the weights (reference-feature cache key); features of filled (random) networks are never cached.
    """

    name: str
    model: Callable[[Any], Any]
    fn_resize: Callable[[np.ndarray], np.ndarray] | None
    fingerprint: str
    cacheable: bool = True
    note: str = ""


def inception_missing_message(weights: WeightStore) -> str:
    where = ", ".join(str(d) for d in weights.search_dirs)
    return (f"needs {INCEPTION.filename} (from {INCEPTION.source}) in --weights-dir or $HARNESS_WEIGHTS "
            f"(searched: {where})")


def inception_extractor(weights: WeightStore, device) -> Extractor:
    """clean-fid's Inception from the local weight file; :class:`Unavailable` when the file is absent."""
    status = weights.status(INCEPTION)
    if status.state == "missing":
        raise Unavailable(inception_missing_message(weights))
    if status.state != "found":
        raise Unavailable(f"{status.path}: {status.state}; replace it with the official {INCEPTION.filename} "
                          f"from {INCEPTION.source}")
    from harness.metrics.inception import load_inception

    model = load_inception(status.path, device)
    return Extractor(INCEPTION_NAME, model, None, "sha256:" + sha256_file(status.path))


def plugin_network(name: str, factories: Mapping[str, Callable], weights: WeightStore, device) -> Any:
    """Build a registered feature extractor; :class:`Unavailable` when none is registered or weights are missing."""
    factory = factories.get(name)
    if factory is None:
        known = ", ".join(sorted(factories)) or "none"
        raise Unavailable(f"no plugin registers the {name!r} feature extractor (registered: {known}); install or "
                          f"enable the plugin that provides it (the shared networks plugin, methods.nets)")
    try:
        return factory(device, weights)
    except MissingWeights as exc:
        raise Unavailable(f"the {name!r} network needs weights: {one_line(exc)}") from None


def checkpoint_fingerprint(key: str, weights: WeightStore) -> str:
    """``sha256:<hex>`` of the registered checkpoint with this key when its file is found, else ``<key>:unknown``."""
    try:
        from harness import plugins

        ckpt = next((c for c in plugins.extra_checkpoints() if c.key == key), None)
        path = weights.find(ckpt) if ckpt is not None else None
        if path is not None:
            return "sha256:" + sha256_file(path)
    except Exception:  # the fingerprint only keys a cache; never fail a metric over it
        pass
    return f"{key}:unknown"


def _as_features(out) -> Any:
    import torch

    out = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
    return out.reshape(out.shape[0], -1).float()


def plugin_extractor(name: str, factories: Mapping[str, Callable], weights: WeightStore, device) -> Extractor:
    """A plugin feature extractor (e.g. ``"clip_vitb32"``) wrapped for clean-fid."""
    network = plugin_network(name, factories, weights, device)

    def model(batch):
        return _as_features(network(batch))

    fn_resize = getattr(network, "fn_resize", None)
    fingerprint = str(getattr(network, "fingerprint", "") or checkpoint_fingerprint(name, weights))
    note = "filled weights: not meaningful" if weights.fill else ""
    return Extractor(name, model, fn_resize, fingerprint, cacheable=not weights.fill, note=note)


# ----------------------------------------------------------------------------------------- features


def image_features(paths: Sequence[str | Path], extractor: Extractor, eval_size: int, device,
                   batch_size: int = 32, progress: bool = False, description: str = "") -> np.ndarray:
    """Features ``[N, D]`` of image files through clean-fid's pipeline (after resizing to ``eval_size``)."""
    import torch
    from cleanfid.fid import get_files_features

    if not paths:
        raise ValueError("no images to compute features of")
    device = torch.device(device)
    workers = 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)
    feats = get_files_features([str(p) for p in paths], model=extractor.model, num_workers=workers,
                               batch_size=batch_size, device=device, mode="clean",
                               custom_fn_resize=extractor.fn_resize, description=description, verbose=progress,
                               custom_image_tranform=functools.partial(resize_rgb, size=eval_size))
    return np.asarray(feats)


def dataset_hash(image_sha256s: Sequence[str]) -> str:
    """Content hash of an image set: sha256 of its sorted per-image sha256 list."""
    return hashlib.sha256("\n".join(sorted(image_sha256s)).encode()).hexdigest()


def reference_cache_path(extractor: Extractor, eval_size: int, content_hash: str) -> Path:
    import cleanfid

    key = json.dumps({"extractor": extractor.name, "weights": extractor.fingerprint, "eval_size": eval_size,
                      "dataset": content_hash, "pipeline": f"clean-fid {getattr(cleanfid, '__version__', '?')} "
                      "clean", "resize": "PIL bicubic"}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return cache_dir() / FEATURES_DIR / f"{extractor.name}-{eval_size}-{digest}.npz"


def reference_features(paths: Sequence[str | Path], content_hash: str, extractor: Extractor, eval_size: int,
                       device, progress: bool = False) -> np.ndarray:
    """Features of the real set, from the cache when present (written atomically after computing)."""
    path = reference_cache_path(extractor, eval_size, content_hash) if extractor.cacheable else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as data:
                feats = data["features"]
            if feats.shape[0] == len(paths):
                return feats
        except (OSError, KeyError, ValueError):
            pass  # a damaged cache entry is recomputed
    feats = image_features(paths, extractor, eval_size, device, progress=progress,
                           description=f"{extractor.name} real set")
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, features=feats, dataset=np.array(content_hash), extractor=np.array(extractor.name),
                 fingerprint=np.array(extractor.fingerprint), eval_size=np.array(eval_size))
        atomic_write_bytes(path, buf.getvalue())
    return feats


# ----------------------------------------------------------------------------------------- FID


@dataclass(frozen=True)
class GaussianFit:
    """Mean, covariance trace and a factor ``F`` with ``cov = F @ F.T`` (``np.cov`` normalisation, n - 1)."""

    mean: np.ndarray
    trace: float
    factor: np.ndarray
    n: int


def gaussian_fit(features: np.ndarray) -> GaussianFit:
    x = np.asarray(features, dtype=np.float64)
    n, dims = x.shape
    if n < 2:
        raise ValueError("a covariance needs at least 2 feature vectors")
    mean = x.mean(axis=0)
    centred = x - mean
    if n - 1 <= dims:
        factor = centred.T / math.sqrt(n - 1)
    else:
        eigval, eigvec = np.linalg.eigh(centred.T @ centred / (n - 1))
        factor = eigvec * np.sqrt(np.clip(eigval, 0.0, None))
    return GaussianFit(mean, float(np.sum(centred**2) / (n - 1)), factor, n)


def nuclear_norm(matrix: np.ndarray, exact: bool = True) -> float:
    """Sum of singular values: by SVD (``exact``), or faster from the eigenvalues of the smaller Gram matrix
    (absolute error about sqrt(eps) * largest singular value; used for bootstrap replicates)."""
    if exact:
        return float(np.sum(np.linalg.svd(matrix, compute_uv=False)))
    a, b = matrix.shape
    gram = matrix @ matrix.T if a <= b else matrix.T @ matrix
    return float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))))


def _frechet(mean: np.ndarray, trace: float, projected_centred: np.ndarray, n: int, ref: GaussianFit,
             exact: bool = True) -> float:
    cross = nuclear_norm(projected_centred, exact) / math.sqrt(n - 1)  # tr sqrt(S_gen S_ref)
    diff = mean - ref.mean
    return float(diff @ diff + trace + ref.trace - 2.0 * cross)


def frechet_distance(features: np.ndarray, ref: GaussianFit) -> float:
    """FID between generated ``features`` ``[n, D]`` and the reference fit."""
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        raise ValueError("FID needs at least 2 generated images")
    mean = x.mean(axis=0)
    centred = x - mean
    return _frechet(mean, float(np.sum(centred**2) / (n - 1)), centred @ ref.factor, n, ref)


def fid(features: np.ndarray, ref_features: np.ndarray) -> float:
    return frechet_distance(features, gaussian_fit(ref_features))


def fid_bootstrap(features: np.ndarray, ref: GaussianFit, resamples: int, seed: int) -> np.ndarray:
    """FID of ``resamples`` bootstrap resamples of the generated features (reference fixed)."""
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    projected = x @ ref.factor
    rng = np.random.default_rng(seed)
    out = np.empty(max(resamples, 0))
    for i in range(out.size):
        idx = rng.integers(0, n, size=n)
        xb = x[idx]
        mean = xb.mean(axis=0)
        trace = float(np.sum((xb - mean) ** 2) / (n - 1))
        pb = projected[idx]
        out[i] = _frechet(mean, trace, pb - pb.mean(axis=0), n, ref, exact=False)
    return out


# ----------------------------------------------------------------------------------------- KID


def _poly_kernel(a: np.ndarray, b: np.ndarray, dims: int) -> np.ndarray:
    return (a @ b.T / dims + 1.0) ** 3


def _offdiag_mean(k: np.ndarray) -> float:
    m = k.shape[0]
    return float((k.sum() - np.trace(k)) / (m * (m - 1)))


def kernel_inception_distance(feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = KID_SUBSETS,
                              max_subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> float:
    """clean-fid's ``kernel_distance(feats1, feats2)`` (KID, not scaled).

    Per subset: ``m = min(n1, n2, max_subset_size)`` rows of each set without replacement, unbiased MMD^2 with
    the kernel ``(x.y / D + 1)^3``; the mean over subsets. The subsets are drawn from
    ``np.random.RandomState(seed)`` in clean-fid's order (set 2, then set 1), so the value equals clean-fid's
    after ``np.random.seed(seed)``.
    """
    a, b = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    dims = a.shape[1]
    m = min(a.shape[0], b.shape[0], max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 feature vectors on each side")
    rs = np.random.RandomState(seed % 2**32)
    total = 0.0
    for _ in range(num_subsets):
        x = b[rs.choice(b.shape[0], m, replace=False)]
        y = a[rs.choice(a.shape[0], m, replace=False)]
        total += (_offdiag_mean(_poly_kernel(x, x, dims)) + _offdiag_mean(_poly_kernel(y, y, dims))
                  - 2.0 * float(_poly_kernel(x, y, dims).mean()))
    return total / num_subsets


def kid_bootstrap(ref: np.ndarray, gen: np.ndarray, resamples: int, seed: int,
                  max_subset_size: int = KID_SUBSET_SIZE) -> np.ndarray:
    """Unbiased MMD^2 of bootstrap resamples of ``gen`` against a fixed reference subset (see module doc)."""
    ref, gen = np.asarray(ref, np.float64), np.asarray(gen, np.float64)
    dims = ref.shape[1]
    rng = np.random.default_rng(seed)
    r = ref[rng.choice(ref.shape[0], min(ref.shape[0], max_subset_size), replace=False)]
    rr = _offdiag_mean(_poly_kernel(r, r, dims))
    k_gg = _poly_kernel(gen, gen, dims)
    k_gr = _poly_kernel(gen, r, dims)
    n, m = gen.shape[0], min(gen.shape[0], max_subset_size)
    out = np.full(max(resamples, 0), np.nan)
    for i in range(out.size):
        idx = rng.integers(0, n, size=m)
        distinct = idx[:, None] != idx[None, :]
        if not distinct.any():
            continue
        out[i] = float(k_gg[np.ix_(idx, idx)][distinct].mean()) + rr - 2.0 * float(k_gr[idx].mean())
    return out


# ----------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class DistributionJob:
    """One method x task: its successful result images."""

    method: str
    task: str
    paths: tuple[Path, ...]


def _size_note(n: int, dims: int, metric: str) -> str:
    if n < dims:
        return (f"ok (n={n} < {dims} feature dims: {metric} is biased upward at this n; compare only at equal "
                "n, see the interval)")
    return "ok"


def distribution_rows(jobs: Sequence[DistributionJob], real_paths: Sequence[Path], real_hash: str,
                      metrics: Sequence[str], weights: WeightStore, extractors: Mapping[str, Callable],
                      device, eval_size: int, resamples: int, base_seed: int = 0,
                      progress: bool = False) -> list[Row]:
    """``fid``, ``kid`` (x1000) and ``fid_clip`` rows for every job (only the metrics asked for)."""
    rows: list[Row] = []
    plan = [(INCEPTION_NAME, [m for m in ("fid", "kid") if m in metrics]),
            (CLIP_NAME, ["fid_clip"] if "fid_clip" in metrics else [])]
    for name, names in plan:
        if not names:
            continue

        def all_rows(make, names=names) -> list[Row]:
            return [make(job.method, job.task, metric) for job in jobs for metric in names]

        try:
            extractor = (inception_extractor(weights, device) if name == INCEPTION_NAME
                         else plugin_extractor(name, extractors, weights, device))
        except Unavailable as exc:
            rows += all_rows(lambda m, t, metric, exc=exc: skipped(m, t, metric, str(exc)))
            continue
        except Exception as exc:  # a broken network file or plugin
            why = f"loading {name}: {type(exc).__name__}: {exc}"
            rows += all_rows(lambda m, t, metric, why=why: failed(m, t, metric, why))
            continue
        if len(real_paths) < 2:
            rows += all_rows(lambda m, t, metric: skipped(m, t, metric, "the real image set has fewer than 2 "
                                                                         "images"))
            continue
        try:
            ref_feats = reference_features(real_paths, real_hash, extractor, eval_size, device, progress)
            ref_fit = gaussian_fit(ref_feats)
        except Exception as exc:
            rows += all_rows(lambda m, t, metric, exc=exc: failed(m, t, metric, f"real-set features: "
                                                                  f"{type(exc).__name__}: {exc}"))
            continue
        for job in jobs:
            n = len(job.paths)
            if n < 2:
                why = "needs at least 2 successful outputs" + (f" (has {n})" if n else "")
                rows += [skipped(job.method, job.task, metric, why, n) for metric in names]
                continue
            try:
                gen = image_features(job.paths, extractor, eval_size, device, progress=progress,
                                     description=f"{extractor.name} {job.method}/{job.task}")
            except Exception as exc:
                rows += [failed(job.method, job.task, metric, f"features: {type(exc).__name__}: {exc}", n)
                         for metric in names]
                continue
            for metric in names:
                seed = row_seed(job.method, job.task, metric, base=base_seed)
                try:
                    if metric == "kid":
                        value = KID_SCALE * kernel_inception_distance(ref_feats, gen, seed=seed)
                        low, high = percentile_interval(KID_SCALE * kid_bootstrap(ref_feats, gen, resamples, seed))
                        status = "ok"
                    else:
                        value = frechet_distance(gen, ref_fit)
                        low, high = percentile_interval(fid_bootstrap(gen, ref_fit, resamples, seed))
                        status = _size_note(n, gen.shape[1], "FID")
                except Exception as exc:
                    rows.append(failed(job.method, job.task, metric, f"{type(exc).__name__}: {exc}", n))
                    continue
                if extractor.note:
                    status = f"ok ({extractor.note})" if status == "ok" else status[:-1] + f"; {extractor.note})"
                rows.append(Row(job.method, job.task, metric, value, low, high, n, status))
    return rows


__all__ = [
    "CLIP_NAME", "INCEPTION", "INCEPTION_NAME", "INCEPTION_URL", "DistributionJob", "Extractor", "GaussianFit",
    "Unavailable", "dataset_hash", "distribution_rows", "fid", "fid_bootstrap",
    "frechet_distance", "gaussian_fit", "image_features", "inception_extractor", "kernel_inception_distance",
    "kid_bootstrap", "plugin_extractor", "plugin_network", "reference_features",
]
