"""The CLI verbs other than run: help, methods, weights, new-method, report, metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_harness

from harness import cli

VERBS = [["run"], ["report"], ["metrics"], ["methods"], ["weights"], ["parity"], ["new-method"], ["data"],
         ["data", "synth"], ["data", "align"], ["data", "paste-back"]]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*verb, "--help"])
    assert exc.value.code == 0
    assert "usage: harness" in capsys.readouterr().out


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run"])  # --out is required
    assert exc.value.code == 2
    assert cli.main(["run", "--out", "/tmp/x", "--limit", "0"]) == 2
    assert cli.main(["run", "--out", "/tmp/x", "--shard", "3/2"]) == 2
    assert cli.main(["run", "--out", "/tmp/x", "--set", "novalue"]) == 2
    assert "METHOD.PARAM=VALUE" in capsys.readouterr().err


def test_methods_json_lists_builtins_and_their_state():
    listing = json.loads(run_harness("methods", "--json").stdout)
    by_name = {m["name"]: m for m in listing["methods"]}
    assert {"identity", "oracle", "composite"} <= set(by_name)
    assert by_name["identity"]["plugin"] == "reference" and by_name["identity"]["checkpoints"] == []
    assert by_name["oracle"]["requires"] == ["synthetic"]
    assert by_name["composite"]["params"]["recolor"] == "lab"
    assert listing["broken_plugins"] == []


def test_a_broken_plugin_is_reported_not_fatal(tmp_path):
    code = ("import sys, types; from harness import plugins, cli\n"
            "plugins.load()\n"
            "bad = types.ModuleType('bad_plugin')\n"
            "exec('import harness\\n@harness.hookimpl\\ndef register_methods(register):\\n'\n"
            "     '    raise ImportError(\"no torch_xyz\")', bad.__dict__)\n"
            "plugins.pm.register(bad, name='bad_plugin')\n"
            "sys.exit(cli.main(['methods']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0
    assert "identity" in proc.stdout and "BROKEN plugin bad_plugin" in proc.stdout and "no torch_xyz" in proc.stdout


def test_weights_json_shows_state_and_search_order(tmp_path):
    (tmp_path / "ViT-B-32.pt").write_bytes(b"not really")
    out = json.loads(run_harness("weights", "--json", "--weights-dir", str(tmp_path),
                                 env={"HARNESS_WEIGHTS": "/nonexistent/a"}).stdout)
    assert out["search_dirs"][:2] == [str(tmp_path), "/nonexistent/a"]
    by_file = {c["filename"]: c for c in out["checkpoints"]}
    assert by_file["inception-2015-12-05.pt"]["state"] == "missing"
    assert by_file["ViT-B-32.pt"]["path"] == str(tmp_path / "ViT-B-32.pt")
    assert by_file["ViT-B-32.pt"]["state"] in ("found", "wrong size")
    assert all(c["source"] for c in out["checkpoints"])


def test_new_method_package_installs_and_runs(tmp_path):
    pkg = tmp_path / "my_method"
    run_harness("new-method", "my_method", "--out", str(pkg))
    assert (pkg / "pyproject.toml").is_file() and (pkg / "harness_my_method" / "plugin.py").is_file()
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(pkg)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listing = json.loads(run_harness("methods", "--json", env=env).stdout)
    assert "my_method" in {m["name"] for m in listing["methods"]}
    run = tmp_path / "run"
    run_harness("run", "--methods", "my_method,identity", "--protocol", "smoke", "--limit", "1", "--out", str(run),
                "--quiet", "--no-metrics", env=env)
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert {r["status"] for r in records if r["method"] == "my_method"} == {"ok"}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")],
                           capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    again = run_harness("new-method", "my_method", "--out", str(pkg), check=False)
    assert again.returncode == 2 and "not empty" in again.stderr
    bad = run_harness("new-method", "My-Method", "--out", str(tmp_path / "x"), check=False)
    assert bad.returncode == 2


def test_report_and_metrics_verbs_on_an_existing_run(tmp_path):
    run = tmp_path / "run"
    run_harness("run", "--methods", "identity,oracle", "--protocol", "smoke", "--limit", "2", "--out", str(run),
                "--quiet", "--no-metrics")
    assert not (run / "metrics.csv").exists()
    proc = run_harness("report", str(run), "--out", str(tmp_path / "rep"), check=False)
    assert proc.returncode == 2 and "harness metrics" in proc.stderr
    run_harness("metrics", str(run), "--quiet")
    assert (run / "metrics.csv").exists()
    proc = run_harness("report", str(run), str(run), "--out", str(tmp_path / "rep"))
    assert (tmp_path / "rep" / "index.html").is_file()
    proc = run_harness("report", str(tmp_path / "nothing"), "--out", str(tmp_path / "rep2"), check=False)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr


def test_data_synth_writes_portraits(tmp_path):
    proc = run_harness("data", "synth", "--n", "3", "--size", "64", "--seed", "5", "--out", str(tmp_path / "s"))
    assert "wrote 3 portraits" in proc.stdout
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 3
