"""Rows of ``metrics.csv`` / ``per_item.csv`` and writing them (atomically, via :mod:`harness.store`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.store import METRICS, METRICS_COLUMNS, PER_ITEM, write_csv

PER_ITEM_COLUMNS = ("method", "task", "triplet", "metric", "value")


@dataclass(frozen=True)
class Row:
    """One line of ``metrics.csv``. ``status`` is ``ok[ (note)]``, ``skipped: <why, how to enable>`` or
    ``failed: <why>``; ``value`` and the interval are NaN unless ok."""

    method: str
    task: str
    metric: str
    value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int = 0
    status: str = "ok"

    def as_tuple(self) -> tuple:
        return (self.method, self.task, self.metric, self.value, self.ci_low, self.ci_high, self.n, self.status)


@dataclass(frozen=True)
class ItemValue:
    """One line of ``per_item.csv``."""

    method: str
    task: str
    triplet: str
    metric: str
    value: float


def one_line(text: object) -> str:
    """A message on one CSV-friendly line."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def skipped(method: str, task: str, metric: str, why: str, n: int = 0) -> Row:
    return Row(method, task, metric, n=n, status=f"skipped: {one_line(why)}")


def failed(method: str, task: str, metric: str, why: str, n: int = 0) -> Row:
    return Row(method, task, metric, n=n, status=f"failed: {one_line(why)}")


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else format(value, ".10g")
    return value


def write_metrics(run_dir: Path, rows: Sequence[Row]) -> None:
    write_csv(Path(run_dir) / METRICS, METRICS_COLUMNS,
              ([_fmt(v) for v in r.as_tuple()] for r in rows))


def write_per_item(run_dir: Path, items: Iterable[ItemValue]) -> None:
    write_csv(Path(run_dir) / PER_ITEM, PER_ITEM_COLUMNS,
              ((i.method, i.task, i.triplet, i.metric, _fmt(float(i.value))) for i in items))


def frame(rows: Sequence[Row]):
    """``metrics.csv`` as a pandas DataFrame (values NaN when not ok)."""
    import pandas as pd

    df = pd.DataFrame([r.as_tuple() for r in rows], columns=list(METRICS_COLUMNS))
    return df.astype({"value": float, "ci_low": float, "ci_high": float, "n": int, "status": str})


__all__ = ["PER_ITEM_COLUMNS", "ItemValue", "Row", "failed", "frame", "one_line", "skipped", "write_metrics",
           "write_per_item"]
