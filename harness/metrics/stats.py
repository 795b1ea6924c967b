"""Bootstrap percentile intervals with fixed, per-row seeds."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

LEVEL = 0.95


def row_seed(*parts: object, base: int = 0) -> int:
    """A stable 32-bit seed for one metrics row (independent of the order rows are computed in)."""
    text = "|".join(str(p) for p in (base, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def iqr(values: np.ndarray, axis: int = -1) -> np.ndarray:
    q75, q25 = np.percentile(values, [75, 25], axis=axis)
    return q75 - q25


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates (NaNs ignored)."""
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(values, statistic: Callable[..., np.ndarray] = np.mean, resamples: int = 200, seed: int = 0,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (resampled with replacement).

    ``statistic(array, axis=1)`` must reduce each row of a ``[resamples, n]`` array. One value gives a
    zero-width interval; none (or ``resamples <= 0``) gives NaNs.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0 or resamples <= 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    reps = []
    chunk = max(1, 2_000_000 // x.size)  # bound memory for large n
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, x.size, size=(min(chunk, resamples - start), x.size))
        reps.append(np.asarray(statistic(x[idx], axis=1), dtype=np.float64))
    return percentile_interval(np.concatenate(reps), level)


__all__ = ["LEVEL", "bootstrap_ci", "iqr", "percentile_interval", "row_seed"]
