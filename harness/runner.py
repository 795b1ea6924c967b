"""The runner: methods x task variants x triplets on one device, timed, recorded, resumable, shardable.

A work unit is ``(method label, task, triplet id)``. Units are enumerated in a fixed order and shard ``k`` of ``n``
takes every unit whose index is ``k`` modulo ``n`` (``--shard k/n``, or torchrun's ``RANK``/``WORLD_SIZE``).
Each unit seeds the RNGs from its own key, so its result does not depend on which units ran before it: a resumed
or sharded run gives the same outputs as one uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness import annotations, environment, plugins
from harness.datasets import (
    ImageEntry,
    InputError,
    draw_triplets,
    image_ids,
    list_images,
    load_image,
    read_triplet_file,
)
from harness.method import Method, TextPrompt, make_params, params_dict, parse_spec
from harness.protocol import TASKS, Protocol
from harness.store import Record, RunStore, Triplet, atomic_save_image, atomic_write_text, write_csv
from harness.text import is_text, prompt_of, slot_refusal, text_id
from harness.timing import recording, synchronize
from harness.unit import UnitContext, running
from harness.weights import WeightStore, describe_missing, sha256_file

PNG_ARGS = {"compress_level": 1}  # outputs and inputs are lossless; fast compression keeps the overhead low


class RunRefused(RuntimeError):
    """The run cannot start (unknown or unrunnable methods, bad data); the message says why and what to do."""


@dataclass(frozen=True)
class RunConfig:
    protocol: Protocol
    out: Path
    methods: tuple[str, ...] | None = None  # None: every method that can run here
    device: str = "auto"
    precision: str = "fp32"  # float32 arithmetic on CUDA (harness.environment.set_float32_precision)
    weights_dir: Path | None = None
    limit: int | None = None  # first N triplets only
    resume: bool = False
    fill_weights: bool = False
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # --set method.param=value
    shard: tuple[int, int] = (0, 1)
    metrics: bool = True
    report: bool = True
    align: bool = False  # FFHQ-align each photo first (dlib); no face / several faces: a per-item error
    paste_back: bool = False  # also write each result pasted back into the original photo (needs align)
    progress: bool = True
    command: str = ""
    log: Callable[[str], None] = print


# ------------------------------------------------------------------------------------------------ planning

def method_overrides(protocol: Protocol, overrides: Mapping[str, Mapping[str, Any]], name: str,
                     variant: str | None) -> dict[str, Any]:
    """Parameter overrides for a method: protocol ``[methods.name]``, ``[methods."name:variant"]``, then CLI."""
    merged: dict[str, Any] = {}
    keys = [name] + ([f"{name}:{variant}"] if variant else [])
    for source in (protocol.method_params, overrides):
        for key in keys:
            merged.update(source.get(key, {}))
    return merged


def instantiate(spec: str, classes: Mapping[str, type], protocol: Protocol,
                overrides: Mapping[str, Mapping[str, Any]]) -> Method:
    name, variant = parse_spec(spec)
    cls = classes.get(name)
    if cls is None:
        raise RunRefused(f"unknown method {name!r}; installed: {', '.join(sorted(classes)) or 'none'} "
                         "(see `harness methods`)")
    try:
        params = make_params(cls.Params, method_overrides(protocol, overrides, name, variant))
        return cls(params, variant)
    except (ValueError, TypeError) as exc:
        raise RunRefused(f"{spec}: {exc}") from None


def unmet_requirements(method: Method, protocol: Protocol, weights: WeightStore,
                       labels_available: bool) -> list[str]:
    """Why ``method`` cannot run here (empty when it can)."""
    reasons = []
    missing = weights.missing(method.checkpoints())
    if missing:
        reasons.append(describe_missing(missing, weights.search_dirs, weights))
    if "synthetic" in method.requires and protocol.dataset.kind != "synthetic":
        reasons.append("needs the synthetic dataset (it reads the ground-truth specs)")
    if "labels" in method.requires and not labels_available:
        reasons.append("needs label maps: use the synthetic dataset, or put the BiSeNet face-parser weights "
                       "(79999_iter.pth) in --weights-dir so real images can be parsed")
    return reasons


def _one_line(reason: str) -> str:
    if reason.startswith("missing weight files"):
        names = [line.split("(")[0].strip(" -") for line in reason.splitlines()[1:] if line.startswith("  - ")]
        return f"missing weight files {', '.join(names)} (see `harness weights`)"
    return reason.splitlines()[0]


def plan_methods(config: RunConfig, weights: WeightStore, labels_available: bool) -> tuple[list[Method], list[str]]:
    """The methods to run, and (for an implicit selection) messages about the ones skipped."""
    classes = plugins.method_classes()
    explicit = config.methods is not None
    specs = list(config.methods) if explicit else sorted(classes)
    if explicit and not specs:
        raise RunRefused("--methods is empty")
    chosen, skipped, refused = [], [], []
    for spec in specs:
        method = instantiate(spec, classes, config.protocol, config.overrides)
        reasons = unmet_requirements(method, config.protocol, weights, labels_available)
        if not reasons:
            chosen.append(method)
        elif explicit:
            refused.append(f"{method.label} cannot run:\n  " + "\n  ".join(r.replace("\n", "\n  ") for r in reasons))
        else:
            skipped.append(f"skipped {method.label}: " + "; ".join(_one_line(r) for r in reasons))
    if refused:
        raise RunRefused("\n".join(refused))
    labels = [m.label for m in chosen]
    if len(set(labels)) != len(labels):
        raise RunRefused(f"a method is listed twice: {', '.join(labels)}")
    if not chosen:
        raise RunRefused("no method can run here:\n" + "\n".join(skipped))
    return chosen, skipped


# ------------------------------------------------------------------------------------------------ dataset

@dataclass
class PreparedImage:
    id: str
    input: Path | None
    labels: Path | None
    landmarks: np.ndarray | None
    synth: dict | None
    error: str | None


def _synthetic_entries(protocol: Protocol, folder: Path) -> list[ImageEntry]:
    from harness import synthetic

    ds = protocol.dataset
    items = synthetic.generate(ds.n_images, ds.size, ds.seed, folder)
    return [ImageEntry(it["id"], Path(it["image"]), Path(it["labels"]), it["spec"]) for it in items]


def dataset_entries(protocol: Protocol, run_dir: Path) -> tuple[list[ImageEntry], list[Triplet] | None]:
    """The protocol's images (and triplets, for a triplet file)."""
    ds = protocol.dataset
    if ds.kind == "synthetic":
        return _synthetic_entries(protocol, run_dir / "data"), None
    if not ds.path or "$" in ds.path:
        raise RunRefused(f"protocol {protocol.name!r} needs an image folder: pass --data DIR "
                         f"(dataset.path is {ds.path!r})")
    root = Path(ds.path).expanduser()
    if ds.kind == "triplets":
        tfile = Path(ds.triplets_file).expanduser()
        tfile = tfile if tfile.is_absolute() else root / tfile
        if not tfile.is_file():
            raise RunRefused(f"triplet file {tfile} does not exist")
        return read_triplet_file(tfile, root)
    try:
        paths = list_images(root)
    except InputError as exc:
        raise RunRefused(str(exc)) from None
    if ds.n_images:
        paths = paths[: ds.n_images]
    return [ImageEntry(i, p) for i, p in zip(image_ids(paths), paths, strict=True)], None


def synthetic_triplet_ok(face: dict, shape: dict, color: dict) -> bool:
    """A synthetic triplet is a real task: color shows its hair, shape's hairstyle and color's hair colour differ
    from face's (so every task variant but rec changes something)."""
    fh, sh, ch = face["hairstyle"], shape["hairstyle"], color["hairstyle"]
    return (ch["family"] != "bald" and ch["headwear"] == "none"
            and (sh["family"], sh["headwear"]) != (fh["family"], fh["headwear"])
            and color["hair_color"]["name"] != face["hair_color"]["name"])


ALIGNED_DIR = "aligned"  # RUN/aligned/<id>.png + <id>.align.json: photos aligned by `harness run --align`
PASTED_DIR = "pasted"  # RUN/pasted/<method dir>/<task>/<triplet>.png: results pasted back (--paste-back)


def aligned_input(store: RunStore, entry: ImageEntry, size: int) -> tuple[Image.Image, list[str]]:
    """FFHQ-align the photo of ``entry`` to ``size`` into ``RUN/aligned/`` (image + transform sidecar) and return
    it normalised; a photo with no face, several faces or no readable image raises :class:`InputError`."""
    from harness import align

    folder = store.path(ALIGNED_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    output, sidecar = folder / f"{entry.id}.png", folder / f"{entry.id}{align.SIDECAR_SUFFIX}"
    outcome = align.align_photo(entry.source, output, sidecar, align.AlignParams(output_size=size), one_face=True)
    if not outcome.ok:
        raise InputError(f"{entry.source.name}: {outcome.error}")
    image, notes = load_image(output, size)
    return image, ["aligned (FFHQ, dlib 68 landmarks)", *notes]


def paste_back_outputs(store: RunStore) -> int:
    """Write ``RUN/pasted/<method dir>/<task>/<triplet>.png`` for every successful result whose face image was
    aligned by the run (the result warped back into the original photo through its sidecar); idempotent, so
    shards may call it. Returns how many files were written."""
    from harness import align

    faces = {t.id: t.face for t in store.triplets()}
    written = 0
    for record in store.records().values():
        if record.status != "ok" or not record.output:
            continue
        sidecar = store.path(ALIGNED_DIR, f"{faces[record.triplet]}{align.SIDECAR_SUFFIX}")
        target = store.path(PASTED_DIR, *Path(record.output).parts[1:])
        if not sidecar.is_file() or target.exists():
            continue
        transform = align.AlignTransform.load(sidecar)
        atomic_save_image(target, align.paste_back(store.path(record.output), transform, transform.source))
        written += 1
    return written


def prepare_dataset(store: RunStore, protocol: Protocol, limit: int | None, parser: Callable | None,
                    need_landmarks: bool, log: Callable[[str], None], align: bool = False
                    ) -> tuple[dict[str, PreparedImage], list[Triplet]]:
    """Normalise inputs into ``RUN/inputs`` (FFHQ-aligned first with ``align``), label maps into ``RUN/labels``,
    write images.csv/triplets.csv."""
    entries, triplets = dataset_entries(protocol, store.root)
    if triplets is None:
        accept = None
        if protocol.dataset.kind == "synthetic":
            specs = {e.id: e.synth for e in entries}

            def accept(face: str, shape: str, color: str) -> bool:
                return synthetic_triplet_ok(specs[face], specs[shape], specs[color])

        try:
            triplets = draw_triplets([e.id for e in entries], protocol.n_triplets, protocol.triplet_seed, accept)
        except InputError as exc:
            raise RunRefused(str(exc)) from None
    if limit is not None:
        triplets = triplets[:limit]
    triplets = with_text_roles(triplets, protocol)
    used = {i for t in triplets for i in (t.face, t.shape, t.color) if prompt_of(i) is None}
    size = protocol.dataset.size
    prepared: dict[str, PreparedImage] = {}
    rows = []
    for entry in entries:
        if entry.id not in used:
            continue
        input_path, labels_path, error, notes = store.input_path(entry.id), None, None, []
        try:
            if not input_path.exists():
                img, notes = aligned_input(store, entry, size) if align else load_image(entry.source, size)
                atomic_save_image(input_path, img, **PNG_ARGS)
            if entry.labels is not None:
                labels_path = store.labels_path(entry.id)
                if not labels_path.exists():
                    lab = Image.open(entry.labels)
                    if lab.size != (size, size):
                        lab = lab.resize((size, size), Image.Resampling.NEAREST)
                    atomic_save_image(labels_path, lab)
        except InputError as exc:
            error, input_path = str(exc), None
        landmarks = None
        if error is None and entry.synth is not None:
            from harness import synthetic

            landmarks = synthetic.landmarks(synthetic.PortraitSpec.from_json(entry.synth), size)
        prepared[entry.id] = PreparedImage(entry.id, input_path, labels_path, landmarks, entry.synth, error)
        rows.append((entry.id, str(entry.source), "" if error else sha256_file(input_path),
                     "" if error else f"inputs/{entry.id}.png", f"labels/{entry.id}.png" if labels_path else "",
                     error or "", "; ".join(notes)))
    if parser is not None:
        _parse_labels(store, prepared, parser, log)
        rows = [(*r[:4], f"labels/{r[0]}.png" if prepared[r[0]].labels else "", *r[5:]) for r in rows]
    if need_landmarks:
        _detect_landmarks(store, prepared)
    write_csv(store.path("images.csv"), ("id", "source", "sha256", "input", "labels", "error", "notes"), rows)
    store.write_triplets(triplets)
    return prepared, triplets


def with_text_roles(triplets: Sequence[Triplet], protocol: Protocol) -> list[Triplet]:
    """The triplets with the protocol's text references (``[text]``, ``--shape-text``/``--color-text``) in place
    of their shape / color images."""
    shape, color = protocol.shape_text, protocol.color_text
    return [Triplet(t.id, t.face, text_id(shape) if shape else t.shape, text_id(color) if color else t.color)
            for t in triplets]


def _parse_labels(store: RunStore, prepared: dict[str, PreparedImage], parser: Callable,
                  log: Callable[[str], None]) -> None:
    """Label maps of real images with the face parser, cached per image content and parser weights."""
    from harness.weights import cache_dir

    todo = [p for p in prepared.values() if p.error is None and p.labels is None]
    if not todo:
        return
    log(f"parsing {len(todo)} image(s) with the face parser")
    identity = getattr(parser, "identity", None)  # which weights made the labels; no disk cache without it
    for item in todo:
        target = store.labels_path(item.id)
        cached = cache_dir() / "labels" / identity / f"{sha256_file(item.input)}.png" if identity else None
        if not target.exists():
            if cached is not None and cached.exists():
                labels = Image.open(cached)
            else:
                labels = Image.fromarray(np.asarray(parser([Image.open(item.input).convert("RGB")])[0], np.uint8))
                if cached is not None:
                    atomic_save_image(cached, labels)
            atomic_save_image(target, labels)
        item.labels = target


def _detect_landmarks(store: RunStore, prepared: dict[str, PreparedImage]) -> None:
    """dlib 68-point landmarks of real images (synthetic ones come from their spec), cached in the run."""
    cache_path = store.path("landmarks.json")
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    changed = False
    for item in prepared.values():
        if item.error or item.landmarks is not None:
            continue
        if item.id not in cache:
            from harness import align

            points = align.landmarks_68(np.asarray(Image.open(item.input).convert("RGB")))
            cache[item.id] = None if points is None else np.asarray(points, dtype=float).tolist()
            changed = True
        if cache[item.id] is not None:
            item.landmarks = np.asarray(cache[item.id], dtype=np.float32)
    if changed:
        atomic_write_text(cache_path, json.dumps(cache))


def write_ground_truth(store: RunStore, protocol: Protocol, prepared: Mapping[str, PreparedImage],
                       triplets: Sequence[Triplet]) -> None:
    """Synthetic runs: render the true result of every task x triplet (skips existing files).

    A text colour reference that names a palette colour (``"purple hair"``,
    :func:`harness.synthetic.named_hair_color`) has a ground truth too: that colour in its palette shade (no
    jitter, no ombre) with the face image's hair texture. A text shape reference has none (a prompt does not fix
    a hairstyle's geometry)."""
    from harness import synthetic

    size = protocol.dataset.size
    for task in protocol.tasks:
        for t in triplets:
            path = store.ground_truth_path(task, t.id)
            if path.exists():
                continue
            face_id, shape_id, color_id = t.roles(TASKS[task])
            prompt = prompt_of(color_id)
            named = synthetic.named_hair_color(prompt) if prompt is not None else None
            if is_text(face_id) or is_text(shape_id) or (prompt is not None and named is None):
                continue
            specs = [prepared[i].synth for i in (face_id, shape_id) + (() if prompt else (color_id,))]
            if any(s is None for s in specs):
                continue
            face, shape, *color = (synthetic.PortraitSpec.from_json(s) for s in specs)
            spec = synthetic.combine(face, shape, color[0] if color else dataclasses.replace(face, hair_color=named))
            image, labels = synthetic.render(spec, size)
            atomic_save_image(store.ground_truth_path(task, t.id, labels=True), Image.fromarray(labels))
            atomic_save_image(path, image, **PNG_ARGS)


# ------------------------------------------------------------------------------------------------ execution

def unit_seed(protocol_seed: int, method: str, task: str, triplet: str) -> int:
    digest = hashlib.sha256(f"{protocol_seed}/{method}/{task}/{triplet}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class ItemTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`ItemTimeout` in the main thread after ``seconds`` (no limit elsewhere or when <= 0)."""
    usable = seconds > 0 and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise ItemTimeout(f"exceeded the per-item time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or the process's peak RSS (Linux: reset via clear_refs)."""

    def __init__(self, device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss_peak"
        self.peak: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            import torch

            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = int(line.split()[1]) * 1024
                    return
        except OSError:
            pass
        import resource

        self.peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def as_output_image(result: Any, size: tuple[int, int]) -> Image.Image:
    """Check a method's result: an RGB PIL image of the face's size (finite arrays/tensors are converted)."""
    if hasattr(result, "detach"):  # torch tensor [3, H, W] or [H, W, 3] in [0, 1]
        result = result.detach().float().cpu().numpy()
        if result.ndim == 3 and result.shape[0] == 3:
            result = result.transpose(1, 2, 0)
    if isinstance(result, np.ndarray):
        if result.ndim != 3 or result.shape[2] != 3:
            raise ValueError(f"returned an array of shape {result.shape}, expected [H, W, 3]")
        if result.dtype != np.uint8:
            if not np.all(np.isfinite(result)):
                raise ValueError("returned NaN or inf values")
            result = np.clip(np.round(result.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        result = Image.fromarray(result, "RGB")
    if not isinstance(result, Image.Image):
        raise TypeError(f"returned {type(result).__name__}, expected a PIL.Image")
    if result.mode != "RGB":
        raise ValueError(f"returned a {result.mode} image, expected RGB")
    if result.size != size:
        raise ValueError(f"returned {result.size[0]}x{result.size[1]}, expected {size[0]}x{size[1]} (face size)")
    return result


def _error_text(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


class InputCache:
    """Normalised input images with their annotations, loaded once per run."""

    def __init__(self, prepared: Mapping[str, PreparedImage], cache: bool = True):
        self.prepared = prepared
        self.cache = cache
        self._images: dict[str, Image.Image] = {}

    def get(self, image_id: str) -> Image.Image | TextPrompt:
        """The image of ``image_id`` (a copy, with its annotations), or the :class:`TextPrompt` of a ``text:`` id."""
        prompt = prompt_of(image_id)
        if prompt is not None:
            return TextPrompt(prompt)
        item = self.prepared[image_id]
        if item.error:
            raise InputError(f"input {image_id}: {item.error}")
        if image_id not in self._images or not self.cache:
            with Image.open(item.input) as im:
                image = im.convert("RGB")
            labels = np.asarray(Image.open(item.labels)) if item.labels else None
            annotations.attach(image, annotations.Annotations(image_id, labels, item.landmarks, item.synth))
            self._images[image_id] = image
        cached = self._images[image_id]
        image = cached.copy()  # methods get their own copy (with the same annotations)
        image.info[annotations.INFO_KEY] = cached.info[annotations.INFO_KEY]
        return image


@dataclass(frozen=True)
class Unit:
    method: str
    task: str
    triplet: Triplet

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.method, self.task, self.triplet.id)


def enumerate_units(labels: Sequence[str], tasks: Sequence[str], triplets: Sequence[Triplet]) -> list[Unit]:
    return [Unit(m, task, t) for m in labels for task in tasks for t in triplets]


def shard_units(units: Sequence[Unit], shard: tuple[int, int]) -> list[Unit]:
    index, count = shard
    return [u for i, u in enumerate(units) if i % count == index]


def run_method(method: Method, weights: WeightStore, units: Sequence[Unit], store: RunStore, inputs: InputCache,
               protocol: Protocol, device, progress: bool, log: Callable[[str], None]) -> tuple[int, int, int]:
    """Set up ``method``, warm it up, run its units; returns (ok, failed, skipped) counts. Units the method cannot take
    (a text reference in a role it takes images for) are recorded "skipped" first, and a method left with no unit
    is not set up."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    runnable = []
    for u in units:
        why = slot_refusal(TASKS[u.task], u.triplet.roles(TASKS[u.task]), method.accepts_text, method.label)
        if why is None:
            runnable.append(u)
        else:
            store.append_record(Record(u.method, u.task, u.triplet.id, "skipped", why, worker=worker, finished=_now()))
    skipped = len(units) - len(runnable)
    if skipped:
        log(f"{method.label}: skipped {skipped} item(s) with text references it cannot take")
    units = runnable
    if not units:
        return 0, 0, skipped
    seed_everything(protocol.seed)
    t0 = time.perf_counter()
    try:
        method.setup(device, weights)
    except Exception as exc:  # a method that cannot set up fails all its units, the run goes on
        error = f"setup failed: {_error_text(exc)}"
        log(f"{method.label}: {error}")
        for u in units:
            store.append_record(Record(u.method, u.task, u.triplet.id, "failed", error, worker=worker,
                                       finished=_now()))
        return 0, len(units), skipped
    store.append_event({"event": "setup", "method": method.label, "time_s": time.perf_counter() - t0,
                        "worker": worker, "device": str(device)})
    _warm_up(method, units, inputs, protocol, store)
    ok = failed = 0
    bar = _progress(len(units), method.label, progress)
    batch = max(1, int(method.batch_size))
    for start in range(0, len(units), batch):
        chunk = units[start:start + batch]
        for record in _run_chunk(method, chunk, store, inputs, protocol, device, worker):
            store.append_record(record)
            ok += record.status == "ok"
            failed += record.status != "ok"
        bar.update(len(chunk))
        bar.set_postfix(failed=failed, refresh=False)
    bar.close()
    return ok, failed, skipped


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs of batch jobs stay readable)
    return tqdm(total=total, desc=desc, unit="item", disable=None if enabled else True, dynamic_ncols=True,
                file=sys.stderr)


def _warm_up(method: Method, units: Sequence[Unit], inputs: InputCache, protocol: Protocol, store: RunStore) -> None:
    """Untimed calls before timing starts (lazy initialisation, CUDA kernels); errors are ignored here.

    The calls run in a unit context flagged ``warmup`` so that methods do not fill their caches with them; a method
    sets ``warmup_calls = 0`` when a call is too expensive to repeat (optimisation-based methods).
    """
    calls = protocol.warmup if method.warmup_calls is None else method.warmup_calls
    for unit in units:
        try:
            images = [inputs.get(i) for i in unit.triplet.roles(TASKS[unit.task])]
        except InputError:
            continue
        ctx = unit_context([unit], store, warmup=True)
        for _ in range(calls):
            with contextlib.suppress(Exception), time_limit(protocol.timeout_s), running(ctx):
                method.transfer(*images)
        return


def unit_context(units: Sequence[Unit], store: RunStore, warmup: bool = False) -> UnitContext:
    return UnitContext(units[0].method, units[0].task, tuple(u.triplet.id for u in units),
                       tuple(store.output_path(u.method, u.task, u.triplet.id) for u in units), store.root, warmup)


def _run_chunk(method: Method, chunk: Sequence[Unit], store: RunStore, inputs: InputCache, protocol: Protocol,
               device, worker: str) -> list[Record]:
    records: list[Record] = []
    ready: list[tuple[Unit, list[Image.Image]]] = []
    for unit in chunk:
        try:
            ready.append((unit, [inputs.get(i) for i in unit.triplet.roles(TASKS[unit.task])]))
        except InputError as exc:
            records.append(Record(unit.method, unit.task, unit.triplet.id, "failed", str(exc), worker=worker,
                                  finished=_now()))
    if not ready:
        return records
    first = ready[0][0]
    seed_everything(unit_seed(protocol.seed, first.method, first.task, first.triplet.id))
    error: str | None = None
    results: list[Any] = []
    ctx = unit_context([u for u, _ in ready], store)
    with recording(device) as stage_times, PeakMemory(device) as memory, running(ctx):
        start = time.perf_counter()
        try:
            with time_limit(protocol.timeout_s * len(ready)):
                if len(ready) == 1:
                    results = [method.transfer(*ready[0][1])]
                else:
                    results = list(method.transfer_batch([tuple(images) for _, images in ready]))
                synchronize(device)
        except Exception as exc:
            error = _error_text(exc)
            _save_traceback(store, ready, exc)
        elapsed = time.perf_counter() - start
    if error is None and len(results) != len(ready):
        error = f"transfer_batch returned {len(results)} images for {len(ready)} triplets"
    n = len(ready)
    for i, (unit, images) in enumerate(ready):
        common = dict(time_s=elapsed / n, stages={k: v / n for k, v in stage_times.items()},
                      peak_mem_bytes=memory.peak, mem_kind=memory.kind, batch=n, worker=worker,
                      extras=dict(ctx.extras))
        item_error = error
        if item_error is None:
            try:
                image = as_output_image(results[i], images[0].size)
                path = store.output_path(unit.method, unit.task, unit.triplet.id)
                atomic_save_image(path, image, **PNG_ARGS)
            except Exception as exc:
                item_error = _error_text(exc) if not isinstance(exc, (ValueError, TypeError)) else str(exc)
        if item_error is None:
            records.append(Record(unit.method, unit.task, unit.triplet.id, "ok", output=str(
                path.relative_to(store.root)), finished=_now(), **common))
        else:
            records.append(Record(unit.method, unit.task, unit.triplet.id, "failed", item_error, finished=_now(),
                                  **common))
    return records


def _save_traceback(store: RunStore, ready, exc: BaseException) -> None:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for unit, _ in ready:
        path = store.path("errors", unit.method.replace(":", "."), unit.task, f"{unit.triplet.id}.txt")
        with contextlib.suppress(OSError):
            atomic_write_text(path, text)


# ------------------------------------------------------------------------------------------------ manifest

def method_manifest(method: Method, weights: WeightStore) -> dict[str, Any]:
    checkpoints = {}
    for ckpt in method.checkpoints():
        if weights.fill:
            checkpoints[ckpt.filename] = {"path": None, "sha256": None, "filled": True}
        else:
            path = weights.path(ckpt)
            checkpoints[ckpt.filename] = {"path": str(path), "sha256": sha256_file(path)}
    return {"name": method.name, "variant": method.variant, "plugin": method.plugin,
            "description": method.description or ((type(method).__doc__ or "").strip().splitlines() or [""])[0],
            "class": f"{type(method).__module__}.{type(method).__qualname__}",
            "params": params_dict(method.params), "checkpoints": checkpoints}


def build_manifest(config: RunConfig, methods: Sequence[Method], weights: WeightStore, device,
                   dataset_hash: str, n_images: int, n_triplets: int) -> dict[str, Any]:
    plugin_dists = tuple(sorted({m.plugin for m in methods if m.plugin}))
    return {
        "harness_version": _version(),
        "run_name": config.out.name,
        "created": _now(),
        "command": config.command,
        "protocol": config.protocol.to_dict(),
        "tasks": list(config.protocol.tasks),
        "n_triplets": n_triplets,
        "limit": config.limit,
        "methods": {m.label: method_manifest(m, weights) for m in methods},
        "fill_weights": bool(config.fill_weights),
        "precision": config.precision,
        "align": bool(config.align),
        "device": environment.device_info(device),
        "dataset": {"kind": config.protocol.dataset.kind, "n_images": n_images, "content_hash": dataset_hash},
        "git": environment.git_state(),
        "packages": environment.package_versions(plugin_dists),
        "shards": config.shard[1],
    }


def _version() -> str:
    from harness import __version__

    return __version__


def _comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    keep = {k: manifest.get(k) for k in ("protocol", "tasks", "n_triplets", "fill_weights", "limit")}
    keep["precision"] = manifest.get("precision", "fp32")  # manifests older than --precision ran in fp32
    keep["align"] = bool(manifest.get("align", False))
    return json.loads(json.dumps(keep, default=str))  # as stored: tuples become lists


def merge_manifest(store: RunStore, new: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Write the manifest, or check a resumed run's manifest agrees and add newly requested methods."""
    with store.locked("manifest.lock"):
        if not store.exists():
            store.write_manifest(new)
            return new
        old = store.manifest()
        if not resume:
            raise RunRefused(f"{store.root} already holds a run; pass --resume to continue it, or choose another --out")
        if _comparable(old) != _comparable(new):
            diff = [k for k in _comparable(new) if _comparable(old)[k] != _comparable(new)[k]]
            raise RunRefused(f"cannot resume {store.root}: it was made with a different {', '.join(diff)}")
        for label, entry in new["methods"].items():
            if label in old["methods"] and old["methods"][label]["params"] != json.loads(json.dumps(entry["params"])):
                raise RunRefused(f"cannot resume {store.root}: {label} ran there with other parameters "
                                 f"({old['methods'][label]['params']})")
            old["methods"].setdefault(label, entry)
        store.write_manifest(old)
        return old


# ------------------------------------------------------------------------------------------------ entry point

@dataclass
class RunSummary:
    run_dir: Path
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # units a method cannot take (text references), recorded "skipped"
    pending: int = 0
    skipped_methods: list[str] = field(default_factory=list)
    report: Path | None = None


def run(config: RunConfig) -> RunSummary:
    """Run a benchmark end to end (prepare, transfer, metrics, report)."""
    log = config.log
    protocol = config.protocol
    store = RunStore(config.out)
    if store.exists() and not config.resume and config.shard[1] == 1:
        raise RunRefused(f"{config.out} already holds a run; pass --resume to continue it, or choose another --out")
    if config.align and protocol.dataset.kind == "synthetic":
        raise RunRefused("--align is for real photos (--data DIR): synthetic portraits are aligned already")
    if config.paste_back and not config.align:
        raise RunRefused("--paste-back needs --align (it uses the transforms the alignment records)")
    try:
        device = environment.resolve_device(config.device)
        environment.set_float32_precision(config.precision)
    except ValueError as exc:
        raise RunRefused(str(exc)) from None
    weights = WeightStore(config.weights_dir, fill=config.fill_weights)
    parser = None
    needs_labels = protocol.dataset.kind != "synthetic"
    labels_available = protocol.dataset.kind == "synthetic"
    if needs_labels:
        parser = _face_parser(device, weights)
        labels_available = parser is not None
    methods, skipped = plan_methods(config, weights, labels_available)
    for line in skipped:
        log(line)
    store.root.mkdir(parents=True, exist_ok=True)
    need_landmarks = protocol.dataset.kind != "synthetic" and any(
        "landmarks" in (m.requires | getattr(m, "uses", frozenset())) for m in methods)
    prepared, triplets = prepare_dataset(store, protocol, config.limit, parser, need_landmarks, log, config.align)
    if protocol.dataset.kind == "synthetic":
        write_ground_truth(store, protocol, prepared, triplets)
    dataset_hash = hashlib.sha256("".join(
        f"{r['id']}={r['sha256']};" for r in sorted(store.images(), key=lambda r: r["id"])).encode()).hexdigest()
    manifest = merge_manifest(store, build_manifest(config, methods, weights, device, dataset_hash,
                                                     len(prepared), len(triplets)), config.resume or
                              config.shard[1] > 1)
    summary = RunSummary(config.out, skipped_methods=skipped)
    inputs = InputCache(prepared)
    done = store.done()
    for method in methods:
        units = shard_units(enumerate_units([method.label], protocol.tasks, triplets), config.shard)
        todo = [u for u in units if u.key not in done]
        if not todo:
            log(f"{method.label}: all {len(units)} item(s) already done")
            continue
        ok, failed, skipped_units = run_method(method, weights, todo, store, inputs, protocol, device,
                                               config.progress, log)
        summary.ok += ok
        summary.failed += failed
        summary.skipped += skipped_units
        method.teardown()
        _free_memory(device)
    if config.paste_back:
        log(f"pasted {paste_back_outputs(store)} result(s) back into the original photos: {store.path(PASTED_DIR)}")
    all_units = enumerate_units(list(manifest["methods"]), protocol.tasks, triplets)
    done = store.done()
    summary.pending = sum(u.key not in done for u in all_units)
    if summary.pending:
        log(f"{summary.pending} item(s) of this run are not done yet (other shards, or interrupted); "
            "metrics and report come when all are done (or run `harness metrics` / `harness report`)")
        return summary
    if config.metrics:
        from harness import metrics

        metrics.compute(store.root, weights, device=device, progress=config.progress)
    return summary


def _face_parser(device, weights: WeightStore) -> Callable | None:
    factory = plugins.feature_extractors().get("face_parser")
    if factory is None:
        return None
    try:
        return factory(device, weights)
    except Exception:
        return None


def _free_memory(device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def parse_shard(text: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``"k/n"``; else torchrun's ``RANK``/``WORLD_SIZE``; else ``(0, 1)``."""
    env = os.environ if env is None else env
    if text:
        try:
            k, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected K/N, e.g. 0/4") from None
    elif env.get("WORLD_SIZE") and env.get("RANK"):
        k, n = int(env["RANK"]), int(env["WORLD_SIZE"])
    else:
        return (0, 1)
    if not (n >= 1 and 0 <= k < n):
        raise ValueError(f"shard {k}/{n}: need 0 <= K < N")
    return (k, n)


def replace_config(config: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(config, **changes)
