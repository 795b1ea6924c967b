"""The procedural portrait generator: determinism, size independence, labels, factor independence, files, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from harness import annotations, synthetic
from harness.annotations import HAIR, HAT, LABELS
from harness.synthetic import (
    HAIR_FAMILIES,
    HairColor,
    PortraitSpec,
    combine,
    contact_sheet,
    generate,
    landmarks,
    render,
    sample_spec,
)

L = {name: i for i, name in enumerate(LABELS)}


def spec(seed: int, i: int = 0) -> PortraitSpec:
    return sample_spec(np.random.default_rng([seed, i]))


def spec_of(family: str, headwear: str = "none", start: int = 0) -> PortraitSpec:
    """The first sampled spec with the given hair family and headwear."""
    for i in range(start, start + 3000):
        s = spec(7, i)
        if s.hairstyle.family == family and s.hairstyle.headwear == headwear:
            return s
    raise AssertionError(f"no {family}/{headwear} spec found")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


# ------------------------------------------------------------------------------------------- determinism


def test_render_is_deterministic_and_specs_differ():
    s = spec(0, 3)
    a_img, a_lab = render(s, 128)
    b_img, b_lab = render(s, 128)
    digest = hashlib.sha256(pixels(a_img).tobytes() + a_lab.tobytes()).hexdigest()
    assert digest == hashlib.sha256(pixels(b_img).tobytes() + b_lab.tobytes()).hexdigest()
    assert a_img.mode == "RGB" and a_img.size == (128, 128)
    assert a_lab.dtype == np.uint8 and a_lab.shape == (128, 128) and a_lab.max() < len(LABELS)
    other, _ = render(spec(0, 4), 128)
    assert np.abs(pixels(other).astype(int) - pixels(a_img)).mean() > 5
    # the sampler is a pure function of the generator state
    assert spec(0, 3) == s and spec(0, 4) != s


def test_spec_json_round_trip():
    for i in range(30):
        s = spec(3, i)
        d = json.loads(json.dumps(s.to_json()))
        assert d["version"] == synthetic.GENERATOR_VERSION
        assert PortraitSpec.from_json(d) == s
    bad = spec(3, 0).to_json()
    bad["pose"] = {**bad["pose"], "pitch": 1.0}
    with pytest.raises(ValueError, match="pitch"):
        PortraitSpec.from_json(bad)


def test_size_independence():
    """The same spec at 1024, downscaled, is the 256 picture (finer strands only)."""
    for s in (spec_of("long"), spec_of("curly"), spec_of("afro", start=40)):
        small = pixels(render(s, 256)[0])
        big = pixels(render(s, 1024)[0])
        down = cv2.resize(big, (256, 256), interpolation=cv2.INTER_AREA)
        assert psnr(small, down) > 25, s.hairstyle.family
        lab_small = render(s, 256)[1]
        lab_big = cv2.resize(render(s, 1024)[1], (256, 256), interpolation=cv2.INTER_NEAREST)
        assert (lab_small == lab_big).mean() > 0.97


# ------------------------------------------------------------------------------------------------ labels


def test_label_classes_present_and_placed():
    s = spec_of("short")
    img, lab = render(s, 256)
    present = set(np.unique(lab).tolist())
    for name in ("background", "skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "u_lip", "l_lip",
                 "neck", "cloth", "hair"):
        assert L[name] in present, name
    # eyes inside the face: every eye pixel has skin above and below it in its column
    skin_rows = {}
    for name in ("l_eye", "r_eye", "l_brow", "r_brow", "nose", "u_lip", "l_lip"):
        ys, xs = np.nonzero(lab == L[name])
        for x in np.unique(xs):
            col = np.nonzero(np.isin(lab[:, x], [L["skin"], L["eye_g"]]))[0]
            skin_rows[x] = col
            assert col.min() < ys[xs == x].min() and col.max() > ys[xs == x].max(), (name, x)
    # image-left eye is l_eye; eyes above the nose, nose above the mouth, brows above the eyes
    cy = {n: np.nonzero(lab == L[n])[0].mean() for n in ("l_eye", "r_eye", "l_brow", "nose", "u_lip")}
    assert np.nonzero(lab == L["l_eye"])[1].mean() < 128 < np.nonzero(lab == L["r_eye"])[1].mean()
    assert cy["l_brow"] < cy["l_eye"] < cy["nose"] < cy["u_lip"]
    assert np.nonzero(lab == L["cloth"])[0].mean() > cy["u_lip"]


def test_hair_labels_have_the_hair_colour():
    base = spec_of("long")
    blue = HairColor("blue", (0.15, 0.3, 0.9), (0.05, 0.1, 0.4), (0.6, 0.7, 1.0), (0.15, 0.3, 0.9), 0.0)
    blond = HairColor("blond", (0.9, 0.72, 0.4), (0.5, 0.35, 0.15), (1.0, 0.93, 0.75), (0.9, 0.72, 0.4), 0.0)
    means = {}
    for hc in (blue, blond):
        img, lab = render(dataclasses.replace(base, hair_color=hc), 128)
        hair = pixels(img)[lab == HAIR].astype(float)
        assert len(hair) > 500
        means[hc.name] = hair.mean(0)
        # the median hair pixel is within the colour's shadow..highlight range
        med = np.median(hair, 0) / 255
        lo, hi = np.minimum(hc.shadow, hc.highlight), np.maximum(hc.shadow, hc.highlight)
        assert np.all(med > np.asarray(lo) - 0.08) and np.all(med < np.asarray(hi) + 0.08), (hc.name, med)
        skin = pixels(img)[lab == L["skin"]].astype(float).mean(0) / 255
        assert np.abs(skin - np.asarray(base.identity.skin)).max() < 0.15
    assert means["blue"][2] > means["blue"][0] + 60
    assert means["blond"][0] > means["blond"][2] + 60


def test_landmarks_match_labels():
    for i in range(6):
        s = spec(5, i)
        lm = landmarks(s, 256)
        _, lab = render(s, 256)
        assert lm.shape == (68, 2) and lm.dtype == np.float32
        for name, idx in (("l_eye", slice(36, 42)), ("r_eye", slice(42, 48))):
            ys, xs = np.nonzero(lab == L[name])
            assert np.hypot(xs.mean() - lm[idx, 0].mean(), ys.mean() - lm[idx, 1].mean()) < 3
        x, y = np.round(lm[30]).astype(int)
        assert lab[y, x] == L["nose"]
        for k in (48, 54, 51, 57):
            x, y = np.round(lm[k]).astype(int)
            assert lab[y - 2:y + 3, x - 2:x + 3].max() in (L["u_lip"], L["l_lip"], L["mouth"])
        # sensible order: corners, chin lowest on the jaw, eyes left to right
        assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]
        assert lm[48, 0] < lm[54, 0] and lm[8, 1] > lm[:17, 1].max() - 4   # (the head may roll a little)
        assert lm[27, 1] < lm[30, 1] < lm[51, 1] < lm[57, 1] < lm[8, 1]
        assert lm[0, 0] < lm[8, 0] < lm[16, 0]


# ---------------------------------------------------------------------------------- factor independence


def test_combine_identity_and_roles():
    a, b, c = spec(9, 0), spec(9, 1), spec(9, 2)
    assert combine(a, a, a) == a
    r = combine(a, b, c)
    assert (r.identity, r.pose, r.background, r.clothing) == (a.identity, a.pose, a.background, a.clothing)
    assert r.hairstyle == b.hairstyle and r.hair_color == c.hair_color and r.hair_texture == c.hair_texture


def test_combine_keeps_face_pixels_and_takes_hair_shape():
    n_checked = 0
    for i in range(8):
        a, b = spec(11, 2 * i), spec(11, 2 * i + 1)
        b = dataclasses.replace(b, pose=a.pose)          # share the pose
        result = combine(a, b, a)
        a_img, a_lab = render(a, 192)
        r_img, r_lab = render(result, 192)
        b_img, b_lab = render(b, 192)
        # outside both pictures' hair and headwear (and the shadows they cast), the face image is unchanged
        covered = np.isin(a_lab, [HAIR, HAT]) | np.isin(r_lab, [HAIR, HAT])
        outside = ~ndimage.binary_dilation(covered, iterations=12)
        # anti-aliased edges blend with whatever is behind them (hair hidden behind the face): interiors only
        outside &= ndimage.minimum_filter(a_lab, 3) == ndimage.maximum_filter(a_lab, 3)
        assert outside.mean() > 0.3
        assert np.array_equal(pixels(a_img)[outside], pixels(r_img)[outside])
        assert np.array_equal(a_lab[outside], r_lab[outside])
        # the hair region is the shape image's
        hb, hr = b_lab == HAIR, r_lab == HAIR
        if hb.sum() > 100:
            iou = (hb & hr).sum() / (hb | hr).sum()
            assert iou > 0.9, (i, b.hairstyle.family, iou)
            n_checked += 1
    assert n_checked >= 4


def test_hair_colour_and_texture_do_not_move_labels():
    a, c = spec_of("long"), spec(12, 5)
    _, la = render(a, 128)
    _, lr = render(combine(a, a, c), 128)
    assert np.array_equal(la, lr)


def test_every_family_and_rates():
    specs = [spec(13, i) for i in range(1500)]
    families = Counter(s.hairstyle.family for s in specs)
    assert set(families) == set(HAIR_FAMILIES)
    assert 0.05 < families["bald"] / len(specs) < 0.11
    hats = sum(s.hairstyle.headwear != "none" for s in specs) / len(specs)
    assert 0.11 < hats < 0.19
    assert len({s.hair_color.name for s in specs}) >= 15
    assert {s.hairstyle.parting for s in specs} == {"left", "right", "centre", "none"}
    assert {s.hairstyle.fringe for s in specs} == {"none", "straight", "side", "curtain"}
    assert {s.hairstyle.headwear for s in specs} == {"none", "beanie", "cap", "brimmed"}


def test_every_family_renders_hair_or_none():
    for fam in HAIR_FAMILIES:
        s = spec_of(fam)
        _, lab = render(s, 96)
        frac = (lab == HAIR).mean()
        if fam == "bald":
            assert frac == 0
        else:
            assert frac > 0.01, fam
    s = spec_of("short", headwear="beanie")
    _, lab = render(s, 96)
    assert (lab == HAT).mean() > 0.03


# --------------------------------------------------------------------------------------------- files, CLI


def test_generate_files_round_trip_and_idempotent(tmp_path):
    rows = generate(3, 64, 21, tmp_path)
    assert [r["id"] for r in rows] == ["s0000", "s0001", "s0002"]
    for i, row in enumerate(rows):
        s = spec(21, i)
        assert row["spec"] == s.to_json()
        image = Image.open(row["image"])
        assert annotations.of(image).synth == s.to_json()
        assert annotations.SYNTH_KEY in image.info
        img, lab = render(s, 64)
        assert np.array_equal(pixels(image.convert("RGB")), pixels(img))
        assert np.array_equal(np.asarray(Image.open(row["labels"])), lab)
    lines = (tmp_path / "specs.jsonl").read_text().splitlines()
    assert [json.loads(line)["spec"] for line in lines] == [r["spec"] for r in rows]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    again = generate(3, 64, 21, tmp_path)
    assert again == rows
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")} == stamps
    # prefixes are stable: the first 2 of 3 are the 2 of a run of 2
    assert generate(2, 64, 21, tmp_path / "two") == [
        {**r, "image": r["image"].replace(str(tmp_path), str(tmp_path / "two")),
         "labels": r["labels"].replace(str(tmp_path), str(tmp_path / "two"))} for r in rows[:2]]


def test_cli_data_synth(tmp_path):
    out = tmp_path / "synth"
    cmd = [sys.executable, "-m", "harness.cli", "data", "synth"]
    done = subprocess.run([*cmd, "--n", "3", "--size", "48", "--seed", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / "images").iterdir()) == ["s0000.png", "s0001.png", "s0002.png"]
    assert len(list((out / "labels").iterdir())) == 3
    assert len((out / "specs.jsonl").read_text().splitlines()) == 3
    # another process drew the same pixels
    img, _ = render(spec(2, 1), 48)
    assert np.array_equal(pixels(Image.open(out / "images" / "s0001.png").convert("RGB")), pixels(img))
    bad = subprocess.run([*cmd, "--n", "0", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--n" in bad.stderr
    bad = subprocess.run([*cmd, "--n", "x", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2


def test_contact_sheet_and_palette():
    ims, labs = zip(*(render(spec(4, i), 64) for i in range(5)), strict=True)
    sheet = contact_sheet(list(ims), 3)
    assert sheet.size == (192, 128)
    overlay = contact_sheet(list(ims), 3, labels=list(labs))
    assert overlay.size == (192, 128)
    assert not np.array_equal(pixels(sheet), pixels(overlay))
    assert len(synthetic.LABEL_COLORS) == len(LABELS) == 19
    assert len(set(synthetic.LABEL_COLORS)) == 19


def test_bad_size_rejected():
    with pytest.raises(ValueError):
        render(spec(0), 8)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([str(Path(__file__))]))
