"""Shared test fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT.parent / "shared" / "parity"
HARNESS = [sys.executable, "-m", "harness.cli"]


def load_fixture(name: str):
    """The parity fixture ``name`` from ``../shared/parity`` (the test is skipped when it is not there)."""
    from harness.parity import Fixture

    path = PARITY / name
    if not (path / "spec.json").is_file():
        pytest.skip(f"parity fixture {path} not available")
    return Fixture.load(path)


def assert_fill_recipe_matches(fixture, recipe, **kwargs) -> None:
    """``recipe(key, shape, **kwargs)`` gives the fill the fixture's spec states for every tensor."""
    for entry in fixture.spec["state_dict"]:
        ours = recipe(entry["key"], tuple(entry["shape"]), **kwargs)
        want = entry["fill"]
        assert ours["kind"] == want["kind"], entry["key"]
        if want["kind"] == "normal":
            assert ours["mean"] == pytest.approx(want["mean"], rel=1e-12, abs=1e-12), entry["key"]
            assert ours["std"] == pytest.approx(want["std"], rel=1e-12, abs=1e-12), entry["key"]


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not PARITY.is_dir():
        pytest.skip(f"parity fixtures not found at {PARITY}")
    return PARITY


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's cache or weight directories."""
    cache = tmp_path_factory.getbasetemp() / "harness-cache"
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    monkeypatch.delenv("HARNESS_WEIGHTS", raising=False)
    os.environ.setdefault("OMP_NUM_THREADS", "2")

LAUNCH_WITH_FAKES = (
    "import sys; sys.path.insert(0, {tests!r}); import fake_methods; from harness import plugins; "
    "plugins.pm.register(fake_methods, name='fake_methods'); from harness.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def harness_cmd(*args: str, fakes: bool = False) -> list[str]:
    """The command line of the real CLI (optionally with tests/fake_methods.py registered in-process)."""
    if fakes:
        return [sys.executable, "-c", LAUNCH_WITH_FAKES.format(tests=str(ROOT / "tests")), *args]
    return [*HARNESS, *args]


def run_harness(*args: str, fakes: bool = False, env: dict | None = None, check: bool = True, timeout: float = 600):
    import subprocess

    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(harness_cmd(*args, fakes=fakes), capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"harness {' '.join(args)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout}\n"
                             f"STDERR:\n{proc.stderr}")
    return proc
