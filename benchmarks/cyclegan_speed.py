"""CycleGAN baseline speed on this machine: training images/s (the shipped configuration, per training size) and
inference seconds per swap (the shipped pairs on synthetic 256 px triplets, full task: style then colour).

    .venv/bin/python benchmarks/cyclegan_speed.py [--steps 30] [--swaps 20] [--threads 2]

Prints one line per measurement; images/s counts the images of both domains each step consumes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from harness import annotations, synthetic
from harness.weights import WeightStore
from methods.cyclegan.bundle import read_bundle
from methods.cyclegan.domains import classify
from methods.cyclegan.method import CycleGAN, DomainError, plan_translations
from methods.cyclegan.train import DomainImages, PairFiles, PairTrainer, TrainOptions
from methods.training import SINGLE_PROCESS


def training_rate(size: int, steps: int, tmp: str) -> float:
    from pathlib import Path

    options = TrainOptions(size=size, iterations=10**6, save_every=10**9, log_every=10**9)
    rng = torch.Generator().manual_seed(0)
    data = DomainImages({d: torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8, generator=rng)
                         for d in ("short", "long")}, {"short": 64, "long": 64})
    trainer = PairTrainer("short", "long", data, options, PairFiles(Path(tmp) / "o", Path(tmp) / "w"),
                          SINGLE_PROCESS, {"options": {}, "data": {}}, log=lambda _m: None, progress=False)
    for _ in range(3):
        trainer.train_step(*trainer.batch(trainer.step))
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(*trainer.batch(trainer.step))
    seconds = time.perf_counter() - started
    return steps * options.batch_size * 2 / seconds


def swap_seconds(swaps: int) -> tuple[float, int]:
    method = CycleGAN()
    method.setup("cpu", WeightStore())
    bundle = read_bundle()
    images = []
    for i in range(4 * swaps):
        spec = synthetic.sample_spec(np.random.default_rng([11, i]))
        image, labels = synthetic.render(spec, 256)
        images.append(annotations.attach(image, annotations.Annotations(labels=labels)))
    times, ran = [], 0
    for i in range(0, len(images) - 2, 3):
        face, shape, color = images[i: i + 3]
        domains = [classify(np.asarray(im), annotations.of(im).labels) for im in (face, shape, color)]
        try:
            if not plan_translations(*domains, bundle):
                continue  # nothing to translate: not a swap worth timing
        except DomainError:
            continue
        started = time.perf_counter()
        try:
            method.transfer(face, shape, color)
        except DomainError:
            continue
        times.append(time.perf_counter() - started)
        ran += 1
        if ran == swaps:
            break
    return float(np.median(times)), ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for size in (64, 128):
            rate = training_rate(size, args.steps, tmp)
            print(f"training at {size} px (batch 4 per domain, ngf 16, 1 block, ndf 8): {rate:.1f} images/s")
    seconds, ran = swap_seconds(args.swaps)
    print(f"inference (shipped pairs, 256 px, full task, composite, swaps with 1-2 translations): "
          f"{seconds:.3f} s per swap (median of {ran})")


if __name__ == "__main__":
    main()
