"""The image grid: a tab per task variant, a row per triplet, pages of ``page_size`` rows.

Columns: Face, Shape, Color (the inputs playing those roles in the task, ``harness.protocol.TASKS``), Ground
truth (synthetic runs), then one column per method. Thumbnails (JPEG) are made once into ``thumbs/`` and reused
while newer than their source; they link to the full-resolution PNGs: relative to the run directory when the
report lies inside it, else copied (hard-linked when possible) into ``images/`` once.

Each task's pages are rendered in triplet order without JavaScript; a per-task data file (``grid-data/<task>.js``,
loaded on demand) lets a small inline script sort all rows of the task by a per-item metric and page through
them on the client.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from PIL import Image

from harness.metrics.catalog import info
from harness.protocol import TASKS
from harness.store import Triplet, method_dir
from harness.text import prompt_of
from reports.files import save_image, write_text
from reports.runs import Comparison, Run

ROLE_NAMES = ("Face", "Shape", "Color")
ERROR_LIMIT = 4000  # characters of an error message kept in the grid


@dataclass(frozen=True)
class Picture:
    thumb: str  # URL relative to the report directory
    full: str
    alt: str


@dataclass
class GridCell:
    kind: str  # "image" | "failed" | "skipped" | "missing" | "input" | "text" | "blank"
    picture: Picture | None = None
    caption: str = ""  # input cells: the image id
    error: str = ""
    text: str = ""  # text cells: the prompt of a text reference
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict = {"k": self.kind[0]}
        if self.picture:
            out.update(t=self.picture.thumb, f=self.picture.full, a=self.picture.alt)
        if self.caption:
            out["c"] = self.caption
        if self.error:
            out["e"] = self.error
        if self.text:
            out["x"] = self.text
        if self.metrics:
            out["m"] = self.metrics
        return out


@dataclass
class GridRow:
    triplet: str
    number: int  # 1-based position in triplet order
    cells: list[GridCell]


@dataclass
class GridTask:
    task: str
    roles: tuple[str, str, str]
    columns: list[str]  # headers after the triplet column
    n_fixed: int  # columns before the first method column
    methods: list[str]
    rows: list[GridRow]
    item_metrics: list[str]
    badges: list[str] = field(default_factory=list)  # per column: "filled weights" beside real runs, else ""

    def sort_options(self) -> list[tuple[str, str]]:
        """(value, label) for the sort menu: every per-item metric of every method that has it."""
        out = []
        for metric in self.item_metrics:
            for j, method in enumerate(self.methods):
                if any(metric in row.cells[self.n_fixed + j].metrics for row in self.rows):
                    out.append((f"{metric}|{j}", f"{info(metric).label} \u2014 {method}"))
        return out


def _url(path: str) -> str:
    return quote(path.replace(os.sep, "/"), safe="/")


def _safe_rel(rel: str) -> Path:
    """A relative path below the run directory for ``rel`` (odd paths get a hashed name)."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        return Path("external") / hashlib.sha1(rel.encode()).hexdigest()[:16] / p.name
    return p


def _is_inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _up_to_date(target: Path, source: Path) -> bool:
    try:
        return target.stat().st_mtime >= source.stat().st_mtime
    except FileNotFoundError:
        return False


class Assets:
    """Thumbnails and full-size links for the report directory."""

    def __init__(self, out_dir: Path, thumb_size: int = 128, quality: int = 85):
        self.out_dir = out_dir
        self.thumb_size = thumb_size
        self.quality = quality
        self.thumbs: dict[Path, Path] = {}  # thumbnail -> source
        self.copies: dict[Path, Path] = {}  # copy -> source
        self._run_keys: dict[Path, str] = {}
        self._prefixes: dict[Path, str | None] = {}
        self.made = 0
        self.reused = 0
        self.errors: list[str] = []  # images that could not be read

    def run_key(self, run: Run) -> str:
        if run.root not in self._run_keys:
            key = re.sub(r"[^A-Za-z0-9._-]+", "_", run.name).strip("._") or "run"
            used = set(self._run_keys.values())
            base, i = key, 2
            while key in used:
                key, i = f"{base}_{i}", i + 1
            self._run_keys[run.root] = key
        return self._run_keys[run.root]

    def _run_prefix(self, run: Run) -> str | None:
        """The run directory relative to the report when the report lies inside it, else None."""
        if run.root not in self._prefixes:
            inside = _is_inside(self.out_dir, run.root)
            self._prefixes[run.root] = os.path.relpath(run.root, self.out_dir) if inside else None
        return self._prefixes[run.root]

    def picture(self, run: Run, rel: str, alt: str) -> Picture:
        """Thumbnail and full-size link (URLs relative to the report) of ``rel`` in ``run``."""
        source = run.root / rel
        safe = _safe_rel(rel).as_posix()
        key = self.run_key(run)
        thumb = f"thumbs/{self.thumb_size}/{key}/{PurePosixPath(safe).with_suffix('.jpg')}"
        self.thumbs[self.out_dir / thumb] = source
        prefix = self._run_prefix(run)
        if prefix is not None:
            full = f"{prefix}/{rel}"
        else:
            full = f"images/{key}/{safe}"
            self.copies[self.out_dir / full] = source
        return Picture(_url(thumb), _url(full), alt)

    def _make_thumb(self, thumb: Path, source: Path) -> bool:
        if _up_to_date(thumb, source):
            return False
        try:
            with Image.open(source) as img:
                img = img.convert("RGB")
                img.thumbnail((self.thumb_size, self.thumb_size), Image.Resampling.LANCZOS)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # an unreadable output
            self.errors.append(f"{source}: {exc}")
            return False
        save_image(thumb, img, quality=self.quality)
        return True

    def _copy(self, copy: Path, source: Path) -> None:
        try:
            if copy.stat().st_size == source.stat().st_size and _up_to_date(copy, source):
                return
        except FileNotFoundError:
            pass
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_name(f".{copy.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
        os.replace(tmp, copy)

    def build(self, workers: int | None = None) -> None:
        """Make missing or stale thumbnails and copies (threads: PIL decodes and resizes outside the GIL)."""
        thumbs = [(t, s) for t, s in self.thumbs.items() if s.is_file()]
        copies = [(c, s) for c, s in self.copies.items() if s.is_file()]
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            made = list(pool.map(lambda ts: self._make_thumb(*ts), thumbs))
            list(pool.map(lambda cs: self._copy(*cs), copies))
        self.made += sum(made)
        self.reused += len(made) - sum(made)


def _row_key(run: Run, triplet: Triplet) -> tuple[str, str, str, str]:
    """Rows of several runs merge when the triplet id and the three images' contents agree."""
    return (triplet.id, run.image_key(triplet.face), run.image_key(triplet.shape), run.image_key(triplet.color))


def build_grid(comp: Comparison, task: str, assets: Assets) -> GridTask:
    """Rows (one per distinct triplet over the runs that ran ``task``) and their cells."""
    roles = TASKS.get(task, ("face", "shape", "color"))
    runs = [run for run in comp.runs if task in run.tasks]
    entries = [e for e in comp.entries if e.run in runs]
    show_truth = any(run.synthetic for run in runs)
    # distinct triplets (id and image contents), in the order of the first run that has them
    order: dict[tuple[str, str, str, str], tuple[Run, Triplet]] = {}
    by_run: dict[Path, dict[tuple[str, str, str, str], str]] = {}
    for run in runs:
        ids = by_run.setdefault(run.root, {})
        for t in run.triplets:
            sig = _row_key(run, t)
            ids[sig] = t.id
            order.setdefault(sig, (run, t))
    item_metrics = comp.item_metric_names(task)
    rows = []
    for number, (sig, (run, triplet)) in enumerate(order.items(), 1):
        cells = []
        for role_name, image_id in zip(ROLE_NAMES, triplet.roles(roles), strict=True):
            rel = run.input_rel(image_id)
            prompt = prompt_of(image_id)
            if prompt is not None:
                cells.append(GridCell("text", caption="text reference", text=prompt))
            elif (run.root / rel).is_file():
                cells.append(GridCell("input", assets.picture(run, rel, f"{role_name}: {image_id}"), image_id))
            else:
                cells.append(GridCell("missing", caption=image_id, error="input image not found"))
        if show_truth:
            truth = None
            for r in runs:
                tid = by_run[r.root].get(sig)
                if tid is not None and r.synthetic:
                    rel = f"ground_truth/{task}/{tid}.png"
                    if (r.root / rel).is_file():
                        truth = GridCell("image", assets.picture(r, rel, f"ground truth {task} {tid}"))
                        break
            cells.append(truth or GridCell("blank"))
        for entry in entries:
            tid = by_run[entry.run.root].get(sig)
            if tid is None:
                cells.append(GridCell("blank", error="triplet not in this run"))
                continue
            cells.append(_method_cell(entry.run, entry.method, task, tid, entry.label, assets))
        rows.append(GridRow(triplet.id, number, cells))
    columns = [f"{name} ({role})" for name, role in zip(ROLE_NAMES, roles, strict=True)]
    if show_truth:
        columns.append("Ground truth")
    n_fixed = len(columns)
    columns += [e.label for e in entries]
    mixed = len({e.filled for e in entries}) > 1
    badges = [""] * n_fixed + ["filled weights" if e.filled and mixed else "" for e in entries]
    return GridTask(task, roles, columns, n_fixed, [e.label for e in entries], rows, item_metrics, badges)


def _method_cell(run: Run, method: str, task: str, triplet: str, label: str, assets: Assets) -> GridCell:
    record = run.records.get((method, task, triplet))
    metrics = run.per_item.get((method, task, triplet), {})
    metrics = {m: metrics[m] for m in sorted(metrics, key=_metric_order) if math.isfinite(metrics[m])}
    if record is not None and record.status == "skipped":
        return GridCell("skipped", error=f"skipped: {record.error or ''}"[:ERROR_LIMIT], metrics=metrics)
    if record is not None and record.status != "ok":
        error = (record.error or record.status or "failed")[:ERROR_LIMIT]
        return GridCell("failed", error=error, metrics=metrics)
    rel = (record.output if record and record.output else None) or f"outputs/{method_dir(method)}/{task}/{triplet}.png"
    if (run.root / rel).is_file():
        return GridCell("image", assets.picture(run, rel, f"{label} {task} {triplet}"), metrics=metrics)
    return GridCell("missing", error="no output", metrics=metrics)


def _metric_order(name: str) -> tuple[int, str]:
    from harness.metrics.catalog import CATALOG

    names = list(CATALOG)
    return (names.index(name) if name in names else len(names), name)


def write_data(grid: GridTask, path: Path) -> None:
    """The rows of a task as a script (``window.GRID_DATA[task] = ...``) for client-side sorting."""
    data = {"rows": [{"id": r.triplet, "n": r.number, "c": [c.to_json() for c in r.cells]} for r in grid.rows]}
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True).replace("<", "\\u003c")
    write_text(path, "window.GRID_DATA = window.GRID_DATA || {};\n"
                            f"window.GRID_DATA[{json.dumps(grid.task)}] = {text};\n")


def page_name(task: str, page: int) -> str:
    return f"grid-{quote(task, safe='')}-{page}.html"


def pages(n_rows: int, page_size: int) -> int:
    return max(1, math.ceil(n_rows / max(1, page_size)))


def page_links(current: int, total: int, task: str, window: int = 3) -> list[tuple[str, str | None]]:
    """(text, href or None for the current page / a gap) for a pager."""
    out: list[tuple[str, str | None]] = []
    if current > 1:
        out.append(("\u2039 prev", page_name(task, current - 1)))
    shown = sorted({1, total, *range(max(1, current - window), min(total, current + window) + 1)})
    last = 0
    for p in shown:
        if p - last > 1:
            out.append(("\u2026", None))
        out.append((str(p), None if p == current else page_name(task, p)))
        last = p
    if current < total:
        out.append(("next \u203a", page_name(task, current + 1)))
    return out
