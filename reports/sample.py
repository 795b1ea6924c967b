"""A small fake run directory (made-up numbers, drawn images) to test and demonstrate the report.

``python -m reports.sample RUN_DIR`` writes one; ``python -m reports RUN_DIR --out RUN_DIR/report`` renders it.
Nothing here is a result: the manifest says ``fill_weights: true`` by default so every page carries the banner.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import zlib
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from harness.protocol import TASKS
from harness.store import METRICS_COLUMNS, RunStore, Triplet, method_dir, write_csv

HAIR_COLOURS = [(40, 30, 25), (200, 160, 90), (150, 60, 30), (90, 90, 95), (230, 220, 200), (120, 40, 110),
                (60, 110, 160), (20, 20, 20)]
SKIN = [(235, 200, 170), (200, 150, 110), (150, 100, 70), (250, 220, 200)]
DEFAULT_METHODS = ("identity", "hairflash:final", "barbershop", "hairclip")
FAILED_ERROR = "RuntimeError: bad output <script>alert('x')</script> & more"


def portrait(size: int, skin: int, hair_colour: int, hair_style: int, background: int) -> Image.Image:
    """A cartoon portrait: background, hair shape (0 short, 1 long, 2 bun, 3 bald), face, eyes."""
    bg = [(210, 225, 240), (235, 235, 220), (200, 230, 205), (240, 215, 215)][background % 4]
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    s = size / 64
    hair = HAIR_COLOURS[hair_colour % len(HAIR_COLOURS)]
    style = hair_style % 4
    if style == 1:
        d.rectangle([14 * s, 18 * s, 50 * s, 60 * s], fill=hair)
    if style != 3:
        d.ellipse([13 * s, 8 * s, 51 * s, 44 * s], fill=hair)
    if style == 2:
        d.ellipse([24 * s, 1 * s, 40 * s, 15 * s], fill=hair)
    d.rectangle([26 * s, 44 * s, 38 * s, 64 * s], fill=SKIN[skin % len(SKIN)])
    d.ellipse([18 * s, 16 * s, 46 * s, 52 * s], fill=SKIN[skin % len(SKIN)])
    for x in (25, 35):
        d.ellipse([x * s, 29 * s, (x + 4) * s, 33 * s], fill=(30, 30, 30))
    d.arc([26 * s, 36 * s, 38 * s, 44 * s], 20, 160, fill=(150, 60, 60), width=max(1, int(s)))
    return img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _default_metrics(methods: list[str], tasks: list[str]) -> list[tuple]:
    """(method, task, metric, value, ci_low, ci_high, n, status) rows with made-up, method-dependent values."""
    rows = []
    for k, method in enumerate(methods):
        rnd = random.Random(k)
        quality = {"identity": 0.2, "hairflash:final": 0.9, "barbershop": 0.7, "hairclip": 0.5}.get(method, 0.6)
        for task in tasks:
            t_shift = list(TASKS).index(task) if task in TASKS else 0
            fid = 40 - 30 * quality + 2 * t_shift + rnd.uniform(-1, 1)
            rows.append((method, task, "fid", fid, fid - 1.5, fid + 1.5, 12, "ok"))
            rows.append((method, task, "fid_clip", "", "", "", "", "skipped: needs ViT-B-32.pt (not found in the "
                                                                       "weight directories)"))
            psnr = 14 + 12 * quality + rnd.uniform(-0.5, 0.5)
            rows.append((method, task, "psnr_gt", psnr, psnr - 0.8, psnr + 0.8, 12, "ok"))
            ssim = 0.5 + 0.45 * quality + rnd.uniform(-0.01, 0.01)
            rows.append((method, task, "ssim_gt", ssim, ssim - 0.02, ssim + 0.02, 12, "ok"))
            if task != "rec":
                rows.append((method, task, "hair_color_de", 30 - 25 * quality, "", "", 12, "ok"))
                rows.append((method, task, "psnr_outside_hair", 20 + 8 * quality, "", "", 12, "ok"))
            else:
                rows.append((method, task, "psnr_rec", 18 + 10 * quality, "", "", 12, "ok"))
                rows.append((method, task, "ssim_rec", 0.6 + 0.3 * quality, "", "", 12, "ok"))
            rows.append((method, task, "identity", 0.6 + 0.3 * quality, "", "", 12, "ok"))
            time = {"identity": 0.001, "hairflash:final": 1.7, "barbershop": 640.0, "hairclip": 0.35}.get(method, 1)
            rows.append((method, task, "time_median_s", time * (1 + 0.05 * t_shift), "", "", 12, "ok"))
            rows.append((method, task, "peak_mem_mb", 100 + 4000 * quality, "", "", 12, "ok"))
    return rows


def make_run(root: str | Path, *, methods: tuple[str, ...] = DEFAULT_METHODS, n_triplets: int = 6,
             size: int = 64, tasks: tuple[str, ...] = tuple(TASKS), filled: bool = True, name: str | None = None,
             failed: tuple[tuple[str, str, str], ...] | None = None, seed: int = 0) -> Path:
    """Write a complete fake run directory; ``failed`` lists (method, task, triplet) units that failed
    (default: the last method on (full, t001))."""
    root = Path(root)
    store = RunStore(root)
    rnd = random.Random(seed)
    n_images = n_triplets + 2
    specs = {f"img{i:03d}": (i % 4, (i * 3 + seed) % len(HAIR_COLOURS), i % 4, i % 3) for i in range(n_images)}
    image_rows = []
    for image_id, spec in specs.items():
        data = _png(portrait(size, *spec))
        (root / "inputs").mkdir(parents=True, exist_ok=True)
        (root / "inputs" / f"{image_id}.png").write_bytes(data)
        image_rows.append((image_id, f"synthetic:{image_id}", hashlib.sha256(data).hexdigest(),
                           f"inputs/{image_id}.png", "", ""))
    write_csv(root / "images.csv", ("id", "source", "sha256", "input", "labels", "error"), image_rows)
    ids = list(specs)
    triplets = []
    for i in range(n_triplets):
        face, shape, color = rnd.sample(ids, 3)
        triplets.append(Triplet(f"t{i:03d}", face, shape, color))
    store.write_triplets(triplets)
    failed = failed if failed is not None else ((methods[-1], "full", "t001"),)

    per_item = []
    for task in tasks:
        roles = TASKS[task]
        for t in triplets:
            face, shape, color = (specs[i] for i in t.roles(roles))
            truth = portrait(size, face[0], color[1], shape[2], face[3])
            path = store.ground_truth_path(task, t.id)
            path.parent.mkdir(parents=True, exist_ok=True)
            truth.save(path)
            for k, method in enumerate(methods):
                rel = f"outputs/{method_dir(method)}/{task}/{t.id}.png"
                if (method, task, t.id) in failed:
                    _append(root, {"method": method, "task": task, "triplet": t.id, "status": "failed",
                                   "error": FAILED_ERROR, "time_s": None, "output": None})
                    continue
                if method == "identity":
                    out = portrait(size, *face)
                elif k % 2:
                    out = truth.filter(ImageFilter.GaussianBlur(size / 128 * k))
                else:
                    out = portrait(size, face[0], (color[1] + k) % len(HAIR_COLOURS), shape[2], face[3])
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                out.save(root / rel)
                _append(root, {"method": method, "task": task, "triplet": t.id, "status": "ok", "error": None,
                               "time_s": 0.01 * (k + 1), "output": rel})
                prnd = random.Random(zlib.crc32(f"{method}/{task}/{t.id}".encode()))
                per_item.append((method, task, t.id, "psnr_gt", round(16 + 3 * k + prnd.uniform(-4, 4), 3)))
                per_item.append((method, task, t.id, "identity", round(prnd.uniform(0.5, 1.0), 4)))
    write_csv(root / "per_item.csv", ("method", "task", "triplet", "metric", "value"), per_item)
    rows = _default_metrics(list(methods), list(tasks))
    for m in methods:
        for task in tasks:
            n_failed = sum(1 for f in failed if f[0] == m and f[1] == task)
            rows.append((m, task, "failures", n_failed, "", "", n_triplets, "ok"))
    write_csv(root / "metrics.csv", METRICS_COLUMNS, rows)
    manifest = {
        "harness_version": "0.1.0", "created": "2025-01-01T00:00:00+00:00",
        "command": ["harness", "run", "--protocol", "synthetic", "--fill-weights"],
        "protocol": {"name": "synthetic", "description": "fake sample run for the report",
                     "dataset": {"kind": "synthetic", "n_images": n_images, "size": size, "seed": seed,
                                 "path": "", "triplets_file": ""},
                     "n_triplets": n_triplets, "triplet_seed": seed, "tasks": list(tasks), "eval_size": size,
                     "metrics": ["all"], "bootstrap": 200, "timeout_s": 900.0, "warmup": 1, "seed": 0,
                     "method_params": {}, "source": "protocols/synthetic.toml"},
        "methods": {m: {"name": m.split(":")[0], "variant": m.split(":")[1] if ":" in m else None,
                        "plugin": "methods.reference" if m == "identity" else "methods.nets.plugin",
                        "description": f"sample method {m}",
                        "params": {"mixing": 0.95, "size": 1024} if m != "identity" else {},
                        "checkpoints": {} if m == "identity" else
                        {f"{m.split(':')[0]}.pt": {"path": f"/weights/{m.split(':')[0]}.pt", "sha256": "0" * 64}}}
                    for m in methods},
        "device": {"type": "cpu", "name": "sample CPU", "threads": 2},
        "fill_weights": filled, "git": {"commit": "0123456789abcdef", "dirty": False},
        "packages": {"torch": "2.x", "numpy": "2.x"},
        "dataset": {"kind": "synthetic", "n_images": n_images,
                    "content_hash": hashlib.sha256("".join(r[2] for r in image_rows).encode()).hexdigest()},
        "tasks": list(tasks), "n_triplets": n_triplets, "run_name": name or root.name,
    }
    store.write_manifest(manifest)
    return root


def _append(root: Path, record: dict) -> None:
    with open(root / "records.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--triplets", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--real", action="store_true", help="do not mark the run as filled weights")
    args = parser.parse_args(argv)
    print(make_run(args.run_dir, n_triplets=args.triplets, size=args.size, filled=not args.real))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
