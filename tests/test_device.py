"""Device readiness: float32 precision flags (TF32 off by default), what the manifest records about the device,
and the smoke protocol on a GPU when this machine has one (marked ``cuda``)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_harness

from harness import environment


@pytest.fixture
def restore_precision():
    yield
    environment.set_float32_precision("fp32")


def test_precision_flags(restore_precision):
    flags = environment.set_float32_precision("tf32")
    assert flags["cuda_matmul"] == "tf32" and flags["cudnn_conv"] == "tf32"
    flags = environment.set_float32_precision("fp32")
    assert flags["cuda_matmul"] == "ieee" and flags["cudnn_conv"] == "ieee"  # PyTorch's conv default is TF32
    assert environment.float32_flags() == flags
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        environment.set_float32_precision("fp16")


def test_device_info_records_the_flags():
    info = environment.device_info(torch.device("cpu"))
    assert info["type"] == "cpu" and info["threads"] >= 1
    assert set(info["float32"]) >= {"cuda_matmul", "cudnn_conv", "cudnn_benchmark", "cudnn_deterministic"}


def test_run_records_precision_and_refuses_to_resume_with_another(tmp_path):
    out = tmp_path / "run"
    common = ("--methods", "identity", "--protocol", "smoke", "--limit", "1", "--no-metrics", "--quiet",
              "--out", str(out))
    run_harness("run", *common, "--precision", "tf32", env={"HARNESS_CACHE": str(tmp_path / "cache")})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "tf32"
    assert manifest["device"]["float32"]["cudnn_conv"] == "tf32"
    proc = run_harness("run", *common, "--resume", check=False, env={"HARNESS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2 and "different precision" in proc.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_smoke_protocol_on_the_gpu(tmp_path):
    """The smoke protocol on CUDA: weight-free methods and filled learned ones, every unit ok, the device and its
    flags in the manifest, CUDA-synchronised stage timings recorded."""
    out = tmp_path / "run"
    run_harness("run", "--protocol", "smoke", "--device", "cuda", "--fill-weights", "--limit", "2",
                "--methods", "identity,composite,cyclegan,hairflash:final,hairclip", "--out", str(out), "--quiet",
                env={"HARNESS_CACHE": str(tmp_path / "cache")}, timeout=1800)
    manifest = json.loads((out / "manifest.json").read_text())
    device = manifest["device"]
    assert device["type"] == "cuda" and device["cuda"] and device["cudnn"] and device["memory_bytes"] > 0
    assert device["float32"]["cudnn_conv"] == "ieee"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    assert records and all(r["status"] == "ok" for r in records), [r["error"] for r in records if r["error"]]
    assert all(r["mem_kind"] == "cuda_max_allocated" for r in records)
    assert all(r["time_s"] > 0 for r in records)
