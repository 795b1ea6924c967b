"""The runner through the real CLI: run directory, failures, bad inputs, resume, shards, refusals."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_harness
from PIL import Image

from harness.datasets import InputError, load_image
from harness.store import RunStore


def tiny_protocol(tmp_path: Path, name: str = "tiny", *, kind: str = "synthetic", path: str = "",
                  n_images: int = 8, size: int = 64, n: int = 3, tasks=("full", "rec"), timeout_s: float = 60,
                  extra: str = "") -> Path:
    text = f"""name = "{name}"
[dataset]
kind = "{kind}"
n_images = {n_images}
size = {size}
seed = 3
path = "{path}"
[triplets]
n = {n}
seed = 2
tasks = {json.dumps(list(tasks))}
[evaluation]
size = {size}
bootstrap = 20
[runner]
timeout_s = {timeout_s}
warmup = 1
{extra}
"""
    out = tmp_path / f"{name}.toml"
    out.write_text(text)
    return out


def records(run: Path) -> dict:
    return RunStore(run).records()


def test_smoke_run_writes_the_run_directory_and_ranks_the_references(tmp_path):
    run = tmp_path / "smoke"
    proc = run_harness("run", "--methods", "identity,oracle,composite", "--protocol", "smoke", "--out", str(run),
                       "--quiet")
    assert "report:" in proc.stdout
    for name in ("manifest.json", "triplets.csv", "images.csv", "records.jsonl", "metrics.csv", "per_item.csv",
                 "report/index.html"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["methods"]) == {"identity", "oracle", "composite"}
    assert manifest["protocol"]["name"] == "smoke" and manifest["fill_weights"] is False
    assert manifest["device"]["type"] == "cpu" and "torch" in manifest["packages"]
    n_triplets = len(RunStore(run).triplets())
    recs = records(run)
    assert len(recs) == 3 * 5 * n_triplets and all(r.status == "ok" for r in recs.values())
    for r in recs.values():
        assert (run / r.output).is_file() and r.time_s is not None and r.peak_mem_bytes > 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == ["method", "task", "metric", "value", "ci_low", "ci_high", "n", "status"]
    psnr = metrics[metrics.metric == "psnr_gt"].pivot(index="method", columns="task", values="value")
    for task in ("full", "color", "shape", "both"):
        assert psnr.loc["oracle", task] > psnr.loc["composite", task] > psnr.loc["identity", task], task
    de = metrics[metrics.metric == "hair_color_de"].pivot(index="method", columns="task", values="value")
    for task in ("full", "color", "both"):
        assert de.loc["oracle", task] < de.loc["composite", task] < de.loc["identity", task], task
    fid = metrics[metrics.metric == "fid"]
    assert fid["value"].isna().all() and fid["status"].str.startswith("skipped: needs inception").all()
    # outputs are face-sized RGB PNGs
    out = Image.open(next((run / "outputs" / "composite" / "full").glob("*.png")))
    assert out.mode == "RGB" and out.size == (128, 128)


def test_failures_are_recorded_and_the_run_goes_on(tmp_path):
    proto = tiny_protocol(tmp_path, timeout_s=0.5, extra='[methods."faulty:sleep"]\ndelay_s = 3.0\n')
    run = tmp_path / "run"
    methods = ",".join(f"faulty:{v}" for v in ("ok", "raise", "nan", "wrongsize", "mode", "none", "sleep"))
    run_harness("run", "--methods", methods, "--protocol", str(proto), "--out", str(run), "--quiet",
                "--no-report", fakes=True)
    recs = records(run)
    by_method: dict[str, set] = {}
    for (method, _, _), r in recs.items():
        by_method.setdefault(method, set()).add(r.status)
        if method != "faulty:ok":
            assert r.status == "failed" and r.output is None
    assert by_method["faulty:ok"] == {"ok"}
    errors = {m: next(r.error for (mm, _, _), r in recs.items() if mm == m) for m in by_method if m != "faulty:ok"}
    assert "RuntimeError: boom" in errors["faulty:raise"]
    assert "NaN" in errors["faulty:nan"]
    assert "expected 64x64" in errors["faulty:wrongsize"]
    assert "L image, expected RGB" in errors["faulty:mode"]
    assert "NoneType" in errors["faulty:none"]
    assert "time limit" in errors["faulty:sleep"]
    assert (run / "errors" / "faulty.raise" / "full").is_dir()  # full tracebacks are kept
    metrics = pd.read_csv(run / "metrics.csv")
    failures = metrics[(metrics.metric == "failures") & (metrics.task == "full")].set_index("method")
    assert failures.loc["faulty:raise", "value"] == 3 and failures.loc["faulty:ok", "value"] == 0


def test_parameters_from_protocol_and_cli_are_recorded(tmp_path):
    proto = tiny_protocol(tmp_path, extra="[methods.faulty]\ndelay_s = 0.01\n")
    run = tmp_path / "run"
    run_harness("run", "--methods", "faulty", "--protocol", str(proto), "--out", str(run), "--quiet",
                "--no-metrics", "--set", "faulty.delay_s=0.02", fakes=True)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["methods"]["faulty:ok"]["params"] == {"delay_s": 0.02}
    bad = run_harness("run", "--methods", "faulty", "--protocol", str(proto), "--out", str(tmp_path / "r2"),
                      "--set", "faulty.nope=1", fakes=True, check=False)
    assert bad.returncode == 2 and "unknown parameter(s) nope" in bad.stderr
    bad = run_harness("run", "--methods", "faulty", "--protocol", str(proto), "--out", str(tmp_path / "r3"),
                      "--set", "faulty.delay_s=abc", fakes=True, check=False)
    assert bad.returncode == 2 and "not a valid float" in bad.stderr


def test_refusals_happen_before_any_work(tmp_path):
    proto = tiny_protocol(tmp_path)
    out = tmp_path / "refused"
    proc = run_harness("run", "--methods", "identity,needs_weights", "--protocol", str(proto), "--out", str(out),
                       fakes=True, check=False)
    assert proc.returncode == 2
    assert "fake_model.pt" in proc.stderr and "https://example.org/fake_model.pt" in proc.stderr
    assert not (out / "records.jsonl").exists()
    proc = run_harness("run", "--methods", "nosuch", "--protocol", str(proto), "--out", str(out), check=False)
    assert proc.returncode == 2 and "unknown method 'nosuch'" in proc.stderr
    proc = run_harness("run", "--methods", "identity", "--protocol", "nosuch", "--out", str(out), check=False)
    assert proc.returncode == 2 and "unknown protocol" in proc.stderr
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (i * 50, 0, 0)).save(folder / f"{i}.png")
    proto_folder = tiny_protocol(tmp_path, "folder", kind="folder", path=str(folder))
    proc = run_harness("run", "--methods", "oracle", "--protocol", str(proto_folder), "--out", str(out), check=False)
    assert proc.returncode == 2 and "needs the synthetic dataset" in proc.stderr
    run_harness("run", "--methods", "identity", "--protocol", str(proto), "--out", str(out), "--quiet", "--no-metrics")
    proc = run_harness("run", "--methods", "identity", "--protocol", str(proto), "--out", str(out), check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr


def test_implicit_method_selection_skips_what_cannot_run(tmp_path):
    proto = tiny_protocol(tmp_path, n=1, tasks=("rec",))
    run = tmp_path / "run"
    proc = run_harness("run", "--protocol", str(proto), "--out", str(run), "--no-metrics", fakes=True)
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"identity", "oracle", "composite"} <= set(manifest["methods"])
    assert "needs_weights" not in manifest["methods"]
    assert "skipped needs_weights" in proc.stderr and "fake_model.pt" in proc.stderr


def _outputs(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): np.asarray(Image.open(p)).tobytes()
            for p in sorted((run / "outputs").rglob("*.png"))}


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    proto = tiny_protocol(tmp_path, n=4, tasks=("full", "color", "rec"))
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    args = ("--methods", "noisy", "--protocol", str(proto), "--quiet", "--no-metrics")
    run_harness("run", *args, "--out", str(whole), fakes=True)
    crashed = run_harness("run", *args, "--out", str(broken), fakes=True, check=False,
                          env={"NOISY_CRASH_AFTER": "6"})  # 1 warm-up + 5 items, then the process dies
    assert crashed.returncode == 137
    assert 0 < len(records(broken)) < 12
    run_harness("run", *args, "--out", str(broken), "--resume", fakes=True)
    assert len(records(broken)) == 12
    assert _outputs(broken) == _outputs(whole)


def test_shards_share_one_run_directory(tmp_path):
    proto = tiny_protocol(tmp_path, n=3, tasks=("full", "rec"))
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    args = ("--methods", "noisy,identity", "--protocol", str(proto), "--quiet", "--no-report")
    run_harness("run", *args, "--out", str(whole), fakes=True)
    first = run_harness("run", *args, "--out", str(sharded), "--shard", "0/2", fakes=True)
    assert "pending: 6" in first.stdout and not (sharded / "metrics.csv").exists()
    run_harness("run", *args, "--out", str(sharded), fakes=True, env={"RANK": "1", "WORLD_SIZE": "2"})
    assert (sharded / "metrics.csv").exists()
    assert _outputs(sharded) == _outputs(whole)


def test_batched_methods_get_batches(tmp_path):
    proto = tiny_protocol(tmp_path, n=3, tasks=("full", "color"))
    run = tmp_path / "run"
    run_harness("run", "--methods", "batched", "--protocol", str(proto), "--out", str(run), "--quiet",
                "--no-metrics", fakes=True)
    recs = records(run)
    assert len(recs) == 6 and {r.batch for r in recs.values()} == {3}


def _bomb_png(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A tiny PNG whose header claims a huge image."""
    raw = zlib.compress(b"\x00" + b"\x00" * 3)
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


@pytest.fixture
def odd_images(tmp_path) -> Path:
    folder = tmp_path / "odd"
    folder.mkdir()
    rgb = (np.indices((80, 80)).sum(0) % 255).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, rgb // 2, 255 - rgb])).save(folder / "a_rgb.png")
    Image.fromarray(rgb).save(folder / "b_gray.png")
    Image.fromarray(np.dstack([rgb, rgb, rgb, rgb])).save(folder / "c_rgba.png")
    Image.fromarray(np.dstack([rgb] * 3)).convert("P").save(folder / "d_palette.png")
    Image.fromarray(rgb.astype(np.uint16) * 257).save(folder / "e_16bit.png")
    Image.fromarray(np.dstack([rgb] * 3)).convert("CMYK").save(folder / "f_cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    Image.fromarray(np.dstack([rgb] * 3)[:, :60]).save(folder / "g_exif.jpg", exif=exif)
    noisy = folder / "noisy.png"  # incompressible, so that cutting the file really truncates pixel data
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(noisy)
    (folder / "h_truncated.png").write_bytes(noisy.read_bytes()[:4000])
    noisy.unlink()
    (folder / "i_notimage.png").write_text("hello, I am not a picture")
    Image.new("RGB", (10, 10)).save(folder / "j_tiny.png")
    _bomb_png(folder / "k_bomb.png")
    return folder


def test_load_image_normalises_or_rejects_each_kind(odd_images):
    for name in ("a_rgb.png", "b_gray.png", "c_rgba.png", "d_palette.png", "e_16bit.png", "f_cmyk.jpg",
                 "g_exif.jpg"):
        img, notes = load_image(odd_images / name, 64)
        assert img.mode == "RGB" and img.size == (64, 64), name
    assert any("I;16 to 8-bit" in n for n in load_image(odd_images / "e_16bit.png")[1])
    gray = np.asarray(load_image(odd_images / "e_16bit.png")[0])
    assert abs(int(gray.max()) - 158) <= 1  # 16-bit values are scaled back to 8 bits, not clipped
    exif_img, notes = load_image(odd_images / "g_exif.jpg")
    assert "applied EXIF orientation" in notes and "centre-cropped 80x60 to 60x60" in notes
    for name, reason in (("h_truncated.png", "unreadable"), ("i_notimage.png", "not an image"),
                         ("j_tiny.png", "too small"), ("k_bomb.png", "decompression-bomb")):
        with pytest.raises(InputError, match=reason):
            load_image(odd_images / name, 64)


def test_bad_inputs_fail_per_item_not_the_run(tmp_path, odd_images):
    proto = tiny_protocol(tmp_path, "odd", kind="folder", path=str(odd_images), n_images=0, n=12,
                          tasks=("full",))
    run = tmp_path / "run"
    run_harness("run", "--methods", "identity", "--protocol", str(proto), "--out", str(run), "--quiet",
                "--no-report")
    images = pd.read_csv(run / "images.csv").set_index("id")
    assert images.loc["h_truncated", "error"].startswith("h_truncated.png: unreadable")
    assert pd.isna(images.loc["b_gray", "error"])
    recs = records(run).values()
    bad_ids = {"h_truncated", "i_notimage", "j_tiny", "k_bomb"}
    triplets = {t.id: t for t in RunStore(run).triplets()}
    for r in recs:
        t = triplets[r.triplet]
        uses_bad = bool({t.face, t.shape, t.color} & bad_ids)
        assert (r.status == "failed") == uses_bad
        if uses_bad:
            assert r.error.startswith("input ")
    assert any(r.status == "ok" for r in recs) and any(r.status == "failed" for r in recs)


def test_real_images_are_parsed_for_methods_that_need_labels(tmp_path):
    """A folder of plain photos: composite needs label maps, which the (here: filled) face parser provides."""
    run_harness("data", "synth", "--n", "4", "--size", "64", "--seed", "9", "--out", str(tmp_path / "s"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in (tmp_path / "s" / "images").glob("*.png"):  # plain JPEGs: no synthetic spec travels with them
        Image.open(p).convert("RGB").save(photos / f"{p.stem}.jpg", quality=95)
    proto = tiny_protocol(tmp_path, "photos", kind="folder", path=str(photos), n_images=0, n=2, tasks=("full",))
    refused = run_harness("run", "--methods", "composite", "--protocol", str(proto), "--out", str(tmp_path / "no"),
                          check=False)
    assert refused.returncode == 2 and "needs label maps" in refused.stderr
    run = tmp_path / "run"
    run_harness("run", "--methods", "composite", "--protocol", str(proto), "--out", str(run), "--fill-weights",
                "--quiet", "--no-metrics")
    assert {r.status for r in records(run).values()} == {"ok"}
    labels = sorted((run / "labels").glob("*.png"))
    assert labels and np.asarray(Image.open(labels[0])).shape == (64, 64)
    cache = Path(os.environ["HARNESS_CACHE"]) / "labels"
    assert [p.name for p in cache.iterdir()] == ["filled"]  # filled labels never mix with real ones


def test_methods_see_their_unit(tmp_path):
    proto = tiny_protocol(tmp_path, n=2, tasks=("full",))
    run = tmp_path / "run"
    run_harness("run", "--methods", "noting", "--protocol", str(proto), "--out", str(run), "--quiet",
                "--no-metrics", fakes=True)
    recs = records(run)
    for (_method, task, triplet), r in recs.items():
        assert r.extras == {"steps": 7, "triplet": triplet, "warmups_before": 2}  # 2 flagged warm-up calls
        assert (run / "outputs" / "noting" / task / f"{triplet}.txt").read_text() == "noting full"


def test_keep_freed_memory_applies_on_linux_and_can_be_disabled(monkeypatch):
    import platform

    from harness.environment import keep_freed_memory

    monkeypatch.setenv("HARNESS_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("HARNESS_KEEP_FREED_MEMORY")
    assert keep_freed_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
