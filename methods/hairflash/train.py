"""Training the HairFlash blending encoder: ``harness train hairflash-blending`` (report sections 4.2, 7.1, 8.2).

**Data.** Triplets (face, shape, colour) of aligned images, drawn by ``--seed`` from a folder (``--n-triplets``, as
the report's 15000 / 3000 FFHQ triplets; the report keeps only colour images that have hair, so triplets whose
colour image has less than ``--min-color-hair`` of its 256x256 pixels in its eroded hair mask are dropped and more
are drawn), or listed in a "face shape color" file (``--triplets``). Each triplet runs once through the pipeline
up to blending (embedding, alignment, the colour hair-shape step when the variant aligns colour; the method's
per-image / per-pair stage caches are reused) and its blending inputs become one ``.npz`` record in the hairflash
cache (kind ``blending_inputs``; keyed by the images' content, the weights' identity and the parameters that
matter, so other runs and variants with the same colour-alignment setting reuse it)::

    S_face, S_color, S_shape [n,512]   F_align [512,32,32]   face, color, shape [3,256,256] uint8
    target_mask (M_target), hair_align (H_align), hair_color (HM_3E = H_color), hair_shape [1,256,256] uint8
    e_face, e_color, e_shape [512]: CLIP of the encoder's masked inputs (CLIP is frozen), also the losses' targets
    color_hair: the colour image's hair fraction

``H_align`` is, as in the report, the hair of the image rendered from ``F_align`` (``G(S_face, 4.., F_align)``,
parsed by BiSeNet at full size): the region where the result has its hair.

**Losses** (report 4.2, 8.2) on ``I_blend = G(S_blend, 4.., F_align)`` bicubic-downsampled to 256, with
``L_clip(a, b, Ma, Mb) = 1 - cos(CLIP(a * Ma), CLIP(b * Mb))``::

    L = l_color * L_clip(I_blend, I_color, H_align, H_color) + l_face * L_clip(I_blend, I_face, M_target, M_target)
        + l_shape * L_shape                      (l_color = l_face = 1, l_shape = --shape-weight)

``--shape-loss`` (the ``final`` variant's default is ``cossim-sobel``, the report's SobelCosSim; others ``none``):
``cossim-gray`` / ``cossim-sobel`` = ``L_clip`` of the filtered images; ``mse-gray`` = MSE of the CLIP
embeddings of the filtered masked images (the report's ``MSE_clip``); ``mse-sobel`` = pixel MSE of the filtered
masked images (the report's SobelMSE "without CLIP embeddings"), averaged over the mask. Grayscale: ITU-R 601
luma; Sobel: gradient magnitude of the luma in [0, 1] over 4 sqrt(2), mapped to [-1, 1], three channels.
The report's formulas compare with the *face* image on ``M_target`` (``--shape-reference face``, the default)
while its prose speaks of a loss "on the shape image"; ``--shape-reference shape`` compares the result's hair
(``H_align``) with the shape image's hair instead (CLIP losses only: the two are not pixel-aligned).

**Optimisation.** Adam (lr 1e-4, weight decay 1e-6) on the modulation modules only (CLIP and StyleGAN2 frozen;
gradients flow through both), ``--epochs`` x ``--batch-size``. A fresh encoder starts from PyTorch's default
initialisation seeded by ``--seed`` (``--init CKPT`` starts from a blending checkpoint instead). StyleGAN noise
per sample and epoch from the method's ``noise`` parameter (``seeded``: keyed by the record and the epoch).

**Files.** ``--out CKPT`` is the released layout (``{'model_state_dict': non-CLIP keys, 'arch', 'rows', ...}``),
loadable as the variant by ``harness run`` when it carries the variant's declared file name (``blending_final.pth``
...) in ``--weights-dir``. Beside it, ``CKPT.train/`` (``--work-dir``): ``state.pt`` (modulation weights,
optimiser, epochs done, RNG states), ``log.jsonl`` (one line per epoch; ``eval_loss`` is the loss of a fixed
batch with fixed noise, before training as epoch 0), ``dataset.json`` (the triplets and their records). Both
files are written atomically every ``--save-every`` epochs and at the end; ``--resume`` continues from
``state.pt``.

**Processes.** One process (CPU or one GPU), or ``torchrun --nproc_per_node=K harness train hairflash-blending
...``: ranks split the data preparation, train with DistributedDataParallel (NCCL on GPUs, gloo on CPUs) and a
DistributedSampler (a per-rank batch of ``--batch-size``); rank 0 writes the files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from harness.datasets import InputError, draw_triplets, image_ids, list_images, load_image, read_triplet_file
from harness.errors import UsageError
from harness.method import make_params
from harness.store import atomic_write_text
from harness.weights import WeightStore, cache_dir, describe_missing, load_state_dict_into, safe_load
from methods.cache import NpzStore
from methods.hairflash import checkpoints as ckpts
from methods.hairflash import pipeline
from methods.hairflash.blending import BlendingEncoder, ModulationPart, blending_checkpoint_dict
from methods.hairflash.cache import cache_key, image_key
from methods.hairflash.checkpoints import OfficialLayout
from methods.hairflash.encoders import CLIP_PREFIX
from methods.hairflash.method import NETWORK_CHECKPOINTS, HairFlash
from methods.hairflash.params import HairFlashParams
from methods.hairflash.variants import VARIANTS, Variant
from methods.nets import clip as clip_net
from methods.nets.clip import ClipConfig
from methods.nets.stylegan2 import Generator
from methods.training import (
    SINGLE_PROCESS,
    DistContext,
    rng_state,
    run_distributed,
    save_torch,
    set_rng_state,
)

TRAINER_NAME = "hairflash-blending"


RECORD_KIND = "blending_inputs"
RECORD_VERSION = 1  # bump when a record's content changes
SHAPE_LOSSES = ("none", "mse-gray", "cossim-gray", "mse-sobel", "cossim-sobel")
VARIANT_SHAPE_LOSS = {None: "none", "sobel_cossim": "cossim-sobel"}  # Variant.shape_loss -> --shape-loss
# Weight files the records depend on (everything up to the blending encoder's inputs, CLIP included).
DATA_CHECKPOINTS = (ckpts.GENERATOR, ckpts.FSE, ckpts.PSP, ckpts.E4E, ckpts.PARSER, ckpts.ROTATE,
                    ckpts.SHAPE_ADAPTOR, ckpts.SEAN, ckpts.SEAN_MEDIAN_CODES, ckpts.CLIP)
MASKS = ("target_mask", "hair_align", "hair_color", "hair_shape")
IMAGES = ("face", "color", "shape")
RENDER_START = 4  # I_blend = G(S_blend, 4.., F_align)
RenderNoise = Callable[[Sequence[int]], Any]  # dataset indices -> the generator's noise argument

# ---------------------------------------------------------------- losses


@dataclass(frozen=True)
class LossConfig:
    """Weights and kind of the losses (see the module docstring)."""

    color: float = 1.0
    face: float = 1.0
    shape: str = "none"
    shape_weight: float = 1.0
    shape_reference: str = "face"

    def __post_init__(self):
        if self.shape not in SHAPE_LOSSES:
            raise ValueError(f"shape loss must be one of {SHAPE_LOSSES}, got {self.shape!r}")
        if self.shape_reference not in ("face", "shape"):
            raise ValueError(f"shape reference must be 'face' or 'shape', got {self.shape_reference!r}")
        if self.shape == "mse-sobel" and self.shape_reference == "shape":
            raise ValueError("mse-sobel compares pixels: it needs the pixel-aligned face reference")


def grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma of RGB images, repeated over three channels (same value range)."""
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True).expand(-1, 3, -1, -1)


def sobel(images: Tensor) -> Tensor:
    """Sobel gradient magnitude of the luma of [-1, 1] RGB images (luma in [0, 1], replicate padding), divided by
    its maximum 4 sqrt(2) and mapped to [-1, 1], three channels."""
    luma = (grayscale(images)[:, :1] + 1) / 2
    gx = images.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([gx, gx.t()])[:, None]
    grad = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = torch.sqrt(grad.pow(2).sum(dim=1, keepdim=True) + 1e-8) / (4 * math.sqrt(2))
    return (magnitude * 2 - 1).expand(-1, 3, -1, -1)


FILTERS: dict[str, Callable[[Tensor], Tensor]] = {"gray": grayscale, "sobel": sobel}


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos`` per row."""
    return 1 - F.cosine_similarity(a.float(), b.float(), dim=-1)


def render_blend(generator: Generator, S_face: Tensor, rows: Tensor, F_align: Tensor, noise: Any) -> Tensor:
    """``I_blend`` at 256: ``S_face`` rows before the encoder's, the new ``rows``, rendered from ``F_align``."""
    S_blend = torch.cat([S_face[:, :S_face.shape[1] - rows.shape[1]], rows], dim=1)
    image = generator.synthesis(S_blend, start_layer=RENDER_START, layer_in=F_align, noise=noise).rgb
    return pipeline.downsample_to(image, pipeline.MASK_SIZE)


def blending_losses(blend_rows: Callable[..., Tensor], generator: Generator, encoder: BlendingEncoder,
                    batch: Mapping[str, Tensor], noise: Any, config: LossConfig) -> dict[str, Tensor]:
    """The report's losses for a batch of records (tensors on the device): ``{"loss", "color", "face", "shape"}``
    (batch means). ``blend_rows`` is the trained encoder's :meth:`BlendingEncoder.blend_embeds` (possibly
    through DistributedDataParallel); CLIP embeds the result in one pass for every loss."""
    S_face = batch["S_face"]
    start = S_face.shape[1] - encoder.config.rows
    rows = blend_rows(S_face[:, start:], batch["S_color"][:, start:], batch["e_face"], batch["e_color"],
                      batch["S_shape"][:, start:], batch["e_shape"])
    image = render_blend(generator, S_face, rows, batch["F_align"], noise)
    target, hair = batch["target_mask"], batch["hair_align"]
    views = [image * hair, image * target]
    kind, _, name = config.shape.partition("-")
    if config.shape != "none":
        reference, out_mask, ref_mask = ((batch["face"], target, target) if config.shape_reference == "face"
                                         else (batch["shape"], hair, batch["hair_shape"]))
        apply = FILTERS[name]
        filtered = apply(image) * out_mask
        with torch.no_grad():
            filtered_ref = apply(reference) * ref_mask
        if config.shape != "mse-sobel":
            views.append(filtered)
    embeds = encoder.get_image_embed(torch.cat(views)).chunk(len(views))
    out = {"color": cosine_distance(embeds[0], batch["e_color"]).mean(),
           "face": cosine_distance(embeds[1], batch["e_face"]).mean()}
    if config.shape == "none":
        out["shape"] = image.new_zeros(())
    elif config.shape == "mse-sobel":
        area = (out_mask.flatten(1).sum(dim=1) * 3).clamp(min=1.0)
        out["shape"] = ((filtered - filtered_ref).pow(2).flatten(1).sum(dim=1) / area).mean()
    else:
        with torch.no_grad():
            ref_embed = encoder.get_image_embed(filtered_ref)
        out["shape"] = (cosine_distance(embeds[2], ref_embed).mean() if kind == "cossim"
                        else F.mse_loss(embeds[2].float(), ref_embed.float()))
    out["loss"] = config.color * out["color"] + config.face * out["face"] + config.shape_weight * out["shape"]
    return out


class Trainee(nn.Module):
    """The trained part: the encoder's modulation modules (keys exactly those of a blending checkpoint); its
    forward is :meth:`BlendingEncoder.blend_embeds`. The encoder (and its frozen CLIP) is held outside the module
    tree, so DistributedDataParallel sees only the trained parameters."""

    def __init__(self, encoder: BlendingEncoder):
        super().__init__()
        self.modulation_module_list = encoder.modulation_module_list
        self.__dict__["encoder"] = encoder  # not a submodule

    def forward(self, latent_face: Tensor, latent_color: Tensor, e_face: Tensor, e_color: Tensor,
                latent_shape: Tensor, e_shape: Tensor) -> Tensor:
        return self.encoder.blend_embeds(latent_face, latent_color, e_face, e_color, latent_shape, e_shape)


# ---------------------------------------------------------------- records (the prepared data set)

def record_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """A stored record -> training tensors: masks float 0/1, images float in [-1, 1], codes float32."""
    out = {}
    for name, value in arrays.items():
        if name == "color_hair":
            continue
        t = torch.from_numpy(np.ascontiguousarray(value))
        if name in IMAGES:
            t = t.float() / 127.5 - 1
        out[name] = t.float()
    return out


def image_bytes(images: Tensor) -> Tensor:
    """[-1, 1] images -> uint8."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def make_records(method: HairFlash, embed: Callable[[Tensor], Tensor],
                 triplets: Sequence[tuple[Image.Image, Image.Image, Image.Image]], keys: Sequence[str]
                 ) -> list[dict[str, Tensor]]:
    """Blending inputs of ``triplets`` (stages 1-2 through ``method`` and its caches), one record each;
    ``embed`` is CLIP (:meth:`BlendingEncoder.get_image_embed`); ``keys`` name the records (noise of the
    ``H_align`` render)."""
    batch = method.blending_inputs(triplets)
    nets = method.nets
    gen = nets.generator
    items = method.noise.items("blend_mask", [[k] for k in keys])
    render = gen.synthesis(batch.S_face, start_layer=RENDER_START, layer_in=batch.F_align,
                           noise=pipeline.gan_noise(gen, items, RENDER_START)).rgb
    hair_align = pipeline.hair_of(pipeline.parse(nets, ((render + 1) / 2).clamp(0, 1)))
    e_face, e_color, e_shape = embed(torch.cat([batch.target_face, batch.hair_color, batch.hair_shape])).chunk(3)
    masks = {"target_mask": batch.masks.target_mask, "hair_align": hair_align,
             "hair_color": batch.masks.hair_color_eroded, "hair_shape": batch.hair_shape_eroded}
    images = {"face": batch.face_norm_256, "color": batch.color_norm_256, "shape": batch.shape_norm_256}
    records = []
    for j in range(len(triplets)):
        record = {"S_face": batch.S_face[j], "S_color": batch.S_color[j], "S_shape": batch.S_shape[j],
                  "F_align": batch.F_align[j], "e_face": e_face[j], "e_color": e_color[j], "e_shape": e_shape[j],
                  "color_hair": batch.masks.hair_color_eroded[j].mean()}
        record.update({name: m[j].round().to(torch.uint8) for name, m in masks.items()})
        record.update({name: image_bytes(im[j]) for name, im in images.items()})
        records.append({k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in record.items()})
    return records


class RecordStore:
    """Records as ``.npz`` files under ``root/blending_inputs/`` (the :mod:`methods.cache` layout, atomic)."""

    def __init__(self, root: Path):
        self.store = NpzStore(root)

    def path(self, key: str) -> Path:
        return self.store.path(RECORD_KIND, key)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, record: Mapping[str, Tensor]) -> None:
        self.store.save(RECORD_KIND, key, {name: t.detach().cpu().numpy() for name, t in record.items()})

    def load(self, key: str) -> dict[str, np.ndarray]:
        arrays = self.store.load(RECORD_KIND, key)
        if arrays is None:
            raise FileNotFoundError(f"training record {self.path(key)} is missing or unreadable")
        return arrays

    def color_hair(self, key: str) -> float:
        with np.load(self.path(key), allow_pickle=False) as npz:
            return float(npz["color_hair"])


class BlendingRecords(Dataset):
    """The prepared triplets as training samples (:func:`record_tensors` plus ``index``)."""

    def __init__(self, store: RecordStore, keys: Sequence[str]):
        self.store = store
        self.keys = list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {**record_tensors(self.store.load(self.keys[index])), "index": torch.tensor(index)}


def data_identity(weights: WeightStore, params: HairFlashParams, variant: Variant) -> dict[str, Any]:
    """What a record depends on besides its images: weights (sha256 or fill rule), parameters, colour
    alignment."""
    return {"version": RECORD_VERSION,
            "weights": {c.key: weights.identity(c) for c in DATA_CHECKPOINTS},
            "params": {k: getattr(params, k) for k in ("size", "channel_multiplier", "n_mlp", "latent", "mixing",
                                                       "smooth", "clip_precision")},
            "noise": pipeline.Noise(params.noise, params.seed).identity,
            "color_alignment": variant.color_alignment}


def record_key(identity: Mapping[str, Any], image_keys: Sequence[str]) -> str:
    return cache_key(RECORD_KIND, identity, *image_keys)


# ---------------------------------------------------------------- triplets

TripletPaths = tuple[Path, Path, Path]


def image_folder(data: Path) -> Path:
    """``data``, or ``data/images`` when only that holds the images (``harness data synth`` layout)."""
    try:
        if not list_images(data) and (data / "images").is_dir():
            return data / "images"
    except InputError as exc:
        raise UsageError(str(exc)) from None
    return data


class TripletSource:
    """Triplets of image paths: the first ``m`` drawn by seed from a folder's images (prefix-stable), or a fixed
    list (:meth:`listed`, :meth:`from_file`)."""

    def __init__(self, images: Sequence[Path] = (), seed: int = 0, fixed: Sequence[TripletPaths] | None = None):
        self.images = list(images)
        self.seed = seed
        self.fixed = None if fixed is None else list(fixed)

    @property
    def drawn(self) -> bool:
        return self.fixed is None

    @classmethod
    def from_folder(cls, data: Path, seed: int) -> TripletSource:
        return cls(list_images(image_folder(data)), seed)

    @classmethod
    def from_file(cls, path: Path, data: Path) -> TripletSource:
        entries, triplets = read_triplet_file(path, data)
        by_id = {e.id: e.source for e in entries}
        return cls.listed([(by_id[t.face], by_id[t.shape], by_id[t.color]) for t in triplets])

    @classmethod
    def listed(cls, triplets: Sequence[TripletPaths]) -> TripletSource:
        return cls(fixed=triplets)

    def first(self, m: int) -> list[TripletPaths]:
        if self.fixed is not None:
            return list(self.fixed)
        ids = image_ids(self.images)
        by_id = dict(zip(ids, self.images, strict=True))
        return [(by_id[t.face], by_id[t.shape], by_id[t.color]) for t in draw_triplets(ids, m, self.seed)]


# ---------------------------------------------------------------- data preparation

@dataclass
class Entry:
    """One prepared triplet."""

    face: str
    shape: str
    color: str
    key: str
    color_hair: float


def prepare_dataset(source: TripletSource, n: int, size: int, store: RecordStore, identity: Mapping[str, Any],
                    method: Callable[[], tuple[HairFlash, Callable[[Tensor], Tensor]]], ctx: DistContext,
                    min_color_hair: float = 0.0, chunk: int = 4, log: Callable[[str], None] = print
                    ) -> list[Entry]:
    """Records for ``n`` triplets of ``source`` (drawn ones with too little colour hair replaced by further
    draws); ranks prepare every ``world``-th triplet. ``method()`` gives the stage-1/2 method and CLIP, loaded on
    first need (not at all when every record exists)."""
    done: dict[int, Entry] = {}
    m = n
    cap = 20 * max(n, 1)
    while True:
        paths = source.first(m)
        mine = [i for i in range(len(paths)) if i % ctx.world == ctx.rank and i not in done]
        local = {}
        for start in range(0, len(mine), chunk):
            part = mine[start:start + chunk]
            images = [[load_image(p, size)[0] for p in paths[i]] for i in part]
            keys = [record_key(identity, [image_key(np.asarray(im)) for im in row]) for row in images]
            todo = [j for j, key in enumerate(keys) if not store.exists(key)]
            if todo:
                hairflash, embed = method()
                records = make_records(hairflash, embed, [tuple(images[j]) for j in todo], [keys[j] for j in todo])
                for j, record in zip(todo, records, strict=True):
                    store.put(keys[j], record)
            for j, i in enumerate(part):
                local[i] = Entry(*(str(p) for p in paths[i]), keys[j], store.color_hair(keys[j]))
            done_here = min(start + chunk, len(mine))
            if ctx.main and (done_here == len(mine) or (start // chunk) % 25 == 0):
                log(f"prepared {done_here}/{len(mine)} triplets (rank 0's share)")
        for part in ctx.all_gather(local):
            done.update(part)
        valid = [i for i in sorted(done) if not source.drawn or done[i].color_hair >= min_color_hair]
        if len(valid) >= n or not source.drawn:
            return [done[i] for i in valid[:n]]
        if m >= cap:
            raise UsageError(f"only {len(valid)} of {n} drawn triplets have a colour image with hair "
                             f"(>= {min_color_hair} of its pixels) after {m} draws: use more images or lower "
                             "--min-color-hair")
        m = min(cap, m + 2 * (n - len(valid)))


# ---------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-6
    seed: int = 0
    save_every: int = 1
    workers: int = 0
    losses: LossConfig = LossConfig()


@dataclass(frozen=True)
class WorkFiles:
    """The released checkpoint and the training files beside it."""

    out: Path
    root: Path

    @staticmethod
    def of(out: str | Path, work_dir: str | Path | None = None) -> WorkFiles:
        out = Path(out)
        return WorkFiles(out, Path(work_dir) if work_dir else out.with_name(out.name + ".train"))

    @property
    def state(self) -> Path:
        return self.root / "state.pt"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.json"


def seeded_noise(generator: Generator, noise: pipeline.Noise, keys: Sequence[str], stage: str,
                 *extra: str) -> RenderNoise:
    """Render noise of dataset indices: per record (and ``extra``, e.g. the epoch) from ``noise``."""
    return lambda indices: pipeline.gan_noise(generator, [noise.item(stage, keys[i], *extra) for i in indices],
                                              RENDER_START)


class Trainer:
    """Trains ``encoder``'s modulation modules on ``dataset``; rank 0 writes ``files``."""

    def __init__(self, encoder: BlendingEncoder, generator: Generator, dataset: BlendingRecords,
                 options: TrainOptions, files: WorkFiles, noise: pipeline.Noise, ctx: DistContext = SINGLE_PROCESS,
                 info: Mapping[str, Any] | None = None, log: Callable[[str], None] = print):
        self.encoder, self.generator, self.dataset = encoder, generator, dataset
        self.options, self.files, self.noise, self.ctx, self.log = options, files, noise, ctx, log
        self.info = dict(info or {})
        self.trainee = Trainee(encoder).to(ctx.device).train().requires_grad_(True)
        self.model: nn.Module = self.trainee
        if ctx.active:
            self.model = DistributedDataParallel(
                self.trainee, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                broadcast_buffers=False)
        self.optimizer = torch.optim.Adam(self.trainee.parameters(), lr=options.lr,
                                          weight_decay=options.weight_decay)
        self.epochs_done = 0
        self.steps = 0
        self.eval_indices = list(range(min(options.batch_size, len(dataset))))

    # ------------------------------------------------------------ state
    def resume(self) -> bool:
        """Load ``state.pt`` if present (every rank); True when it was."""
        if not self.files.state.is_file():
            return False
        state = safe_load(self.files.state, map_location=self.ctx.device)
        if state.get("arch") != self.info.get("arch"):
            raise UsageError(f"{self.files.state}: trained another architecture ({state.get('arch')}); "
                             f"this run is {self.info.get('arch')}")
        load_state_dict_into(self.trainee, state["trainee"], str(self.files.state))
        self.optimizer.load_state_dict(state["optimizer"])
        self.epochs_done, self.steps = int(state["epoch"]), int(state["steps"])
        set_rng_state(state["rng"])
        if self.ctx.main and self.files.log.is_file():  # drop lines of epochs after the saved state
            lines = [s for s in self.files.log.read_text().splitlines()
                     if s.strip() and json.loads(s)["epoch"] <= self.epochs_done]
            atomic_write_text(self.files.log, "".join(line + "\n" for line in lines))
        return True

    def save(self) -> None:
        """``state.pt`` and the released checkpoint, atomically (rank 0)."""
        if not self.ctx.main:
            return
        save_torch({"trainee": self.trainee.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "epoch": self.epochs_done, "steps": self.steps, "rng": rng_state(), **self.info},
                   self.files.state)
        save_torch(blending_checkpoint_dict(self.encoder, epoch=self.epochs_done, **self.info), self.files.out)

    # ------------------------------------------------------------ steps
    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        samples = default_collate([self.dataset[i] for i in indices])
        return {k: v.to(self.ctx.device) for k, v in samples.items()}

    def losses(self, batch: Mapping[str, Tensor], noise: RenderNoise, blend_rows: Callable[..., Tensor]
               ) -> dict[str, Tensor]:
        return blending_losses(blend_rows, self.generator, self.encoder, batch,
                               noise(batch["index"].tolist()), self.options.losses)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Loss of the fixed batch (the first records, fixed noise)."""
        noise = seeded_noise(self.generator, self.noise, self.dataset.keys, "eval")
        return float(self.losses(self.batch(self.eval_indices), noise, self.trainee)["loss"])

    def fit(self) -> list[dict[str, Any]]:
        """Train up to ``options.epochs``; returns this call's log lines."""
        opt = self.options
        sampler = DistributedSampler(self.dataset, num_replicas=self.ctx.world, rank=self.ctx.rank, shuffle=True,
                                     seed=opt.seed)
        loader = DataLoader(self.dataset, batch_size=opt.batch_size, sampler=sampler, num_workers=opt.workers,
                            pin_memory=self.ctx.device.type == "cuda", persistent_workers=opt.workers > 0)
        lines = []
        if self.epochs_done == 0 and self.steps == 0:
            lines.append(self.record({"epoch": 0, "steps": 0, "eval_loss": self.main_eval()}))
        while self.epochs_done < opt.epochs:
            epoch = self.epochs_done
            sampler.set_epoch(epoch)
            noise = seeded_noise(self.generator, self.noise, self.dataset.keys, "train", str(epoch))
            started = time.perf_counter()
            sums = torch.zeros(5, dtype=torch.float64, device=self.ctx.device)
            for samples in loader:
                batch = {k: v.to(self.ctx.device, non_blocking=True) for k, v in samples.items()}
                losses = self.losses(batch, noise, self.model)
                self.optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                self.optimizer.step()
                self.steps += 1
                count = len(batch["index"])
                parts = [losses[k].detach().double() * count for k in ("loss", "color", "face", "shape")]
                sums += torch.stack([*parts, sums.new_tensor(count)])
            total, color, face, shape, count = self.ctx.sum(sums.tolist())
            self.epochs_done = epoch + 1
            line = {"epoch": self.epochs_done, "steps": self.steps, "loss": total / count, "color": color / count,
                    "face": face / count, "shape": shape / count, "eval_loss": self.main_eval(),
                    "seconds": round(time.perf_counter() - started, 3)}
            lines.append(self.record(line))
            if self.epochs_done % opt.save_every == 0 or self.epochs_done == opt.epochs:
                self.save()
            self.ctx.barrier()
        return lines

    def main_eval(self) -> float | None:
        value = self.evaluate() if self.ctx.main else None
        return self.ctx.broadcast(value)

    def record(self, line: dict[str, Any]) -> dict[str, Any]:
        if self.ctx.main:
            self.files.root.mkdir(parents=True, exist_ok=True)
            with open(self.files.log, "a") as fh:
                fh.write(json.dumps(line) + "\n")
            parts = [f"{k} {v:.5f}" if isinstance(v, float) else f"{k} {v}" for k, v in line.items()]
            self.log(f"epoch {line['epoch']}/{self.options.epochs}: " + ", ".join(parts[1:]))
        return line


# ---------------------------------------------------------------- building the pieces

def new_encoder(variant: Variant, params: HairFlashParams, weights: WeightStore, device: torch.device,
                seed: int, init: Path | None = None, clip: ClipConfig | None = None) -> BlendingEncoder:
    """The variant's blending encoder with CLIP from ``weights`` (frozen) and fresh modulation modules (PyTorch's
    default initialisation under ``seed``), or those of the blending checkpoint ``init``. ``clip``: another CLIP
    configuration (tests)."""
    config = variant.arch.config(params.n_latent - pipeline.ROTATED_ROWS, clip)
    clip_model = clip_net.load_clip(weights, "cpu", params.clip_precision, config.clip)
    torch.manual_seed(seed)
    part = ModulationPart(variant.arch, config)
    if init is not None:
        obj = safe_load(init)
        if not isinstance(obj, Mapping) or "model_state_dict" not in obj:
            raise UsageError(f"--init {init}: expected a blending checkpoint ({{'model_state_dict': ...}})")
        state = {k: v for k, v in obj["model_state_dict"].items() if not k.startswith(CLIP_PREFIX)}
        load_state_dict_into(part, state, str(init))
    encoder = BlendingEncoder(variant.arch, config, clip_model, part.modulation_module_list)
    encoder.modulation_module_list.float()
    return encoder.to(device).eval()


def preparation_method(variant: Variant, params: HairFlashParams, weights: WeightStore, device: torch.device
                       ) -> HairFlash:
    """The ``hairflash`` method with the stage-1/2 networks only (no blending, no post-processing)."""
    nets = pipeline.load_nets(weights, device, params, variant, blending=False, postprocess=False)
    method = HairFlash(params, variant.name)
    identity = {name: weights.identity(ckpt) for name, ckpt in NETWORK_CHECKPOINTS.items()}
    identity["sean_median_codes"] = image_key(nets.sean.median_style_codes.detach().cpu().numpy())
    method.use_networks(nets, identity)
    return method


def parse_params(size: int, sets: Sequence[str] | None) -> HairFlashParams:
    overrides: dict[str, str] = {"size": str(size)}
    for item in sets or []:
        name, eq, value = item.partition("=")
        name = name.split(".", 1)[1] if name.startswith("hairflash") and "." in name else name
        if not eq or not name:
            raise UsageError(f"--set {item!r}: expected PARAM=VALUE, e.g. noise=buffers")
        overrides[name] = value
    try:
        return make_params(HairFlashParams, overrides)
    except ValueError as exc:
        raise UsageError(f"--set: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    variants = [v for v, spec in VARIANTS.items() if not spec.balding]
    p = parser
    p.add_argument("--variant", default="final", choices=variants, help="hairflash variant (default: final)")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of aligned images (or DIR/images)")
    p.add_argument("--out", required=True, metavar="CKPT",
                   help="checkpoint to write (name it as the variant declares, e.g. blending_final.pth, for "
                   "`harness run --weights-dir`); training files go to CKPT.train/")
    p.add_argument("--triplets", metavar="FILE", help="'face shape color' lines (names relative to --data) "
                   "instead of drawing triplets")
    p.add_argument("--n-triplets", type=int, default=15000, help="triplets to draw (default 15000; report: "
                   "15000 or 3000); a --triplets file is used whole")
    p.add_argument("--seed", type=int, default=0, help="triplet draws, initialisation, shuffling (default 0)")
    p.add_argument("--size", type=int, default=1024, help="pipeline size (256/512 only with --fill-weights)")
    p.add_argument("--min-color-hair", type=float, default=0.01, metavar="FRACTION",
                   help="drawn triplets need this much hair in the colour image (default 0.01)")
    p.add_argument("--epochs", type=int, default=1000, help="default 1000 (the report)")
    p.add_argument("--batch-size", type=int, default=4, help="per process (default 4)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--weight-decay", type=float, default=1e-6, help="Adam weight decay (default 1e-6)")
    p.add_argument("--lambda-color", type=float, default=1.0)
    p.add_argument("--lambda-face", type=float, default=1.0)
    p.add_argument("--shape-loss", choices=SHAPE_LOSSES, help="default: the variant's (final: cossim-sobel)")
    p.add_argument("--shape-weight", type=float, default=1.0, help="lambda_shape (default 1)")
    p.add_argument("--shape-reference", choices=("face", "shape"), default="face",
                   help="image the shape loss compares with (default face, the report's formulas)")
    p.add_argument("--init", metavar="CKPT", help="start from this blending checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from CKPT.train/state.pt")
    p.add_argument("--work-dir", metavar="DIR", help="training files (default CKPT.train)")
    p.add_argument("--data-cache", metavar="DIR", help="where the prepared records go (default: the harness "
                   "cache, hairflash/blending_inputs)")
    p.add_argument("--prepare-only", action="store_true", help="prepare the records and stop")
    p.add_argument("--save-every", type=int, default=1, metavar="EPOCHS")
    p.add_argument("--workers", type=int, help="data-loader workers (default 4 on GPUs, 0 on CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--weights-dir", metavar="DIR", help="checkpoints (an official pretrained_models/ works)")
    p.add_argument("--fill-weights", action="store_true",
                   help="TEST SWITCH: every frozen network filled by the parity rule instead of checkpoints")
    p.add_argument("--set", action="append", metavar="PARAM=VALUE",
                   help="hairflash parameter, e.g. noise=buffers or clip_precision=fp32 (repeatable)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Train the HairFlash blending encoder of a variant (report sections 4.2 and 8): triplets run through the
    pipeline up to blending once (cached), then Adam on the CLIP colour/face losses (+ the variant's shape loss).
    One process, or several under torchrun."""
    return run_distributed(lambda ctx: _run(args, ctx), args.device)


def _run(args: argparse.Namespace, ctx: DistContext) -> int:
    def log(message: str) -> None:
        if ctx.main and not args.quiet:
            print(message, flush=True)

    variant = VARIANTS[args.variant]
    params = parse_params(args.size, args.set)
    try:
        losses = LossConfig(args.lambda_color, args.lambda_face,
                            args.shape_loss or VARIANT_SHAPE_LOSS[variant.shape_loss], args.shape_weight,
                            args.shape_reference)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for name in ("n_triplets", "epochs", "batch_size", "save_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if params.size != 1024 and not args.fill_weights:
        raise UsageError(f"--size {params.size}: no released checkpoint fits; only with --fill-weights")
    weights = OfficialLayout(WeightStore(args.weights_dir, fill=args.fill_weights))
    missing = weights.missing(DATA_CHECKPOINTS)
    if missing:
        raise UsageError("missing weights for training the blending encoder:\n"
                       + describe_missing(missing, weights.search_dirs))
    files = WorkFiles.of(args.out, args.work_dir)
    if files.state.is_file() and not args.resume:
        raise UsageError(f"{files.state} exists: pass --resume to continue it, or choose another --out / --work-dir")
    data = Path(args.data)
    try:
        source = (TripletSource.from_file(Path(args.triplets), data) if args.triplets
                  else TripletSource.from_folder(data, args.seed))
    except InputError as exc:
        raise UsageError(str(exc)) from None
    device = ctx.device
    encoder = new_encoder(variant, params, weights, device, args.seed, Path(args.init) if args.init else None)
    store = RecordStore(Path(args.data_cache) if args.data_cache else cache_dir() / "hairflash")
    identity = data_identity(weights, params, variant)
    loaded: list[HairFlash] = []

    def method() -> tuple[HairFlash, Callable[[Tensor], Tensor]]:
        if not loaded:
            log(f"loading the stage-1/2 networks ({'filled' if weights.fill else 'checkpoints'}) on {device}")
            loaded.append(preparation_method(variant, params, weights, device))
        return loaded[0], encoder.get_image_embed

    dataset_config = {"data": str(data.resolve()), "triplets": args.triplets, "n": args.n_triplets,
                      "seed": args.seed, "min_color_hair": args.min_color_hair, "identity": cache_key(identity)}
    entries = None
    if args.resume and files.dataset.is_file():
        saved = json.loads(files.dataset.read_text())
        if saved.get("config") != dataset_config:
            raise UsageError(f"--resume: {files.dataset} was prepared with other data options or weights "
                           f"({saved.get('config')})")
        entries = [Entry(**e) for e in saved["entries"]]
        if not all(store.exists(e.key) for e in entries):
            source = TripletSource.listed([(Path(e.face), Path(e.shape), Path(e.color)) for e in entries])
            entries = None
    if entries is None:
        started = time.perf_counter()
        try:
            n = args.n_triplets if source.drawn else len(source.fixed)
            entries = prepare_dataset(source, n, params.size, store, identity, method, ctx,
                                      args.min_color_hair if source.drawn else 0.0, log=log)
        except InputError as exc:
            raise UsageError(str(exc)) from None
        log(f"data set: {len(entries)} triplets prepared in {time.perf_counter() - started:.1f} s "
            f"(records in {store.path('x').parent.parent})")
        if ctx.main:
            atomic_write_text(files.dataset, json.dumps({"config": dataset_config,
                                                         "entries": [asdict(e) for e in entries]}, indent=1))
    ctx.barrier()
    if args.prepare_only:
        return 0
    generator = loaded[0].nets.generator if loaded else pipeline.load_generator(weights, params, device)
    if loaded:
        loaded[0].teardown()  # free the stage-1/2 networks (the generator stays referenced)
    dataset = BlendingRecords(store, [e.key for e in entries])
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    options = TrainOptions(args.epochs, args.batch_size, args.lr, args.weight_decay, args.seed, args.save_every,
                           workers, losses)
    info = {"variant": variant.name, "arch": asdict(variant.arch), "losses": asdict(losses),
            "trainer": f"harness train {TRAINER_NAME}", "filled_weights": bool(args.fill_weights),
            "params": {"size": params.size, "noise": params.noise, "clip_precision": params.clip_precision},
            "n_triplets": len(entries)}
    trainer = Trainer(encoder, generator, dataset, options, files, pipeline.Noise(params.noise, params.seed), ctx,
                      info, log)
    if args.resume and trainer.resume():
        log(f"resumed {files.state} after epoch {trainer.epochs_done}")
    if trainer.epochs_done >= options.epochs:
        log(f"already trained {trainer.epochs_done} epochs (--epochs {options.epochs}): nothing to do")
        return 0
    trainer.fit()
    log(f"wrote {files.out} (variant {variant.name}); `harness run --methods hairflash:{variant.name}` loads it "
        f"from --weights-dir as {variant.blending.filename}")
    if files.out.name != variant.blending.filename:
        print(f"note: harness run looks for {variant.blending.filename}, not {files.out.name}", file=sys.stderr)
    return 0
