"""What a manifest records about the machine and software: device, packages, git commit."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("hair-harness", "torch", "torchvision", "numpy", "scipy", "pillow", "clean-fid", "pandas",
            "opencv-python-headless", "dlib-bin", "face_recognition_models", "pluggy", "jinja2", "matplotlib",
            "scikit-image")


def resolve_device(spec: str = "auto"):
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cpu``, ``cuda``, ``cuda:1`` as given (checked)."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise ValueError(f"device {spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


PRECISIONS = ("fp32", "tf32")


def set_float32_precision(precision: str = "fp32") -> dict[str, Any]:
    """How float32 matrix products and convolutions run, for the whole process; returns :func:`float32_flags`.

    ``fp32`` (the harness default): IEEE float32 everywhere. PyTorch's own default lets cuDNN convolutions use TF32
    on Ampere and later GPUs (about 1e-3 relative error per operation), which is neither what the published numbers
    nor our parity fixtures were computed with. ``tf32``: TF32 for CUDA matrix products and convolutions (faster,
    less exact). CPU arithmetic is float32 either way."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    mode = "tf32" if precision == "tf32" else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9: the per-backend API only
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
        torch.backends.cudnn.rnn.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
    return float32_flags()


def float32_flags() -> dict[str, Any]:
    """The float32 / cuDNN settings results depend on (what the manifest records)."""
    import torch

    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    else:
        matmul = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
        conv = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return {"cuda_matmul": matmul, "cudnn_conv": conv, "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic)}


def device_info(device) -> dict[str, Any]:
    """The device a run used: type, name, CPU threads; on CUDA also the CUDA and cuDNN versions, compute capability,
    memory and the count of visible devices; and the float32 / cuDNN flags."""
    import torch

    info: dict[str, Any] = {"type": device.type, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), capability=f"{props.major}.{props.minor}",
                    memory_bytes=int(props.total_memory), visible_devices=torch.cuda.device_count())
    else:
        info["name"] = platform.processor() or platform.machine()
    info["float32"] = float32_flags()
    return info


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (*PACKAGES, *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_state(path: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout holding this package (``None`` when not a git checkout)."""
    path = path or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks instead of returning them to the kernel (Linux only).

    By default glibc unmaps every freed block above 32 MiB, so each large activation of a 1024 network is
    page-faulted in again on every call; raising the mmap and trim thresholds removes that cost (the process
    keeps its peak memory). Returns whether the setting was applied; ``HARNESS_KEEP_FREED_MEMORY=0`` disables it.
    """
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("HARNESS_KEEP_FREED_MEMORY", "1") == "0" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        limit = 1 << 30  # glibc caps the mmap threshold at 32 MiB * sizeof(long) on 64-bit: 1 GiB is accepted
        ok = libc.mallopt(m_mmap_threshold, limit) == 1 and libc.mallopt(m_trim_threshold, limit) == 1
        return bool(ok)
    except (OSError, AttributeError):
        return False
