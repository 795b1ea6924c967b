"""The HTML report of one or several run directories: tables, plots and an image grid, all local files.

``render(run_dirs, out_dir)`` writes::

    out_dir/index.html               header (runs, protocol, device, git), warnings, tables (main results,
                                     ground-truth metrics (first when FID/KID are skipped), per-task
                                     reference tables: collapsed when the ground-truth table is there),
                                     plots, failures, methods
    out_dir/tables/<key>.{csv,md,tex,html}
    out_dir/plots/*.png
    out_dir/grid-<task>-<page>.html  the image grid, page_size triplets per page
    out_dir/grid-data/<task>.js      all rows of a task, for client-side sorting
    out_dir/thumbs/<size>/<run>/...  JPEG thumbnails (made once, reused while newer than their source)
    out_dir/images/<run>/...         full-size copies, only when out_dir is not inside the run directory

Several runs merge into one comparison: method labels that occur in several runs get ``(run name)`` appended,
and the page warns when protocols, image sets or devices differ. Runs with ``fill_weights`` put a "filled
weights: not a result" banner on every page.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from harness.metrics.catalog import info
from harness.protocol import TASKS
from reports.files import write_text
from reports.grid import Assets, GridTask, build_grid, page_links, page_name, pages, write_data
from reports.plots import make_plots
from reports.runs import Comparison, merge
from reports.tables import Table, build_tables, fold_skipped, to_html, write_table
from reports.templating import environment

__all__ = ["render"]


def _short(text: Any, n: int = 12) -> str:
    return str(text)[:n] if text else "?"


def _when(text: Any) -> str:
    """An ISO time as ``2025-01-01 12:00 UTC`` (other text unchanged)."""
    try:
        when = _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    offset = when.utcoffset()
    zone = "" if offset is None else " UTC" if not offset else when.strftime(" %z")
    return when.strftime("%Y-%m-%d %H:%M") + zone


def _run_summary(run) -> dict[str, Any]:
    m = run.manifest
    proto = run.protocol
    dataset = m.get("dataset") or {}
    device = m.get("device") or {}
    git = m.get("git") or {}
    ds_text = f"{dataset.get('kind', (proto.get('dataset') or {}).get('kind', '?'))}, " \
              f"{dataset.get('n_images', '?')} images"
    if dataset.get("content_hash"):
        ds_text += f", hash {_short(dataset['content_hash'])}"
    dev_text = " ".join(str(x) for x in (device.get("type"), device.get("name")) if x) or "?"
    if device.get("threads"):
        dev_text += f", {device['threads']} threads"
    git_text = _short(git.get("commit")) + (" (dirty)" if git.get("dirty") else "")
    return {
        "name": run.name, "path": str(run.root), "created": _when(m.get("created", "?")),
        "protocol": proto.get("name", "?"), "protocol_description": proto.get("description", ""),
        "dataset": ds_text, "n_triplets": m.get("n_triplets", len(run.triplets)), "tasks": run.tasks,
        "device": dev_text, "git": git_text, "harness_version": m.get("harness_version", "?"),
        "filled": run.filled, "command": " ".join(m["command"]) if isinstance(m.get("command"), list)
        else str(m.get("command", "?")),
        "protocol_json": json.dumps(proto, default=str), "packages": sorted((m.get("packages") or {}).items()),
    }


def _methods(comp: Comparison) -> list[dict[str, Any]]:
    out = []
    for e in comp.entries:
        i = e.info
        out.append({"label": e.label, "name": i.get("name", e.method.split(":")[0]),
                    "variant": i.get("variant") or "-", "plugin": i.get("plugin") or "-",
                    "description": i.get("description", ""), "run": e.run.name, "filled": e.filled,
                    "params": sorted((i.get("params") or {}).items()),
                    "checkpoints": sorted((i.get("checkpoints") or {}).items())})
    return out


def _failures(comp: Comparison) -> tuple[list[str], list[dict[str, Any]], list[tuple[str, str, str, str]]]:
    tasks = comp.tasks
    rows, first = [], []
    for e in comp.entries:
        total: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        first_error = None
        for (method, task, triplet), rec in e.run.records.items():
            if method != e.method:
                continue
            total[task] += 1
            if rec.status != "ok":
                failed[task] += 1
                first_error = first_error or (e.label, task, triplet, (rec.error or rec.status)[:300])
        rows.append({"label": e.label, "cells": [{"total": total[t], "failed": failed[t]} for t in tasks]})
        if first_error:
            first.append(first_error)
    return tasks, rows, first


def _filled_note(comp: Comparison) -> str:
    names = ", ".join(r.name for r in comp.filled_runs)
    return (f"run{'s' if len(comp.filled_runs) > 1 else ''} {names} used deterministically filled network "
            "weights instead of pretrained checkpoints; the numbers and images only exercise the code path.")


def _index_order(tables: list[Table]) -> list[Table]:
    """The tables in the index's order: the ground-truth table goes first when the main table has no quality
    number (FID / FID_CLIP / KID all skipped, only time left), so that the first screen shows numbers."""
    keys = [t.key for t in tables]
    if "main" not in keys or "ground_truth" not in keys:
        return tables
    main, gt = tables[keys.index("main")], tables[keys.index("ground_truth")]
    if any(not c.metric.startswith("time") for c in fold_skipped(main)[0].columns):
        return tables
    return [gt, main] + [t for t in tables if t.key not in ("main", "ground_truth")]


def _remove_stale(out_dir: Path, written: set[Path]) -> None:
    for path in out_dir.glob("grid-*.html"):
        if path not in written:
            path.unlink(missing_ok=True)


def render(run_dirs: Sequence[str | Path], out_dir: str | Path, *, page_size: int = 50, thumb_size: int = 128,
           ci: bool = True, workers: int | None = None) -> Path:
    """Write the report of ``run_dirs`` into ``out_dir``; returns ``out_dir/index.html``."""
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    comp = merge(run_dirs)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()

    grid_tasks = [t for t in comp.tasks if t in TASKS or any(t in run.tasks for run in comp.runs)]
    assets = Assets(out_dir, thumb_size)
    grids: list[GridTask] = [build_grid(comp, task, assets) for task in grid_tasks]
    grid_first = {g.task: page_name(g.task, 1) for g in grids}
    names = [r.name for r in comp.runs]
    title = (f"hair-harness report: {names[0]}" if len(names) == 1
             else f"hair-harness comparison of {len(names)} runs: {', '.join(names)}")
    common = {
        "title": title, "filled": bool(comp.filled_runs), "filled_note": _filled_note(comp),
        "run_names": ", ".join(names), "grid_tasks": [g.task for g in grids], "grid_first": grid_first,
        "thumb_size": thumb_size, "root": "",
    }

    # tables
    table_items = []
    tables = build_tables(comp)
    has_ground_truth = any(t.key == "ground_truth" for t in tables)
    for table in _index_order(tables):
        fragment = Markup(to_html(table, ci=ci))
        all_skipped = not fold_skipped(table)[0].columns
        page = env.get_template("table_page.html").render(
            {**common, "root": "../", "title": f"{table.title} \u2014 {title}"}, table=table, table_html=fragment,
            all_skipped=all_skipped,
            files={"csv": f"{table.key}.csv", "md": f"{table.key}.md", "tex": f"{table.key}.tex"})
        files = write_table(table, out_dir / "tables", ci=ci, page_html=page)
        per_task = table.key.startswith("reference_")
        table_items.append({"table": table, "html": fragment, "all_skipped": all_skipped, "per_task": per_task,
                            "open": per_task and not has_ground_truth,
                            "files": {fmt: f"tables/{name}" for fmt, name in files.items()}})

    # plots
    plots = make_plots(comp, out_dir / "plots")
    for i, plot in enumerate(plots):
        plots[i] = type(plot)(f"plots/{plot.file}", plot.title, plot.description)

    # image grid
    assets.build(workers)
    if assets.errors:
        comp.warnings.append(f"{len(assets.errors)} image(s) could not be read for thumbnails, e.g. {assets.errors[0]}")
    written: set[Path] = set()
    grid_template = env.get_template("grid.html")
    for grid in grids:
        data_file = out_dir / "grid-data" / f"{grid.task}.js"
        write_data(grid, data_file)
        config = {"task": grid.task, "data": f"grid-data/{grid.task}.js", "pageSize": page_size,
                  "nFixed": grid.n_fixed, "thumbSize": thumb_size,
                  "metrics": {m: {"label": info(m).label, "decimals": info(m).decimals,
                                  "higher": info(m).higher_is_better} for m in grid.item_metrics}}
        total = pages(len(grid.rows), page_size)
        for page in range(1, total + 1):
            rows = grid.rows[(page - 1) * page_size: page * page_size]
            html = grid_template.render(
                {**common, "title": f"task {grid.task}, page {page}/{total} \u2014 {title}"}, grid=grid, rows=rows,
                page=page, page_size=page_size, links=page_links(page, total, grid.task), config=config)
            path = out_dir / page_name(grid.task, page)
            write_text(path, html)
            written.add(path)
    _remove_stale(out_dir, written)

    # index
    failure_tasks, failures, first_errors = _failures(comp)
    index = env.get_template("index.html").render(
        common, runs=[_run_summary(r) for r in comp.runs], entries=comp.entries, warnings=comp.warnings,
        tables=table_items, plots=plots, grid_rows={g.task: len(g.rows) for g in grids},
        failure_tasks=failure_tasks, failures=failures, first_errors=first_errors, methods=_methods(comp),
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    path = out_dir / "index.html"
    write_text(path, index)
    return path
