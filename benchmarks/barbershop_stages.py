"""Per-stage time of the ``barbershop`` method on this machine, extrapolated to the official step counts.

Filled weights (the parity fill rule: the same computation as with real checkpoints, numbers meaningless), noise
``seeded``, cache off, batch 1, one image / pair / triplet. Each stage runs once with ``--steps N`` optimisation
steps per optimisation (default 4). Every optimiser step is time-stamped (``torch.optim.Adam.step`` is wrapped);
an optimisation's time per step is the median of the intervals between its steps (robust to short bursts of other
processes on the machine; the shortest interval is printed in parentheses) and the stage's fixed cost is its wall
time minus its steps. On a shared machine per-step times vary by 3-4x with the load: compare runs made together.
The official estimate is ``fixed + sum over the stage's optimisations of official_steps x time_per_step``: W+ 1100;
FS 250; alignment 2 x 80 (target-mask auto-inpainting), 140 (face), 100 (shape, with the style loss); blending 400.

Per triplet with three distinct images the official script runs 3 x (W+ embedding + FS embedding), 2 alignments
(face to shape, face to colour) and 1 blending; the harness caches stages 1-2 per image and alignments per pair,
so over a benchmark an image is embedded once.

    .venv/bin/python benchmarks/barbershop_stages.py [--sizes 256,1024] [--steps 4] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from harness import synthetic
from harness.weights import WeightStore
from methods.barbershop import pipeline
from methods.barbershop.method import Barbershop
from methods.barbershop.params import BarbershopParams

OFFICIAL = {"embedding": (1100,), "fs": (250,), "alignment": (80, 80, 140, 100), "blending": (400,)}


class StepClock:
    """Time-stamps every ``torch.optim.Adam.step`` call, grouped by optimiser instance (in creation order)."""

    def __init__(self):
        self.stamps: dict[int, list[float]] = {}
        self.optimizers: list = []  # kept alive so that ids are not reused
        self._original = torch.optim.Adam.step

    def __enter__(self) -> StepClock:
        clock, original = self, self._original

        def step(optimizer, *args, **kwargs):
            out = original(optimizer, *args, **kwargs)
            if id(optimizer) not in clock.stamps:
                clock.optimizers.append(optimizer)
            clock.stamps.setdefault(id(optimizer), []).append(time.perf_counter())
            return out

        torch.optim.Adam.step = step
        return self

    def __exit__(self, *exc) -> None:
        torch.optim.Adam.step = self._original

    def per_step(self) -> list[float]:
        """Median interval between consecutive steps of each optimisation."""
        return [float(np.median(np.diff(t))) for t in self.stamps.values()]

    def fastest_step(self) -> list[float]:
        """Shortest interval of each optimisation (closest to an unshared machine)."""
        return [float(np.min(np.diff(t))) for t in self.stamps.values()]


def stage_runners(method: Barbershop, images: list[Image.Image]) -> dict[str, Callable[[int], object]]:
    """``run(steps)`` for each stage on one image / pair / triplet (inputs prepared once, untimed)."""
    nets, noise, base = method.nets, method.noise, method.params
    prepared: dict = {}
    keys = [method._input(im, prepared) for im in images]
    face, shape, color = (prepared[k] for k in keys)
    with torch.no_grad():
        labels = {k: pipeline.parser_logits(nets, prepared[k].hi, base.parser_size, True).argmax(1) for k in keys}
    w_plus = nets.latent_avg.reshape(1, 1, -1).repeat(1, nets.generator.n_latent, 1)
    emb = {k: pipeline.embed_fs(nets, noise, dataclasses.replace(base, FS_steps=0), w_plus, prepared[k].hi,
                                prepared[k].lo, [k])[0] for k in keys}

    def with_steps(**steps: int) -> BarbershopParams:
        return dataclasses.replace(base, **steps)

    def alignment(n: int):
        p = with_steps(mask_steps=n, align_steps1=n, align_steps2=n)
        seg, _ = pipeline.target_segmentation(nets, noise, p, labels[face.key], labels[shape.key], ["p"])
        return pipeline.align(nets, noise, p, emb[face.key], emb[shape.key], seg, ["p"])

    def blending(n: int):
        feat = emb[face.key].feat
        return pipeline.blend(nets, noise, with_steps(blend_steps=n), emb[face.key].latent, emb[color.key].latent,
                              feat, feat, face.lo, color.lo, pipeline.hair_of(labels[face.key]),
                              pipeline.hair_of(labels[color.key]), ["t"])

    return {
        "embedding": lambda n: pipeline.embed_w_plus(nets, noise, with_steps(W_steps=n), face.hi, face.lo, ["a"]),
        "fs": lambda n: pipeline.embed_fs(nets, noise, with_steps(FS_steps=n), w_plus, face.hi, face.lo, ["a"]),
        "alignment": alignment,
        "blending": blending,
    }


def bench_size(size: int, steps: int, images: list[Image.Image]) -> None:
    method = Barbershop(BarbershopParams(size=size, cache=False, pca_samples=20_000))
    t0 = time.perf_counter()
    method.setup("cpu", WeightStore(fill=True))
    print(f"size {size}: set-up {time.perf_counter() - t0:.1f} s (filled weights, PCA of 20k samples)", flush=True)
    totals: dict[str, tuple[float, float]] = {}
    for name, run in stage_runners(method, images).items():
        with StepClock() as clock:
            start = time.perf_counter()
            run(steps)
            wall = time.perf_counter() - start
        per_step, fastest = clock.per_step(), clock.fastest_step()
        if len(per_step) != len(OFFICIAL[name]):
            raise RuntimeError(f"{name}: expected {len(OFFICIAL[name])} optimisations, saw {len(per_step)}")
        fixed = max(wall - steps * sum(per_step), 0.0)
        totals[name] = tuple(fixed + sum(n * t for n, t in zip(OFFICIAL[name], times, strict=True))
                             for times in (per_step, fastest))
        steps_text = " + ".join(f"{t:.2f} ({f:.2f})" for t, f in zip(per_step, fastest, strict=True))
        print(f"  {name:9s} {len(per_step)}x{steps} steps {wall:6.1f} s | s/step median (min) {steps_text} | "
              f"fixed {fixed:4.1f} s | official {'+'.join(map(str, OFFICIAL[name]))} steps: "
              f"{totals[name][0] / 60:6.1f} ({totals[name][1] / 60:.1f}) min", flush=True)
    for i, which in enumerate(("median", "min")):
        image = totals["embedding"][i] + totals["fs"][i]
        align, blend = totals["alignment"][i], totals["blending"][i]
        print(f"  [{which:6s}] per image (W+ + FS) {image / 60:6.1f} min | per aligned pair {align / 60:5.1f} min | "
              f"per blend {blend / 60:5.1f} min | official script per triplet (3 images, 2 pairs) "
              f"{(3 * image + 2 * align + blend) / 60:6.1f} min", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--steps", type=int, default=4, help="optimisation steps per optimisation (>= 3)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 3:
        ap.error("--steps must be >= 3 (the median needs two intervals)")
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (other processes share the cores)")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        items = synthetic.generate(3, 256, 0, Path(tmp))
        images = [Image.open(it["image"]).convert("RGB") for it in items]
        images = [Image.fromarray(np.asarray(im)) for im in images]
    for size in (int(s) for s in args.sizes.split(",")):
        bench_size(size, args.steps, images)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
