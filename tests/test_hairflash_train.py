"""``harness train hairflash-blending``: shape-loss filters, the prepared records, training that lowers the loss,
checkpoints that load as the variant, exact ``--resume``, torchrun (DistributedDataParallel on gloo, 2 processes)
against one process, and the CLI.

Speed: the records are prepared once per module from three synthetic portraits by the small networks of
``test_hairflash.py`` (StyleGAN2 at 256 with channel multiplier 1, tiny CLIP), under the data identity the CLI
computes for ``--fill-weights --size 256``; the CLI runs (a launcher that swaps in the same small generator and
CLIP, then calls ``harness.cli.main``) find every record and load no stage-1/2 network. A run with every real
network filled is marked slow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_harness
from test_hairflash import TINY_CLIP, TINY_IDENTITY, tiny_nets

from harness.datasets import load_image
from harness.errors import UsageError
from harness.synthetic import generate
from harness.weights import WeightStore, load_state_dict_into
from methods.hairflash import pipeline, train
from methods.hairflash.blending import ModulationPart, load_blending_encoder
from methods.hairflash.checkpoints import OfficialLayout
from methods.hairflash.method import HairFlash
from methods.hairflash.params import HairFlashParams
from methods.hairflash.variants import VARIANTS

VARIANT = VARIANTS["final"]
SIZE = 256
N_TRIPLETS = 2
SEED = 0
LR = 1e-3
OPTIONS = train.TrainOptions(epochs=1, batch_size=2, lr=LR, seed=SEED,
                             losses=train.LossConfig(shape="cossim-sobel"))

# The CLI with the small generator and CLIP of test_hairflash.py (and no stage-1/2 networks: records exist).
LAUNCHER = """
import functools, sys
sys.path.insert(0, {tests!r})
from test_hairflash import TINY_CLIP, fill
from methods.nets import stylegan2
from methods.hairflash import pipeline, train
generator = fill(stylegan2.Generator(256, 512, 2, 1), "t_gen", stylegan2.fill_recipe)
pipeline.load_generator = lambda *args, **kwargs: generator
train.new_encoder = functools.partial(train.new_encoder, clip=TINY_CLIP)
def no_networks(*args, **kwargs):
    raise AssertionError("every record exists: no stage-1/2 network may load")
train.preparation_method = no_networks
from harness.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ---------------------------------------------------------------- filters and loss options

def test_grayscale_and_sobel():
    image = torch.zeros(1, 3, 8, 8) - 1
    image[..., 4:] = 1  # a vertical edge, black to white
    gray = train.grayscale(image)
    assert gray.shape == (1, 3, 8, 8) and torch.allclose(gray, image)  # luma weights sum to 1
    edges = train.sobel(image)
    assert edges.shape == (1, 3, 8, 8)
    # |gx| = 4 next to the edge (luma 0 -> 1), 0 elsewhere; magnitude / (4 sqrt 2) mapped to [-1, 1]
    expected = 2 * 4 / (4 * np.sqrt(2)) - 1
    assert torch.allclose(edges[0, 0, :, 3:5], torch.full((8, 2), expected), atol=1e-4)
    assert torch.allclose(edges[0, 0, :, :3], torch.full((8, 3), -1.0), atol=1e-3)
    color = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(train.grayscale(color)[:, 0], 0.299 * color[:, 0] + 0.587 * color[:, 1] + 0.114 * color[:, 2])


def test_loss_options():
    assert train.VARIANT_SHAPE_LOSS[VARIANT.shape_loss] == "cossim-sobel"
    assert train.VARIANT_SHAPE_LOSS[VARIANTS["baseline"].shape_loss] == "none"
    with pytest.raises(ValueError):
        train.LossConfig(shape="l1")
    with pytest.raises(ValueError):
        train.LossConfig(shape="mse-sobel", shape_reference="shape")  # pixels of unaligned images


# ---------------------------------------------------------------- records

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Three synthetic portraits, two triplets prepared by the small networks into a record folder."""
    root = tmp_path_factory.mktemp("blending")
    generate(3, 64, 0, root / "data")
    nets = tiny_nets(VARIANT.arch)
    params = HairFlashParams(size=SIZE)
    # no stage cache: this module-scoped fixture runs before conftest isolates the cache directory
    method = HairFlash(replace(params, cache=False), VARIANT.name)
    method.use_networks(nets, TINY_IDENTITY)
    weights = OfficialLayout(WeightStore(fill=True))
    encoder = train.new_encoder(VARIANT, params, weights, torch.device("cpu"), SEED, clip=TINY_CLIP)
    store = train.RecordStore(root / "records")
    identity = train.data_identity(weights, params, VARIANT)  # what the CLI computes for --fill-weights --size 256
    source = train.TripletSource.from_folder(root / "data", SEED)
    calls = []

    def method_once():
        calls.append(1)
        return method, encoder.get_image_embed

    entries = train.prepare_dataset(source, N_TRIPLETS, SIZE, store, identity, method_once, train.DistContext())
    assert calls  # the networks were needed
    return {"root": root, "store": store, "entries": entries, "generator": nets.generator, "params": params,
            "identity": identity, "source": source, "weights": weights}


def test_records(prepared):
    store, entries = prepared["store"], prepared["entries"]
    assert len(entries) == N_TRIPLETS and len({e.key for e in entries}) == N_TRIPLETS
    record = store.load(entries[0].key)
    shapes = {name: (value.shape, value.dtype.name) for name, value in record.items()}
    assert shapes["S_face"] == shapes["S_color"] == shapes["S_shape"] == ((14, 512), "float32")
    assert shapes["F_align"] == ((512, 32, 32), "float32")
    assert all(shapes[m] == ((1, 256, 256), "uint8") for m in train.MASKS)
    assert all(shapes[i] == ((3, 256, 256), "uint8") for i in train.IMAGES)
    assert shapes["e_face"] == shapes["e_color"] == shapes["e_shape"] == ((TINY_CLIP.embed_dim,), "float32")
    assert all(set(np.unique(record[m])) <= {0, 1} for m in train.MASKS)
    assert record["target_mask"].any()
    assert float(record["color_hair"]) == entries[0].color_hair == pytest.approx(record["hair_color"].mean())
    # the face image is one of the portraits at 256
    face = np.asarray(load_image(entries[0].face, SIZE)[0])
    assert np.abs(record["face"].transpose(1, 2, 0).astype(int) - face.astype(int)).mean() < 8
    # preparing again touches no network
    again = train.prepare_dataset(prepared["source"], N_TRIPLETS, SIZE, store, prepared["identity"],
                                  lambda: pytest.fail("networks loaded for existing records"), train.DistContext())
    assert again == entries
    sample = train.BlendingRecords(store, [e.key for e in entries])[1]
    assert sample["index"] == 1 and sample["face"].min() >= -1 and sample["face"].max() <= 1
    assert sample["target_mask"].dtype == torch.float32


# ---------------------------------------------------------------- training, in process

def trainer(prepared, files: train.WorkFiles, options: train.TrainOptions = OPTIONS) -> train.Trainer:
    encoder = train.new_encoder(VARIANT, prepared["params"], prepared["weights"], torch.device("cpu"), SEED,
                                clip=TINY_CLIP)
    dataset = train.BlendingRecords(prepared["store"], [e.key for e in prepared["entries"]])
    info = {"variant": VARIANT.name, "arch": {"stream_embed": True}}
    return train.Trainer(encoder, prepared["generator"], dataset, options, files, pipeline.Noise("seeded"),
                         info=info, log=lambda _: None)


def modulation(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state_dict"]


@pytest.fixture(scope="module")
def reference(prepared):
    """One process, batch 2: one epoch, then a second (the weights after each, the log lines)."""
    files = train.WorkFiles.of(prepared["root"] / "reference" / VARIANT.blending.filename)
    t = trainer(prepared, files)
    lines = t.fit()
    after_one = modulation(files.out)
    t.options = replace(OPTIONS, epochs=2)
    lines += t.fit()
    return {"files": files, "lines": lines, "after_one": after_one, "after_two": modulation(files.out),
            "trainer": t}


def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(prepared, reference, tmp_path):
    lines = reference["lines"]
    assert [line["epoch"] for line in lines] == [0, 1, 2] and lines[-1]["steps"] == 2
    evals = [line["eval_loss"] for line in lines]
    assert evals[2] < evals[1] < evals[0], evals  # the loss of the fixed batch goes down
    assert all(np.isfinite([line[k] for k in ("loss", "color", "face", "shape")]).all() for line in lines[1:])
    assert [json.loads(s)["epoch"] for s in reference["files"].log.read_text().splitlines()] == [0, 1, 2]
    # the released layout: only the modulation keys, plus what identifies the architecture
    saved = torch.load(reference["files"].out, weights_only=True)
    assert set(saved["model_state_dict"]) == set(ModulationPart(VARIANT.arch, VARIANT.arch.config(8, TINY_CLIP))
                                                 .state_dict())
    assert saved["arch"]["stream_embed"] and saved["epoch"] == 2 and saved["variant"] == "final"
    # loads as the variant through the method's loader from a weights folder (CLIP from ViT-B-32.pt there)
    t = reference["trainer"]
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    shutil.copy(reference["files"].out, weights_dir / VARIANT.blending.filename)
    torch.save(t.encoder.clip_model.state_dict(), weights_dir / "ViT-B-32.pt")
    store = WeightStore(weights_dir=weights_dir)
    assert VARIANT.blending.filename not in {c.filename for c in store.missing(HairFlash(variant="final")
                                                                                .checkpoints())}
    loaded = load_blending_encoder(store, VARIANT.blending, VARIANT.arch, 8, clip_precision="fp32", clip=TINY_CLIP)
    batch = t.batch([0, 1])
    with torch.no_grad():
        args = (batch["S_face"][:, 6:], batch["S_color"][:, 6:], batch["e_face"], batch["e_color"],
                batch["S_shape"][:, 6:], batch["e_shape"])
        torch.testing.assert_close(loaded.blend_embeds(*args), t.encoder.blend_embeds(*args))
        face, color, shape = batch["face"] * batch["target_mask"], batch["color"] * batch["hair_color"], \
            batch["shape"] * batch["hair_shape"]
        assert loaded(batch["S_face"][:, 6:], batch["S_color"][:, 6:], face, color, hair_shape=shape).shape == \
            (2, 8, 512)


# ---------------------------------------------------------------- the CLI

def launcher(tmp_path: Path) -> Path:
    path = tmp_path / "launch_train.py"
    path.write_text(LAUNCHER.format(tests=str(ROOT / "tests")))
    return path


def cli_args(prepared, out: Path, *extra: str) -> list[str]:
    return ["train", "hairflash-blending", "--variant", "final", "--data", str(prepared["root"] / "data"),
            "--out", str(out), "--fill-weights", "--size", str(SIZE), "--n-triplets", str(N_TRIPLETS),
            "--seed", str(SEED), "--min-color-hair", "0", "--batch-size", "2", "--lr", str(LR),
            "--data-cache", str(prepared["root"] / "records"), *extra]


def run_launcher(command: list[str], check: bool = True, threads: int | None = None) -> subprocess.CompletedProcess:
    """Same thread count as this process by default (bitwise-equal CPU results)."""
    threads = threads or torch.get_num_threads()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if check and proc.returncode != 0:
        raise AssertionError(f"{command} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_cli_trains_and_resumes_exactly(prepared, reference, tmp_path, capsys):
    out = tmp_path / "ckpt" / VARIANT.blending.filename
    script = str(launcher(tmp_path))
    first = run_launcher([sys.executable, script, *cli_args(prepared, out, "--epochs", "1")])
    assert "epoch 1/1" in first.stdout and (out.parent / (out.name + ".train") / "dataset.json").is_file()
    for key, value in modulation(out).items():
        torch.testing.assert_close(value, reference["after_one"][key], rtol=1e-5, atol=1e-6, msg=key)
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    assert train.run(parser.parse_args(cli_args(prepared, out, "--epochs", "2")[2:])) == 2  # state.pt exists
    assert "--resume" in capsys.readouterr().err
    log_path = out.parent / (out.name + ".train") / "log.jsonl"
    with open(log_path, "a") as fh:  # as if it crashed after logging an epoch it never saved
        fh.write(json.dumps({"epoch": 2, "steps": 2, "eval_loss": 9.0}) + "\n")
    run_launcher([sys.executable, script, *cli_args(prepared, out, "--epochs", "2", "--resume")])
    for key, value in modulation(out).items():  # epoch 1 + resumed epoch 2 == two epochs in one go
        torch.testing.assert_close(value, reference["after_two"][key], rtol=1e-5, atol=1e-6, msg=key)
    log = [json.loads(s) for s in log_path.read_text().splitlines()]
    assert [line["epoch"] for line in log] == [0, 1, 2] and log[2]["eval_loss"] != 9.0
    state = torch.load(out.parent / (out.name + ".train") / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["steps"] == 2 and "optimizer" in state and "rng" in state


def test_torchrun_two_processes_match_one(prepared, reference, tmp_path):
    """2 ranks x batch 1 (gloo, DistributedSampler, DDP-averaged gradients) == 1 process x batch 2: Adam's first
    step is about lr * sign(gradient), so only elements whose gradient is rounding noise may differ."""
    out = tmp_path / "ddp" / VARIANT.blending.filename
    torchrun = Path(sys.executable).with_name("torchrun")
    command = ([str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"])
    proc = run_launcher([*command, "--standalone", "--nproc_per_node=2", str(launcher(tmp_path)),
                         *cli_args(prepared, out, "--epochs", "1", "--batch-size", "1", "--device", "cpu")],
                        threads=1)
    assert proc.stdout.count("epoch 1/1") == 1  # rank 0 logs
    initial = train.Trainee(train.new_encoder(VARIANT, prepared["params"], prepared["weights"], torch.device("cpu"),
                                              SEED, clip=TINY_CLIP)).state_dict()
    ddp, one = modulation(out), reference["after_one"]
    moved = sum(int(((one[k] - initial[k]).abs() > LR / 2).sum()) for k in one)
    differ = sum(int(((ddp[k] - one[k]).abs() > 1e-6).sum()) for k in one)
    total = sum(v.numel() for v in one.values())
    assert moved > 0.5 * total  # the step moved most weights by about lr ...
    assert differ < 1e-3 * total, (differ, total)  # ... and the two runs took the same step
    assert max(float((ddp[k] - one[k]).abs().max()) for k in one) <= 2.5 * LR


def test_cli_lists_the_trainer_and_refuses_without_weights(tmp_path):
    proc = run_harness("train", "hairflash-blending", "--data", str(tmp_path), "--out", str(tmp_path / "b.pth"),
                       check=False, env={"HARNESS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    for name in ("ffhq.pt", "143_enc.pth", "e4e_ffhq_encode.pt", "latest_net_G.pth", "ViT-B-32.pt"):
        assert name in proc.stderr, name
    assert "pp_model.pth" not in proc.stderr  # post-processing is not needed to train
    assert "hairflash-blending" in run_harness("train", "--help").stdout


# ---------------------------------------------------------------- every real network, filled (slow)

@pytest.mark.slow
def test_cli_with_filled_real_networks(tmp_path):
    """The real loaders and stages: one triplet through the filled networks at 256, one training step."""
    generate(3, 64, 1, tmp_path / "data")
    out = tmp_path / "w" / VARIANT.blending.filename
    proc = run_harness("train", "hairflash-blending", "--variant", "final", "--data", str(tmp_path / "data"),
                       "--out", str(out), "--fill-weights", "--size", "256", "--n-triplets", "1",
                       "--min-color-hair", "0", "--epochs", "1", "--batch-size", "1",
                       env={"HARNESS_CACHE": str(tmp_path / "cache")}, timeout=1800)
    assert "loading the stage-1/2 networks" in proc.stdout and "epoch 1/1" in proc.stdout
    saved = torch.load(out, weights_only=True)
    part = ModulationPart(VARIANT.arch, VARIANT.arch.config(8))
    load_state_dict_into(part, saved["model_state_dict"], "trained checkpoint")  # strict: the variant's keys
    assert all(torch.isfinite(v).all() for v in saved["model_state_dict"].values())


def test_parse_params_and_files():
    assert train.parse_params(256, ["noise=buffers", "hairflash.clip_precision=fp32"]) == \
        HairFlashParams(size=256, noise="buffers", clip_precision="fp32")
    with pytest.raises(UsageError):
        train.parse_params(256, ["nope=1"])
    files = train.WorkFiles.of("/x/blending_final.pth")
    assert files.state == Path("/x/blending_final.pth.train/state.pt")
    assert files.log.name == "log.jsonl" and files.dataset.name == "dataset.json"
