"""The cyclegan baseline: hair-domain classifier, trainer (files, exact resume, torchrun), method (composite/raw,
same class, unknown domains, missing files), official junyanz files, the shipped pairs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_harness
from PIL import Image

from harness import annotations, synthetic
from harness.annotations import HAIR
from harness.weights import WeightStore, filled_state_dict, load_state_dict_into
from methods.cyclegan import bundle as bundles
from methods.cyclegan.domains import classify, color_domain
from methods.cyclegan.method import CycleGAN, CycleGANParams, DomainError
from methods.cyclegan.train import ImagePool, TrainOptions
from methods.nets.cyclegan import (
    DiscriminatorConfig,
    GeneratorConfig,
    NLayerDiscriminator,
    ResnetGenerator,
    fill_recipe,
    generator_from_file,
    init_normal,
)

SIZE = 32


def portrait(seed: int, size: int = 128, **changes) -> tuple[Image.Image, np.ndarray]:
    """A synthetic portrait with hair colour (``color=name``) or family (``family=name``) replaced, no headwear."""
    spec = synthetic.sample_spec(np.random.default_rng([99, seed]))
    style = {**spec.hairstyle.__dict__, "headwear": "none"}
    if "family" in changes:
        style["family"] = changes["family"]
    spec = spec.__class__(**{**spec.__dict__, "hairstyle": spec.hairstyle.__class__(**style)})
    if "color" in changes:
        name = changes["color"]
        base = {**synthetic.NATURAL_HAIR, **synthetic.DYED_HAIR}[name]
        shadow, highlight = synthetic._shade_family(np.asarray(base), name in synthetic.DYED_HAIR)
        hc = synthetic.HairColor(name, base, shadow, highlight, base, 0.0)
        spec = spec.__class__(**{**spec.__dict__, "hair_color": hc})
    image, labels = synthetic.render(spec, size)
    return image, labels


def annotated(image: Image.Image, labels: np.ndarray, name: str = "x") -> Image.Image:
    return annotations.attach(image.copy(), annotations.Annotations(image_id=name, labels=labels))


# ---------------------------------------------------------------- networks

def test_discriminator_has_the_official_layout():
    d = NLayerDiscriminator()  # define_D('basic'): ndf 64, n_layers 3, instance norm
    shapes = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    assert shapes == {"model.0.weight": (64, 3, 4, 4), "model.0.bias": (64,), "model.2.weight": (128, 64, 4, 4),
                      "model.2.bias": (128,), "model.5.weight": (256, 128, 4, 4), "model.5.bias": (256,),
                      "model.8.weight": (512, 256, 4, 4), "model.8.bias": (512,), "model.11.weight": (1, 512, 4, 4),
                      "model.11.bias": (1,)}
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # 70x70 patches
    assert NLayerDiscriminator.config_from_state_dict(d.state_dict()) == DiscriminatorConfig()
    small = NLayerDiscriminator(DiscriminatorConfig(ndf=8, n_layers=2))
    assert NLayerDiscriminator.config_from_state_dict(small.state_dict()) == DiscriminatorConfig(ndf=8, n_layers=2)


def test_generator_config_is_read_from_the_file_shapes():
    assert GeneratorConfig.from_state_dict(ResnetGenerator().state_dict()) == GeneratorConfig()
    small = GeneratorConfig(ngf=8, n_blocks=3)
    assert GeneratorConfig.from_state_dict(ResnetGenerator(small).state_dict()) == small
    with pytest.raises(ValueError, match="ResnetGenerator"):
        GeneratorConfig.from_state_dict({"x": torch.zeros(1)})


def test_init_normal_is_the_official_initialisation():
    torch.manual_seed(0)
    g = init_normal(ResnetGenerator())
    weights = torch.cat([m.weight.detach().flatten() for m in g.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(float(weights.std()) - 0.02) < 5e-4 and abs(float(weights.mean())) < 1e-4
    assert all(float(m.bias.detach().abs().max()) == 0 for m in g.modules() if isinstance(m, torch.nn.Conv2d))


def test_image_pool_keeps_a_history():
    import random

    random.seed(0)
    pool = ImagePool(3)
    first = pool.query(torch.arange(3.0).view(3, 1, 1, 1))
    assert first.flatten().tolist() == [0.0, 1.0, 2.0] and len(pool.images) == 3  # filling: the new images
    seen = torch.cat([pool.query(torch.full((1, 1, 1, 1), 10.0 + i)) for i in range(40)]).flatten().tolist()
    assert any(v < 10 for v in seen) and any(v >= 10 for v in seen)  # old ones come back, new ones pass
    assert len(pool.images) == 3


def test_learning_rate_schedule_is_constant_then_linear():
    o = TrainOptions(iterations=10, decay_iterations=9, lr=1e-3)
    assert o.lr_at(0) == o.lr_at(10) == 1e-3
    assert o.lr_at(14) == pytest.approx(1e-3 * (1 - 4 / 10))
    assert o.lr_at(18) == pytest.approx(2e-4) and o.total_steps == 19  # the last step: 2 / (9 + 1)


# ---------------------------------------------------------------- domains

@pytest.mark.parametrize(("name", "domain"), [("black", "black"), ("brown", "brown"), ("blond", "blond"),
                                              ("ginger", "red"), ("red", "red"), ("grey", "grey"),
                                              ("white", "grey"), ("platinum", "blond"), ("blue", None)])
def test_colour_domains_of_synthetic_hair(name, domain):
    image, labels = portrait(1, color=name, family="long")
    found = classify(np.asarray(image), labels)
    assert found.color == domain, found
    assert found.style == "long"
    if domain is None:
        assert "no colour domain" in found.why


def test_style_domains_and_no_hair():
    for family, style in (("long", "long"), ("ponytail", "long"), ("short", "short"), ("buzz", "short")):
        image, labels = portrait(2, family=family)
        assert classify(np.asarray(image), labels).style == style, family
    image, labels = portrait(2, family="bald")
    bald = classify(np.asarray(image), labels)
    assert bald.color is None and bald.style is None and "bald" in bald.why
    assert color_domain((10.0, 0.0, 0.0)) == "black" and color_domain((60.0, -40.0, 10.0)) is None


# ---------------------------------------------------------------- trainer

def tiny_data(root: Path, n: int = 24, size: int = 64) -> Path:
    synthetic.generate(n, size, 5, root)
    return root


TRAIN = ["--size", str(SIZE), "--batch-size", "2", "--ngf", "4", "--n-blocks", "1", "--ndf", "4",
         "--n-layers", "2", "--min-images", "1", "--seed", "3", "--log-every", "2", "--quiet"]


def train(data: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_harness("train", "cyclegan", "--data", str(data), "--domains", "short,long", "--out", str(out),
                       *TRAIN, *extra, env={"OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("cyclegan-data"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "pairs"
    train(data, out, "--iterations", "20", "--decay-iterations", "20", "--save-every", "10")
    return out


def test_trainer_writes_the_junyanz_layout_and_a_bundle(trained):
    pair = trained / "short-long"
    for role in ("G_A", "G_B", "D_A", "D_B"):
        state = torch.load(pair / f"latest_net_{role}.pth", weights_only=True)
        assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())  # bare
    g = generator_from_file(pair / "latest_net_G_A.pth")
    assert g.config == GeneratorConfig(ngf=4, n_blocks=1)
    bundle = bundles.read_bundle(trained)
    assert set(bundle.translators) == {("short", "long"), ("long", "short")}
    t = bundle.translator("short", "long")
    assert t.size == SIZE and t.axis == "style" and t.checkpoint.filename == "short-long/latest_net_G_A.pth"
    record = json.loads((pair / "pair.json").read_text())
    assert record["complete"] and record["steps_done"] == 40
    assert record["files"]["G_A"]["sha256"] == hashlib.sha256((pair / "latest_net_G_A.pth").read_bytes()).hexdigest()
    assert record["training"]["command"].startswith("harness train cyclegan --data")
    assert record["training"]["options"]["lambda_cycle"] == 10.0 and record["training"]["options"]["pool_size"] == 50
    lines = [json.loads(s) for s in (pair / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(2, 41, 2))
    assert set(lines[0]) >= {"G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B", "lr"}
    assert lines[-1]["lr"] < lines[0]["lr"]  # decayed
    early = np.mean([line["cycle_A"] + line["cycle_B"] for line in lines[:3]])
    late = np.mean([line["cycle_A"] + line["cycle_B"] for line in lines[-3:]])
    assert late < early  # the cycle reconstruction is learned
    assert Image.open(pair / "loss.png").size[0] > 500
    domains = json.loads((trained.parent / "pairs.train" / "domains.json").read_text())
    assert len(domains["images"]) == 24 and domains["classifier"] == "hair-domains-1"


def test_trainer_resumes_exactly(data, trained, tmp_path):
    out = tmp_path / "pairs"
    args = ("--iterations", "20", "--decay-iterations", "20", "--save-every", "10")
    train(data, out, *args, "--max-steps", "13")
    assert json.loads((out / "short-long" / "pair.json").read_text())["steps_done"] == 13
    refused = run_harness("train", "cyclegan", "--data", str(data), "--domains", "short,long", "--out", str(out),
                          *TRAIN, *args, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    train(data, out, *args, "--resume")
    for role in ("G_A", "G_B", "D_A", "D_B"):
        a = torch.load(out / "short-long" / f"latest_net_{role}.pth", weights_only=True)
        b = torch.load(trained / "short-long" / f"latest_net_{role}.pth", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in b), role
    assert (out / "short-long" / "log.jsonl").read_text() .count("\n") == 20


def test_trainer_under_torchrun(data, tmp_path):
    out = tmp_path / "pairs"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    proc = subprocess.run([*command, "--standalone", "--nproc_per_node=2", "-m", "harness.cli", "train", "cyclegan",
                           "--data", str(data), "--domains", "short,long", "--out", str(out), *TRAIN,
                           "--iterations", "3", "--decay-iterations", "1", "--device", "cpu"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "short-long" / "pair.json").read_text())
    assert record["training"]["processes"] == 2 and record["steps_done"] == 4
    assert record["training"]["ranks_in_sync"] is True


def test_trainer_refusals(data, tmp_path):
    proc = run_harness("train", "cyclegan", "--data", str(data), "--domains", "black,long", "--out", str(tmp_path),
                       check=False)
    assert proc.returncode == 2 and "mixes colour and style" in proc.stderr
    proc = run_harness("train", "cyclegan", "--data", str(data), "--domains", "black,purple", "--out",
                       str(tmp_path), check=False)
    assert proc.returncode == 2 and "unknown hair domain 'purple'" in proc.stderr
    (tmp_path / "nolabels").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "nolabels" / "a.png")
    proc = run_harness("train", "cyclegan", "--data", str(tmp_path / "nolabels"), "--domains", "short,long",
                       "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "no label map" in proc.stderr
    proc = run_harness("train", "cyclegan", "--data", str(data), "--domains", "black,brown,blond,red,grey",
                       "--out", str(tmp_path / "o"), "--min-images", "50", check=False)
    assert proc.returncode == 2 and "too few training images" in proc.stderr


# ---------------------------------------------------------------- method

def bundle_dir(root: Path, pairs: dict[str, tuple[str, str]], config: GeneratorConfig, size: int,
               seed: int = 0) -> Path:
    """A cyclegan.json with generators filled by the parity rule, in the junyanz layout."""
    entries = []
    for name, (a, b) in pairs.items():
        files = {}
        for role in ("G_A", "G_B"):
            g = ResnetGenerator(config)
            load_state_dict_into(g, filled_state_dict(g, f"{name}.{role}.{seed}", fill_recipe), "fill")
            path = root / name / f"latest_net_{role}.pth"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(g.state_dict(), path)
            files[role] = {"path": f"{name}/{path.name}"}
        entries.append({"name": name, "A": a, "B": b, "size": size, "files": files})
    (root / "cyclegan.json").write_text(json.dumps({"format": bundles.FORMAT, "pairs": entries}))
    return root


def method_for(root: Path, **params) -> CycleGAN:
    method = CycleGAN(CycleGANParams(checkpoints=str(root), **params))
    method.setup("cpu", WeightStore(weights_dir=root / "none"))
    return method


def test_method_translates_classes_and_pastes_inside_the_hair(tmp_path):
    root = bundle_dir(tmp_path, {"black-blond": ("black", "blond"), "short-long": ("short", "long")},
                      GeneratorConfig(ngf=8, n_blocks=2), 64)
    face = annotated(*portrait(3, color="black", family="short"))
    shape = annotated(*portrait(4, color="black", family="long"))
    color = annotated(*portrait(5, color="blond", family="short"))
    method = method_for(root)
    out = np.asarray(method.transfer(face, face, color)).astype(int)
    face_px = np.asarray(face).astype(int)
    changed = np.abs(out - face_px).max(-1) > 0
    hair = annotations.of(face).labels == HAIR
    assert changed[hair].mean() > 0.9  # the hair is translated ...
    from methods.cyclegan.method import paste_mask

    alpha = paste_mask([hair], 24 * 128 / 1024, 12 * 128 / 1024)
    assert not changed[alpha == 0].any()  # ... nothing outside the feathered paste region
    both = np.asarray(method.transfer(face, shape, color))
    assert not np.array_equal(both, out)  # style then colour
    raw = np.asarray(method_for(root, composite=False).transfer(face, face, color)).astype(int)
    assert (np.abs(raw - face_px).max(-1) > 0)[alpha == 0].mean() > 0.5  # the whole image is the output
    same = method.transfer(face, face, annotated(*portrait(6, color="black", family="long")))
    assert np.array_equal(np.asarray(same), face_px)  # same colour class: no translation


def test_method_errors_per_item(tmp_path):
    root = bundle_dir(tmp_path, {"black-blond": ("black", "blond")}, GeneratorConfig(ngf=4, n_blocks=1), 32)
    method = method_for(root)
    face = annotated(*portrait(3, color="black", family="long"))
    with pytest.raises(DomainError, match="color image has no color domain: hair colour Lab"):
        method.transfer(face, face, annotated(*portrait(5, color="purple")))
    with pytest.raises(DomainError, match="no black->red translator"):
        method.transfer(face, face, annotated(*portrait(5, color="red")))
    with pytest.raises(DomainError, match="shape image has no style domain.*bald"):
        method.transfer(face, annotated(*portrait(4, family="bald")), face)
    with pytest.raises(ValueError, match="no label map"):
        method.transfer(face, face, portrait(5, color="blond")[0])


def test_official_single_generator_file_loads(tmp_path):
    """A released ``latest_net_G.pth`` (ngf 64, 9 blocks, the fixture's fill) listed as a one-direction pair."""
    g = ResnetGenerator()
    load_state_dict_into(g, filled_state_dict(g, "official", fill_recipe), "fill")
    state = dict(g.state_dict())
    state["model.2.running_mean"] = torch.zeros(64)  # old files' InstanceNorm entries
    (tmp_path / "short2long").mkdir()
    torch.save(state, tmp_path / "short2long" / "latest_net_G.pth")
    (tmp_path / "cyclegan.json").write_text(json.dumps({"format": bundles.FORMAT, "pairs": [
        {"name": "short2long", "A": "short", "B": "long", "files": {"G_A": {"path": "short2long/latest_net_G.pth"}}}]}))
    method = method_for(tmp_path, composite=False)
    assert set(method.generators) == {("short", "long")}
    loaded = method.generators["short", "long"]
    assert loaded.config == GeneratorConfig()
    face = annotated(*portrait(3, family="short", size=256))
    out = np.asarray(method.transfer(face, annotated(*portrait(4, family="long", size=256)), face))
    x = torch.from_numpy(np.array(face)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        want = ((g.eval()(x)[0].permute(1, 2, 0).numpy() + 1) / 2 * 255).round().clip(0, 255)
    assert np.abs(out.astype(float) - want).max() <= 1.0


def test_cli_refuses_missing_pair_files_and_runs_with_a_bundle(tmp_path):
    root = bundle_dir(tmp_path / "pairs", {"black-brown": ("black", "brown")}, GeneratorConfig(ngf=4, n_blocks=1), 32)
    (root / "black-brown" / "latest_net_G_B.pth").unlink()
    proc = run_harness("run", "--methods", "cyclegan", "--protocol", "smoke", "--limit", "2", "--out",
                       str(tmp_path / "refused"), "--set", f"cyclegan.checkpoints={root}", check=False)
    assert proc.returncode != 0 and "black-brown/latest_net_G_B.pth" in proc.stderr, proc.stderr
    assert not (tmp_path / "refused" / "records.jsonl").exists()
    proc = run_harness("run", "--methods", "cyclegan", "--protocol", "smoke", "--limit", "2", "--out",
                       str(tmp_path / "missing"), "--set", f"cyclegan.checkpoints={tmp_path / 'nowhere'}",
                       check=False)
    assert proc.returncode != 0 and "cyclegan.json" in proc.stderr


def test_shipped_pairs_cover_the_domains_and_are_small():
    bundle = bundles.read_bundle()
    assert bundle.shipped
    colors, styles = bundle.domains("color"), bundle.domains("style")
    assert sorted(colors) == sorted(["black", "brown", "blond", "red", "grey"]) and sorted(styles) == ["long", "short"]
    assert len(bundle.translators) == 2 * (10 + 1)
    total = 0
    for pair in bundle.pairs:
        assert pair["complete"] and "harness train cyclegan --protocol synthetic" in pair["training"]["command"]
        for entry in pair["files"].values():
            data = (bundles.SHIPPED_DIR / entry["path"]).read_bytes()
            assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
            total += len(data)
    assert total < 10 * 2**20
    store = WeightStore(weights_dir=Path("/nonexistent"))
    assert store.missing(CycleGAN().checkpoints()) == []


@pytest.mark.slow
def test_shipped_pairs_beat_identity_on_hair_colour_in_the_color_task(tmp_path):
    """The README's claim, through the real CLI on the embedded default: on the items cyclegan serves, its hair
    colour (CIEDE2000 to the ground truth) is closer than the face's own; items it cannot serve fail with reasons."""
    import pandas as pd

    run = tmp_path / "run"
    run_harness("run", "--protocol", "synthetic", "--methods", "identity,cyclegan", "--out", str(run), "--quiet",
                "--no-report")
    items = pd.read_csv(run / "per_item.csv")
    colour = items[(items.task == "color") & (items.metric == "hair_color_de")]
    paired = colour.pivot(index="triplet", columns="method", values="value").dropna()
    assert len(paired) >= 12
    assert paired.cyclegan.mean() < 0.8 * paired.identity.mean(), paired.mean()
    records = [json.loads(s) for s in (run / "records.jsonl").read_text().splitlines()]
    ours = [r for r in records if r["method"] == "cyclegan"]
    assert all(r["extras"]["cyclegan"]["translations"] == [] for r in ours if r["task"] == "rec")
    served = [r for r in ours if r["task"] == "color" and r["status"] == "ok"]
    assert all(r["extras"]["cyclegan"]["translations"] in ([],) or
               r["extras"]["cyclegan"]["translations"][0].split("->")[1] == r["extras"]["cyclegan"]["color"]["color"]
               for r in served)
    failed = [r for r in ours if r["status"] != "ok"]
    assert failed and all("cyclegan:" in r["error"] for r in failed)
