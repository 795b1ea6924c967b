"""HairFlash with and without its stage cache: the smoke protocol's triplets over all five task variants.

Every network is filled by the parity rule (``--fill-weights``; the real code path at full size). One set of
networks is loaded (set-up time printed, not counted), one untimed warm-up swap runs, then:

* ``no cache``: every swap computes everything (``cache=False``), as the official code does;
* ``cache``: the same swaps with the cache on, starting from an empty cache directory (a temporary
  ``$HARNESS_CACHE``): each image is embedded once, each (face, other) hair-shape step and (face, shape)
  inpainting runs once, whatever the task; so do the post-processing stage's face-only work (once per face) and
  each CLIP embedding of a masked image (face outside the hair per (face, colour) pair, colour hair per image).

Printed: total wall time of each mode and their ratio, per-swap stage times (mean over the swaps of each task,
and over the ``full`` task, the official's "full swap"), process CPU time, peak RSS of each mode, and the load
average (the machine is shared: compare quiet runs only). The official figures of
``/work/shared/parity/HAIRFAST_PIPELINE.md`` are printed beside ours, labelled as such.

    .venv/bin/python benchmarks/hairflash_cache.py [--triplets 8] [--variant baseline] [--noise seeded]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from harness import protocol as protocol_mod
from harness import runner
from harness.environment import keep_freed_memory
from harness.store import RunStore
from harness.timing import recording
from harness.weights import WeightStore

OFFICIAL = {"total": 96.0, "embedding": 32.0, "alignment": 47.0, "blending": 6.0, "post_processing": 12.0,
            "peak_gb": 12.7, "setup": 34.0}
STAGES = ("embedding", "alignment", "blending", "post_processing")


def peak_rss_reset() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def swaps(protocol, limit: int, work: Path):
    """(task, triplet id, [face, shape, color] PIL images) of the protocol's first ``limit`` triplets."""
    store = RunStore(work / "run")
    store.root.mkdir(parents=True, exist_ok=True)
    prepared, triplets = runner.prepare_dataset(store, protocol, limit, None, False, lambda m: None)
    inputs = runner.InputCache(prepared)
    return [(task, t.id, [inputs.get(i) for i in t.roles(protocol_mod.TASKS[task])])
            for task in protocol.tasks for t in triplets]


def timed(method, images) -> tuple[float, float, dict[str, float]]:
    """(wall s, process CPU s, stage times) of one swap."""
    with recording() as rec:
        cpu0, t0 = time.process_time(), time.perf_counter()
        method.transfer(*images)
        return time.perf_counter() - t0, time.process_time() - cpu0, dict(rec)


def run_interleaved(modes: dict, items) -> dict[str, dict]:
    """Each swap runs once per mode, the modes alternating swap by swap, so that the load of a shared machine
    weighs on all of them alike."""
    results = {name: {"wall": 0.0, "cpu": 0.0, "per_task": defaultdict(list),
                      "stages": defaultdict(lambda: defaultdict(float))} for name in modes}
    for task, _, images in items:
        for name, method in modes.items():
            wall, cpu, stages = timed(method, images)
            r = results[name]
            r["wall"] += wall
            r["cpu"] += cpu
            r["per_task"][task].append(wall)
            for stage, value in stages.items():
                r["stages"][task][stage] += value
    for name, method in modes.items():
        results[name]["stats"] = dict(method.stats)
    return results


def report(name: str, result: dict) -> None:
    n = sum(len(v) for v in result["per_task"].values())
    print(f"\n[{name}] {n} swaps: total {result['wall']:.1f} s wall ({result['wall'] / n:.1f} s per swap), "
          f"process CPU {result['cpu']:.1f} s")
    print(f"  {'task':<6} {'swaps':>5} {'s/swap':>7} " + " ".join(f"{s:>15}" for s in STAGES))
    for task, values in result["per_task"].items():
        stages = result["stages"][task]
        print(f"  {task:<6} {len(values):>5} {statistics.mean(values):>7.1f} "
              + " ".join(f"{stages.get(s, 0.0) / len(values):>15.2f}" for s in STAGES))
    work = {k: v for k, v in result["stats"].items() if ":" not in k}
    hits = {k: v for k, v in result["stats"].items() if ":" in k}
    print(f"  work: {work}")
    if hits:
        print(f"  cache: {hits}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="smoke")
    parser.add_argument("--triplets", type=int, default=None, help="first N triplets (default: all)")
    parser.add_argument("--variant", default="baseline")
    parser.add_argument("--noise", default="seeded", choices=("seeded", "buffers"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    # Threads that finish early sleep instead of spinning, so process CPU time measures work even when the cores
    # are shared (set OMP_WAIT_POLICY yourself to override; it must be set before torch starts OpenMP).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # as `harness run` does

    from methods.hairflash.method import HairFlash
    from methods.hairflash.params import HairFlashParams

    protocol = protocol_mod.load(args.protocol)
    with tempfile.TemporaryDirectory(prefix="hairflash_cache_") as tmp:
        work = Path(tmp)
        os.environ["HARNESS_CACHE"] = str(work / "cache")  # an empty cache: nothing computed before counts
        items = swaps(protocol, args.triplets, work)
        print(f"protocol {protocol.name}: {len(items) // len(protocol.tasks)} triplet(s) x {len(protocol.tasks)} "
              f"tasks = {len(items)} swaps; hairflash:{args.variant}, noise={args.noise}, filled weights; "
              f"torch threads {torch.get_num_threads()}, keep_freed_memory {kept}, "
              f"python {sys.version.split()[0]}, torch {torch.__version__}")
        print(f"load average at start: {os.getloadavg()}")

        plain = HairFlash(HairFlashParams(noise=args.noise, cache=False), args.variant)
        t0 = time.perf_counter()
        plain.setup(torch.device("cpu"), WeightStore(fill=True))
        setup = time.perf_counter() - t0
        cached = HairFlash(HairFlashParams(noise=args.noise, cache=True), args.variant)
        cached.use_networks(plain.nets, plain.weights_identity)
        print(f"set-up (load + fill every network): {setup:.1f} s  [official: {OFFICIAL['setup']:.0f} s to construct]")

        t0 = time.perf_counter()
        plain.transfer(*items[0][2])
        print(f"warm-up swap (untimed in the totals): {time.perf_counter() - t0:.1f} s")
        plain.stats.clear()

        peak_rss_reset()
        results = run_interleaved({"no cache": plain, "cache": cached}, items)
        peak = peak_rss_gb()
        without, with_cache = results["no cache"], results["cache"]
        report("no cache", without)
        report("cache", with_cache)
        print(f"\npeak RSS of the process over both modes: {peak:.2f} GB  [official: {OFFICIAL['peak_gb']} GB]")

        full = without["per_task"].get("full", [])
        if full:
            stages = without["stages"]["full"]
            ours = " ".join(f"{s} {stages.get(s, 0.0) / len(full):.1f}" for s in STAGES)
            theirs = " ".join(f"{s} {OFFICIAL[s]:.0f}" for s in STAGES)
            print(f"\nfull swap, no cache: {statistics.mean(full):.1f} s ({ours})")
            print(f"official full swap (HAIRFAST_PIPELINE.md, same kind of machine): {OFFICIAL['total']:.0f} s "
                  f"({theirs})")
            print(f"speed-up over the official full swap: {OFFICIAL['total'] / statistics.mean(full):.2f}x")
        print(f"\ncache saves: {without['wall'] / with_cache['wall']:.2f}x wall "
              f"({without['wall']:.1f} s -> {with_cache['wall']:.1f} s for {len(items)} swaps), "
              f"{without['cpu'] / with_cache['cpu']:.2f}x process CPU "
              f"({without['cpu']:.1f} s -> {with_cache['cpu']:.1f} s)")
        print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
