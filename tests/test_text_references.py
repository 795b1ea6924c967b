"""Text references (issue 10, part 2): prompts as the shape / colour role from the CLI, a protocol's ``[text]``
section or a triplet file; per-unit skips for image-only methods; ground truth for palette colour prompts; the
CLIP text score; the report's prompt cells."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_harness
from PIL import Image

from harness import protocol as protocol_mod
from harness import synthetic
from harness.datasets import InputError, read_triplet_file
from harness.text import MAX_TOKENS, PromptError, check_prompt, prompt_of, slot_refusal, text_id, token_count


def test_prompt_checks():
    assert check_prompt("  purple hair \t", "color") == "purple hair"
    assert token_count("purple hair") == 2
    with pytest.raises(PromptError, match="empty"):
        check_prompt("  ", "shape")
    with pytest.raises(PromptError, match="several lines"):
        check_prompt("afro\nhairstyle", "shape")
    with pytest.raises(PromptError, match=f"at most {MAX_TOKENS}"):
        check_prompt("hair " * (MAX_TOKENS + 1), "color")
    check_prompt("hair " * MAX_TOKENS, "color")  # exactly the limit fits
    assert prompt_of(text_id("afro hairstyle")) == "afro hairstyle" and prompt_of("s0001") is None


def test_slot_refusal():
    text = text_id("afro hairstyle")
    # full: shape slot holds the shape prompt; fine for a method taking shape text, not for an image-only one
    assert slot_refusal(("face", "shape", "color"), ("a", text, "c"), {"shape"}, "m") is None
    why = slot_refusal(("face", "shape", "color"), ("a", text, "c"), {"color"}, "m")
    assert "m takes images only for the shape role" in why and "afro hairstyle" in why
    # both: the colour slot would get the shape prompt, whatever the method accepts
    why = slot_refusal(("face", "shape", "shape"), ("a", text, text), {"shape", "color"}, "m")
    assert "gives the shape reference as the color reference" in why
    assert slot_refusal(("face", "face", "face"), ("a", "a", "a"), set(), "m") is None


def test_protocol_text_section_and_override(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('name = "p"\n[text]\nshape = " afro hairstyle "\n')
    loaded = protocol_mod.load(path)
    assert (loaded.shape_text, loaded.color_text) == ("afro hairstyle", "")
    both = loaded.with_text(color="purple hair")
    assert (both.shape_text, both.color_text) == ("afro hairstyle", "purple hair")
    assert protocol_mod.from_dict(both.to_dict()) == both  # kept in the manifest
    path.write_text('name = "p"\n[text]\nstyle = "afro"\n')
    with pytest.raises(protocol_mod.ProtocolError, match="unknown key"):
        protocol_mod.load(path)
    path.write_text('name = "p"\n[text]\ncolor = ""\n')
    with pytest.raises(protocol_mod.ProtocolError, match="empty"):
        protocol_mod.load(path)


def test_triplet_file_text_columns(tmp_path):
    tfile = tmp_path / "t.txt"
    tfile.write_text('a.png "text:afro hairstyle" c.png  # comment\nb.png "my shape.png" text:"purple hair"\n')
    entries, triplets = read_triplet_file(tfile, tmp_path)
    assert [e.source.name for e in entries] == ["a.png", "c.png", "b.png", "my shape.png"]
    assert [(t.shape, t.color) for t in triplets] == [("text:afro hairstyle", "c"), ("my_shape", "text:purple hair")]
    tfile.write_text('"text:a face" b.png c.png\n')
    with pytest.raises(InputError, match="face must be an image"):
        read_triplet_file(tfile, tmp_path)
    tfile.write_text("a.png text: c.png\n")
    with pytest.raises(InputError, match="t.txt:1: the shape text reference is empty"):
        read_triplet_file(tfile, tmp_path)


def test_composite_named_colors():
    from methods.composite import named_color

    assert np.allclose(named_color("purple hair"), synthetic.DYED_HAIR["purple"])  # the palette first
    assert np.allclose(named_color("dark red hair"), (139 / 255, 0, 0))  # then CSS names
    with pytest.raises(ValueError, match="names no known colour"):
        named_color("rainbow hair")


def test_named_hair_colors():
    assert synthetic.named_hair_color("purple hair").base == synthetic.DYED_HAIR["purple"]
    assert synthetic.named_hair_color("Light-Brown hair colour").name == "light_brown"
    assert synthetic.named_hair_color("blonde").name == "blond"
    assert synthetic.named_hair_color("rainbow hair") is None
    assert synthetic.named_hair_color("afro hairstyle") is None


def _records(run) -> dict:
    rows = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines() if line.strip()]
    return {(r["method"], r["task"], r["triplet"]): r for r in rows}


def _metric(df: pd.DataFrame, method: str, task: str, metric: str) -> pd.Series:
    rows = df[(df.method == method) & (df.task == task) & (df.metric == metric)]
    assert len(rows) == 1, (method, task, metric)
    return rows.iloc[0]


def test_cli_color_text_on_synthetic_data(tmp_path):
    """--color-text with a palette colour: the oracle renders the ground truth (hair dE00 0), identity is the lower
    bound, composite recolours to the named colour, an image-only method (cyclegan) is skipped per unit with the
    reason (and only where the prompt is used)."""
    out = tmp_path / "run"
    proc = run_harness("run", "--protocol", "smoke", "--limit", "2", "--methods", "identity,oracle,composite,cyclegan",
                       "--color-text", "purple hair", "--out", str(out), "--quiet")
    assert "skipped: 4  pending: 0" in proc.stdout, proc.stdout
    # the console names each skip reason once, with the methods / tasks it concerns
    assert "[cyclegan full/color]: skipped: cyclegan takes images only for the color role" in proc.stdout
    assert "clip_text_color [composite full/color, identity full/color, oracle full/color]: skipped:" in proc.stdout
    triplets = pd.read_csv(out / "triplets.csv")
    assert list(triplets.color) == ["text:purple hair"] * 2
    assert json.loads((out / "manifest.json").read_text())["protocol"]["color_text"] == "purple hair"
    records = _records(out)
    for task in ("full", "color"):  # the tasks whose Color slot holds the prompt
        for tid in ("t0000", "t0001"):
            rec = records[("cyclegan", task, tid)]
            assert rec["status"] == "skipped" and "cyclegan takes images only for the color role" in rec["error"]
    assert all(r["status"] == "ok" for k, r in records.items() if k[0] != "cyclegan")
    # ground truth of the colour task: the face with purple hair of its own texture = the oracle's output
    gt = np.asarray(Image.open(out / "ground_truth" / "color" / "t0000.png"))
    assert np.array_equal(np.asarray(Image.open(out / records[("oracle", "color", "t0000")]["output"])), gt)
    face = np.asarray(Image.open(out / "inputs" / f"{triplets.face[0]}.png"))
    assert not np.array_equal(gt, face)
    df = pd.read_csv(out / "metrics.csv")
    assert _metric(df, "oracle", "color", "hair_color_de").value == pytest.approx(0, abs=1e-6)
    identity_de = _metric(df, "identity", "color", "hair_color_de").value
    assert identity_de > 20 and _metric(df, "composite", "color", "hair_color_de").value < identity_de / 3
    skipped = _metric(df, "cyclegan", "color", "psnr_gt")
    assert skipped.status.startswith("skipped: cyclegan takes images only for the color role"), skipped.status
    assert _metric(df, "cyclegan", "color", "fid").status == skipped.status
    assert _metric(df, "cyclegan", "rec", "failures").status.startswith("ok")  # image tasks run as usual
    clip = _metric(df, "oracle", "color", "clip_text_color")
    assert clip.status.startswith("skipped") and "ViT-B-32.pt" in clip.status, clip.status
    assert "clip_text_shape" not in set(df.metric)  # no shape prompt in this run
    grid = (out / "report" / "grid-color-1.html").read_text()
    assert "&ldquo;purple hair&rdquo;" in grid and "skipped: cyclegan takes images only" in grid


def test_cli_triplet_file_with_text_and_filled_clip(tmp_path):
    """A triplet file with a shape prompt on real-image data: task both is skipped for every method (its Color slot
    would get the shape prompt), clip_text_shape is computed (hair region from the face parser) and flagged as
    filled; a bad prompt on the command line is refused before anything runs."""
    run_harness("data", "synth", "--n", "3", "--size", "64", "--seed", "3", "--out", str(tmp_path / "synth"))
    data = tmp_path / "synth" / "images"
    names = sorted(p.name for p in data.glob("*.png"))
    (data / "triplets.txt").write_text(f'{names[0]} "text:afro hairstyle" {names[1]}\n'
                                       f"{names[1]} {names[2]} {names[0]}\n")
    protocol = tmp_path / "p.toml"
    protocol.write_text(f'name = "textfile"\n[dataset]\nkind = "triplets"\npath = "{data}"\n'
                        'triplets_file = "triplets.txt"\nsize = 64\n[evaluation]\nsize = 64\nbootstrap = 10\n'
                        '[triplets]\ntasks = ["full", "both", "rec"]\n')
    out = tmp_path / "run"
    proc = run_harness("run", "--protocol", str(protocol), "--methods", "identity", "--fill-weights", "--out",
                       str(out), "--quiet", timeout=900)
    assert "ok: 5  failed: 0  skipped: 1  pending: 0" in proc.stdout, proc.stdout
    rec = _records(out)[("identity", "both", "t0000")]
    assert rec["status"] == "skipped" and "gives the shape reference as the color reference" in rec["error"]
    df = pd.read_csv(out / "metrics.csv")
    clip = _metric(df, "identity", "full", "clip_text_shape")  # one text item (t0001 has a shape image)
    assert clip.n == 1 and clip.status == "ok (filled weights: not meaningful)", clip.status
    assert np.isfinite(clip.value) and -100 <= clip.value <= 100
    assert not set(df[df.task.isin(["rec", "both"])].metric) & {"clip_text_shape", "clip_text_color"}
    # refusals: an empty or too long prompt, before any work
    for prompt, why in (("", "empty"), ("hair " * 80, f"at most {MAX_TOKENS}")):
        proc = run_harness("run", "--protocol", "smoke", "--methods", "identity", "--shape-text", prompt, "--out",
                           str(tmp_path / "refused"), check=False)
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
        assert not (tmp_path / "refused").exists()
