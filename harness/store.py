"""The run directory: everything a run produces, safe for several writers (shards) at once.

Layout::

    RUN/
      manifest.json        protocol, methods (resolved parameters, checkpoint hashes), git commit, packages, device
      triplets.csv         id,face,shape,color              (image ids; drawn from the protocol's seed)
      images.csv           id,source,sha256,input,labels,error (the benchmark's images; input = inputs/<id>.png)
      inputs/<id>.png      each image normalised to the protocol size (RGB)
      labels/<id>.png      its label map (CelebAMask-HQ order), when known (synthetic, or parsed)
      ground_truth/<task>/<triplet>.png   synthetic only: the true result of each task
      ground_truth_labels/<task>/<triplet>.png
      records.jsonl        one JSON line per finished work unit (method x task x triplet); see `Record`
      events.jsonl         other events (method set-up times)
      errors/<method>/<task>/<triplet>.txt   full traceback of a failed item
      outputs/<method>/<task>/<triplet>.png   (method dir: "name" or "name.variant")
      intermediates/<method>/<task>/<triplet>/  a method's intermediate files, when it is asked to keep them
      metrics.csv          method,task,metric,value,ci_low,ci_high,n,status
      per_item.csv         method,task,triplet,metric,value
      report/              HTML report

Writers append records under an exclusive ``flock`` with one ``write`` per line; files are written to a temporary
name and renamed. A unit may be recorded more than once (a retried shard); readers keep the last record per key.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

MANIFEST = "manifest.json"
TRIPLETS = "triplets.csv"
IMAGES = "images.csv"
RECORDS = "records.jsonl"
EVENTS = "events.jsonl"
METRICS = "metrics.csv"
PER_ITEM = "per_item.csv"
FILE_MODE = 0o644  # mkstemp creates 0600 files; run files are meant to be shared (reports, other shards)
METRICS_COLUMNS = ("method", "task", "metric", "value", "ci_low", "ci_high", "n", "status")


@dataclass(frozen=True)
class Triplet:
    id: str
    face: str
    shape: str
    color: str

    def roles(self, task_roles: tuple[str, str, str]) -> tuple[str, str, str]:
        """Image ids for a task's (Face, Shape, Color) columns, e.g. ``("face", "face", "color")``."""
        return tuple(getattr(self, role) for role in task_roles)  # type: ignore[return-value]


@dataclass
class Record:
    """The outcome of one work unit."""

    method: str
    task: str
    triplet: str
    status: str  # "ok" | "failed" | "skipped" (the method cannot take the unit's inputs: ``error`` says why)
    error: str | None = None
    time_s: float | None = None  # wall time of the transfer (batch time / batch size when batched)
    stages: dict[str, float] = field(default_factory=dict)
    peak_mem_bytes: int | None = None
    mem_kind: str | None = None  # "cuda_max_allocated" | "rss_peak"
    output: str | None = None  # path relative to the run directory
    batch: int = 1
    extras: dict[str, Any] = field(default_factory=dict)  # facts the method noted (harness.unit.note)
    worker: str = ""
    finished: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.method, self.task, self.triplet)


def method_dir(label: str) -> str:
    """Directory name of a method label: ``hairflash:final`` -> ``hairflash.final``."""
    return label.replace(":", ".")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_image(path: Path, image: Image.Image, **save_args: Any) -> None:
    """Save ``image`` (format from the suffix) via a temporary file and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
        image.save(tmp, format=fmt, **save_args)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(header))
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class RunStore:
    """Read and write one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # paths
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def output_path(self, method: str, task: str, triplet: str) -> Path:
        return self.root / "outputs" / method_dir(method) / task / f"{triplet}.png"

    def input_path(self, image_id: str) -> Path:
        return self.root / "inputs" / f"{image_id}.png"

    def labels_path(self, image_id: str) -> Path:
        return self.root / "labels" / f"{image_id}.png"

    def ground_truth_path(self, task: str, triplet: str, labels: bool = False) -> Path:
        return self.root / ("ground_truth_labels" if labels else "ground_truth") / task / f"{triplet}.png"

    # manifest
    def exists(self) -> bool:
        return (self.root / MANIFEST).is_file()

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False, default=str))

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.root / MANIFEST).read_text())

    # triplets and images
    def write_triplets(self, triplets: Iterable[Triplet]) -> None:
        write_csv(self.root / TRIPLETS, ("id", "face", "shape", "color"),
                  ((t.id, t.face, t.shape, t.color) for t in triplets))

    def triplets(self) -> list[Triplet]:
        return [Triplet(r["id"], r["face"], r["shape"], r["color"]) for r in read_csv(self.root / TRIPLETS)]

    def images(self) -> list[dict[str, str]]:
        return read_csv(self.root / IMAGES)

    # records
    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[int]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def append_record(self, record: Record) -> None:
        line = (json.dumps(asdict(record), sort_keys=True) + "\n").encode()
        with self.locked(RECORDS) as fd:
            os.write(fd, line)

    def append_event(self, event: dict[str, Any]) -> None:
        """Run events that are not work units (method set-up times), one JSON line each in events.jsonl."""
        line = (json.dumps(event, sort_keys=True, default=str) + "\n").encode()
        with self.locked(EVENTS) as fd:
            os.write(fd, line)

    def events(self) -> list[dict[str, Any]]:
        path = self.root / EVENTS
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def records(self) -> dict[tuple[str, str, str], Record]:
        """The last record of each (method, task, triplet); a torn last line (a killed writer) is ignored."""
        out: dict[tuple[str, str, str], Record] = {}
        path = self.root / RECORDS
        if not path.exists():
            return out
        with open(path) as fh:
            for line in fh:
                try:
                    rec = Record(**json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    continue
                out[rec.key] = rec
        return out

    def done(self) -> set[tuple[str, str, str]]:
        """Units finished with a record (ok with its output on disk, failed, or skipped)."""
        return {key for key, rec in self.records().items()
                if rec.status in ("failed", "skipped") or (rec.output and (self.root / rec.output).is_file())}
