"""Harness overhead per item against a bare loop (goal: at most 1.2x).

The bare loop does only what any benchmark must: read the three input PNGs of a unit and write one output PNG
(the face, as the identity method returns). The harness runs the `identity` method through the runner's real
unit loop: per-unit seeding, stage recording, peak-memory reading, timeout guard, output validation, atomic
write and a locked append to records.jsonl. Both write PNGs with the same settings and read the same inputs.
Input decoding is cached per image by the runner (an image is used by several tasks); `--no-input-cache` turns
that off to compare like for like.

    .venv/bin/python benchmarks/harness_overhead.py [--protocol synthetic] [--repeats 3] [--no-input-cache]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from harness import protocol as protocol_mod
from harness import runner
from harness.environment import resolve_device
from harness.store import RunStore
from harness.weights import WeightStore


def bare_loop(store: RunStore, units, out: Path) -> float:
    start = time.perf_counter()
    for u in units:
        images = []
        for image_id in u.triplet.roles(protocol_mod.TASKS[u.task]):
            with Image.open(store.input_path(image_id)) as im:
                images.append(im.convert("RGB"))
        path = out / u.task / f"{u.triplet.id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        images[0].copy().save(path, **runner.PNG_ARGS)
    return time.perf_counter() - start


def harness_loop(store: RunStore, prepared, units, protocol, cache_inputs: bool) -> float:
    from methods.reference import Identity

    method = Identity()
    inputs = runner.InputCache(prepared, cache=cache_inputs)
    start = time.perf_counter()
    runner.run_method(method, WeightStore(), units, store, inputs, protocol, resolve_device("cpu"),
                      progress=False, log=lambda m: None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="synthetic")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-input-cache", action="store_true")
    args = parser.parse_args()
    protocol = protocol_mod.load(args.protocol)
    work = Path(tempfile.mkdtemp(prefix="harness-overhead-"))
    try:
        store = RunStore(work / "prepared")
        store.root.mkdir(parents=True)
        prepared, triplets = runner.prepare_dataset(store, protocol, None, None, False, print)
        units = runner.enumerate_units(["identity"], protocol.tasks, triplets)
        bare, ours = [], []
        for i in range(args.repeats):
            bare.append(bare_loop(store, units, work / f"bare{i}"))
            run_store = RunStore(work / f"run{i}")
            run_store.root.mkdir()
            for name in ("inputs", "labels"):
                shutil.copytree(store.root / name, run_store.root / name, dirs_exist_ok=True)
            ours.append(harness_loop(run_store, prepared, units, protocol, not args.no_input_cache))
        n = len(units)
        b, h = statistics.median(bare) / n, statistics.median(ours) / n
        print(f"protocol {protocol.name}: {n} items at {protocol.dataset.size}px, median of {args.repeats} runs")
        print(f"bare loop (read 3 PNGs, write 1): {b * 1e3:.2f} ms/item")
        print(f"harness unit loop (identity){' without input cache' if args.no_input_cache else ''}: "
              f"{h * 1e3:.2f} ms/item")
        print(f"ratio harness/bare: {h / b:.2f}x (goal <= 1.2x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
