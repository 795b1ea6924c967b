"""The harness's metrics: image quality vs references, hair colour, identity, FID / KID / FID_CLIP, time.

Public API::

    compute(run_dir, weights, device="cpu", progress=True) -> pandas.DataFrame   # writes metrics.csv, per_item.csv
    read_metrics(run_dir) -> pandas.DataFrame
    CATALOG, info(name)                     # names, labels, directions (harness.metrics.catalog)
    INCEPTION                               # the Inception-v3 checkpoint (registered below)

Modules: :mod:`~harness.metrics.quality` (PSNR, SSIM, CIEDE2000, masked PSNR), :mod:`~harness.metrics.fid`
(clean-fid FID, KID, FID_CLIP), :mod:`~harness.metrics.identity` (dlib descriptors),
:mod:`~harness.metrics.stats` (bootstrap), :mod:`~harness.metrics.evaluate` (``compute``).

Weights: clean-fid's ``inception-2015-12-05.pt`` is declared here (:data:`INCEPTION`); CLIP ViT-B/32 (``ViT-B-32.pt``,
checkpoint key ``clip_vitb32``) is declared by the CLIP network module, which also registers the ``"clip_vitb32"``
feature extractor used for FID_CLIP. Nothing is ever downloaded: missing files make their metrics "skipped".

Importing this package is cheap (no torch, no clean-fid); they are imported when metrics are computed.
"""

from __future__ import annotations

from typing import Any

from harness.hookspecs import hookimpl
from harness.metrics.catalog import CATALOG, MetricInfo, info
from harness.metrics.fid import CLIP_NAME, INCEPTION, INCEPTION_URL


@hookimpl
def register_checkpoints(register):
    register(INCEPTION)


def compute(run_dir, weights=None, device: Any = "cpu", progress: bool = True, extractors=None):
    """Evaluate every method x task of a run; writes ``metrics.csv`` and ``per_item.csv`` (see
    :func:`harness.metrics.evaluate.compute`)."""
    from harness.metrics.evaluate import compute as _compute

    return _compute(run_dir, weights, device=device, progress=progress, extractors=extractors)


def read_metrics(run_dir):
    from harness.metrics.evaluate import read_metrics as _read

    return _read(run_dir)


__all__ = ["CATALOG", "CLIP_NAME", "INCEPTION", "INCEPTION_URL", "MetricInfo", "compute", "info", "read_metrics"]
