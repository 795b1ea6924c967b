"""What a method may know about the work unit it is running: ``harness.unit.current()``.

The runner opens a :class:`UnitContext` around every ``transfer`` / ``transfer_batch`` call (and around warm-up
calls, flagged ``warmup=True`` so that methods can skip writing caches then). Methods use it to put intermediate
files beside the unit's output (``ctx.outputs[i].with_suffix(".npz")``) and to add facts to the unit's record
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


@contextlib.contextmanager
def running(ctx: UnitContext) -> Iterator[UnitContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
