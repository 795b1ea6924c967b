"""Training CycleGAN hair-domain pairs: ``harness train cyclegan``.

**Data** (unpaired; the synthetic ground truth is never used). ``--protocol synthetic`` renders ``--n-images`` fresh
portraits of the protocol's dataset (its size; ``--data-seed``, default 1000, while the built-in synthetic protocols
draw their images with seeds 0 and 1, so no benchmark image is trained on) into the harness cache; ``--data DIR``
takes the images of ``DIR`` (or ``DIR/images``) with label maps ``DIR/labels/<stem>.png`` (CelebAMask-HQ order;
``harness data synth`` writes this layout). Every image is classified (:mod:`methods.cyclegan.domains`) at its own
size, then resized (area) to ``--size``. For each pair of the ``--domains`` (all pairs of one axis, or ``--pairs
A-B,...``) the images of domain A and of domain B are the two unpaired sets.

**Objective** (seed 003, junyanz's ``cycle_gan_model``): LSGAN; generators ``G_A: A->B``, ``G_B: B->A``
minimise ``(D_A(G_A(a)) - 1)^2 + (D_B(G_B(b)) - 1)^2 + lambda_cycle (|G_B(G_A(a)) - a| + |G_A(G_B(b)) - b|)
+ lambda_cycle lambda_identity (|G_A(b) - b| + |G_B(a) - a|)`` (L1 means; defaults 10 and 0.5); the discriminators
minimise ``0.5 [(D(real) - t_real)^2 + (D(pool(fake)) - t_fake)^2]`` with noisy targets drawn per patch,
``t_fake ~ U(0, noise)`` (seed 003's formula 2) and ``t_real ~ 1 - U(0, noise)`` (``--label-noise``, default 0.2),
fakes from a 50-image history pool. Adam (lr 2e-4, betas 0.5, 0.999); the learning rate is constant for
``--iterations`` steps and decays linearly to zero over ``--decay-iterations`` more (junyanz's ``n_epochs`` /
``n_epochs_decay``, counted in steps since the two sets differ in size). Weights start N(0, 0.02). Each step draws
``--batch-size`` images of each set at random (with a horizontal flip half the time) from a generator seeded by
(``--seed``, pair, step, rank), so a step's data does not depend on what ran before it. The defaults are small
networks for CPUs and for shipping (ngf 16 with one residual block, ndf 8 with two PatchGAN layers, batch 4 at
64 px); ``--ngf 64 --n-blocks 9 --ndf 64 --n-layers 3 --batch-size 1 --size 256`` is junyanz's configuration.

**Files** (:mod:`methods.cyclegan.bundle`): ``--out DIR`` gets ``<A>-<B>/latest_net_{G_A,G_B,D_A,D_B}.pth``,
``pair.json``, ``log.jsonl`` (mean losses every ``--log-every`` steps), ``loss.png`` (the curves) and
``DIR/cyclegan.json`` naming every pair in ``DIR`` (``--half-files``: network files in float16, half the size; the
method computes in float32), so ``harness run --methods cyclegan --set
cyclegan.checkpoints=DIR`` uses them. ``DIR.train/<pair>/state.pt`` (``--work-dir``) holds the networks, optimisers,
history pools, step and RNG states, written atomically every ``--save-every`` steps; ``--resume`` continues exactly
(``--max-steps`` stops early on purpose, e.g. for time-boxed jobs). Finished pairs are skipped on ``--resume``.

**Processes.** One process, or ``torchrun --nproc_per_node=K harness train cyclegan ...``: every rank trains the
same pair on its own batches and the gradients are averaged before each optimiser step (gloo on CPUs, NCCL on
GPUs), so the networks stay identical; each rank keeps its own history pool; rank 0 writes the files. Separate
``--pairs`` can also go to separate jobs writing one ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from harness import protocol as protocols
from harness.datasets import InputError, list_images, load_image
from harness.errors import UsageError
from harness.store import atomic_write_text
from harness.weights import cache_dir, load_state_dict_into, safe_load
from methods.cyclegan import bundle as bundles
from methods.cyclegan.domains import AXES, CLASSIFIER_VERSION, axis_of, classify
from methods.nets.cyclegan import (
    DiscriminatorConfig,
    GeneratorConfig,
    NLayerDiscriminator,
    ResnetGenerator,
    init_normal,
)
from methods.training import DistContext, rng_state, run_distributed, save_torch, set_rng_state

TRAINER_NAME = "cyclegan"
LOSS_NAMES = ("G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B")


@dataclass(frozen=True)
class TrainOptions:
    size: int = 64
    iterations: int = 600
    decay_iterations: int = 600
    batch_size: int = 4
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    label_noise: float = 0.2
    seed: int = 0
    save_every: int = 200
    log_every: int = 10
    half_files: bool = False
    generator: GeneratorConfig = GeneratorConfig(ngf=16, n_blocks=1)
    discriminator: DiscriminatorConfig = DiscriminatorConfig(ndf=8, n_layers=2)

    @property
    def total_steps(self) -> int:
        return self.iterations + self.decay_iterations

    def lr_at(self, step: int) -> float:
        """junyanz's linear rule in steps: constant, then down to 0 over ``decay_iterations``."""
        return self.lr * (1.0 - max(0, step - self.iterations) / float(self.decay_iterations + 1))


# ---------------------------------------------------------------- data

@dataclass(frozen=True)
class DomainImages:
    """The training images of each domain at the training size: uint8 [N, 3, S, S] per domain."""

    images: dict[str, Tensor]
    counts: dict[str, int]


def synthetic_folder(n: int, size: int, seed: int) -> Path:
    """``n`` synthetic portraits of ``size`` from ``seed`` in the harness cache (rendered once)."""
    from harness import synthetic

    folder = cache_dir() / "cyclegan" / "data" / f"{synthetic.GENERATOR_VERSION}-s{seed}-n{n}-{size}"
    done = folder / "done"
    if not done.is_file():
        synthetic.generate(n, size, seed, folder)
        done.write_text("ok\n")
    return folder


def labelled_images(folder: Path) -> list[tuple[Path, Path]]:
    """(image, label map) paths of a folder in the ``images/`` + ``labels/`` layout (or images beside ``labels/``)."""
    images = folder / "images" if (folder / "images").is_dir() else folder
    try:
        paths = list_images(images)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    labels = folder / "labels"
    pairs = [(p, labels / f"{p.stem}.png") for p in paths]
    missing = [p.name for p, lab in pairs if not lab.is_file()]
    if missing:
        raise UsageError(f"{len(missing)} image(s) of {images} have no label map in {labels} (e.g. {missing[0]}): "
                         "the domains are read off CelebAMask-HQ label maps (`harness data synth` writes this layout)")
    if not pairs:
        raise UsageError(f"no images in {images}")
    return pairs


def prepare_domains(pairs: Sequence[tuple[Path, Path]], size: int, wanted: set[str],
                    log: Callable[[str], None]) -> tuple[DomainImages, list[dict[str, Any]]]:
    """Classify every image and keep those of the ``wanted`` domains, resized to ``size``."""
    buckets: dict[str, list[np.ndarray]] = {d: [] for d in wanted}
    table = []
    for image_path, label_path in pairs:
        try:
            image, _ = load_image(image_path)
        except InputError as exc:
            log(f"skipped {image_path.name}: {exc}")
            continue
        rgb = np.asarray(image)
        labels = np.asarray(Image.open(label_path))
        if labels.shape != rgb.shape[:2]:
            labels = cv2.resize(labels, rgb.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        domains = classify(rgb, labels)
        table.append({"image": image_path.name, **domains.to_json()})
        small = None
        for d in (domains.color, domains.style):
            if d in buckets:
                if small is None:
                    small = to_training_size(rgb, size)
                buckets[d].append(small)
    images = {d: torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2).contiguous() if v else
              torch.zeros(0, 3, size, size, dtype=torch.uint8) for d, v in buckets.items()}
    return DomainImages(images, {d: len(v) for d, v in buckets.items()}), table


def to_training_size(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB resized to ``size`` the way the method resizes its inputs (area averaging when shrinking)."""
    if rgb.shape[0] == size:
        return np.array(rgb, dtype=np.uint8)  # a writable copy
    mode = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=mode)


def to_signed(images: Tensor) -> Tensor:
    """uint8 [B,3,H,W] -> float in [-1, 1] (junyanz's ToTensor + Normalize(0.5, 0.5))."""
    return images.float() / 127.5 - 1.0


# ---------------------------------------------------------------- training

class ImagePool:
    """junyanz's history of generated images: until full, return the new ones; then, per image, half the time
    swap it for a random stored one (python ``random``, saved with the RNG states)."""

    def __init__(self, size: int):
        self.size = size
        self.images: list[Tensor] = []

    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                i = random.randint(0, self.size - 1)
                out.append(self.images[i].clone())
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)


def step_seed(seed: int, pair: str, step: int, rank: int) -> int:
    digest = hashlib.sha256(f"{seed}|{pair}|{step}|{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def weights_digest(nets: dict[str, nn.Module]) -> str:
    digest = hashlib.sha256()
    for role in sorted(nets):
        for key, value in nets[role].state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def set_requires_grad(nets: Sequence[nn.Module], flag: bool) -> None:
    for net in nets:
        net.requires_grad_(flag)


def _mse_to(prediction: Tensor, target: Tensor | float) -> Tensor:
    if not isinstance(target, Tensor):
        target = torch.full_like(prediction, target)
    return F.mse_loss(prediction, target)


@dataclass(frozen=True)
class PairFiles:
    out: Path    # DIR/<pair>
    work: Path   # DIR.train/<pair>

    @property
    def state(self) -> Path:
        return self.work / "state.pt"

    @property
    def log(self) -> Path:
        return self.out / "log.jsonl"

    def network(self, role: str) -> Path:
        return self.out / f"latest_net_{role}.pth"


class PairTrainer:
    """One CycleGAN (``G_A``, ``G_B``, ``D_A``, ``D_B``) between the images of domains ``a`` and ``b``."""

    def __init__(self, a: str, b: str, data: DomainImages, options: TrainOptions, files: PairFiles,
                 ctx: DistContext, info: dict[str, Any], log: Callable[[str], None] = print, progress: bool = True):
        self.a, self.b, self.name = a, b, bundles.pair_name(a, b)
        self.data_a, self.data_b = data.images[a], data.images[b]
        self.options, self.files, self.ctx, self.info, self.log, self.progress = (options, files, ctx, info, log,
                                                                                 progress)
        torch.manual_seed(step_seed(options.seed, self.name, -1, 0))  # same initial weights on every rank
        self.nets: dict[str, nn.Module] = {
            role: init_normal(ResnetGenerator(options.generator) if role.startswith("G")
                              else NLayerDiscriminator(options.discriminator))
            for role in bundles.NETWORK_FILES}
        for net in self.nets.values():
            net.to(ctx.device).train()
        # per rank from here on: the label noise (torch) and the history pools (python random)
        torch.manual_seed(step_seed(options.seed, self.name, -1, ctx.rank + 1))
        random.seed(step_seed(options.seed, self.name, -2, ctx.rank))
        self.g_params = [*self.nets["G_A"].parameters(), *self.nets["G_B"].parameters()]
        self.d_params = [*self.nets["D_A"].parameters(), *self.nets["D_B"].parameters()]
        betas = (options.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.g_params, lr=options.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d_params, lr=options.lr, betas=betas)
        self.pool_a, self.pool_b = ImagePool(options.pool_size), ImagePool(options.pool_size)
        self.step = 0
        self.seconds = 0.0  # training time so far (all invocations)
        self._since: float | None = None

    # ------------------------------------------------------------ state
    def resume(self) -> bool:
        if not self.files.state.is_file():
            return False
        state = safe_load(self.files.state, map_location=self.ctx.device)
        if state.get("options") != self.info["options"] or state.get("data") != self.info["data"]:
            raise UsageError(f"--resume: {self.files.state} was trained with other options or data "
                             f"({state.get('options')}, {state.get('data')})")
        for role, net in self.nets.items():
            load_state_dict_into(net, state["nets"][role], f"{self.files.state} {role}")
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.pool_a.images = [t.to(self.ctx.device) for t in state["pools"][self.ctx.rank]["A"]]
        self.pool_b.images = [t.to(self.ctx.device) for t in state["pools"][self.ctx.rank]["B"]]
        self.step = int(state["step"])
        self.seconds = float(state.get("seconds", 0.0))
        self.info["command"] = state.get("command") or self.info["command"]  # the command that started it
        set_rng_state(state["rng"][self.ctx.rank])
        if self.ctx.main and self.files.log.is_file():
            lines = [s for s in self.files.log.read_text().splitlines()
                     if s.strip() and json.loads(s)["step"] <= self.step]
            atomic_write_text(self.files.log, "".join(line + "\n" for line in lines))
        return True

    def save(self) -> None:
        """``state.pt`` (every rank's pool and RNG state gathered on rank 0) and the four network files."""
        pools = self.ctx.all_gather({"A": [t.cpu() for t in self.pool_a.images],
                                     "B": [t.cpu() for t in self.pool_b.images]})
        rngs = self.ctx.all_gather(rng_state())
        if self.ctx.active:  # averaged gradients keep the ranks' networks equal: check it
            digests = self.ctx.all_gather(weights_digest(self.nets))
            self.info["ranks_in_sync"] = len(set(digests)) == 1
            if not self.info["ranks_in_sync"]:
                raise RuntimeError(f"{self.name}: the processes' networks differ after step {self.step}")
        if self._since is not None:
            now = time.perf_counter()
            self.seconds += now - self._since
            self._since = now
        self.info["seconds"] = round(self.seconds, 1)
        if not self.ctx.main:
            return
        self.files.work.mkdir(parents=True, exist_ok=True)
        self.files.out.mkdir(parents=True, exist_ok=True)
        save_torch({"nets": {r: n.state_dict() for r, n in self.nets.items()}, "opt_g": self.opt_g.state_dict(),
                    "opt_d": self.opt_d.state_dict(), "pools": pools, "step": self.step, "rng": rngs,
                    "seconds": self.seconds,
                    **self.info}, self.files.state)
        dtype = torch.float16 if self.options.half_files else torch.float32
        for role, net in self.nets.items():
            save_torch({k: v.detach().cpu().to(dtype) for k, v in net.state_dict().items()}, self.files.network(role))
        self.write_record()

    def write_record(self) -> None:
        files = {}
        for role in bundles.NETWORK_FILES:
            path = self.files.network(role)
            data = path.read_bytes()
            files[role] = {"path": f"{self.name}/{path.name}", "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}
        record = {"name": self.name, "axis": axis_of(self.a), "A": self.a, "B": self.b, "size": self.options.size,
                  "files": files, "steps_done": self.step, "complete": self.step >= self.options.total_steps,
                  "training": self.info}
        atomic_write_text(self.files.out / "pair.json", json.dumps(record, indent=1) + "\n")
        bundles.write_bundle(self.files.out.parent)

    # ------------------------------------------------------------ steps
    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(step_seed(self.options.seed, self.name, step, self.ctx.rank))
        n = self.options.batch_size

        def draw(images: Tensor) -> Tensor:
            picked = images[torch.randint(len(images), (n,), generator=g)]
            flip = torch.rand(n, generator=g) < 0.5
            picked = torch.where(flip[:, None, None, None], picked.flip(-1), picked)
            return to_signed(picked).to(self.ctx.device)

        return draw(self.data_a), draw(self.data_b)

    def train_step(self, real_a: Tensor, real_b: Tensor) -> dict[str, float]:
        o, G_A, G_B, D_A, D_B = self.options, self.nets["G_A"], self.nets["G_B"], self.nets["D_A"], self.nets["D_B"]
        for group in (*self.opt_g.param_groups, *self.opt_d.param_groups):
            group["lr"] = o.lr_at(self.step)
        set_requires_grad([D_A, D_B], False)
        fake_b, fake_a = G_A(real_a), G_B(real_b)
        rec_a, rec_b = G_B(fake_b), G_A(fake_a)
        losses = {"G_A": _mse_to(D_A(fake_b), 1.0), "G_B": _mse_to(D_B(fake_a), 1.0),
                  "cycle_A": F.l1_loss(rec_a, real_a) * o.lambda_cycle,
                  "cycle_B": F.l1_loss(rec_b, real_b) * o.lambda_cycle}
        if o.lambda_identity > 0:
            losses["idt_A"] = F.l1_loss(G_A(real_b), real_b) * o.lambda_cycle * o.lambda_identity
            losses["idt_B"] = F.l1_loss(G_B(real_a), real_a) * o.lambda_cycle * o.lambda_identity
        self.opt_g.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.ctx.average_gradients(self.g_params)
        self.opt_g.step()

        set_requires_grad([D_A, D_B], True)
        self.opt_d.zero_grad(set_to_none=True)
        losses["D_A"] = self.discriminator_loss(D_A, real_b, self.pool_b.query(fake_b))
        losses["D_B"] = self.discriminator_loss(D_B, real_a, self.pool_a.query(fake_a))
        (losses["D_A"] + losses["D_B"]).backward()
        self.ctx.average_gradients(self.d_params)
        self.opt_d.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    def discriminator_loss(self, D: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        noise = self.options.label_noise
        pred_real, pred_fake = D(real), D(fake.detach())
        real_target = 1.0 - noise * torch.rand_like(pred_real)
        fake_target = noise * torch.rand_like(pred_fake)
        return 0.5 * (_mse_to(pred_real, real_target) + _mse_to(pred_fake, fake_target))

    def fit(self, max_steps: int | None = None) -> int:
        """Train up to the end of the schedule (or ``max_steps`` more steps); returns the steps run."""
        from tqdm import tqdm

        o = self.options
        end = o.total_steps if max_steps is None else min(o.total_steps, self.step + max_steps)
        bar = tqdm(total=o.total_steps, initial=self.step, desc=self.name, unit="step", dynamic_ncols=True,
                   disable=not (self.progress and self.ctx.main), file=sys.stderr)
        sums: dict[str, float] = {}
        window, started, ran = 0, time.perf_counter(), 0
        self._since = started
        while self.step < end:
            losses = self.train_step(*self.batch(self.step))
            ran += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            window += 1
            bar.update(1)
            if self.step % o.log_every == 0 or self.step == o.total_steps:
                names = sorted(sums)
                totals = self.ctx.sum([sums[k] for k in names] + [window])
                count = totals[-1]
                line = {"step": self.step, "lr": o.lr_at(self.step - 1),
                        **{k: round(t / count, 6) for k, t in zip(names, totals, strict=False)},
                        "images_per_s": round(window * o.batch_size * 2 * self.ctx.world
                                              / max(time.perf_counter() - started, 1e-9), 2)}
                bar.set_postfix({k: f"{line[k]:.3f}" for k in ("G_A", "G_B", "cycle_A", "D_A") if k in line})
                if self.ctx.main:
                    self.files.out.mkdir(parents=True, exist_ok=True)
                    with open(self.files.log, "a") as fh:
                        fh.write(json.dumps(line) + "\n")
                sums, window, started = {}, 0, time.perf_counter()
            if self.step % o.save_every == 0 or self.step == end:
                self.save()
        bar.close()
        self._since = None
        if self.ctx.main:
            plot_losses(self.files.log, self.files.out / "loss.png", self.name)
        self.ctx.barrier()
        return ran


def plot_losses(log: Path, out: Path, title: str) -> Path | None:
    """The loss curves of ``log.jsonl`` (generators' adversarial, cycle, identity; discriminators) as a PNG."""
    if not log.is_file():
        return None
    lines = [json.loads(s) for s in log.read_text().splitlines() if s.strip()]
    if not lines:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [line["step"] for line in lines]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    groups = {"adversarial (generators)": ("G_A", "G_B"), "cycle / identity (x lambda)":
              ("cycle_A", "cycle_B", "idt_A", "idt_B"), "discriminators": ("D_A", "D_B")}
    for ax, (name, keys) in zip(axes, groups.items(), strict=True):
        for k in keys:
            if k in lines[0]:
                ax.plot(steps, [line[k] for line in lines], label=k, linewidth=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"CycleGAN {title}", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(out)
    return out


# ---------------------------------------------------------------- CLI

def parse_pairs(domain_lists: Sequence[str], pairs: str | None) -> list[tuple[str, str]]:
    """All pairs of each ``--domains`` list (in list order), or the ``--pairs`` among them."""
    chosen: list[tuple[str, str]] = []
    for text in domain_lists:
        names = [d.strip() for d in text.split(",") if d.strip()]
        if len(names) < 2 or len(set(names)) != len(names):
            raise UsageError(f"--domains {text!r}: give two or more different domains of one axis "
                             f"({'; '.join(a + ': ' + ','.join(n) for a, n in AXES.items())})")
        try:
            axes = {axis_of(d) for d in names}
        except ValueError as exc:
            raise UsageError(f"--domains: {exc}") from None
        if len(axes) != 1:
            raise UsageError(f"--domains {text!r} mixes colour and style domains: give one --domains per axis")
        chosen += list(combinations(names, 2))
    if pairs:
        wanted = [p.strip() for p in pairs.split(",") if p.strip()]
        known = {bundles.pair_name(a, b): (a, b) for a, b in chosen}
        unknown = [p for p in wanted if p not in known]
        if unknown:
            raise UsageError(f"--pairs {', '.join(unknown)}: not among the --domains pairs ({', '.join(known)})")
        chosen = [known[p] for p in wanted]
    return chosen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainOptions()
    p = parser
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="images (DIR or DIR/images) with label maps DIR/labels/<stem>.png")
    src.add_argument("--protocol", metavar="NAME", help="a synthetic protocol: render fresh portraits of its dataset")
    p.add_argument("--domains", action="append", required=True, metavar="A,B,...",
                   help="domains of one axis, e.g. black,brown,blond,red,grey or short,long; every pair is trained "
                   "(repeat for another axis)")
    p.add_argument("--pairs", metavar="A-B,...", help="train only these pairs of the --domains")
    p.add_argument("--out", required=True, metavar="DIR", help="pair folders and cyclegan.json go here")
    p.add_argument("--work-dir", metavar="DIR", help="training state (default DIR.train)")
    p.add_argument("--n-images", type=int, default=2000, help="--protocol: portraits to render (default 2000)")
    p.add_argument("--data-seed", type=int, default=1000,
                   help="--protocol: their seed (default 1000; the built-in protocols' images use seeds 0 and 1)")
    p.add_argument("--size", type=int, default=d.size, help=f"training and inference resolution (default {d.size})")
    p.add_argument("--iterations", type=int, default=d.iterations, help="steps at the full learning rate")
    p.add_argument("--decay-iterations", type=int, default=d.decay_iterations, help="steps of linear decay to 0")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images of each domain per step and process")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--beta1", type=float, default=d.beta1)
    p.add_argument("--lambda-cycle", type=float, default=d.lambda_cycle)
    p.add_argument("--lambda-identity", type=float, default=d.lambda_identity)
    p.add_argument("--pool-size", type=int, default=d.pool_size)
    p.add_argument("--label-noise", type=float, default=d.label_noise,
                   help="discriminator targets: fake U(0, x), real 1 - U(0, x) (default 0.2)")
    p.add_argument("--ngf", type=int, default=d.generator.ngf, help="generator width (official 64)")
    p.add_argument("--n-blocks", type=int, default=d.generator.n_blocks, help="residual blocks (official 9)")
    p.add_argument("--ndf", type=int, default=d.discriminator.ndf, help="discriminator width (official 64)")
    p.add_argument("--n-layers", type=int, default=d.discriminator.n_layers, help="PatchGAN layers (official 3)")
    p.add_argument("--half-files", action="store_true",
                   help="write the network files in float16 (half the size; training state stays float32)")
    p.add_argument("--min-images", type=int, default=8, help="refuse a pair with fewer images in a domain")
    p.add_argument("--seed", type=int, default=0, help="initialisation, batches, pools (default 0)")
    p.add_argument("--save-every", type=int, default=d.save_every, metavar="STEPS")
    p.add_argument("--log-every", type=int, default=d.log_every, metavar="STEPS")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop each pair after N more steps (resume later)")
    p.add_argument("--resume", action="store_true", help="continue from DIR.train/<pair>/state.pt")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (messages stay)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def run(args: argparse.Namespace) -> int:
    """Train the CycleGAN pairs of the given hair domains (seed 003's objective); one process or torchrun."""
    return run_distributed(lambda ctx: _run(args, ctx), args.device)


def _options(args: argparse.Namespace) -> TrainOptions:
    for name in ("size", "iterations", "batch_size", "save_every", "log_every", "n_images"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.decay_iterations < 0 or args.pool_size < 0 or not 0 <= args.label_noise < 0.5:
        raise UsageError("--decay-iterations and --pool-size must be >= 0, --label-noise in [0, 0.5)")
    if args.size % 4:
        raise UsageError(f"--size {args.size}: must be a multiple of 4 (two stride-2 stages)")
    return TrainOptions(args.size, args.iterations, args.decay_iterations, args.batch_size, args.lr, args.beta1,
                        args.lambda_cycle, args.lambda_identity, args.pool_size, args.label_noise, args.seed,
                        args.save_every, args.log_every, args.half_files,
                        GeneratorConfig(ngf=args.ngf, n_blocks=args.n_blocks),
                        DiscriminatorConfig(ndf=args.ndf, n_layers=args.n_layers))


def _source(args: argparse.Namespace, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    if args.data:
        folder = Path(args.data).expanduser().resolve()
        return folder, {"data": str(folder)}
    try:
        proto = protocols.load(args.protocol)
    except (protocols.ProtocolError, FileNotFoundError) as exc:
        raise UsageError(f"--protocol {args.protocol}: {exc}") from None
    if proto.dataset.kind != "synthetic":
        raise UsageError(f"--protocol {args.protocol}: its dataset is {proto.dataset.kind!r}; use --data DIR for "
                         "real images")
    benchmark_seeds = {name: protocols.load(name).dataset for name in protocols.builtin_names()}
    for name, ds in benchmark_seeds.items():
        if ds.kind == "synthetic" and ds.seed == args.data_seed:
            log(f"warning: --data-seed {args.data_seed} is the {name} protocol's seed: its portraits are among the "
                "training images")
    log(f"rendering {args.n_images} synthetic portraits at {proto.dataset.size} px (seed {args.data_seed}) ...")
    folder = synthetic_folder(args.n_images, proto.dataset.size, args.data_seed)
    return folder, {"protocol": proto.name, "n_images": args.n_images, "data_seed": args.data_seed,
                    "size": proto.dataset.size}


def _run(args: argparse.Namespace, ctx: DistContext) -> int:
    def log(message: str) -> None:
        if ctx.main and not args.quiet:
            print(message, file=sys.stderr, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    options = _options(args)
    chosen = parse_pairs(args.domains, args.pairs)
    out = Path(args.out).expanduser()
    work = Path(args.work_dir).expanduser() if args.work_dir else out.with_name(out.name + ".train")
    started = time.perf_counter()
    folder, data_info = _source(args, log) if ctx.main else (None, None)
    folder, data_info = ctx.broadcast((folder, data_info))
    wanted = {d for pair in chosen for d in pair}
    data, table = prepare_domains(labelled_images(folder), options.size, wanted, log)
    log("domains: " + ", ".join(f"{d} {data.counts[d]}" for d in sorted(wanted))
        + f" (classified in {time.perf_counter() - started:.1f} s)")
    if ctx.main:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(work / "domains.json", json.dumps({"classifier": CLASSIFIER_VERSION, "source": data_info,
                                                             "images": table}, indent=0) + "\n")
    small = [d for d in wanted if data.counts[d] < args.min_images]
    if small:
        raise UsageError(f"too few training images in domain(s) {', '.join(small)} (fewer than --min-images "
                         f"{args.min_images}): give more images (--n-images) or other --domains")
    command = "harness train cyclegan " + " ".join(shlex.quote(a) for a in sys.argv[3:]) \
        if sys.argv[1:3] == ["train", TRAINER_NAME] else None
    for a, b in chosen:
        name = bundles.pair_name(a, b)
        files = PairFiles(out / name, work / name)
        if files.state.is_file() and not args.resume:
            raise UsageError(f"{files.state} exists: pass --resume to continue it, or choose another --out")
        info = {"trainer": f"harness train {TRAINER_NAME}", "command": command, "classifier": CLASSIFIER_VERSION,
                "options": json.loads(json.dumps(asdict(options))),
                "data": {**data_info, "images": {a: data.counts[a], b: data.counts[b]}}, "processes": ctx.world}
        trainer = PairTrainer(a, b, data, options, files, ctx, info, log,
                              progress=not (args.quiet or args.no_progress))
        if args.resume and trainer.resume():
            log(f"{name}: resumed after step {trainer.step}")
        if trainer.step >= options.total_steps:
            log(f"{name}: already trained {trainer.step} steps")
            continue
        pair_started = time.perf_counter()
        ran = trainer.fit(args.max_steps)
        seconds = time.perf_counter() - pair_started
        rate = ran * options.batch_size * 2 * ctx.world / max(seconds, 1e-9)
        log(f"{name}: {ran} steps in {seconds:.1f} s ({rate:.1f} images/s); step {trainer.step}/"
            f"{options.total_steps} -> {files.out}")
    if ctx.main:
        log(f"wrote {out / bundles.BUNDLE_FILE}; use it with `harness run --methods cyclegan --set "
            f"cyclegan.checkpoints={out}`")
    return 0
