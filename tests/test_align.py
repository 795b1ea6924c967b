"""FFHQ alignment: parity with the official recipe, geometry of the transform, folders, paste-back."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from harness import align
from harness.parity import Fixture, check

PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"
FIXTURE = PARITY / "ffhq_align"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def aligned(astronaut) -> align.AlignResult:
    return align.align_face(astronaut)


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="parity fixtures not available")
def test_parity_ffhq_align():
    from harness import plugins

    adapter = plugins.parity_adapters()["ffhq_align"]
    assert adapter is align.ffhq_align_parity
    fixture = Fixture.load(FIXTURE)
    results = list(check(fixture, adapter))
    assert [r.case for r in results] == ["align_input0", "align_input1"]
    for result in results:
        assert result.ok, result.line()
    # the exact parts of the comparison rule
    run = adapter(fixture)
    for i, case in enumerate(fixture.cases):
        out = run(case)
        for name in ("landmarks", "crop", "pad"):
            np.testing.assert_array_equal(out[name], fixture.data[f"out/{name}{i}"])
        np.testing.assert_array_equal(out["meta"][1:], fixture.data[f"out/meta{i}"][1:])
        assert abs(out["meta"][0] - fixture.data[f"out/meta{i}"][0]) < 1e-3


def test_align_astronaut(aligned):
    assert aligned.image.size == (1024, 1024) and aligned.image.mode == "RGB"
    assert aligned.landmarks.shape == (68, 2)
    assert aligned.n_faces == 2  # the astronaut photo has a second (small) face; the largest is used
    assert aligned.quad.shape == (4, 2) and aligned.quad_final.shape == (4, 2)
    assert aligned.transform.cropped and not aligned.transform.padded
    assert aligned.crop == (116, 0, 333, 215)
    assert aligned.meta[0] == pytest.approx(173.661, abs=1e-2)
    side = np.linalg.norm(aligned.quad[2] - aligned.quad[1])
    assert side == pytest.approx(aligned.transform.qsize, rel=1e-9)  # an exact square
    # the quad centre (eye midpoint + 0.1 eye-to-mouth) lands in the middle of the aligned image
    centre = aligned.transform.source_to_aligned(aligned.quad.mean(axis=0))
    np.testing.assert_allclose(centre, [[511.5, 511.5]], atol=1e-6)


def test_transform_maps_landmarks_back(aligned):
    """Landmarks found again on the aligned image map back onto the photo's landmarks."""
    found = align.landmarks_68(aligned.image, upsample=0)
    assert found is not None
    back = aligned.transform.aligned_to_source(found)
    err = np.abs(back - aligned.landmarks)
    assert err.mean() < 1.0 and err.max() < 3.0
    np.testing.assert_allclose(aligned.transform.source_to_aligned(back), found, atol=1e-6)


def test_shrink_and_pad_geometry(astronaut, aligned):
    """The transform re-renders the aligned image independently, also through the shrink and pad branches."""
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.Resampling.BICUBIC))
    landmarks = np.rint(aligned.landmarks * 4 + 1.5).astype(np.int64)  # pixel centres scale about -0.5
    params = align.AlignParams(output_size=128, transform_size=512)
    shrunk = align.align_from_landmarks(big, landmarks, params)
    assert shrunk.transform.shrink == 2 and shrunk.transform.shrunk_size == (1024, 1024)
    tight = np.ascontiguousarray(astronaut[25:, 140:330])  # the face touches the top edge: padding runs
    padded = align.align_from_landmarks(tight, aligned.landmarks - [140, 25], params)
    assert padded.transform.padded and max(padded.pad) > 0
    for source, result in ((big, shrunk), (tight, padded)):
        hi = 1024
        render = cv2.warpPerspective(source, result.transform.homography(hi), (hi, hi),
                                     flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        render = np.asarray(Image.fromarray(render).resize((128, 128), Image.Resampling.LANCZOS))
        # compare where the aligned pixel comes from inside the photo (not the synthetic padding)
        yy, xx = np.mgrid[:128, :128]
        src = result.transform.aligned_to_source(np.c_[xx.ravel(), yy.ravel()]).reshape(128, 128, 2)
        h, w = source.shape[:2]
        inside = (src[..., 0] > 8) & (src[..., 1] > 8) & (src[..., 0] < w - 9) & (src[..., 1] < h - 9)
        assert inside.mean() > 0.5
        assert psnr(np.asarray(result.image)[inside], render[inside]) > 30


def test_no_face_is_a_clean_error():
    blank = np.full((160, 200, 3), 127, np.uint8)
    assert align.landmarks_68(blank) is None
    with pytest.raises(align.NoFaceError, match="no face"):
        align.align_face(blank)


def test_paste_back_reproduces_photo(astronaut, aligned, tmp_path):
    pasted = np.asarray(align.paste_back(aligned.image, aligned.transform, astronaut))
    assert pasted.shape == astronaut.shape and pasted.dtype == np.uint8
    matrix = aligned.transform.homography(512)
    face = cv2.warpPerspective(align.feather_mask(512, 0.05), matrix, (512, 512)) >= 0.999
    assert face.sum() > 20000
    assert psnr(pasted[face], astronaut[face]) > 30
    quad = cv2.warpPerspective(np.ones((512, 512), np.uint8), matrix, (512, 512))
    far = cv2.dilate(quad, np.ones((5, 5), np.uint8)) == 0  # 2 px and more outside the quad
    assert far.mean() > 0.8
    np.testing.assert_array_equal(pasted[far], astronaut[far])
    # a different picture really is pasted, only inside the quad, and through a JSON sidecar as well
    sidecar = tmp_path / "t.align.json"
    sidecar.write_text(json.dumps(aligned.sidecar()))
    grey = Image.new("RGB", (256, 256), (0, 255, 0))
    pasted = np.asarray(align.paste_back(grey, sidecar, astronaut))
    np.testing.assert_array_equal(pasted[face], np.broadcast_to([0, 255, 0], pasted[face].shape))
    np.testing.assert_array_equal(pasted[far], astronaut[far])
    with pytest.raises(ValueError, match="transform was made for"):
        align.paste_back(aligned.image, sidecar, astronaut[:300])


def test_align_folder_continues_past_bad_files(astronaut, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    Image.fromarray(astronaut).save(src / "astronaut.jpg", quality=95)
    (src / "broken.png").write_bytes(b"not an image at all")
    Image.new("RGB", (120, 90), (90, 90, 90)).save(src / "empty.png")
    (src / "notes.txt").write_text("ignored")
    params = align.AlignParams(output_size=256, transform_size=1024)
    seen: list[align.AlignOutcome] = []
    outcomes = align.align_folder(src, dst, params, on_result=seen.append)
    assert seen == outcomes
    by_name = {o.source.name: o for o in outcomes}
    assert sorted(by_name) == ["astronaut.jpg", "broken.png", "empty.png"]
    assert by_name["broken.png"].error.startswith("unreadable image")
    assert by_name["empty.png"].error == "no face found"
    good = by_name["astronaut.jpg"]
    assert good.ok and good.n_faces == 2
    assert good.output == dst / "astronaut.png" and Image.open(good.output).size == (256, 256)
    assert sorted(p.name for p in dst.iterdir()) == ["astronaut.align.json", "astronaut.png"]
    sidecar = json.loads(good.sidecar.read_text())
    assert sidecar["source"] == str((src / "astronaut.jpg").resolve())
    assert sidecar["source_size"] == [512, 512] and sidecar["shrink"] == 0
    assert len(sidecar["landmarks"]) == 68 and len(sidecar["quad"]) == 4
    pasted = align.paste_back(good.output, good.sidecar, src / "astronaut.jpg")
    assert pasted.size == (512, 512)
    # a single file as SRC
    single = align.align_folder(src / "empty.png", tmp_path / "one", params)
    assert len(single) == 1 and not single[0].ok


def test_run_aligns_raw_photos_and_pastes_results_back(astronaut, tmp_path):
    """`harness run --align --paste-back` on raw photos: items whose photo has no face or two faces fail with the
    reason, the others run on the aligned images and come back pasted into the original photos."""
    from conftest import run_harness

    photos = tmp_path / "photos"
    photos.mkdir()
    one = astronaut[0:300, 50:450]  # the astronaut's face only (the full image has a second detection)
    Image.fromarray(one).save(photos / "a.jpg", quality=95)
    Image.fromarray(one[:, ::-1]).save(photos / "b.png")
    Image.fromarray(np.clip(one.astype(int) + 20, 0, 255).astype(np.uint8)).save(photos / "c.png")
    Image.new("RGB", (200, 160), (90, 90, 90)).save(photos / "empty.png")
    Image.fromarray(astronaut).save(photos / "two.png")
    (photos / "triplets.txt").write_text("a.jpg b.png c.png\nempty.png b.png c.png\ntwo.png a.jpg b.png\n")
    protocol = tmp_path / "photos.toml"
    protocol.write_text('name = "photos"\n[dataset]\nkind = "triplets"\nsize = 128\ntriplets_file = "triplets.txt"\n'
                        '[triplets]\ntasks = ["full", "rec"]\n[runner]\nwarmup = 0\n')
    out = tmp_path / "run"
    proc = run_harness("run", "--protocol", str(protocol), "--data", str(photos), "--methods", "identity",
                       "--align", "--paste-back", "--no-metrics", "--quiet", "--out", str(out),
                       env={"HARNESS_CACHE": str(tmp_path / "cache")})
    records = {(r["task"], r["triplet"]): r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}
    assert {k for k, r in records.items() if r["status"] == "ok"} == {("full", "t0000"), ("rec", "t0000")}
    assert "no face found" in records[("full", "t0001")]["error"]
    assert "2 faces found" in records[("rec", "t0002")]["error"], records[("rec", "t0002")]["error"]
    sidecar = json.loads((out / "aligned" / "a.align.json").read_text())
    assert sidecar["source"] == str((photos / "a.jpg").resolve()) and sidecar["output_size"] == 128
    assert Image.open(out / "inputs" / "a.png").size == (128, 128)
    pasted = out / "pasted" / "identity" / "rec" / "t0000.png"
    assert sorted(p.name for p in (out / "pasted" / "identity").rglob("*.png")) == ["t0000.png", "t0000.png"]
    back = np.asarray(Image.open(pasted))
    assert back.shape == one.shape
    # identity returns the aligned face: pasted back it is the photo again (outside the face quad exactly)
    assert psnr(back, one) > 30
    assert "ok: 2  failed: 4" in proc.stdout
    refused = run_harness("run", "--protocol", "smoke", "--align", "--out", str(tmp_path / "r2"), check=False,
                          env={"HARNESS_CACHE": str(tmp_path / "cache")})
    assert refused.returncode == 2 and "--align is for real photos" in refused.stderr
