"""Parity fixtures: fill a module by the fixtures' deterministic rule, run the cases, compare.

A fixture folder holds ``spec.json`` and ``data.npz`` (see ``shared/parity/README.md``). Adapters (one per
fixture name, registered through the ``register_parity`` hook) build our module from the spec and return a
``run(case) -> {output name or npz key: array}`` callable; :func:`check` compares every output of every case.
Held-out copies of a fixture may rename, reorder or add cases, so adapters tell which op a case exercises with
:func:`case_op` (from its call text, inputs and outputs) and read parameters from the case (:func:`calls`,
:func:`call_arg`, input and reference shapes), never from its name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np


def fill_value(namespace: str, key: str, shape, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    """The fill rule: a float32 array seeded by ``sha256(f"{namespace}/{key}")``."""
    seed = int.from_bytes(hashlib.sha256(f"{namespace}/{key}".encode()).digest()[:8], "little")
    value = np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)
    return value * np.float32(std) + np.float32(mean)


def fill_entry(namespace: str, key: str, shape, fill: Mapping[str, Any], const: Mapping | None = None,
               dtype: str = "float32") -> np.ndarray:
    """One state-dict entry by its fill recipe (``normal``, ``const`` or ``int_zero``)."""
    kind = fill["kind"]
    if kind == "normal":
        return fill_value(namespace, key, shape, fill.get("mean", 0.0), fill.get("std", 1.0))
    if kind == "int_zero":
        return np.zeros(tuple(shape), dtype=np.dtype(dtype) if "int" in dtype else np.int64)
    if kind == "const":
        if const is None or key not in const:
            raise KeyError(f"constant {key!r} is not provided")
        return np.asarray(const[key])
    raise ValueError(f"unknown fill kind {kind!r} for {key}")


@dataclass
class Fixture:
    """A loaded fixture folder."""

    path: Path
    spec: dict
    data: Mapping[str, np.ndarray]

    @classmethod
    def load(cls, path: str | Path) -> Fixture:
        path = Path(path)
        spec = json.loads((path / "spec.json").read_text())
        with np.load(path / "data.npz", allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
        return cls(path, spec, data)

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def namespace(self) -> str:
        return self.spec["namespace"]

    @property
    def constructor(self) -> dict:
        return self.spec.get("constructor") or {}

    @property
    def cases(self) -> list[dict]:
        return self.spec.get("cases", [])

    @cached_property
    def consts(self) -> dict[str, np.ndarray]:
        return {k[len("const/"):]: v for k, v in self.data.items() if k.startswith("const/")}

    def state_dict(self, prefix_strip: str = "") -> dict[str, np.ndarray]:
        """The fixture's state dict filled by the rule (keys as listed in spec.json)."""
        out = {}
        for entry in self.spec.get("state_dict", []):
            key = entry["key"]
            value = fill_entry(self.namespace, key, entry["shape"], entry["fill"], self.consts,
                               entry.get("dtype", "float32"))
            out[key[len(prefix_strip):] if prefix_strip and key.startswith(prefix_strip) else key] = value
        return out

    def torch_state_dict(self, prefix_strip: str = "") -> dict:
        import torch

        # np.array keeps 0-d entries 0-d (ascontiguousarray would make them 1-d)
        return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in self.state_dict(prefix_strip).items()}

    def input(self, case: dict, name: str) -> np.ndarray:
        """A case input by argument name."""
        return self.data[case["inputs"][name]]

    def reference(self, target: str) -> dict[str, np.ndarray] | np.ndarray:
        """The stored output for ``target`` (``out/X`` or a sampled ``out/X/*``; a sampled output named without
        ``/*`` is recognised by its ``out/X/idx`` entry)."""
        if target.endswith("/*") or (target not in self.data and f"{target}/idx" in self.data):
            base = target.removesuffix("/*")
            return {part: self.data[f"{base}/{part}"] for part in ("idx", "val", "mean", "std", "shape")}
        return self.data[target]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """``||ours - ref|| / ||ref||`` (absolute error when ``ref`` is all zeros)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        if ours.size == ref.size:
            ours = ours.reshape(ref.shape)
        else:
            return float("inf")
    if not np.all(np.isfinite(ours)):
        return float("inf")
    num = float(np.linalg.norm((ours - ref).ravel()))
    den = float(np.linalg.norm(ref.ravel()))
    return num / den if den > 0 else num


def compare(ours: np.ndarray, ref: dict | np.ndarray, tol: float) -> float:
    """Relative error of ``ours`` against a stored output; sampled outputs also check shape, mean and std."""
    ours = np.asarray(ours)
    if not isinstance(ref, dict):
        return rel_err(ours, ref)
    if tuple(ours.shape) != tuple(int(s) for s in ref["shape"]):
        return float("inf")
    flat = ours.reshape(-1).astype(np.float64)
    err = rel_err(flat[ref["idx"]], ref["val"])
    std_ref = float(ref["std"])
    scale = max(std_ref, 1e-12)
    moments = max(abs(float(flat.mean()) - float(ref["mean"])) / scale, abs(float(flat.std()) - std_ref) / scale)
    # mean/std are checked "to the same relative tolerance order": allow 10x the case tolerance
    if moments > max(10 * tol, 1e-6):
        return max(err, moments)
    return err


@dataclass
class CaseResult:
    fixture: str
    case: str
    rel_err: float
    tol: float
    details: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        if self.error is not None:
            return False
        return self.rel_err <= self.tol if self.tol == 0 else self.rel_err < self.tol

    def line(self) -> str:
        status = "ok" if self.ok else "FAIL"
        text = f"{self.fixture} {self.case} {self.rel_err:.3e} {self.tol:g} {status}"
        if self.error:
            text += f"  ({self.error})"
        elif not self.ok and self.details:
            worst = max(self.details, key=self.details.get)
            text += f"  (worst output: {worst} {self.details[worst]:.3e})"
        return text


SAMPLED_PARTS = "{idx,val,mean,std,shape}"


def _targets(case: dict) -> dict[str, str]:
    # "out/X/{idx,val,mean,std,shape}" names the sampled output "out/X/*" (not five comma-separated keys)
    return {name: (target[:-len(SAMPLED_PARTS)] + "*" if target.endswith(SAMPLED_PARTS) else target)
            for name, target in case.get("outputs", {}).items()}


def check(fixture: Fixture, adapter: Callable[[Fixture], Callable[[dict], Mapping[str, Any]]]) -> Iterator[CaseResult]:
    """Run every case of ``fixture`` through ``adapter`` and yield one result per case."""
    try:
        run = adapter(fixture)
    except Exception as exc:
        for case in fixture.cases:
            yield CaseResult(fixture.name, case["name"], float("inf"), case["tol"],
                             error=f"build failed: {type(exc).__name__}: {exc}")
        return
    for case in fixture.cases:
        tol = float(case["tol"])
        try:
            outputs = dict(run(case))
        except Exception as exc:
            yield CaseResult(fixture.name, case["name"], float("inf"), tol, error=f"{type(exc).__name__}: {exc}")
            continue
        details: dict[str, float] = {}
        for name, target in _targets(case).items():
            value = outputs.pop(name, None)
            keys = [t.strip() for t in target.split(",")]
            if value is None:
                # multi-key targets may be returned under their npz keys instead
                for key in keys:
                    if key in outputs:
                        details[key] = compare(outputs.pop(key), fixture.reference(key), tol)
                if not any(k in details for k in keys):
                    details[name] = float("inf")
                continue
            if len(keys) != 1:
                details[name] = float("inf")
                continue
            details[name] = compare(value, fixture.reference(keys[0]), tol)
        for key, value in outputs.items():  # extra outputs named by npz key
            if key in fixture.data or f"{key}/idx" in fixture.data:
                ref = fixture.reference(key + "/*" if f"{key}/idx" in fixture.data else key)
                details[key] = compare(value, ref, tol)
        worst = max(details.values()) if details else float("inf")
        yield CaseResult(fixture.name, case["name"], worst, tol, details,
                         error=None if details else "adapter returned no outputs")


# ---------------------------------------------------------------- which op a case exercises (adapters)

def arg_word(name: str) -> str:
    """First word of a case's argument/output name (``"bisenet_ids (uint8 [1,512,512])"`` -> ``bisenet_ids``)."""
    return re.split(r"[\s(]", name.strip(), maxsplit=1)[0]


@dataclass(frozen=True)
class Op:
    """The clues by which a case's spec entry shows that it exercises one op; all listed clues must hold.

    ``call``: regular expressions searched in the case's ``call`` text (official names, assignments);
    ``inputs`` / ``outputs``: first words of its argument / output names; ``names``: known case names.
    """

    call: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    names: tuple[str, ...] = ()

    def clues(self, case: Mapping) -> int | None:
        """How many clues ``case`` shows (``None`` if one is missing)."""
        text = str(case.get("call", ""))
        inputs = {arg_word(n) for n in case.get("inputs", {})}
        outputs = {arg_word(n) for n in case.get("outputs", {})}
        held = ([re.search(p, text) is not None for p in self.call] + [w in inputs for w in self.inputs]
                + [w in outputs for w in self.outputs])
        return len(held) if all(held) else None


def case_op(case: Mapping, ops: Mapping[str, Op]) -> str:
    """The key of ``ops`` that ``case`` exercises, from what spec.json says about it, not from its name.

    Candidates are the ops whose clues all hold; the one with the most clues wins (the most specific). A known
    case name (an op key or one of its ``names``) is the shortcut among equally good candidates, or when no
    op's clues hold; otherwise a tie, like no match, raises ``KeyError`` naming the case and the candidates.
    """
    name = str(case.get("name", ""))
    known = next((op for op, sig in ops.items() if name == op or name in sig.names), None)
    scores = {op: n for op, sig in ops.items() if (n := sig.clues(case)) is not None}
    best = max(scores.values(), default=None)
    tied = sorted(op for op, n in scores.items() if n == best)
    if known is not None and (known in tied or not tied):
        return known
    if not tied:
        raise KeyError(f"case {name!r}: its call, inputs and outputs match none of the ops {sorted(ops)}")
    if len(tied) > 1:
        raise KeyError(f"case {name!r} is ambiguous: it matches the ops {tied} equally")
    return tied[0]


@dataclass(frozen=True)
class Call:
    """One call of a function/class in a case's call text: the names it is assigned to and its arguments."""

    targets: tuple[str, ...]
    args: str

    def arg(self, keyword: str, position: int | None = None) -> str | None:
        """The argument ``keyword=...`` (or the positional argument ``position``) as text, else ``None``."""
        parts = _split_args(self.args)
        for part in parts:
            key, eq, value = part.partition("=")
            if eq and key.strip() == keyword:
                return value.strip()
        positional = [p for p in parts if not re.match(r"\s*\w+\s*=(?!=)", p)]
        return positional[position] if position is not None and position < len(positional) else None


def _split_args(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    tail = text[start:].strip()
    return parts + [tail] if tail else parts


def calls(case: Mapping, callee: str) -> list[Call]:
    """Every ``[targets =] callee(args)`` in the case's call text, in order
    (``im_128 = BicubicDownSample(factor=4)(x)`` -> ``Call(("im_128",), "factor=4")``)."""
    text = str(case.get("call", ""))
    found = []
    for match in re.finditer(rf"(?<!\w){re.escape(callee)}\(", text):
        depth, end = 1, match.end()
        while end < len(text) and depth:
            depth += (text[end] == "(") - (text[end] == ")")
            end += 1
        before = re.search(r"(\w+(?:\s*,\s*\w+)*)\s*=\s*(?:[\w.]+\.)?$", text[:match.start()])
        targets = tuple(t.strip() for t in before.group(1).split(",")) if before else ()
        found.append(Call(targets, text[match.end():end - 1]))
    return found


def call_arg(case: Mapping, callee: str, keyword: str, position: int | None = None) -> str | None:
    """The first value given to ``callee`` as ``keyword`` (or at ``position``) in the case's call text."""
    return next((v for c in calls(case, callee) if (v := c.arg(keyword, position)) is not None), None)


def to_numpy(value: Any) -> np.ndarray:
    """Tensor or array -> float/integer numpy array (detached, on CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.dtype.is_floating_point:
            value = value.float()
        value = value.numpy()
    return np.asarray(value)
