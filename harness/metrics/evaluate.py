"""``compute(run_dir, weights)``: every metric of every method x task recorded in a run directory.

What is compared with what (all images at the protocol's evaluation size, see :mod:`harness.metrics.quality`):

- ``psnr_rec``, ``ssim_rec``, ``lpips_rec`` (task ``rec`` only): result vs the face image.
- ``psnr_gt``, ``ssim_gt``, ``lpips_gt`` (tasks with ``ground_truth/<task>/``, i.e. synthetic data): result vs
  the true result.
- ``hair_color_de``: CIEDE2000 between mean Lab colours of result and ground truth inside the ground-truth hair
  mask (``ground_truth_labels/``); items whose ground truth is bald are left out.
- ``psnr_outside_hair``: result vs the face image outside the dilated union of the face image's hair
  (``labels/<face>.png``) and the target hair (``ground_truth_labels/`` when present, else the result's own hair).
  A missing label map is replaced by the ``"face_parser"`` plugin network's parse when it is available.
- ``identity``: dlib face-descriptor similarity to the face image (:mod:`harness.metrics.identity`).
- ``clip_text_shape``, ``clip_text_color`` (items whose shape / colour reference is text, :mod:`harness.text`):
  100 x cosine similarity of CLIP ViT-B/32 embeddings of the result's hair region (hair and headwear, black
  elsewhere; the region from the ground-truth labels when the item has them, else the face parser's parse of the
  result) and of the prompt. On synthetic data a colour prompt naming a palette colour also has a ground truth
  (:func:`harness.runner.write_ground_truth`), so ``hair_color_de`` is the error against the named colour.
- ``fid``, ``kid``, ``fid_clip``: the successful results vs the real set (every input image of the run),
  :mod:`harness.metrics.fid`.
- ``time_median_s``, ``time_iqr_s`` (successful items), ``peak_mem_mb`` (max; MiB = 2^20 bytes, labelled MB),
  ``failures`` (failed records plus "ok" records whose output file is missing or unreadable; n = all units but the
  "skipped" ones: units a method cannot take, e.g. a text reference for an image-only method; a method x task
  with only skipped units gets every metric "skipped" with the runner's reason).

Per-item metrics are averaged over the items where they are defined; the interval is the 95% percentile bootstrap
of that mean (``protocol.bootstrap`` resamples, a fixed seed per row).

Plugin networks (``harness.plugins.feature_extractors()``, ``factory(device, weights)``):

- ``"lpips_vgg"``: ``fn(x, y) -> distances [N]`` for float tensors ``[N, 3, H, W]`` in [-1, 1];
- ``"face_parser"``: ``fn([PIL RGB image, ...]) -> [label map [H, W], ...]`` in the CelebAMask-HQ order of
  :data:`harness.annotations.LABELS` (hair = 13);
- ``"clip_vitb32"``: clean-fid's ``custom_feat_extractor`` contract (see :class:`harness.metrics.fid.Extractor`);
- ``"clip_text"``: an object with ``image_embeddings([uint8 HxWx3, ...]) -> tensor [N, D]`` and
  ``text_embeddings([prompt, ...]) -> tensor [N, D]`` (CLIP's joint embedding space).

A network that is not registered, or whose factory raises :class:`harness.weights.MissingWeights`, makes its
metrics "skipped" with the reason; any other error makes them "failed".
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.annotations import HAIR, HAT
from harness.metrics import quality
from harness.metrics.catalog import CATALOG
from harness.metrics.fid import DistributionJob, Unavailable, dataset_hash, distribution_rows, plugin_network
from harness.metrics.stats import bootstrap_ci, iqr, row_seed
from harness.metrics.table import ItemValue, Row, failed, frame, one_line, skipped, write_metrics, write_per_item
from harness.protocol import TASKS, Protocol, from_dict
from harness.store import Record, RunStore, Triplet
from harness.text import SLOTS, is_text, prompt_of
from harness.weights import WeightStore, sha256_file

LPIPS_NAME = "lpips_vgg"
PARSER_NAME = "face_parser"
CLIP_TEXT_NAME = "clip_text"
CLIP_TEXT = {"clip_text_shape": "shape", "clip_text_color": "color"}  # metric -> the slot whose prompt it scores
# metrics.csv metrics computed here, in report order
METRICS: tuple[str, ...] = tuple(name for name in CATALOG if name != "time_s")
DISTRIBUTION = ("fid", "kid", "fid_clip")
PER_ITEM_TIME = "time_s"
MEBIBYTE = 2**20


def selected_metrics(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The protocol's metric list (``"all"`` = every metric) in report order; unknown names are warned about."""
    if "all" in names:
        return METRICS
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        warnings.warn(f"unknown metric name(s) {unknown} in the protocol; known: {', '.join(METRICS)}",
                      stacklevel=2)
    return tuple(m for m in METRICS if m in names)



def hair_region(labels: np.ndarray) -> np.ndarray:
    """Hair plus headwear: what a hairstyle changes (psnr_outside_hair excludes it)."""
    return np.isin(labels, (HAIR, HAT))

class _Network:
    """A plugin network loaded on first use: ``get()`` -> (callable or None, why not)."""

    def __init__(self, name: str, factories: Callable[[], Mapping[str, Callable]], weights: WeightStore, device):
        self.name, self._factories, self.weights, self.device = name, factories, weights, device
        self._loaded = False
        self._fn: Any = None
        self._why = ""

    def get(self) -> tuple[Any, str]:
        if not self._loaded:
            self._loaded = True
            try:
                self._fn = plugin_network(self.name, self._factories(), self.weights, self.device)
            except Unavailable as exc:
                self._why = str(exc)
            except Exception as exc:
                self._why = f"failed: loading {self.name}: {type(exc).__name__}: {one_line(exc)}"
        return self._fn, self._why


@dataclass
class _Collected:
    """Per-item values of one metric of one method x task, and why items are missing."""

    values: dict[str, float] = field(default_factory=dict)
    missing: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    filled: bool = False  # some values came from a network with filled (random) weights

    def put(self, triplet: str, value: float, why_missing: str = "") -> None:
        if np.isfinite(value):
            self.values[triplet] = float(value)
        else:
            self.missing[why_missing or "undefined"] += 1


class _RunContext:
    def __init__(self, store: RunStore, protocol: Protocol, weights: WeightStore, device, progress: bool,
                 factories: Callable[[], Mapping[str, Callable]]):
        self.store, self.protocol, self.weights, self.device, self.progress = (store, protocol, weights, device,
                                                                                progress)
        self.size = protocol.eval_size
        self.lpips = _Network(LPIPS_NAME, factories, weights, device)
        self.parser = _Network(PARSER_NAME, factories, weights, device)
        self.clip_text = _Network(CLIP_TEXT_NAME, factories, weights, device)
        self._prompt_embeddings: dict[str, Any] = {}
        self._describer: Any = None
        self._describer_why: str | None = None
        self._parsed_inputs: dict[str, np.ndarray | None] = {}
        self.face = functools.lru_cache(maxsize=256)(self._face)
        self.input_hair = functools.lru_cache(maxsize=256)(self._input_hair)

    # ------------------------------------------------------------------ images
    def _face(self, image_id: str) -> np.ndarray:
        return quality.load_rgb(self.store.input_path(image_id), self.size)

    def ground_truth(self, task: str, triplet: str) -> np.ndarray | None:
        path = self.store.ground_truth_path(task, triplet)
        return quality.load_rgb(path, self.size) if path.is_file() else None

    def ground_truth_labels(self, task: str, triplet: str) -> np.ndarray | None:
        path = self.store.ground_truth_path(task, triplet, labels=True)
        return quality.load_labels(path, self.size) if path.is_file() else None

    def has_ground_truth(self, task: str) -> bool:
        return (self.store.root / "ground_truth" / task).is_dir()

    def parse(self, image: np.ndarray) -> tuple[np.ndarray | None, str]:
        fn, why = self.parser.get()
        if fn is None:
            return None, why
        from PIL import Image

        labels = fn([Image.fromarray(image)])
        if isinstance(labels, list | tuple):
            labels = labels[0]
        if hasattr(labels, "detach"):
            labels = labels.detach().cpu().numpy()
        labels = np.asarray(labels).squeeze()
        return quality.resize_labels(labels.astype(np.uint8), self.size), ""

    def _input_hair(self, image_id: str) -> tuple[np.ndarray | None, str, bool]:
        """Hair-and-headwear region of an input image, why it is missing, and whether the face parser made it."""
        path = self.store.labels_path(image_id)
        if path.is_file():
            return hair_region(quality.load_labels(path, self.size)), "", False
        labels, why = self.parse(self.face(image_id))
        return (None, why, False) if labels is None else (hair_region(labels), "", True)

    # ------------------------------------------------------------------ networks
    def lpips_distance(self, a: np.ndarray, b: np.ndarray) -> tuple[float, str]:
        fn, why = self.lpips.get()
        if fn is None:
            return float("nan"), why
        import torch

        def tensor(x: np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
            return t.to(torch.device(self.device))

        with torch.no_grad():
            out = fn(tensor(a), tensor(b))
        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        return float(np.asarray(out, dtype=np.float64).reshape(-1)[0]), ""

    def clip_text_score(self, image: np.ndarray, region: np.ndarray, prompt: str) -> tuple[float, str]:
        """100 x cosine between the CLIP embeddings of ``image`` inside ``region`` (black elsewhere) and
        ``prompt``; NaN and why when the CLIP network is unavailable or the region is empty."""
        scorer, why = self.clip_text.get()
        if scorer is None:
            return float("nan"), why
        if not region.any():
            return float("nan"), "empty hair region (bald or covered)"
        import torch

        if prompt not in self._prompt_embeddings:
            self._prompt_embeddings[prompt] = scorer.text_embeddings([prompt])[0]
        masked = np.where(region[..., None], image, 0).astype(np.uint8)
        with torch.no_grad():
            got = scorer.image_embeddings([masked])[0]
        text = self._prompt_embeddings[prompt]
        return float(100.0 * torch.nn.functional.cosine_similarity(got.float(), text.float(), dim=0)), ""

    def describer(self):
        if self._describer is None and self._describer_why is None:
            from harness.metrics.identity import FaceDescriber, IdentityUnavailable

            try:
                self._describer = FaceDescriber(self.size)
            except IdentityUnavailable as exc:
                self._describer_why = str(exc)
        return self._describer, self._describer_why or ""


def _note(n: int, total: int, missing: Counter) -> str:
    if not missing or n == total:
        return ""
    parts = ", ".join(f"{why}: {count}" for why, count in missing.most_common())
    return f"{n}/{total} items; left out: {parts}"


def _aggregate(method: str, task: str, metric: str, col: _Collected, total: int, resamples: int,
               base_seed: int, note: str | None = None) -> Row:
    n = len(col.values)
    if n == 0:
        if col.errors:
            return failed(method, task, metric, col.errors.most_common(1)[0][0])
        if not col.missing:
            return skipped(method, task, metric, "no successful outputs")
        why = col.missing.most_common(1)[0][0]
        if why.startswith("failed: "):
            return failed(method, task, metric, why[len("failed: "):])
        return skipped(method, task, metric, why)
    values = np.array(list(col.values.values()))
    low, high = bootstrap_ci(values, np.mean, resamples, row_seed(method, task, metric, base=base_seed))
    notes = [note if note is not None else _note(n, total, col.missing)]
    if col.filled:
        notes.append("filled weights: not meaningful")
    if col.errors:
        msg, count = col.errors.most_common(1)[0]
        notes.append(f"{sum(col.errors.values())} items failed, e.g. {msg}")
    notes = [x for x in notes if x]
    return Row(method, task, metric, float(values.mean()), low, high, n,
               "ok" + (f" ({'; '.join(notes)})" if notes else ""))


def _evaluate_group(ctx: _RunContext, method: str, task: str, records: list[Record],
                    triplets: Mapping[str, Triplet], metrics: tuple[str, ...]
                    ) -> tuple[list[Row], list[ItemValue], list[Path]]:
    """Per-item, time, memory and failure rows of one method x task; returns the successful output paths."""
    size = ctx.size
    is_rec = task == "rec"
    has_gt = ctx.has_ground_truth(task)
    text_slots = {slot for rec in records if rec.triplet in triplets and rec.status != "skipped"
                  for slot, role_id in zip(SLOTS, triplets[rec.triplet].roles(TASKS[task]),
                                           strict=True) if is_text(role_id)}
    applicable = [m for m in metrics if m not in DISTRIBUTION and not (
        (m.endswith("_rec") and not is_rec) or (m in ("psnr_gt", "ssim_gt", "lpips_gt", "hair_color_de")
                                                and not has_gt) or (m in CLIP_TEXT and CLIP_TEXT[m] not in text_slots))]
    skipped_records = [r for r in records if r.status == "skipped"]
    records = [r for r in records if r.status != "skipped"]
    if not records:  # the method could take none of these units (text references): say why, once per metric
        why = Counter(r.error or "skipped by the runner" for r in skipped_records).most_common(1)[0][0]
        return [skipped(method, task, m, why) for m in applicable], [], []
    cols = {m: _Collected() for m in applicable}
    failed_units = 0
    bad_outputs = 0
    ok_paths: list[Path] = []
    times: list[tuple[str, float]] = []
    mems: list[tuple[float, str]] = []
    faces_found = 0

    def record_error(metric: str, exc: Exception) -> None:
        cols[metric].errors[f"{type(exc).__name__}: {one_line(exc)}"] += 1

    iterator = records
    if ctx.progress:
        from tqdm import tqdm

        iterator = tqdm(records, desc=f"metrics {method}/{task}", file=sys.stderr, leave=False, disable=None)
    ok_count = 0
    for rec in iterator:
        if rec.status != "ok":
            failed_units += 1
            continue
        path = ctx.store.root / rec.output if rec.output else ctx.store.output_path(method, task, rec.triplet)
        trip = triplets.get(rec.triplet)
        try:
            result = quality.load_rgb(path, size)
        except (OSError, ValueError, SyntaxError):
            bad_outputs += 1
            continue
        ok_count += 1
        ok_paths.append(path)
        if rec.time_s is not None:
            times.append((rec.triplet, float(rec.time_s)))
        if rec.peak_mem_bytes is not None:
            mems.append((rec.peak_mem_bytes / MEBIBYTE, rec.mem_kind or "unknown"))
        if trip is None:
            for col in cols.values():
                col.missing["triplet not in triplets.csv"] += 1
            continue
        face = ctx.face(trip.face)
        tid = rec.triplet
        roles = trip.roles(TASKS[task])
        # the face parser's labels of the result (and why not), computed at most once per item
        result_parse = functools.cache(functools.partial(ctx.parse, result))

        if is_rec:
            if "psnr_rec" in cols:
                cols["psnr_rec"].put(tid, quality.psnr(result, face))
            if "ssim_rec" in cols:
                cols["ssim_rec"].put(tid, quality.ssim(result, face))
            if "lpips_rec" in cols:
                try:
                    cols["lpips_rec"].put(tid, *ctx.lpips_distance(result, face))
                    cols["lpips_rec"].filled |= ctx.weights.fill
                except Exception as exc:
                    record_error("lpips_rec", exc)

        gt = ctx.ground_truth(task, tid) if has_gt else None
        gt_labels = ctx.ground_truth_labels(task, tid) if has_gt else None
        gt_hair = None if gt_labels is None else gt_labels == HAIR
        if has_gt:
            no_gt = ("no ground truth: the colour prompt names no synthetic palette colour"
                     if is_text(roles[2]) else "no ground-truth image for the item")
            if "psnr_gt" in cols:
                cols["psnr_gt"].put(tid, quality.psnr(result, gt) if gt is not None else np.nan, no_gt)
            if "ssim_gt" in cols:
                cols["ssim_gt"].put(tid, quality.ssim(result, gt) if gt is not None else np.nan, no_gt)
            if "lpips_gt" in cols:
                try:
                    cols["lpips_gt"].put(tid, *(ctx.lpips_distance(result, gt) if gt is not None
                                                else (np.nan, no_gt)))
                    cols["lpips_gt"].filled |= ctx.weights.fill
                except Exception as exc:
                    record_error("lpips_gt", exc)
            if "hair_color_de" in cols:
                if gt is None or gt_hair is None:
                    cols["hair_color_de"].put(tid, np.nan, "no ground-truth label map (ground_truth_labels/)")
                else:
                    cols["hair_color_de"].put(tid, quality.hair_color_de(result, gt, gt_hair), "bald ground truth")

        if "psnr_outside_hair" in cols:
            try:
                face_hair, why, parsed_face = ctx.input_hair(trip.face)
                target_hair, from_parser = (None if gt_labels is None else hair_region(gt_labels)), False
                if target_hair is None and face_hair is not None:
                    parsed, why = result_parse()
                    target_hair, from_parser = (None, False) if parsed is None else (hair_region(parsed), True)
                if (parsed_face or from_parser) and ctx.weights.fill:
                    cols["psnr_outside_hair"].filled = True
                if face_hair is None or target_hair is None:
                    hint = (why if why.startswith("failed: ") else
                            "needs label maps (labels/<id>.png: synthetic data has them) or the 'face_parser' "
                            f"network ({why})")
                    cols["psnr_outside_hair"].put(tid, np.nan, hint)
                else:
                    mask = quality.outside_hair_mask(face_hair, target_hair, size=size)
                    cols["psnr_outside_hair"].put(tid, quality.masked_psnr(result, face, mask),
                                                  "hair covers the whole image")
            except Exception as exc:
                record_error("psnr_outside_hair", exc)

        for metric, slot in CLIP_TEXT.items():
            prompt = prompt_of(roles[SLOTS.index(slot)])
            if metric not in cols or prompt is None:  # defined on the items whose reference is text only
                continue
            try:
                region = gt_labels
                if region is None:
                    region, why = result_parse()
                if region is None:
                    cols[metric].put(tid, np.nan, why if why.startswith("failed: ") else
                                     "needs the result's hair region: ground-truth labels (synthetic data, colour "
                                     f"prompt naming a palette colour) or the 'face_parser' network ({why})")
                    continue
                score, why = ctx.clip_text_score(result, hair_region(region), prompt)
                cols[metric].put(tid, score, why)
                cols[metric].filled |= ctx.weights.fill
            except Exception as exc:
                record_error(metric, exc)

        if "identity" in cols:
            describer, why = ctx.describer()
            if describer is None:
                cols["identity"].put(tid, np.nan, why)
            else:
                try:
                    ref = describer.describe_file(ctx.store.input_path(trip.face), face)
                    got = describer.describe(result) if ref is not None else None
                    if ref is not None and got is not None:
                        faces_found += 1
                        from harness.metrics.identity import similarity

                        cols["identity"].put(tid, similarity(got, ref))
                    else:
                        cols["identity"].put(tid, np.nan, "no face detected by dlib" + (
                            " in the face image" if ref is None else " in the result"))
                except Exception as exc:
                    record_error("identity", exc)

    total = len(records)
    resamples, seed = ctx.protocol.bootstrap, ctx.protocol.seed
    rows: list[Row] = []
    for metric in applicable:
        if metric in ("time_median_s", "time_iqr_s", "peak_mem_mb", "failures"):
            continue
        note = None
        if metric == "identity" and cols[metric].values:
            note = f"faces in {faces_found}/{ok_count}"
        rows.append(_aggregate(method, task, metric, cols[metric], ok_count, resamples, seed, note))

    time_values = np.array([t for _, t in times])
    for metric, stat in (("time_median_s", np.median), ("time_iqr_s", iqr)):
        if metric not in applicable:
            continue
        if time_values.size == 0:
            rows.append(skipped(method, task, metric, "no timed successful items"))
            continue
        low, high = bootstrap_ci(time_values, stat, resamples, row_seed(method, task, metric, base=seed))
        value = float(np.median(time_values)) if metric == "time_median_s" else float(iqr(time_values))
        rows.append(Row(method, task, metric, value, low, high, int(time_values.size), "ok"))
    if "peak_mem_mb" in applicable:
        if mems:
            kinds = sorted({k for _, k in mems})
            rows.append(Row(method, task, "peak_mem_mb", float(max(m for m, _ in mems)), n=len(mems),
                            status=f"ok ({', '.join(kinds)})"))
        else:
            rows.append(skipped(method, task, "peak_mem_mb", "no memory measurements in the records"))
    if "failures" in applicable:
        note = f" ({bad_outputs} recorded ok but the output is missing or unreadable)" if bad_outputs else ""
        rows.append(Row(method, task, "failures", float(failed_units + bad_outputs), n=total, status="ok" + note))

    items = [ItemValue(method, task, tid, metric, v) for metric in applicable if metric in cols
             for tid, v in cols[metric].values.items()]
    items += [ItemValue(method, task, tid, PER_ITEM_TIME, t) for tid, t in times]
    return rows, items, ok_paths


def _real_set(store: RunStore) -> tuple[list[Path], str]:
    """The run's input images (``images.csv`` rows without error) and their content hash."""
    paths: list[Path] = []
    if (store.root / "images.csv").is_file():
        for row in store.images():
            if row.get("error"):
                continue
            path = store.root / row["input"] if row.get("input") else store.input_path(row["id"])
            if path.is_file():
                paths.append(path)
    else:
        paths = sorted((store.root / "inputs").glob("*.png"))
    return paths, dataset_hash([sha256_file(p) for p in paths])


def _sort_key(protocol: Protocol):
    task_order = {t: i for i, t in enumerate(protocol.tasks)}
    metric_order = {m: i for i, m in enumerate(METRICS)}

    def key(row: Row):
        return (row.method, task_order.get(row.task, len(task_order)), row.task,
                metric_order.get(row.metric, len(metric_order)), row.metric)

    return key


def compute(run_dir: str | Path, weights: WeightStore | None = None, device="cpu", progress: bool = True,
            extractors: Mapping[str, Callable] | None = None):
    """Evaluate every method x task in ``run_dir/records.jsonl``; write ``metrics.csv`` and ``per_item.csv``.

    ``extractors`` overrides the plugin registry's feature extractors (name -> ``factory(device, weights)``).
    Returns ``metrics.csv`` as a DataFrame.
    """
    store = RunStore(run_dir)
    if not store.exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no manifest.json)")
    protocol = from_dict(store.manifest()["protocol"])
    weights = weights if weights is not None else WeightStore()
    metrics = selected_metrics(protocol.metrics)

    @functools.cache
    def factories() -> Mapping[str, Callable]:
        if extractors is not None:
            return dict(extractors)
        from harness import plugins

        return plugins.feature_extractors()

    ctx = _RunContext(store, protocol, weights, device, progress, factories)
    triplets = {t.id: t for t in store.triplets()} if (store.root / "triplets.csv").is_file() else {}
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for (method, task, _), rec in store.records().items():
        groups[(method, task)].append(rec)
    rows: list[Row] = []
    items: list[ItemValue] = []
    jobs: list[DistributionJob] = []
    for (method, task), recs in sorted(groups.items()):
        recs.sort(key=lambda r: r.triplet)
        group_rows, group_items, ok_paths = _evaluate_group(ctx, method, task, recs, triplets, metrics)
        rows += group_rows
        items += group_items
        if all(r.status == "skipped" for r in recs):
            why = next(row.status for row in group_rows) if group_rows else "skipped: every unit was skipped"
            rows += [Row(method, task, m, status=why) for m in DISTRIBUTION if m in metrics]
        else:
            jobs.append(DistributionJob(method, task, tuple(ok_paths)))
    if jobs and any(m in metrics for m in DISTRIBUTION):
        real_paths, real_hash = _real_set(store)
        rows += distribution_rows(jobs, real_paths, real_hash, metrics, weights,
                                  factories() if "fid_clip" in metrics else {}, device, protocol.eval_size,
                                  protocol.bootstrap, protocol.seed, progress)
    rows.sort(key=_sort_key(protocol))
    items.sort(key=lambda i: (i.method, i.task, i.triplet, i.metric))
    write_per_item(store.root, items)
    write_metrics(store.root, rows)
    return frame(rows)


def read_metrics(run_dir: str | Path):
    """``metrics.csv`` of a run as a DataFrame (empty values as NaN)."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "metrics.csv", dtype={"status": str}, keep_default_na=True)


__all__ = ["METRICS", "compute", "read_metrics", "selected_metrics"]
