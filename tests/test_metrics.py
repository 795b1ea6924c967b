"""harness.metrics: known answers, parity with clean-fid, statuses, and compute() on a hand-made run."""

from __future__ import annotations

import csv
import json
import math
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.method import Checkpoint
from harness.metrics import fid as fidmod
from harness.metrics import quality, stats
from harness.metrics.evaluate import compute, selected_metrics
from harness.protocol import DatasetSpec, Protocol
from harness.store import METRICS_COLUMNS, Record, RunStore, Triplet, write_csv
from harness.weights import MissingWeights, WeightStore

HAIR = 13
SKIN = 1

# Sharma, Wu, Dalal (2005), Table 1: L1 a1 b1 L2 a2 b2 dE00 (all 34 published pairs).
SHARMA = [
    (50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425),
    (50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615),
    (50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412),
    (50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669),
    (50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461),
    (50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065),
    (50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492),
    (50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977),
    (50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030),
    (50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000),
    (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
    (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
    (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
    (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
    (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
    (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
    (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
    (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
    (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
    (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082),
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Own cache dir; any download attempt fails the test."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HARNESS_WEIGHTS", raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError(f"attempted download: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", no_download)


def weight_store(tmp_path: Path, fill: bool = False) -> WeightStore:
    return WeightStore(tmp_path / "weights", fill=fill, env={"HARNESS_CACHE": str(tmp_path / "cache")})


class TinyFeatures(torch.nn.Module):
    """A deterministic feature network in clean-fid's custom_feat_extractor contract (0..255 input)."""

    def __init__(self, dims: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(3 * 4 * 4, dims, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.adaptive_avg_pool2d(x / 255.0, 4).flatten(1) @ self.proj)


class FakeInceptionLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(48, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.adaptive_avg_pool2d(x, 4).flatten(1)).view(x.shape[0], 2048, 1, 1)


class FakeInception(torch.nn.Module):
    """Same TorchScript interface as inception-2015-12-05.pt (``.layers``, ``forward(x, return_features)``)."""

    def __init__(self):
        super().__init__()
        self.layers = FakeInceptionLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


def write_fake_inception(directory: Path) -> Path:
    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "inception-2015-12-05.pt"
    torch.jit.script(FakeInception()).save(str(path))
    return path


def textured(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.uniform(40, 215, size=(size // 8, size // 8, 3))
    img = np.kron(coarse, np.ones((8, 8, 1))) + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------------------------------------- quality


def test_psnr_identical_is_capped_and_known_noise_level():
    rng = np.random.default_rng(0)
    a = textured(rng, 32)
    assert quality.psnr(a, a) == quality.PSNR_CAP_DB == 100.0
    b = np.full((32, 32, 3), 128, np.uint8)
    noisy = b.astype(np.int16) + np.where(rng.random((32, 32, 3)) < 0.5, -10, 10)
    expected = 10 * math.log10(255**2 / 100.0)  # MSE exactly 100
    assert quality.psnr(b, noisy.astype(np.uint8)) == pytest.approx(expected, abs=1e-9)
    assert quality.psnr(b / 255.0, noisy / 255.0, data_range=1.0) == pytest.approx(expected, abs=1e-9)


def test_masked_psnr_only_counts_the_mask():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a.copy()
    b[:8] += 20  # differences only in the top half
    top = np.zeros((16, 16), bool)
    top[:8] = True
    assert quality.masked_psnr(a, b, ~top) == 100.0
    assert quality.masked_psnr(a, b, top) == pytest.approx(10 * math.log10(255**2 / 400.0))
    assert math.isnan(quality.masked_psnr(a, b, np.zeros((16, 16), bool)))


def test_ssim_identity_and_degradation():
    rng = np.random.default_rng(1)
    a = textured(rng, 48)
    assert quality.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    noisy = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    s = quality.ssim(a, noisy)
    assert 0.0 < s < 0.95
    assert quality.ssim(noisy, a) == pytest.approx(s, abs=1e-12)


def test_ciede2000_sharma_pairs():
    data = np.array(SHARMA)
    got = quality.ciede2000(data[:, 0:3], data[:, 3:6])
    np.testing.assert_allclose(got, data[:, 6], atol=1e-4)
    # symmetric
    np.testing.assert_allclose(quality.ciede2000(data[:, 3:6], data[:, 0:3]), got, atol=1e-9)


def test_hair_color_de():
    rng = np.random.default_rng(2)
    a = textured(rng, 32)
    mask = np.zeros((32, 32), bool)
    mask[:10] = True
    assert quality.hair_color_de(a, a, mask) == pytest.approx(0.0, abs=1e-9)
    b = a.copy()
    b[mask] = [200, 40, 40]
    expected = float(quality.ciede2000(quality.mean_lab(a, mask), quality.mean_lab(b, mask)))
    assert quality.hair_color_de(a, b, mask) == pytest.approx(expected) and expected > 5
    assert math.isnan(quality.hair_color_de(a, b, np.zeros((32, 32), bool)))  # bald ground truth


def test_outside_hair_mask_dilates_union():
    m1 = np.zeros((100, 100), bool)
    m1[10, 10] = True
    m2 = np.zeros((100, 100), bool)
    m2[80, 80] = True
    out = quality.outside_hair_mask(m1, m2, size=100)  # radius 2
    assert not out[10, 12] and out[10, 13] and not out[82, 80] and out[50, 50]


# ---------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_point_estimate_and_is_reproducible():
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 2.0, size=60)
    low, high = stats.bootstrap_ci(x, np.mean, resamples=500, seed=7)
    assert low < x.mean() < high
    assert (low, high) == stats.bootstrap_ci(x, np.mean, resamples=500, seed=7)
    assert high - low == pytest.approx(2 * 1.96 * x.std() / math.sqrt(60), rel=0.25)
    lo_m, hi_m = stats.bootstrap_ci(x, np.median, resamples=500, seed=7)
    assert lo_m < np.median(x) < hi_m
    assert stats.bootstrap_ci([4.0], np.mean, 100) == (4.0, 4.0)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([], np.mean, 100))


# ---------------------------------------------------------------------------------------------- FID / KID


def test_fid_matches_clean_fid_formula_and_self_is_zero():
    from cleanfid.fid import fid_from_feats

    rng = np.random.default_rng(4)
    a = rng.normal(size=(40, 12))
    b = rng.normal(size=(55, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    assert fidmod.fid(a, b) == pytest.approx(fid_from_feats(a, b), rel=1e-8)
    assert fidmod.fid(b, a) == pytest.approx(fid_from_feats(b, a), rel=1e-8)
    # the reference side with more samples than dims (eigendecomposition factor) and fewer (data factor)
    c = rng.normal(size=(8, 12))
    assert fidmod.fid(c, a) == pytest.approx(fid_from_feats(c, a), rel=1e-6)
    assert abs(fidmod.fid(a, a)) < 1e-9
    assert abs(fidmod.fid(c, c)) < 1e-9


def test_fid_bootstrap_replicates_are_fids_of_resamples():
    rng = np.random.default_rng(5)
    gen, ref = rng.normal(size=(20, 6)), rng.normal(size=(30, 6)) + 0.5
    fit = fidmod.gaussian_fit(ref)
    reps = fidmod.fid_bootstrap(gen, fit, resamples=5, seed=11)
    draw = np.random.default_rng(11)
    for rep in reps:
        idx = draw.integers(0, 20, size=20)
        assert rep == pytest.approx(fidmod.fid(gen[idx], ref), rel=1e-7)


def test_kid_matches_clean_fid_kernel_distance():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(6)
    f1, f2 = rng.normal(size=(30, 16)), rng.normal(size=(25, 16)) + 0.2
    np.random.seed(123)
    expected = kernel_distance(f1, f2)
    assert fidmod.kernel_inception_distance(f1, f2, seed=123) == pytest.approx(expected, rel=1e-9)
    same = rng.normal(size=(30, 16))  # same distribution as f1: KID ~ 0, far below a shifted set's
    shifted = fidmod.kernel_inception_distance(f1, f1 + 1.0)
    assert abs(fidmod.kernel_inception_distance(f1, same)) < 0.05 * shifted
    reps = fidmod.kid_bootstrap(f1, f2, resamples=50, seed=0)
    assert np.isfinite(reps).all() and reps.std() > 0


def _image_folder(directory: Path, n: int, seed: int, size: int = 32) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = directory / f"{i:03d}.png"
        save(path, textured(rng, size))
        paths.append(path)
    return paths


def test_our_fid_and_kid_equal_clean_fid_on_folders(tmp_path):
    from cleanfid.fid import compute_fid, get_folder_features, kernel_distance

    real = _image_folder(tmp_path / "real", 14, seed=10)
    gen = _image_folder(tmp_path / "gen", 12, seed=11)
    net = TinyFeatures().eval()
    expected = compute_fid(str(tmp_path / "gen"), str(tmp_path / "real"), mode="clean", num_workers=0,
                           batch_size=5, device=torch.device("cpu"), custom_feat_extractor=net, verbose=False,
                           use_dataparallel=False)
    extractor = fidmod.Extractor("tiny", net, None, "tiny")
    g = fidmod.image_features(gen, extractor, eval_size=32, device="cpu")
    r = fidmod.image_features(real, extractor, eval_size=32, device="cpu")
    assert g.shape == (12, 8)
    assert fidmod.fid(g, r) == pytest.approx(expected, rel=1e-6)

    kw = dict(num_workers=0, batch_size=5, device=torch.device("cpu"), mode="clean", verbose=False)
    g_cf = get_folder_features(str(tmp_path / "gen"), net, **kw)
    r_cf = get_folder_features(str(tmp_path / "real"), net, **kw)
    np.testing.assert_array_equal(g, g_cf)
    np.random.seed(0)
    assert fidmod.kernel_inception_distance(r, g, seed=0) == pytest.approx(kernel_distance(r_cf, g_cf), rel=1e-6)


def test_inception_loads_local_file_like_clean_fid(tmp_path):
    from cleanfid.downloads_helper import inception_url
    from cleanfid.inception_torchscript import InceptionV3W

    assert inception_url == fidmod.INCEPTION_URL
    weights = weight_store(tmp_path)
    with pytest.raises(fidmod.Unavailable, match="inception-2015-12-05.pt.*--weights-dir"):
        fidmod.inception_extractor(weights, "cpu")
    path = write_fake_inception(tmp_path / "weights")
    ours = fidmod.inception_extractor(weights, "cpu")
    theirs = InceptionV3W(str(path.parent), download=False, resize_inside=False).eval()
    x = torch.rand(2, 3, 299, 299) * 255
    with torch.no_grad():
        torch.testing.assert_close(ours.model(x), theirs(x), rtol=0, atol=0)
    assert ours.fingerprint.startswith("sha256:")


def test_reference_features_are_cached_but_not_for_filled_weights(tmp_path):
    real = _image_folder(tmp_path / "real", 6, seed=12)
    calls = []
    net = TinyFeatures()

    def counting(batch):
        calls.append(len(batch))
        return net(batch)

    extractor = fidmod.Extractor("tiny", counting, None, "v1")
    first = fidmod.reference_features(real, "hash1", extractor, 32, "cpu")
    n_calls = len(calls)
    again = fidmod.reference_features(real, "hash1", extractor, 32, "cpu")
    assert len(calls) == n_calls and np.array_equal(first, again)
    assert list((tmp_path / "cache" / "features").glob("tiny-32-*.npz"))
    fidmod.reference_features(real, "hash2", extractor, 32, "cpu")  # other dataset: recomputed
    assert len(calls) > n_calls
    filled = fidmod.Extractor("tiny", counting, None, "v1", cacheable=False)
    before = len(calls)
    fidmod.reference_features(real, "hash1", filled, 32, "cpu")
    assert len(calls) > before


# ---------------------------------------------------------------------------------------------- identity


def test_identity_descriptor_on_a_real_portrait():
    from skimage.data import astronaut

    from harness.metrics.identity import FaceDescriber, detection_upsample, similarity

    assert [detection_upsample(s) for s in (1024, 512, 256, 128)] == [0, 0, 1, 2]
    face = np.asarray(Image.fromarray(astronaut()).resize((256, 256), Image.Resampling.BICUBIC))
    describer = FaceDescriber(256, use_cache=False)
    d = describer.describe(face)
    assert d is not None and d.shape == (128,)
    assert similarity(d, d) == 1.0
    shifted = np.clip(face.astype(int) + 8, 0, 255).astype(np.uint8)
    assert similarity(describer.describe(shifted), d) > 0.8
    assert describer.describe(np.full((256, 256, 3), 127, np.uint8)) is None


# ---------------------------------------------------------------------------------------------- compute()

SIZE = 48
TRIPLETS = [Triplet("t0", "i0", "i1", "i2"), Triplet("t1", "i1", "i2", "i3"), Triplet("t2", "i2", "i3", "i4"),
            Triplet("t3", "i3", "i4", "i5")]
HAIR_COLOURS = [(30, 20, 10), (200, 170, 90), (120, 40, 30), (60, 60, 60), (220, 220, 200), (150, 80, 20)]


def _portrait(rng, colour) -> tuple[np.ndarray, np.ndarray]:
    img = textured(rng, SIZE)
    labels = np.full((SIZE, SIZE), SKIN, np.uint8)
    labels[: SIZE // 3] = HAIR
    hair = np.clip(np.array(colour) + rng.normal(0, 4, (SIZE // 3, SIZE, 3)), 0, 255)
    img[: SIZE // 3] = hair.astype(np.uint8)
    return img, labels


def make_run(root: Path, tasks=("full", "rec"), metrics=("all",)) -> RunStore:
    rng = np.random.default_rng(20)
    store = RunStore(root)
    protocol = Protocol(name="tiny", dataset=DatasetSpec(kind="synthetic", n_images=6, size=SIZE),
                        n_triplets=len(TRIPLETS), tasks=tuple(tasks), eval_size=SIZE, metrics=tuple(metrics),
                        bootstrap=40)
    store.write_manifest({"protocol": protocol.to_dict()})
    store.write_triplets(TRIPLETS)
    images, labels = {}, {}
    rows = []
    for i, colour in enumerate(HAIR_COLOURS):
        iid = f"i{i}"
        images[iid], labels[iid] = _portrait(rng, colour)
        save(store.input_path(iid), images[iid])
        store.labels_path(iid).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels[iid]).save(store.labels_path(iid))
        rows.append((iid, "synthetic", "", f"inputs/{iid}.png", f"labels/{iid}.png", ""))
    write_csv(root / "images.csv", ("id", "source", "sha256", "input", "labels", "error"), rows)

    def truth(task: str, t: Triplet) -> np.ndarray:
        gt = images[t.face].copy()
        if task == "full":  # the colour image's hair colour on the face image's hair region
            gt[: SIZE // 3] = images[t.color][: SIZE // 3]
        return gt

    outputs = {
        "oracle": lambda task, t: truth(task, t),
        "identity": lambda task, t: images[t.face],
        "noisy": lambda task, t: np.clip(truth(task, t) + np.random.default_rng(int(t.id[1:])).normal(
            0, 6, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8),
    }
    for task in tasks:
        for t in TRIPLETS:
            save(store.ground_truth_path(task, t.id), truth(task, t))
            lab_path = store.ground_truth_path(task, t.id, labels=True)
            lab_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels[t.face]).save(lab_path)
            for k, (method, make) in enumerate(outputs.items()):
                out = store.output_path(method, task, t.id)
                save(out, make(task, t))
                store.append_record(Record(method, task, t.id, "ok", time_s=0.1 * (k + 1) + 0.01 * int(t.id[1:]),
                                           peak_mem_bytes=(k + 1) * 2**20, mem_kind="rss_peak",
                                           output=str(out.relative_to(root))))
            # "broken": t0 failed, t1 recorded ok but its file is missing, t2/t3 fine
            if t.id == "t0":
                store.append_record(Record("broken", task, t.id, "failed", error="boom"))
            else:
                out = store.output_path("broken", task, t.id)
                if t.id != "t1":
                    save(out, truth(task, t))
                store.append_record(Record("broken", task, t.id, "ok", time_s=1.0,
                                           output=str(out.relative_to(root))))
    return store


def fake_lpips(device, weights):
    def distance(a: torch.Tensor, b: torch.Tensor):
        return (a - b).abs().mean(dim=(1, 2, 3)).numpy()

    return distance


def fake_clip(device, weights):
    return TinyFeatures(dims=8, seed=1).eval()


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_compute_end_to_end(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    df = compute(run, weight_store(tmp_path), progress=False,
                 extractors={"lpips_vgg": fake_lpips, "clip_vitb32": fake_clip})
    header, rows = read_rows(run / "metrics.csv")
    assert header == list(METRICS_COLUMNS) == list(df.columns)
    assert len(rows) == len(df)
    get = {(r["method"], r["task"], r["metric"]): r for r in rows}

    def value(method, task, metric):
        row = get[(method, task, metric)]
        assert row["status"].startswith("ok"), row
        return float(row["value"])

    # the oracle is perfect, the identity baseline (face unchanged) worst against the ground truth
    assert value("oracle", "full", "psnr_gt") == 100.0
    assert value("oracle", "full", "psnr_gt") > value("noisy", "full", "psnr_gt") > value("identity", "full",
                                                                                          "psnr_gt")
    assert value("oracle", "full", "ssim_gt") == pytest.approx(1.0)
    assert value("identity", "full", "ssim_gt") < value("noisy", "full", "ssim_gt") < 1.0
    assert value("oracle", "full", "hair_color_de") == pytest.approx(0.0, abs=1e-9)
    assert value("identity", "full", "hair_color_de") > 5
    assert value("oracle", "full", "lpips_gt") == 0.0 < value("identity", "full", "lpips_gt")
    # outside the hair both keep the face image exactly
    assert value("oracle", "full", "psnr_outside_hair") == value("identity", "full", "psnr_outside_hair") == 100
    assert value("noisy", "full", "psnr_outside_hair") < 60
    # rec metrics only for the rec task
    assert value("identity", "rec", "psnr_rec") == 100.0 and ("identity", "full", "psnr_rec") not in get
    assert value("noisy", "rec", "ssim_rec") < 1.0
    assert value("oracle", "rec", "lpips_rec") == 0.0
    # intervals bracket per-item means
    row = get[("noisy", "full", "psnr_gt")]
    assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"]) and row["n"] == "4"
    # time, memory, failures
    assert value("oracle", "full", "time_median_s") == pytest.approx(0.115)
    assert value("noisy", "full", "peak_mem_mb") == 3.0
    assert get[("noisy", "full", "peak_mem_mb")]["status"] == "ok (rss_peak)"
    assert value("broken", "full", "failures") == 2 and get[("broken", "full", "failures")]["n"] == "4"
    assert value("oracle", "full", "failures") == 0
    assert get[("broken", "full", "psnr_gt")]["n"] == "2"
    # no Inception file: FID/KID skipped with the file name and how to enable
    for metric in ("fid", "kid"):
        status = get[("oracle", "full", metric)]["status"]
        assert status.startswith("skipped: needs inception-2015-12-05.pt (from https://") and "--weights-dir" in status
        assert get[("oracle", "full", metric)]["value"] == ""
    # FID_CLIP through the (fake) plugin extractor; tiny n is flagged
    clip = get[("oracle", "full", "fid_clip")]
    assert clip["status"].startswith("ok (n=4 < 8 feature dims") and clip["n"] == "4"
    # rec outputs of the identity method are the face images i0..i3: FID_CLIP of them against all six inputs
    ex = fidmod.Extractor("x", fake_clip("cpu", None), None, "x")
    faces = [run / "inputs" / f"i{i}.png" for i in range(4)]
    real = [run / "inputs" / f"i{i}.png" for i in range(6)]
    direct = fidmod.fid(fidmod.image_features(faces, ex, SIZE, "cpu"), fidmod.image_features(real, ex, SIZE, "cpu"))
    assert value("identity", "rec", "fid_clip") == pytest.approx(direct, rel=1e-6) and direct > 0
    # identity: synthetic blocks have no faces -> skipped with the reason
    assert get[("oracle", "full", "identity")]["status"].startswith("skipped: no face detected")

    item_header, items = read_rows(run / "per_item.csv")
    assert item_header == ["method", "task", "triplet", "metric", "value"]
    per = {(r["method"], r["task"], r["triplet"], r["metric"]): float(r["value"]) for r in items}
    assert per[("oracle", "full", "t2", "psnr_gt")] == 100.0
    assert ("broken", "full", "t0", "psnr_gt") not in per
    assert per[("noisy", "full", "t1", "time_s")] == pytest.approx(0.31)
    mean = np.mean([per[("noisy", "full", t.id, "psnr_gt")] for t in TRIPLETS])
    assert float(get[("noisy", "full", "psnr_gt")]["value"]) == pytest.approx(mean)


def test_compute_with_local_inception_and_missing_plugins(tmp_path):
    run = tmp_path / "run"
    make_run(run, tasks=("full",), metrics=("fid", "kid", "fid_clip", "lpips_gt", "psnr_gt"))
    write_fake_inception(tmp_path / "weights")

    def lpips_without_weights(device, weights):
        ckpt = Checkpoint("lpips_vgg_v0.1", "vgg.pth", "https://example.org/vgg.pth", "LPIPS heads")
        raise MissingWeights([ckpt], weights.search_dirs)

    compute(run, weight_store(tmp_path), progress=False, extractors={"lpips_vgg": lpips_without_weights})
    _, rows = read_rows(run / "metrics.csv")
    get = {(r["method"], r["task"], r["metric"]): r for r in rows}
    assert {r["metric"] for r in rows} == {"fid", "kid", "fid_clip", "lpips_gt", "psnr_gt"}
    for method in ("oracle", "identity", "noisy"):
        fid = get[(method, "full", "fid")]
        assert fid["status"].startswith("ok (n=4 < 2048 feature dims") and float(fid["value"]) > 0
        assert get[(method, "full", "kid")]["status"] == "ok"
    assert get[("broken", "full", "fid")]["n"] == "2"
    lp = get[("oracle", "full", "lpips_gt")]["status"]
    assert lp.startswith("skipped: the 'lpips_vgg' network needs weights") and "vgg.pth" in lp
    clip = get[("oracle", "full", "fid_clip")]["status"]
    assert clip.startswith("skipped: no plugin registers the 'clip_vitb32' feature extractor")
    assert list((tmp_path / "cache" / "features").glob("inception-48-*.npz"))


def test_selected_metrics():
    assert selected_metrics(("all",))[:3] == ("fid", "fid_clip", "kid")
    assert "time_s" not in selected_metrics(("all",))
    with pytest.warns(UserWarning, match="nonsense"):
        assert selected_metrics(("psnr_gt", "nonsense")) == ("psnr_gt",)


def test_manifest_protocol_round_trip(tmp_path):
    store = make_run(tmp_path / "run", tasks=("rec",), metrics=("psnr_rec",))
    data = json.loads((store.root / "manifest.json").read_text())
    assert data["protocol"]["eval_size"] == SIZE
