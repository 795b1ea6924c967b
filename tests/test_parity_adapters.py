"""Parity adapters follow spec.json, not case names: renamed/reordered cases, held-out-style extra cases of an op
already covered (other batch, size, factor, output names), and :func:`harness.parity.case_op` itself."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import PARITY, load_fixture

from harness import plugins
from harness.parity import Fixture, Op, call_arg, calls, case_op, check

# fixtures whose renamed copies run in under ~3 s each on 2 cores. clip_vitb32, e4e, sean and shape_adaptor
# (5-8 s each) are left out to keep CI short: their adapters pick the op through the same case_op (tested below),
# and their own test modules run the fixtures as stored.
RENAMED = ["hairfast_ops", "barbershop_ops", "lpips_vgg", "stylegan2"]
RENAMED_SLOW = ["stylegan2_1024", "cyclegan_resnet", "ffhq_align"]


def _renamed_copy(name: str, tmp_path: Path, seed: int = 0) -> Fixture:
    """The fixture copied to ``tmp_path`` with its cases renamed ``case_<i>`` and shuffled."""
    source = PARITY / name
    if not (source / "spec.json").is_file():
        pytest.skip(f"parity fixture {source} not available")
    spec = json.loads((source / "spec.json").read_text())
    cases = spec["cases"]
    for i, case in enumerate(cases):
        case["name"] = f"case_{i}"
    random.Random(seed).shuffle(cases)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    shutil.copyfile(source / "data.npz", tmp_path / "data.npz")
    return Fixture.load(tmp_path)


def _assert_all_pass(fixture: Fixture) -> None:
    results = list(check(fixture, plugins.parity_adapters()[fixture.name]))
    assert len(results) == len(fixture.cases)
    assert all(r.ok for r in results), "\n".join(r.line() for r in results)


@pytest.mark.parametrize("name", RENAMED)
def test_renamed_and_shuffled_cases_still_pass(name, tmp_path):
    _assert_all_pass(_renamed_copy(name, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", RENAMED_SLOW)
def test_renamed_cases_slow(name, tmp_path):
    if name == "ffhq_align":
        pytest.importorskip("dlib")
    _assert_all_pass(_renamed_copy(name, tmp_path))


def test_swapped_known_names_do_not_mislead():
    """Cases carrying another case's (known) name: the spec entry decides."""
    fixture = load_fixture("hairfast_ops")
    names = [c["name"] for c in fixture.cases]
    spec = json.loads(json.dumps(fixture.spec))
    for case, name in zip(spec["cases"], names[1:] + names[:1], strict=True):
        case["name"] = name
    _assert_all_pass(Fixture(fixture.path, spec, fixture.data))


# ---------------------------------------------------------------- held-out-style hairfast_ops cases

def _keys_taps(factor: int, a: float = -0.5) -> np.ndarray:
    """HairFast utils/bicubic.py: 4f taps W((i - floor(2f) + 0.5) / f) of the Keys cubic (a = -0.5), sum 1."""
    t = np.abs((np.arange(4 * factor) - np.floor(2 * factor) + 0.5) / factor)
    w = np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                 np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))
    return w / w.sum()


def _bicubic_downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """BicubicDownSample(factor) in float64: reflect-pad (floor(3f/2), rest of 3f), correlate at stride f,
    height then width."""
    taps = _keys_taps(factor)
    before = (3 * factor) // 2
    pad = (before, 3 * factor - before)

    def along(v: np.ndarray, axis: int) -> np.ndarray:
        v = np.pad(v, [pad if i == axis else (0, 0) for i in range(v.ndim)], mode="reflect")
        n = (v.shape[axis] - len(taps)) // factor + 1
        windows = np.stack([np.take(v, np.arange(j * factor, j * factor + len(taps)), axis=axis)
                            for j in range(n)], axis=axis)  # [..., n, taps, ...]
        return np.tensordot(np.moveaxis(windows, axis + 1, -1), taps, axes=([-1], [0]))

    return along(along(x.astype(np.float64), 2), 3)


def _dilate_erode(mask: np.ndarray, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """DilateErosion(rounds).mask: plus-shaped 3x3 sums with zero padding; dilate sum>0, erode sum==5."""
    def plus_sum(m: np.ndarray) -> np.ndarray:
        p = np.pad(m, ((0, 0), (0, 0), (1, 1), (1, 1)))
        return p[..., 1:-1, 1:-1] + p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]

    dilated, eroded = mask.astype(np.float64), mask.astype(np.float64)
    for _ in range(rounds):
        dilated = (plus_sum(dilated) > 0).astype(np.float64)
        eroded = (plus_sum(eroded) == 5).astype(np.float64)
    return dilated, eroded


def test_held_out_style_hairfast_ops_cases():
    """New cases of ops already covered, on other batches, sizes, factors and output names."""
    fixture = load_fixture("hairfast_ops")
    rng = np.random.default_rng(11)
    data = dict(fixture.data)
    spec = json.loads(json.dumps(fixture.spec))
    img256 = rng.integers(0, 256, (2, 3, 256, 256), dtype=np.uint8)
    img512 = rng.integers(0, 256, (2, 3, 512, 512), dtype=np.uint8)
    masks = (rng.random((3, 1, 64, 64)) < 0.4).astype(np.uint8)
    data.update({"in/ho_img256": img256, "in/ho_img512": img512, "in/ho_masks": masks,
                 "out/ho_im_128": _bicubic_downsample(img256 / 255.0, 2).astype(np.float32),
                 "out/ho_im_64": _bicubic_downsample(img256 / 255.0, 4).astype(np.float32),
                 "out/ho_b512_128": _bicubic_downsample(img512 / 255.0, 4).astype(np.float32),
                 "const/bicubic_k_factor8": _keys_taps(8).astype(np.float32)})
    dilated, eroded = _dilate_erode(masks, 5)  # the constructor's DilateErosion(dilate_erosion=5)
    data.update({"out/ho_dilate": dilated.astype(np.float32), "out/ho_erode": eroded.astype(np.float32)})
    spec["cases"] = [
        {"name": "held_out_bicubic_b2_256",
         "call": "x = img_u8/255 (float32 [2,3,256,256]); im_128 = BicubicDownSample(factor=2)(x); "
                 "im_64 = BicubicDownSample(factor=4)(x); const/bicubic_k_factor8 are the taps for factor 8",
         "inputs": {"img_u8": "in/ho_img256"},
         "outputs": {"im_128": "out/ho_im_128", "im_64": "out/ho_im_64", "taps": "const/bicubic_k_factor8"},
         "tol": 1e-5},
        {"name": "held_out_bicubic_b2_512",
         "call": "im_128 = BicubicDownSample(factor=4)(x), x = frames/255 [2,3,512,512]",
         "inputs": {"frames (uint8)": "in/ho_img512"}, "outputs": {"im_128": "out/ho_b512_128"}, "tol": 1e-5},
        {"name": "held_out_dilate_b3_64",
         "call": "dilated, eroded = DilateErosion(dilate_erosion=5).mask(m.float()) on [3,1,64,64] masks",
         "inputs": {"m (uint8 0/1)": "in/ho_masks"},
         "outputs": {"dilated": "out/ho_dilate", "eroded": "out/ho_erode"}, "tol": 0},
    ]
    _assert_all_pass(Fixture(fixture.path, spec, data))


# ---------------------------------------------------------------- the dispatch helper

OPS = {
    "bicubic": Op(call=(r"BicubicDownSample",)),
    "dilate": Op(call=(r"DilateErosion",)),
    "align": Op(call=(r"DilateErosion", r"F_align")),
    "gram": Op(inputs=("feat_x", "feat_xhat"), names=("gram_masked", "gram_nomask")),
}


def test_case_op_follows_the_spec_entry():
    assert case_op({"name": "c0", "call": "y = BicubicDownSample(factor=4)(x)"}, OPS) == "bicubic"
    # the most specific op wins, whatever the name says
    align = {"name": "dilate", "call": "d, e = DilateErosion(5).mask(m); F_align = F_2 + low * F"}
    assert case_op(align, OPS) == "align"
    assert case_op({"name": "c1", "call": "same as before", "inputs": {"feat_x": "a", "feat_xhat (x4)": "b"}},
                   OPS) == "gram"
    # a known name: the shortcut when nothing else tells
    assert case_op({"name": "gram_nomask", "call": ""}, OPS) == "gram"


def test_case_op_unknown_and_ambiguous_cases_raise_clearly():
    with pytest.raises(KeyError, match=r"case 'mystery'.*none of the ops \['align', 'bicubic', 'dilate', 'gram'\]"):
        case_op({"name": "mystery", "call": "y = SomethingElse(x)", "inputs": {"x": "in/x"}}, OPS)
    both = {"a": Op(call=(r"foo",)), "b": Op(call=(r"bar",))}
    with pytest.raises(KeyError, match=r"case 'c2' is ambiguous.*\['a', 'b'\]"):
        case_op({"name": "c2", "call": "foo(bar(x))"}, both)


def test_calls_and_their_arguments():
    case = {"call": "x = img_u8/255; im_512 = BicubicDownSample(factor=2)(x); "
                    "im_128 = m.BicubicDownSample(factor=4, padding='reflect')(x); d, e = DilateErosion(5).mask(x); "
                    "opt = ClampOptimizer(torch.optim.Adam, [p], lr=0.2); "
                    "F, skip = generator([w], input_is_latent=True, start_layer=0, end_layer=3)"}
    found = calls(case, "BicubicDownSample")
    assert [(c.targets, c.arg("factor")) for c in found] == [(("im_512",), "2"), (("im_128",), "4")]
    assert found[1].arg("padding") == "'reflect'"
    assert call_arg(case, "DilateErosion", "dilate_erosion", 0) == "5"
    assert call_arg(case, "ClampOptimizer", "lr") == "0.2"
    assert call_arg(case, "ClampOptimizer", "lr", 5) == "0.2"
    assert call_arg(case, "ClampOptimizer", "params", 1) == "[p]"
    (gen,) = calls(case, "generator")
    assert gen.targets == ("F", "skip") and gen.arg("end_layer") == "3" and gen.arg("layer_in") is None
    assert calls(case, "Missing") == [] and call_arg(case, "Missing", "x") is None
