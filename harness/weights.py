"""Finding, checking and safely loading checkpoint files; filling networks for test runs.

Search order for a checkpoint's file name (first hit wins):
1. ``--weights-dir DIR`` (``WeightStore(weights_dir=...)``),
2. each directory in ``$HARNESS_WEIGHTS`` (``os.pathsep``-separated),
3. the user cache: ``$HARNESS_CACHE/weights``, else ``$XDG_CACHE_HOME/hair-harness/weights``,
   else ``~/.cache/hair-harness/weights``.
In each directory a file is looked for as ``<key>/<filename>``, then at its official relative path (e.g.
``Blending/checkpoint.pth``, so a directory may be an unpacked official ``pretrained_models`` folder), then as
``<filename>`` directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.method import Checkpoint
from harness.parity import fill_value

ENV_WEIGHTS = "HARNESS_WEIGHTS"
ENV_CACHE = "HARNESS_CACHE"


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The user cache root shared by runs (weights, reference features, per-image caches)."""
    env = os.environ if env is None else env
    if env.get(ENV_CACHE):
        return Path(env[ENV_CACHE]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "hair-harness"


class MissingWeights(FileNotFoundError):
    """A declared checkpoint file is not in any weight directory."""

    def __init__(self, checkpoints: Iterable[Checkpoint], searched: Iterable[Path]):
        self.checkpoints = list(checkpoints)
        self.searched = list(searched)
        super().__init__(describe_missing(self.checkpoints, self.searched))


def describe_missing(checkpoints: Iterable[Checkpoint], searched: Iterable[Path],
                     store: WeightStore | None = None) -> str:
    """The files to provide and where they come from; with ``store``, a file found with another size than the
    official one says so (a truncated download, or another file under the official name)."""
    lines = []
    for c in checkpoints:
        size = f", {c.size:,} bytes" if c.size else ""
        lines.append(f"  - {c.filename} ({c.purpose}{size}); official source: {c.source}")
        if c.local_path:
            lines.append(f"    not at {c.local_path} either")
        status = store.status(c) if store is not None else None
        if status is not None and status.state == "wrong size":
            lines.append(f"    found {status.path} with {status.size:,} bytes instead: a truncated download or "
                         "another file under the official name")
    where = ", ".join(str(p) for p in searched) or "(no directory)"
    return ("missing weight files:\n" + "\n".join(lines) + f"\n  searched: {where}\n"
            "  put them in one of these directories, pass --weights-dir DIR or set $HARNESS_WEIGHTS")


@dataclass(frozen=True)
class CheckpointStatus:
    checkpoint: Checkpoint
    state: str  # found | missing | wrong size | wrong hash
    path: Path | None
    size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        c = self.checkpoint
        return {"key": c.key, "filename": c.filename, "state": self.state,
                "path": str(self.path) if self.path else None, "size": self.size, "expected_size": c.size,
                "sha256": c.sha256, "source": c.source, "download": list(c.download), "purpose": c.purpose,
                "used_by": list(c.used_by)}


def sha256_file(path: Path, cache: Path | None = None) -> str:
    """sha256 of a file, memoised by (path, size, mtime) in the user cache."""
    path = Path(path)
    st = path.stat()
    memo_key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = (cache or cache_dir()) / "hashes" / memo_key
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(value)
        os.replace(tmp, memo)
    except OSError:
        pass
    return value


class WeightStore:
    """Where checkpoint files are looked up; ``fill=True`` makes networks use rule-filled weights instead."""

    def __init__(self, weights_dir: str | Path | None = None, fill: bool = False,
                 env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        dirs: list[Path] = []
        if weights_dir:
            dirs.append(Path(weights_dir).expanduser())
        dirs += [Path(p).expanduser() for p in env.get(ENV_WEIGHTS, "").split(os.pathsep) if p]
        dirs.append(cache_dir(env) / "weights")
        self.search_dirs = dirs
        self.fill = fill

    def find(self, ckpt: Checkpoint) -> Path | None:
        for d in self.search_dirs:
            candidates = [d / ckpt.key / ckpt.filename]
            if ckpt.official_path:
                candidates.append(d / ckpt.official_path)
            candidates.append(d / ckpt.filename)
            for candidate in candidates:
                if candidate.is_file():
                    return candidate
        if ckpt.local_path and Path(ckpt.local_path).is_file():
            return Path(ckpt.local_path)
        return None

    def status(self, ckpt: Checkpoint, verify_hash: bool = False) -> CheckpointStatus:
        path = self.find(ckpt)
        if path is None:
            return CheckpointStatus(ckpt, "missing", None)
        size = path.stat().st_size
        if ckpt.size is not None and size != ckpt.size:
            return CheckpointStatus(ckpt, "wrong size", path, size)
        if verify_hash and ckpt.sha256 and sha256_file(path) != ckpt.sha256:
            return CheckpointStatus(ckpt, "wrong hash", path, size)
        return CheckpointStatus(ckpt, "found", path, size)

    def missing(self, checkpoints: Iterable[Checkpoint]) -> list[Checkpoint]:
        """Checkpoints that are not usable (missing or wrong size); none when filling."""
        if self.fill:
            return []
        return [c for c in checkpoints if self.status(c).state != "found"]

    def load_network(self, module, ckpt: Checkpoint, namespace: str | None = None,
                     extract: Callable[[Any], Mapping[str, Any]] | None = None,
                     recipe: Recipe | None = None) -> Any:
        """Load ``ckpt`` into ``module`` (strict), or fill it by the parity rule when ``self.fill``.

        ``extract(obj)`` picks the module's state dict out of the loaded file (default: the object itself).
        Returns the loaded file object (``None`` when filled) so callers can read extras such as ``latent_avg``.
        """
        if self.fill:
            load_state_dict_into(module, filled_state_dict(module, namespace or ckpt.key, recipe), "filled weights")
            return None
        obj = safe_load(self.path(ckpt))
        state = extract(obj) if extract else obj
        load_state_dict_into(module, state, f"{ckpt.filename}")
        return obj

    def identity(self, ckpt: Checkpoint, filled: str | None = None) -> str:
        """What results computed with ``ckpt`` depend on, for cache keys: the file's sha256 (memoised), or
        ``filled:<filled or key>`` when filling."""
        return f"filled:{filled or ckpt.key}" if self.fill else sha256_file(self.path(ckpt))

    def path(self, ckpt: Checkpoint) -> Path:
        st = self.status(ckpt)
        if st.state != "found":
            if st.state == "missing":
                raise MissingWeights([ckpt], self.search_dirs)
            raise ValueError(f"{st.path}: {st.state} (expected {ckpt.size} bytes, sha256 {ckpt.sha256})")
        return st.path


# ---------------------------------------------------------------- safe loading

class UnsafeCheckpoint(pickle.UnpicklingError):
    """The file wants to run code (a global outside the allow-list) on load."""


def _safe_globals() -> list:
    import argparse
    import collections

    return [argparse.Namespace, collections.OrderedDict, collections.defaultdict, np.dtype,
            np.core.multiarray.scalar if hasattr(np, "core") else np.dtype,
            type(np.dtype("float32")), type(np.dtype("float64")), type(np.dtype("int64")), np.ndarray]


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with the few globals the official files need.

    A file that would import anything else (i.e. execute code) is refused with :class:`UnsafeCheckpoint`.
    """
    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(
            f"{path}: refused to load: it needs code outside the allow-list ({str(exc).splitlines()[0]})"
        ) from None


def is_torchscript_archive(path: str | Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") or n.endswith("/code/__torch__.py") or "/code/" in n
                       for n in zf.namelist())
    except zipfile.BadZipFile:
        return False


def load_state_dict_into(module, state_dict: Mapping[str, Any], what: str = "checkpoint") -> None:
    """Strict load; a missing, unexpected or mis-shaped key is named in the error."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    bad = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in own.items()
           if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    problems += [f"shape mismatch for {k}: file has {a}, network expects {b}" for k, a, b in bad[:8]]
    if problems:
        raise ValueError(f"{what} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


# ---------------------------------------------------------------- filled weights (--fill-weights)

Recipe = Callable[[str, tuple[int, ...]], Mapping[str, Any]]


def default_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """A generic fill: He-like weights, small biases, unit norm scales, zero BN statistics."""
    name = key.rsplit(".", 1)[-1]
    if name == "num_batches_tracked":
        return {"kind": "int_zero"}
    if name == "running_var":
        return {"kind": "normal", "mean": 1.0, "std": 0.0}
    if name == "running_mean":
        return {"kind": "normal", "mean": 0.0, "std": 0.1}
    if len(shape) <= 1:
        if name in ("weight", "gamma"):
            return {"kind": "normal", "mean": 1.0, "std": 0.1}
        return {"kind": "normal", "mean": 0.0, "std": 0.01}
    fan_in = int(np.prod(shape[1:]))
    return {"kind": "normal", "mean": 0.0, "std": float(1.0 / np.sqrt(max(fan_in, 1)))}


def filled_state_dict(module, namespace: str, recipe: Recipe | None = None,
                      consts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every entry of ``module.state_dict()`` filled by the parity rule under ``namespace``.

    ``recipe(key, shape)`` gives the fill (``{"kind": "normal", "mean", "std"}``, ``"const"`` or ``"int_zero"``);
    ``const`` entries keep the module's own value (e.g. blur kernels the module computes itself).
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    recipe = recipe or default_recipe

    def one(item: tuple[str, Any]) -> Any:
        key, tensor = item
        fill = recipe(key, tuple(tensor.shape))
        if fill["kind"] == "const":
            return torch.as_tensor(consts[key]) if consts and key in consts else tensor.clone()
        if fill["kind"] == "int_zero":
            return torch.zeros_like(tensor)
        value = fill_value(namespace, key, tensor.shape, fill.get("mean", 0.0), fill.get("std", 1.0))
        return torch.from_numpy(np.asarray(value)).to(tensor.dtype)  # 0-d fills come back as numpy scalars

    items = list(module.state_dict().items())
    # numpy's generators release the GIL: the entries are independent, so threads fill them in parallel
    with ThreadPoolExecutor(max(1, min(torch.get_num_threads(), 8))) as pool:
        return dict(zip((k for k, _ in items), pool.map(one, items), strict=True))


def checkpoint_registry(method_classes: Mapping[str, type], extra: Iterable[Checkpoint] = ()) -> list[Checkpoint]:
    """Every checkpoint declared by a method (all variants) or a plugin, merged by key."""
    merged: dict[str, Checkpoint] = {}
    users: dict[str, set[str]] = {}

    def add(ckpt: Checkpoint, user: str | None) -> None:
        merged.setdefault(ckpt.key, ckpt)
        users.setdefault(ckpt.key, set(ckpt.used_by))
        if user:
            users[ckpt.key].add(user)

    for ckpt in extra:
        add(ckpt, None)
    for _name, cls in sorted(method_classes.items()):
        for variant in (cls.variants or (None,)):
            try:
                method = cls(variant=variant)
            except Exception:
                continue
            for ckpt in method.checkpoints():
                add(ckpt, method.label)
    out = []
    for key, ckpt in merged.items():
        out.append(Checkpoint(**{**ckpt.__dict__, "used_by": tuple(sorted(users[key]))}))
    return sorted(out, key=lambda c: c.key)


def dumps_status(statuses: Iterable[CheckpointStatus]) -> str:
    return json.dumps([s.as_dict() for s in statuses], indent=2)
