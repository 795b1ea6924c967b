"""Reading run directories for the report, and merging several runs into one comparison.

Everything here is read-only and tolerant: a run that is still going (no ``metrics.csv`` yet, a torn last line
in ``records.jsonl``) still loads; what is missing becomes a warning shown in the report.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.metrics.catalog import CATALOG
from harness.protocol import TASKS
from harness.store import IMAGES, MANIFEST, METRICS, PER_ITEM, RECORDS, TRIPLETS, Triplet, method_dir
from harness.text import is_text

# Bounds rather than competitors: shown in italics and left out of best / second-best marking.
REFERENCE_METHODS = frozenset({"identity", "oracle"})


@dataclass(frozen=True)
class MetricValue:
    """One row of ``metrics.csv``."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    status: str = "ok"

    @property
    def status_ok(self) -> bool:
        """``ok`` or ``ok (note)``."""
        return self.status == "ok" or self.status.startswith(("ok ", "ok("))

    @property
    def ok(self) -> bool:
        return self.status_ok and self.value is not None and math.isfinite(self.value)

    @property
    def note(self) -> str:
        """The note of an ``ok (note)`` status, e.g. ``11/12 items``."""
        if not self.status_ok or self.status == "ok":
            return ""
        return self.status[2:].strip().removeprefix("(").removesuffix(")").strip()

    @property
    def reason(self) -> str:
        """Why there is no number (the status text, e.g. ``skipped: needs inception-2015-12-05.pt``)."""
        if not self.status_ok:
            return self.status
        return "no value" + (f" ({self.note})" if self.note else "")

    @property
    def has_ci(self) -> bool:
        return (self.ok and self.ci_low is not None and self.ci_high is not None
                and math.isfinite(self.ci_low) and math.isfinite(self.ci_high))


@dataclass(frozen=True)
class ItemRecord:
    """The fields of a ``records.jsonl`` line the report uses (the last line per unit wins)."""

    status: str
    error: str | None = None
    output: str | None = None
    time_s: float | None = None


@dataclass(eq=False)
class Run:
    """One run directory, loaded (compared and hashed by identity)."""

    root: Path
    name: str
    manifest: dict[str, Any]
    methods: list[str]
    metrics: dict[tuple[str, str, str], MetricValue]  # (method, task, metric)
    per_item: dict[tuple[str, str, str], dict[str, float]]  # (method, task, triplet) -> metric -> value
    records: dict[tuple[str, str, str], ItemRecord]  # (method, task, triplet)
    triplets: list[Triplet]
    images: dict[str, dict[str, str]]
    warnings: list[str] = field(default_factory=list)

    @property
    def filled(self) -> bool:
        return bool(self.manifest.get("fill_weights"))

    @property
    def protocol(self) -> dict[str, Any]:
        return self.manifest.get("protocol") or {}

    @property
    def tasks(self) -> list[str]:
        tasks = self.manifest.get("tasks") or self.protocol.get("tasks") or []
        seen = list(dict.fromkeys(list(tasks) + [key[1] for key in self.records]))
        return order_tasks(seen)

    @property
    def synthetic(self) -> bool:
        kind = (self.manifest.get("dataset") or {}).get("kind") or (self.protocol.get("dataset") or {}).get("kind")
        return kind == "synthetic" or (self.root / "ground_truth").is_dir()

    def method_info(self, label: str) -> dict[str, Any]:
        return (self.manifest.get("methods") or {}).get(label) or {}

    def input_rel(self, image_id: str) -> str:
        """Path of an input image relative to the run directory."""
        row = self.images.get(image_id) or {}
        return row.get("input") or f"inputs/{image_id}.png"

    def image_key(self, image_id: str) -> str:
        """What identifies an image's content across runs (its sha256 when known; a text reference: its id)."""
        if is_text(image_id):
            return image_id
        row = self.images.get(image_id) or {}
        return row.get("sha256") or f"{self.root}:{image_id}"


def order_tasks(tasks: Iterable[str]) -> list[str]:
    """The protocol's task order (full, color, shape, both, rec), then any other task names sorted."""
    tasks = set(tasks)
    return [t for t in TASKS if t in tasks] + sorted(t for t in tasks if t not in TASKS)


def order_metrics(names: Iterable[str]) -> list[str]:
    """Catalog order, then unknown metrics sorted."""
    names = set(names)
    return [m for m in CATALOG if m in names] + sorted(m for m in names if m not in CATALOG)


def _float(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _read_records(path: Path) -> dict[tuple[str, str, str], ItemRecord]:
    out: dict[tuple[str, str, str], ItemRecord] = {}
    if not path.is_file():
        return out
    with open(path) as fh:
        for line in fh:
            try:
                data = json.loads(line)
                key = (str(data["method"]), str(data["task"]), str(data["triplet"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn line of a killed writer
            out[key] = ItemRecord(status=str(data.get("status", "")), error=data.get("error"),
                                  output=data.get("output"), time_s=data.get("time_s"))
    return out


def load_run(root: str | Path) -> Run:
    """Load one run directory (needs at least ``manifest.json``)."""
    root = Path(root).resolve()
    if not (root / MANIFEST).is_file():
        raise ValueError(f"{root} is not a run directory (no {MANIFEST})")
    manifest = json.loads((root / MANIFEST).read_text())
    warnings: list[str] = []
    labels = list((manifest.get("methods") or {}).keys())
    by_dir = {method_dir(label): label for label in labels}

    def canonical(name: str) -> str:
        if name in labels:
            return name
        if name in by_dir:
            return by_dir[name]
        labels.append(name)
        by_dir[method_dir(name)] = name
        return name

    metrics: dict[tuple[str, str, str], MetricValue] = {}
    if (root / METRICS).is_file():
        for row in _read_csv(root / METRICS):
            n = _float(row.get("n"))
            metrics[(canonical(row["method"]), row["task"], row["metric"])] = MetricValue(
                value=_float(row.get("value")), ci_low=_float(row.get("ci_low")), ci_high=_float(row.get("ci_high")),
                n=int(n) if n is not None and math.isfinite(n) else None,
                status=(row.get("status") or "ok").strip() or "ok")
    else:
        warnings.append(f"run {root.name}: no {METRICS} (metrics not computed yet)")

    per_item: dict[tuple[str, str, str], dict[str, float]] = {}
    if (root / PER_ITEM).is_file():
        for row in _read_csv(root / PER_ITEM):
            value = _float(row.get("value"))
            if value is not None:
                key = (canonical(row["method"]), row["task"], row["triplet"])
                per_item.setdefault(key, {})[row["metric"]] = value

    records = {(canonical(m), t, i): rec for (m, t, i), rec in _read_records(root / RECORDS).items()}
    triplets = ([Triplet(r["id"], r["face"], r["shape"], r["color"]) for r in _read_csv(root / TRIPLETS)]
                if (root / TRIPLETS).is_file() else [])
    if not triplets:
        warnings.append(f"run {root.name}: no {TRIPLETS}")
    images = {r["id"]: r for r in _read_csv(root / IMAGES)} if (root / IMAGES).is_file() else {}
    name = str(manifest.get("run_name") or root.name)
    return Run(root=root, name=name, manifest=manifest, methods=labels, metrics=metrics, per_item=per_item,
               records=records, triplets=triplets, images=images, warnings=warnings)


@dataclass(frozen=True)
class Entry:
    """A method of one run, as a row of the comparison."""

    label: str  # unique across the comparison (the run name is appended when labels collide)
    method: str  # the label inside its run, e.g. "hairflash:final"
    run: Run

    @property
    def info(self) -> dict[str, Any]:
        return self.run.method_info(self.method)

    @property
    def reference(self) -> bool:
        name = self.info.get("name") or self.method.split(":")[0]
        return name in REFERENCE_METHODS

    @property
    def filled(self) -> bool:
        return self.run.filled


@dataclass
class Comparison:
    """One or several runs side by side."""

    runs: list[Run]
    entries: list[Entry]
    warnings: list[str]

    @property
    def tasks(self) -> list[str]:
        tasks = [t for run in self.runs for t in run.tasks]
        tasks += [key[1] for run in self.runs for key in run.metrics]
        return order_tasks(tasks)

    @property
    def filled_runs(self) -> list[Run]:
        return [run for run in self.runs if run.filled]

    @property
    def synthetic(self) -> bool:
        return any(run.synthetic for run in self.runs)

    def metric(self, entry: Entry, task: str, metric: str) -> MetricValue | None:
        return entry.run.metrics.get((entry.method, task, metric))

    def metric_names(self) -> list[str]:
        return order_metrics(key[2] for run in self.runs for key in run.metrics)

    def tasks_for(self, metric: str) -> list[str]:
        """Tasks for which some method has a row of ``metric``."""
        return order_tasks(key[1] for run in self.runs for key in run.metrics if key[2] == metric)

    def item_metric_names(self, task: str) -> list[str]:
        return order_metrics(m for run in self.runs for key, values in run.per_item.items()
                             if key[1] == task for m in values)


_IGNORED_PROTOCOL_KEYS = {"source"}


def _protocol_differences(runs: list[Run]) -> list[str]:
    first = runs[0].protocol
    out = []
    for run in runs[1:]:
        keys = sorted(k for k in set(first) | set(run.protocol)
                      if k not in _IGNORED_PROTOCOL_KEYS and first.get(k) != run.protocol.get(k))
        if keys:
            out.append(f"protocols differ between runs {runs[0].name} and {run.name} ({', '.join(keys)}): "
                       "numbers may not be comparable")
    return out


def _other_differences(runs: list[Run]) -> list[str]:
    out = []
    hashes = {(run.manifest.get("dataset") or {}).get("content_hash") for run in runs}
    if len(hashes) > 1:
        out.append("the runs use different image sets (dataset content hashes differ)")
    devices = {json.dumps(run.manifest.get("device") or {}, sort_keys=True) for run in runs}
    if len(devices) > 1:
        out.append("the runs ran on different devices: times and memory are not comparable")
    return out


def merge(run_dirs: Iterable[str | Path]) -> Comparison:
    """Load several runs; method labels that occur in more than one run get ``(run name)`` appended."""
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise ValueError("no run directories given")
    names: dict[str, int] = {}
    for run in runs:  # unique run names
        count = names.get(run.name, 0)
        names[run.name] = count + 1
        if count:
            run.name = f"{run.name}#{count + 1}"
    counts: dict[str, int] = {}
    for run in runs:
        for label in run.methods:
            counts[label] = counts.get(label, 0) + 1
    entries = [Entry(label if counts[label] == 1 else f"{label} ({run.name})", label, run)
               for run in runs for label in run.methods]
    warnings = [w for run in runs for w in run.warnings]
    if len(runs) > 1:
        warnings += _protocol_differences(runs) + _other_differences(runs)
    return Comparison(runs=runs, entries=entries, warnings=warnings)
