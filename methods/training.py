"""What the methods' trainers share: the torchrun process context (:class:`DistContext`), exact-resume RNG
states, atomic ``torch.save``."""

from __future__ import annotations

import io
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from harness.environment import resolve_device
from harness.errors import UsageError
from harness.store import atomic_write_bytes


@dataclass(frozen=True)
class DistContext:
    """This process's place among the torchrun processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: Sequence[float]) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def average_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the processes (what DistributedDataParallel does, for loops that
        step several optimisers on one backward pass)."""
        if not self.active:
            return
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world


SINGLE_PROCESS = DistContext()
EXIT_USAGE = 2


def run_distributed(body: Callable[[DistContext], int], device: str = "auto") -> int:
    """A trainer's ``run``: ``body(ctx)`` in this process's torchrun context (the process group is closed after);
    a :class:`harness.errors.UsageError` prints ``harness: <why>`` and returns 2."""
    try:
        ctx = init_distributed(device)
    except ValueError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return body(ctx)
    except UsageError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if ctx.active and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> DistContext:
    """A :class:`DistContext` from torchrun's environment (``WORLD_SIZE`` > 1 starts the process group: NCCL on
    ``cuda:LOCAL_RANK``, gloo on CPUs), else the single process on ``device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    requested = resolve_device(device)
    if world <= 1:
        return DistContext(0, 1, requested)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if requested.type == "cuda":
        requested = torch.device("cuda", local)
        torch.cuda.set_device(requested)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if requested.type == "cuda" else "gloo")
    return DistContext(rank, world, requested)



def save_torch(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "gauss": float(gauss)},
            "python": random.getstate()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])


