"""clip-opt speed on this machine: seconds per optimisation step and per swap, with every network filled by the
parity rule (the official architectures at their real sizes: StyleGAN2 1024, e4e, ArcFace iresnet-50, BiSeNet,
CLIP ViT-B/32; filled weights cost exactly what the real ones do).

    .venv/bin/python benchmarks/clipopt_speed.py [--steps 4] [--size 1024] [--threads 2]

A swap at the default 2000 steps is too long to time here; its figure is printed as measured s/step x 2000 plus
the measured fixed cost (inversion, targets, final render), and says so.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from harness.weights import WeightStore
from methods.clipopt.method import ClipOpt, ClipOptParams


def portrait(seed: int, size: int = 256) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y - seed), np.sin(3 * (x + y))], -1) * 0.4 + 0.5
    return Image.fromarray((np.clip(base + rng.normal(0, 0.03, base.shape), 0, 1) * 255).astype(np.uint8))


def swap_time(steps: int, size: int) -> float:
    method = ClipOpt(ClipOptParams(steps=steps, size=size, cache=False))
    method.setup(torch.device("cpu"), WeightStore(fill=True))
    face, shape, color = (portrait(i) for i in range(3))
    method.transfer(face, shape, color)  # warm-up
    start = time.perf_counter()
    method.transfer(face, shape, color)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HARNESS_CACHE", tempfile.mkdtemp(prefix="clipopt-bench-"))
    fixed = swap_time(0, args.size)
    with_steps = swap_time(args.steps, args.size)
    per_step = (with_steps - fixed) / args.steps
    print(f"clip-opt, CPU x{args.threads}, generator {args.size}: fixed cost {fixed:.2f} s/swap (0 steps), "
          f"{per_step:.2f} s/step (measured over {args.steps} steps)")
    print(f"  default 2000 steps: ~{fixed + 2000 * per_step:.0f} s/swap (extrapolated from the measured s/step); "
          f"quick ({20} steps): ~{fixed + 20 * per_step:.1f} s/swap")


if __name__ == "__main__":
    main()
