"""A set of trained CycleGAN pairs on disk: ``cyclegan.json`` plus the junyanz file layout.

::

    DIR/cyclegan.json                  which pairs, their domains, sizes and files (written by the trainer)
    DIR/<A>-<B>/latest_net_G_A.pth     A -> B generator (bare state dict, as junyanz's trainer saves it)
    DIR/<A>-<B>/latest_net_G_B.pth     B -> A generator
    DIR/<A>-<B>/latest_net_D_A.pth     discriminator of domain B (judges G_A's output), for further training
    DIR/<A>-<B>/latest_net_D_B.pth     discriminator of domain A
    DIR/<A>-<B>/pair.json, log.jsonl, loss.png    the pair's record, loss log and loss curves

``cyclegan.json``::

    {"format": "hair-harness-cyclegan-1", "classifier": "hair-domains-1",
     "pairs": [{"name": "black-blond", "axis": "color", "A": "black", "B": "blond", "size": 64,
                "files": {"G_A": {"path": "black-blond/latest_net_G_A.pth", "bytes": ..., "sha256": ...}, ...},
                "training": {...}}]}

A released one-direction generator (``latest_net_G.pth`` of ``--model test``) is a pair with only ``G_A`` (A -> B)
listed; ``size`` (default 256) is the resolution a generator runs at. Paths are relative to ``DIR``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.method import Checkpoint
from methods.cyclegan.domains import CLASSIFIER_VERSION, axis_of

FORMAT = "hair-harness-cyclegan-1"
BUNDLE_FILE = "cyclegan.json"
SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"
GENERATORS = {"G_A": "A", "G_B": "B"}  # file role -> the domain it translates from
NETWORK_FILES = ("G_A", "G_B", "D_A", "D_B")
DEFAULT_SIZE = 256


def pair_name(a: str, b: str) -> str:
    return f"{a}-{b}"


@dataclass(frozen=True)
class Translator:
    """One direction of a pair: ``source`` -> ``target`` by the generator file ``checkpoint``."""

    pair: str
    axis: str
    source: str
    target: str
    size: int
    checkpoint: Checkpoint

    @property
    def label(self) -> str:
        return f"{self.source}->{self.target}"


@dataclass(frozen=True)
class Bundle:
    root: Path
    pairs: tuple[Mapping[str, Any], ...]
    classifier: str = CLASSIFIER_VERSION
    translators: dict[tuple[str, str], Translator] = field(default_factory=dict)

    @property
    def shipped(self) -> bool:
        return self.root == SHIPPED_DIR

    def checkpoints(self) -> list[Checkpoint]:
        return [t.checkpoint for t in self.translators.values()]

    def translator(self, source: str, target: str) -> Translator:
        try:
            return self.translators[source, target]
        except KeyError:
            have = ", ".join(t.label for t in self.translators.values()) or "none"
            raise LookupError(f"no {source}->{target} translator in {self.root / BUNDLE_FILE} (it has: {have})"
                              ) from None

    def domains(self, axis: str) -> list[str]:
        names: list[str] = []
        for t in self.translators.values():
            for d in (t.source, t.target):
                if t.axis == axis and d not in names:
                    names.append(d)
        return names


def _source_text(root: Path, pair: Mapping[str, Any]) -> str:
    command = pair.get("training", {}).get("command")
    where = "shipped inside hair-harness (methods/cyclegan/pretrained)" if root == SHIPPED_DIR else str(root)
    return f"{where}; trained by `{command}`" if command else f"{where} (listed in {BUNDLE_FILE})"


def read_bundle(root: str | Path | None = None) -> Bundle:
    """The pairs of ``root/cyclegan.json`` (default: the shipped ones). ``ValueError`` for a malformed file,
    ``FileNotFoundError`` when there is none."""
    root = Path(root).expanduser().resolve() if root else SHIPPED_DIR
    path = root / BUNDLE_FILE if root.is_dir() or not root.suffix else root
    root = path.parent
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (write one with `harness train cyclegan --out {root}`)")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    translators: dict[tuple[str, str], Translator] = {}
    for pair in data.get("pairs", []):
        a, b = pair["A"], pair["B"]
        axis = pair.get("axis") or axis_of(a)
        if axis_of(a) != axis or axis_of(b) != axis:
            raise ValueError(f"{path}: pair {a}-{b} mixes axes (domains: {axis_of(a)}, {axis_of(b)})")
        name = pair.get("name", pair_name(a, b))
        for role, frm in GENERATORS.items():
            entry = pair.get("files", {}).get(role)
            if not entry:
                continue
            source, target = (a, b) if frm == "A" else (b, a)
            ckpt = Checkpoint(
                key=f"cyclegan:{name}:{role}", filename=entry["path"], source=_source_text(root, pair),
                purpose=f"CycleGAN {source}->{target} hair-{axis} generator ({role} of pair {name})",
                size=entry.get("bytes"), sha256=entry.get("sha256"), used_by=("cyclegan",),
                local_path=str(root / entry["path"]))
            translators[source, target] = Translator(name, axis, source, target, int(pair.get("size", DEFAULT_SIZE)),
                                                     ckpt)
    return Bundle(root, tuple(data.get("pairs", [])), data.get("classifier", CLASSIFIER_VERSION), translators)


def write_bundle(root: Path) -> Path:
    """(Re)write ``root/cyclegan.json`` from the ``pair.json`` of every pair folder under ``root`` (several
    trainers may fill one folder: the file is derived, never edited, and written atomically)."""
    from harness.store import atomic_write_text

    pairs = []
    for record in sorted(root.glob("*/pair.json")):
        pairs.append(json.loads(record.read_text()))
    path = root / BUNDLE_FILE
    atomic_write_text(path, json.dumps({"format": FORMAT, "classifier": CLASSIFIER_VERSION, "pairs": pairs},
                                       indent=1) + "\n")
    return path
