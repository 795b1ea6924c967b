"""Stage timing for methods: ``with stages("embedding"): ...`` records wall time per named stage.

The runner opens a recorder around each transfer call; outside one, ``stages`` does nothing but time.
On CUDA the device is synchronised at stage boundaries so that times are real.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections import defaultdict

_current: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("harness_stages", default=None)
_sync_device: contextvars.ContextVar[object] = contextvars.ContextVar("harness_sync", default=None)


def synchronize(device=None) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on CPU)."""
    import torch

    dev = device if device is not None else _sync_device.get()
    if dev is not None and torch.device(dev).type == "cuda":
        torch.cuda.synchronize(dev)


@contextlib.contextmanager
def stages(name: str):
    """Time the block as stage ``name`` (times of a repeated stage add up)."""
    synchronize()
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize()
        record = _current.get()
        if record is not None:
            record[name] += time.perf_counter() - start


@contextlib.contextmanager
def recording(device=None):
    """Collect stage times of the enclosed calls into the yielded dict."""
    record: dict[str, float] = defaultdict(float)
    token = _current.set(record)
    sync_token = _sync_device.set(device)
    try:
        yield record
    finally:
        _current.reset(token)
        _sync_device.reset(sync_token)
