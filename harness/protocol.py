"""Protocols: which images, which triplets, which task variants, which metrics, which fixed parameters.

A protocol is a TOML file (``protocols/<name>.toml`` ships ``synthetic``, ``smoke`` and ``celebahq``)::

    name = "synthetic"
    [dataset]            # kind = "synthetic" | "folder" | "triplets"
    kind = "synthetic"
    n_images = 48        # synthetic: portraits to generate; folder: use at most this many (0 = all)
    size = 256           # images are given to methods at size x size
    seed = 0
    path = ""            # folder / triplets: image folder (${ENV} expanded; `harness run --data` overrides)
    triplets_file = ""   # triplets: "face shape color" per line, names relative to path
    [triplets]
    n = 24               # drawn deterministically from seed (ignored for a triplets file); on synthetic data
                         # only real tasks: color shows hair, shape and color differ from face in hair
    seed = 0
    tasks = ["full", "color", "shape", "both", "rec"]
    [evaluation]
    size = 256           # results and references are compared at this size
    metrics = ["all"]
    bootstrap = 200      # bootstrap resamples for 95% intervals
    [runner]
    timeout_s = 900      # per item
    warmup = 1           # untimed warm-up calls per method
    seed = 0
    [methods.barbershop] # per-method parameter overrides
    W_steps = 1100
    [text]               # optional: give a role as text instead of an image, for every triplet
    shape = "afro hairstyle"   # (`harness run --shape-text/--color-text` override these)
    color = "purple hair"
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Report table 5.1: which input image plays each role in each task variant.
TASKS: dict[str, tuple[str, str, str]] = {
    "full": ("face", "shape", "color"),
    "color": ("face", "face", "color"),
    "shape": ("face", "shape", "face"),
    "both": ("face", "shape", "shape"),
    "rec": ("face", "face", "face"),
}
DATASET_KINDS = ("synthetic", "folder", "triplets")


class ProtocolError(ValueError):
    """A protocol file is invalid."""


@dataclass(frozen=True)
class DatasetSpec:
    kind: str = "synthetic"
    n_images: int = 48
    size: int = 256
    seed: int = 0
    path: str = ""
    triplets_file: str = ""


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str = ""
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    n_triplets: int = 24
    triplet_seed: int = 0
    tasks: tuple[str, ...] = tuple(TASKS)
    eval_size: int = 256
    metrics: tuple[str, ...] = ("all",)
    bootstrap: int = 200
    timeout_s: float = 900.0
    warmup: int = 1
    seed: int = 0
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    shape_text: str = ""  # the shape role of every triplet as text (harness.text); "" = images
    color_text: str = ""
    source: str = ""

    def task_roles(self, task: str) -> tuple[str, str, str]:
        return TASKS[task]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_data_path(self, path: str | Path) -> Protocol:
        return dataclasses.replace(self, dataset=dataclasses.replace(self.dataset, path=str(path)))

    def with_text(self, shape: str | None = None, color: str | None = None) -> Protocol:
        """The protocol with these text references (``None`` keeps the protocol's own; prompts are checked)."""
        from harness.text import PromptError, check_prompt

        try:
            return dataclasses.replace(
                self, shape_text=self.shape_text if shape is None else check_prompt(shape, "shape"),
                color_text=self.color_text if color is None else check_prompt(color, "color"))
        except PromptError as exc:
            raise ProtocolError(str(exc)) from None


def builtin_names() -> list[str]:
    files = importlib.resources.files("protocols")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def _expect(table: dict, key: str, kind: type | tuple, where: str, default: Any) -> Any:
    value = table.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def parse(data: dict[str, Any], source: str = "") -> Protocol:
    """Validate a protocol table (as read from TOML)."""
    known = {"name", "description", "dataset", "triplets", "evaluation", "runner", "methods", "text"}
    unknown = set(data) - known
    if unknown:
        raise ProtocolError(f"{source}: unknown section(s) {sorted(unknown)}; known: {sorted(known)}")
    ds = data.get("dataset", {})
    d = DatasetSpec()
    dataset = DatasetSpec(
        kind=_expect(ds, "kind", str, "dataset", d.kind),
        n_images=_expect(ds, "n_images", int, "dataset", d.n_images),
        size=_expect(ds, "size", int, "dataset", d.size),
        seed=_expect(ds, "seed", int, "dataset", d.seed),
        path=os.path.expandvars(_expect(ds, "path", str, "dataset", d.path)),
        triplets_file=os.path.expandvars(_expect(ds, "triplets_file", str, "dataset", d.triplets_file)),
    )
    if dataset.kind not in DATASET_KINDS:
        raise ProtocolError(f"dataset.kind: {dataset.kind!r} is not one of {DATASET_KINDS}")
    if dataset.size < 16:
        raise ProtocolError(f"dataset.size: {dataset.size} is too small")
    tr, ev, rn = data.get("triplets", {}), data.get("evaluation", {}), data.get("runner", {})
    tasks = tuple(_expect(tr, "tasks", list, "triplets", list(TASKS)))
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ProtocolError(f"triplets.tasks: unknown task(s) {bad}; known: {list(TASKS)}")
    methods = _expect(data, "methods", dict, "protocol", {})
    for name, table in methods.items():
        if not isinstance(table, dict):
            raise ProtocolError(f"methods.{name}: expected a table of parameters")
    text = _expect(data, "text", dict, "protocol", {})
    unknown_text = set(text) - {"shape", "color"}
    if unknown_text:
        raise ProtocolError(f"text: unknown key(s) {sorted(unknown_text)}; known: color, shape")
    protocol = Protocol(
        name=_expect(data, "name", str, "protocol", Path(source).stem or "protocol"),
        description=_expect(data, "description", str, "protocol", ""),
        dataset=dataset,
        n_triplets=_expect(tr, "n", int, "triplets", 24),
        triplet_seed=_expect(tr, "seed", int, "triplets", 0),
        tasks=tasks,
        eval_size=_expect(ev, "size", int, "evaluation", dataset.size),
        metrics=tuple(_expect(ev, "metrics", list, "evaluation", ["all"])),
        bootstrap=_expect(ev, "bootstrap", int, "evaluation", 200),
        timeout_s=float(_expect(rn, "timeout_s", (int, float), "runner", 900.0)),
        warmup=_expect(rn, "warmup", int, "runner", 1),
        seed=_expect(rn, "seed", int, "runner", 0),
        method_params={k: dict(v) for k, v in methods.items()},
        source=source,
    )
    if not text:
        return protocol
    return protocol.with_text(*(_expect(text, role, str, "text", None) if role in text else None
                                for role in ("shape", "color")))


def load(name_or_path: str | Path) -> Protocol:
    """A built-in protocol by name, or a TOML file by path."""
    text_path = Path(name_or_path)
    if text_path.suffix == ".toml" or text_path.exists():
        if not text_path.is_file():
            raise ProtocolError(f"protocol file {text_path} does not exist")
        source, text = str(text_path), text_path.read_text()
    else:
        resource = importlib.resources.files("protocols") / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ProtocolError(f"unknown protocol {name_or_path!r}; built-in: {', '.join(builtin_names())}, "
                                "or give a path to a .toml file")
        source, text = f"protocols/{name_or_path}.toml", resource.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{source}: {exc}") from None
    return parse(data, source)


def from_dict(data: dict[str, Any]) -> Protocol:
    """Rebuild a protocol from :meth:`Protocol.to_dict` (as stored in a run manifest)."""
    data = dict(data)
    data["dataset"] = DatasetSpec(**data["dataset"])
    for key in ("tasks", "metrics"):
        data[key] = tuple(data[key])
    return Protocol(**data)
