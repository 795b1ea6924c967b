"""Plots for the report (matplotlib, Agg canvas, PNG): quality vs time, and per-task bars with 95% intervals.

Figures are built with ``matplotlib.figure.Figure`` and an Agg canvas directly, so the global pyplot backend of
the calling process is left alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.metrics.catalog import info
from reports.files import write_bytes
from reports.runs import Comparison, Entry, MetricValue
from reports.tables import FILLED_BANNER

# Metrics that get a per-task bar chart, when some method has a number for them.
BAR_METRICS = ("fid", "fid_clip", "psnr_gt", "ssim_gt", "lpips_gt", "hair_color_de", "psnr_outside_hair",
               "identity", "time_median_s")


@dataclass(frozen=True)
class Plot:
    file: str  # relative to the report directory
    title: str
    description: str


def _save(fig: Figure, path: Path) -> None:
    import io

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes(path, buf.getvalue())


def _watermark(fig: Figure, comp: Comparison) -> None:
    if comp.filled_runs:
        fig.text(0.5, 0.5, FILLED_BANNER.upper(), ha="center", va="center", rotation=25, fontsize=26,
                 color="#c0392b", alpha=0.25, weight="bold", zorder=10)


def _ok(value: MetricValue | None) -> bool:
    return value is not None and value.ok


def _pick(comp: Comparison, metric: str, tasks: list[str]) -> str | None:
    """The first task in ``tasks`` for which some method has a number of ``metric``."""
    for task in tasks:
        if any(_ok(comp.metric(e, task, metric)) for e in comp.entries):
            return task
    return None


def quality_vs_time(comp: Comparison, path: Path) -> Plot | None:
    """One point per method: time per item (log axis) against FID (or PSNR gt when there is no FID)."""
    preferred = ["full", *[t for t in comp.tasks if t != "full"]]
    metric, task = None, None
    for candidate in ("fid", "psnr_gt"):
        task = _pick(comp, candidate, preferred)
        if task is not None:
            metric = candidate
            break
    if metric is None or task is None:
        return None
    time_task = _pick(comp, "time_median_s", [task, "all", *preferred])
    if time_task is None:
        return None
    points: list[tuple[Entry, float, float]] = []
    for entry in comp.entries:
        q, t = comp.metric(entry, task, metric), comp.metric(entry, time_task, "time_median_s")
        if _ok(q) and _ok(t) and t.value > 0:  # type: ignore[union-attr, operator]
            points.append((entry, t.value, q.value))  # type: ignore[union-attr, arg-type]
    if not points:
        return None
    m = info(metric)
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    for entry, t, q in points:
        ax.scatter([t], [q], s=60, marker="s" if entry.reference else "o", zorder=3,
                   facecolors="none" if entry.reference else None, edgecolors="#333")
        ax.annotate(entry.label, (t, q), xytext=(6, 4), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"median time per item, s (task {time_task}, log scale)")
    better = "higher" if m.higher_is_better else "lower"
    ax.set_ylabel(f"{m.label} (task {task}; {better} is better)")
    ax.set_title(f"Quality vs time: {m.label} ({task})", fontsize=10)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="x", alpha=0.1)
    ax.margins(x=0.25, y=0.15)
    _watermark(fig, comp)
    fig.tight_layout()
    _save(fig, path)
    return Plot(path.name, "Quality vs time",
                f"{m.label} on task {task} against the median time per item on task {time_task}; "
                f"squares are reference bounds.")


def task_bars(comp: Comparison, metric: str, path: Path) -> Plot | None:
    """Grouped bars: x = task variant, one bar per method, error bars = 95% interval when known."""
    tasks = [t for t in comp.tasks_for(metric) if any(_ok(comp.metric(e, t, metric)) for e in comp.entries)]
    entries = [e for e in comp.entries if any(_ok(comp.metric(e, t, metric)) for t in tasks)]
    if not tasks or not entries:
        return None
    m = info(metric)
    fig = Figure(figsize=(7.5 if len(tasks) * len(entries) <= 30 else 11.0, 4.2))
    ax = fig.add_subplot()
    width = 0.8 / len(entries)
    for k, entry in enumerate(entries):
        xs, ys, lo, hi = [], [], [], []
        for i, task in enumerate(tasks):
            v = comp.metric(entry, task, metric)
            if not _ok(v):
                continue
            assert v is not None and v.value is not None
            xs.append(i - 0.4 + width * (k + 0.5))
            ys.append(v.value)
            lo.append(v.value - v.ci_low if v.has_ci else 0.0)  # type: ignore[operator]
            hi.append(v.ci_high - v.value if v.has_ci else 0.0)  # type: ignore[operator]
        has_err = any(x > 0 for x in lo + hi)
        ax.bar(xs, ys, width=width * 0.92, label=entry.label, hatch="//" if entry.reference else None,
               yerr=[lo, hi] if has_err else None, capsize=3, error_kw={"elinewidth": 1})
    ax.set_xticks(range(len(tasks)), tasks)
    if metric.startswith("time") or metric == "peak_mem_mb":
        ax.set_yscale("log")  # costs span orders of magnitude
    better = "higher" if m.higher_is_better else "lower"
    ax.set_ylabel(f"{m.label}{' (' + m.unit + ')' if m.unit else ''}")
    ax.set_title(f"{m.label} per task ({better} is better; error bars: 95% interval)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ncol = max(1, math.ceil(len(entries) / 6))
    ax.legend(fontsize=8, ncol=ncol, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    _watermark(fig, comp)
    fig.tight_layout()
    _save(fig, path)
    return Plot(path.name, f"{m.label} per task", m.description)


def make_plots(comp: Comparison, out_dir: Path) -> list[Plot]:
    """All plots into ``out_dir`` (file names relative to ``out_dir.parent`` are set by the caller)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    scatter = quality_vs_time(comp, out_dir / "quality_vs_time.png")
    if scatter:
        plots.append(scatter)
    for metric in BAR_METRICS:
        bars = task_bars(comp, metric, out_dir / f"bars_{metric}.png")
        if bars:
            plots.append(bars)
    return plots
