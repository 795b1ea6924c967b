"""What a method may know about the work unit it is running: ``harness.unit.current()``.

The runner opens a :class:`UnitContext` around every ``transfer`` / ``transfer_batch`` call (and around warm-up
calls, flagged ``warmup=True`` so that methods can skip writing caches then: :func:`in_warmup`). Methods use it
to put intermediate files in the run directory (:func:`intermediates_dir`) and to add facts to the unit's record
(``harness.unit.note(steps=1100)`` -> ``records.jsonl``'s ``extras``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class UnitContext:
    method: str
    task: str
    triplets: tuple[str, ...]  # triplet ids of the call, in the order of the images passed
    outputs: tuple[Path, ...]  # where each result will be written
    run_dir: Path | None = None
    warmup: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


_current: contextvars.ContextVar[UnitContext | None] = contextvars.ContextVar("harness_unit", default=None)


def current() -> UnitContext | None:
    """The unit being run, or ``None`` outside the runner."""
    return _current.get()


def note(**values: Any) -> None:
    """Add JSON-able facts to the current unit's record (ignored outside the runner)."""
    ctx = _current.get()
    if ctx is not None and not ctx.warmup:
        ctx.extras.update(values)


def in_warmup() -> bool:
    """Whether the current call is an untimed warm-up call (its results are thrown away: fill no caches)."""
    ctx = _current.get()
    return ctx is not None and ctx.warmup


def intermediates_dir(index: int = 0, chosen: Path | None = None) -> Path | None:
    """Where the ``index``-th triplet of the current call keeps its intermediate files: ``chosen`` (a directory the
    method was given) if any, else ``RUN/intermediates/<method dir>/<task>/<triplet>/`` under the runner.
    ``None`` during warm-up calls (nothing to keep); outside the runner without ``chosen``: ``ValueError``."""
    ctx = _current.get()
    if ctx is not None and ctx.warmup:
        return None
    if chosen is not None:
        return chosen
    if ctx is None:
        raise ValueError("intermediates outside `harness run` need a directory (the method's intermediates_dir)")
    if ctx.run_dir is None:
        return None
    output = ctx.outputs[index]  # RUN/outputs/<method dir>/<task>/<triplet>.png
    return ctx.run_dir / "intermediates" / output.parent.parent.name / output.parent.name / output.stem


@contextlib.contextmanager
def running(ctx: UnitContext) -> Iterator[UnitContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
