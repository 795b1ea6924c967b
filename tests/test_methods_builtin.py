"""The built-in weight-free methods: identity, oracle (methods.reference) and composite (methods.composite)."""

from __future__ import annotations

import io
import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from harness import plugins, synthetic
from harness.annotations import HAIR, LABELS, SYNTH_KEY, Annotations, attach
from harness.method import make_params
from harness.timing import recording
from methods import composite as comp
from methods.reference import Identity, MissingSpecError, Oracle

SIZE = 256
N_PORTRAITS = 16
N_TRIPLETS = 8
ROLES = {"full": lambda f, s, c: (f, s, c), "shape": lambda f, s, c: (f, s, f)}

SKIN = LABELS.index("skin")


def _portrait(spec: synthetic.PortraitSpec, landmarks: bool = True) -> Image.Image:
    image, labels = synthetic.render(spec, SIZE)
    lm = synthetic.landmarks(spec, SIZE) if landmarks else None
    return attach(image, Annotations(labels=labels, landmarks=lm, synth=spec.to_json()))


@pytest.fixture(scope="module")
def specs() -> list[synthetic.PortraitSpec]:
    return [synthetic.sample_spec(np.random.default_rng([3, i])) for i in range(N_PORTRAITS)]


@pytest.fixture(scope="module")
def portraits(specs) -> list[Image.Image]:
    return [_portrait(s) for s in specs]


@pytest.fixture(scope="module")
def triplets(specs, portraits) -> list[tuple[int, int, int]]:
    """Deterministic (face, shape, color) triplets of distinct portraits that make a transfer test meaningful:
    every image shows hair (hair colour cannot be taken from a bald or fully covered head, see the composite
    docstring) and shape's hairstyle family differs from face's (else there is nothing to transfer)."""
    hairy = [i for i, p in enumerate(portraits) if (p.info["harness.annotations"].labels == HAIR).mean() > 0.01]
    out: list[tuple[int, int, int]] = []
    for f in hairy:
        options = [(f, s, c) for s in hairy for c in hairy if len({f, s, c}) == 3
                   and specs[s].hairstyle.family != specs[f].hairstyle.family]
        if options:
            out.append(options[5 * len(out) % len(options)])
        if len(out) == N_TRIPLETS:
            break
    assert len(out) == N_TRIPLETS
    return out


def _psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


def _mean_lab(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    return comp.rgb_to_lab(np.asarray(image, np.float32)[mask] / 255.0).mean(0)


def _ground_truth(specs, f, s, c) -> tuple[Image.Image, np.ndarray]:
    return synthetic.render(synthetic.combine(specs[f], specs[s], specs[c]), SIZE)


# ------------------------------------------------------------------------------------------------- registry

def test_plugins_register_the_builtin_methods():
    classes = plugins.method_classes()
    assert classes["identity"] is Identity
    assert classes["oracle"] is Oracle
    assert classes["composite"] is comp.Composite
    assert Oracle.requires == frozenset({"synthetic"})
    assert comp.Composite.requires == frozenset({"labels"})
    assert Identity.requires == frozenset()
    assert comp.Composite.Params is comp.CompositeParams


# -------------------------------------------------------------------------------------------- identity, oracle

def test_identity_returns_the_face_pixels(portraits):
    face, shape, color = portraits[0], portraits[1], portraits[2]
    out = Identity().transfer(face, shape, color)
    assert out.mode == "RGB" and out.size == face.size
    assert np.array_equal(np.asarray(out), np.asarray(face))
    assert out is not face


def test_oracle_equals_the_rendered_ground_truth(specs, portraits, triplets):
    for f, s, c in triplets[:3]:
        out = Oracle().transfer(portraits[f], portraits[s], portraits[c])
        gt, _ = _ground_truth(specs, f, s, c)
        assert out.mode == "RGB" and out.size == (SIZE, SIZE)
        assert np.array_equal(np.asarray(out), np.asarray(gt))
    # (face, face, face) renders the face itself
    rec = Oracle().transfer(portraits[4], portraits[4], portraits[4])
    assert np.array_equal(np.asarray(rec), np.asarray(portraits[4]))


def test_oracle_reads_specs_from_png_text_chunks(specs):
    def png(spec):
        image, _ = synthetic.render(spec, SIZE)
        info = PngImagePlugin.PngInfo()
        info.add_text(SYNTH_KEY, json.dumps(spec.to_json()))
        buf = io.BytesIO()
        image.save(buf, format="PNG", pnginfo=info)
        return Image.open(io.BytesIO(buf.getvalue()))

    out = Oracle().transfer(png(specs[0]), png(specs[1]), png(specs[2]))
    gt, _ = _ground_truth(specs, 0, 1, 2)
    assert np.array_equal(np.asarray(out), np.asarray(gt))


def test_oracle_without_spec_says_which_image(portraits):
    plain = Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(MissingSpecError, match="shape"):
        Oracle().transfer(portraits[0], plain, portraits[2])


# -------------------------------------------------------------------------------------------------- recolour

def test_lab_statistics_transfer_matches_mean_and_std():
    rng = np.random.default_rng(0)
    source = np.clip(rng.normal([0.35, 0.25, 0.15], [0.08, 0.06, 0.05], (4000, 3)), 0, 1).astype(np.float32)
    reference = np.clip(rng.normal([0.75, 0.30, 0.35], [0.05, 0.04, 0.06], (3000, 3)), 0, 1).astype(np.float32)
    out = comp.lab_statistics_transfer(source, reference)
    got, want = comp.rgb_to_lab(out), comp.rgb_to_lab(reference)
    assert np.allclose(got.mean(0), want.mean(0), atol=0.5)
    assert np.allclose(got.std(0), want.std(0), atol=0.5)
    # the map fitted on source applies to other pixels: source's own mean goes to reference's mean
    mean_pixel = comp.lab_to_rgb(comp.rgb_to_lab(source).mean(0, keepdims=True))
    moved = comp.rgb_to_lab(comp.lab_statistics_transfer(source, reference, mean_pixel))[0]
    assert np.allclose(moved, want.mean(0), atol=0.5)
    # and it is not the identity (the test can fail)
    assert np.abs(comp.rgb_to_lab(source).mean(0) - want.mean(0)).max() > 10


def test_lab_histogram_transfer_matches_distribution():
    rng = np.random.default_rng(1)
    source = rng.uniform(0.1, 0.5, (5000, 3)).astype(np.float32)
    reference = np.clip(rng.normal([0.7, 0.4, 0.2], 0.05, (5000, 3)), 0, 1).astype(np.float32)
    got, want = comp.rgb_to_lab(comp.lab_histogram_transfer(source, reference)), comp.rgb_to_lab(reference)
    for c in range(3):
        qs = [0.1, 0.5, 0.9]
        assert np.allclose(np.quantile(got[:, c], qs), np.quantile(want[:, c], qs), atol=1.0)


def test_recolor_inside_mask_only_and_bald_reference_keeps_colour():
    rng = np.random.default_rng(2)
    image = rng.uniform(0.2, 0.4, (32, 32, 3)).astype(np.float32)
    reference = rng.uniform(0.6, 0.9, (32, 32, 3)).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    out = comp.recolor(image, mask, reference, np.ones((32, 32), bool), "lab")
    assert np.array_equal(out[~mask], image[~mask])
    assert np.allclose(comp.rgb_to_lab(out[mask]).mean(0), comp.rgb_to_lab(reference.reshape(-1, 3)).mean(0),
                       atol=0.5)
    bald = comp.recolor(image, mask, reference, np.zeros((32, 32), bool), "lab")
    assert np.array_equal(bald, image)


# ------------------------------------------------------------------------------------------------- alignment

def test_alignment_recovers_a_known_similarity(portraits):
    face = portraits[5]
    ann = face.info["harness.annotations"]
    angle, scale, shift = math.radians(6.0), 0.9, (10.0, -6.0)
    known = np.array([[scale * math.cos(angle), -scale * math.sin(angle), shift[0]],
                      [scale * math.sin(angle), scale * math.cos(angle), shift[1]]])
    labels = cv2.warpAffine(ann.labels, known, (SIZE, SIZE), flags=cv2.INTER_NEAREST)
    landmarks = ann.landmarks @ known[:, :2].T + known[:, 2]
    moved = Annotations(labels=labels, landmarks=landmarks.astype(np.float32))
    matrix, how = comp.estimate_alignment(moved, ann)
    assert how == "landmarks"
    assert np.allclose(matrix, known, atol=1e-3)
    # without landmarks: region centroids of the label maps (pixel-quantised, so a looser tolerance)
    matrix, how = comp.estimate_alignment(Annotations(labels=labels), Annotations(labels=ann.labels))
    assert how == "label centroids"
    assert np.allclose(matrix[:, :2], known[:, :2], atol=0.02)
    assert np.allclose(matrix[:, 2], known[:, 2], atol=3.0)


# ------------------------------------------------------------------------------------------------- composite

def test_composite_output_size_mode_and_stage_timings(portraits, triplets):
    face, shape, color = (portraits[i] for i in triplets[0])
    for params in (comp.CompositeParams(),
                   comp.CompositeParams(blend="poisson", recolor="histogram", inpaint="ns"),
                   comp.CompositeParams(layered_inpaint=False, headwear=False, protect_features=False)):
        with recording() as times:
            out = comp.Composite(params).transfer(face, shape, color)
        assert out.mode == "RGB" and out.size == face.size
        assert set(times) == {"align", "recolor", "inpaint", "blend"}
        assert not np.array_equal(np.asarray(out), np.asarray(face))


def test_composite_params_are_frozen_and_coerced():
    params = make_params(comp.CompositeParams, {"blend": "poisson", "feather_px": "2.5", "headwear": "false"})
    assert params.blend == "poisson" and params.feather_px == 2.5 and params.headwear is False
    with pytest.raises(ValueError):
        make_params(comp.CompositeParams, {"blend": "laplacian"})
    with pytest.raises(ValueError, match="inpaint"):
        comp.CompositeParams(inpaint="fast")
    with pytest.raises(ValueError, match="feather_px"):
        comp.CompositeParams(feather_px=-1.0)
    with pytest.raises(AttributeError):
        params.blend = "feather"


def test_composite_needs_labels(portraits):
    plain = Image.fromarray(np.asarray(portraits[1]))
    with pytest.raises(ValueError, match="shape image has no label map"):
        comp.Composite().transfer(portraits[0], plain, portraits[2])


def test_composite_reconstruction_stays_close_to_the_face(portraits):
    for face in portraits[:4]:
        out = comp.Composite().transfer(face, face, face)
        assert _psnr(out, face) > 30.0


@pytest.mark.parametrize("task", ["shape", "full"])
def test_composite_beats_identity_against_ground_truth(task, specs, portraits, triplets):
    method = comp.Composite()
    psnr_comp, psnr_id, colour_comp, colour_id = [], [], [], []
    for triplet in triplets:
        f, s, c = ROLES[task](*triplet)
        gt, gt_labels = _ground_truth(specs, f, s, c)
        out = method.transfer(portraits[f], portraits[s], portraits[c])
        psnr_comp.append(_psnr(out, gt))
        psnr_id.append(_psnr(portraits[f], gt))
        hair = gt_labels == HAIR
        if hair.sum() >= 100:
            want = _mean_lab(gt, hair)
            colour_comp.append(np.linalg.norm(_mean_lab(out, hair) - want))
            colour_id.append(np.linalg.norm(_mean_lab(portraits[f], hair) - want))
    assert len(colour_comp) >= 4
    assert np.mean(psnr_comp) > np.mean(psnr_id) + 2.0, (psnr_comp, psnr_id)
    assert np.mean(colour_comp) < np.mean(colour_id), (colour_comp, colour_id)


def test_composite_without_landmarks_still_beats_identity(specs, triplets):
    shots = {i: _portrait(specs[i], landmarks=False) for t in triplets[:4] for i in t}
    gains = []
    for f, s, c in triplets[:4]:
        gt, _ = _ground_truth(specs, f, s, c)
        out = comp.Composite().transfer(shots[f], shots[s], shots[c])
        gains.append(_psnr(out, gt) - _psnr(shots[f], gt))
    assert np.mean(gains) > 2.0, gains


def test_composite_with_bald_color_keeps_shapes_colour(portraits, triplets):
    face, shape, color = (portraits[i] for i in triplets[1])
    ann = color.info["harness.annotations"]
    bald_labels = np.where(ann.labels == HAIR, SKIN, ann.labels).astype(np.uint8)
    bald = attach(color.copy(), Annotations(labels=bald_labels))
    kept = np.asarray(comp.Composite().transfer(face, shape, bald), np.int16)
    unrecoloured = np.asarray(comp.Composite(comp.CompositeParams(recolor="none")).transfer(face, shape, color),
                              np.int16)
    recoloured = np.asarray(comp.Composite().transfer(face, shape, color), np.int16)
    assert np.array_equal(kept, unrecoloured)
    assert np.abs(recoloured - unrecoloured).mean() > 1.0
