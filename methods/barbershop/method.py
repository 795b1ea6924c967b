"""The ``barbershop`` method: Barbershop (Zhu et al. 2021, ZPdesu/Barbershop) as a harness plugin.

Per triplet (face, shape, color), as the official ``main.py``: embed the (distinct) images in W+ and FS, align
the face to the shape image and, when it differs, to the colour image, blend S of face and colour on F aligned to
the colour image and render the result with F aligned to the shape image (:mod:`methods.barbershop.pipeline`).

Beyond the official script:

* CPU and CUDA; inputs of any size are LANCZOS-resized to ``size`` (1024) and the result back to the face size.
* Stages 1-2 (W+ and FS embeddings) are cached per image content (:mod:`methods.barbershop.cache`), and so are
  alignments per (face, other) pair: an image is embedded once, whatever the triplets and task variants, and the
  cache survives ``--resume`` and is shared by shards. ``cache=False`` turns it off.
* Latents of several images (pairs, triplets) are optimised together, ``batch_images`` at a time (0: 1 on CPU,
  where the generator runs sample by sample anyway, 4 elsewhere); results equal one-by-one runs up to float noise.
* Stage timings ``embedding``, ``fs``, ``alignment``, ``blending`` (``harness.timing.stages``); the optimisation
  step counts and cache hits of the last call are in :attr:`Barbershop.last_stats` (totals in
  :attr:`Barbershop.stats`), in each unit's record (``harness.unit.note``) and, with ``save_intermediates``, in
  ``counts.json``. No warm-up call (``warmup_calls = 0``): one call is minutes of optimisation.
* ``save_intermediates=True`` writes, per triplet, into ``RUN/intermediates/barbershop/<task>/<triplet>/`` under
  ``harness run`` (or ``DIR/<face>_<shape>_<color>/`` with ``intermediates_dir=DIR``):
  ``embedding_<image>.npz`` (w_plus, latent, F), ``alignment_<face>_<other>.npz`` (target segmentation, hair
  masks, occluded region, mixed F), ``blending.npz`` (interpolation u, latent, masks, F used) and
  ``counts.json``. Image names are the harness image ids (annotations) or content-key prefixes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from harness import annotations, unit
from harness.method import Checkpoint, Method, Triplet
from harness.store import atomic_write_text
from harness.timing import stages
from harness.weights import WeightStore, cache_dir, sha256_file
from methods.barbershop import pipeline
from methods.barbershop.cache import NpzStore, cache_key, image_key
from methods.barbershop.losses import LatentPCA, StyleLoss, fit_latent_pca, load_vgg16_features, pca_filename
from methods.barbershop.params import BarbershopParams
from methods.nets import stylegan2
from methods.nets.bisenet import BISENET16, load_bisenet
from methods.nets.lpips import LPIPS_VGG_HEADS, VGG16_IMAGENET, load_lpips
from methods.ops import signed_tensor

PCA_CHECKPOINT = Checkpoint(
    key="barbershop_ffhq_pca",
    filename=pca_filename(stylegan2.CHECKPOINT.filename),
    source="https://github.com/ZPdesu/Barbershop/tree/main/pretrained_models (ffhq_PCA.npz, in the repository)",
    purpose="optional: Barbershop's PCA of the FFHQ mapping network output (P-norm loss); fitted and cached "
            "when absent",
    used_by=("barbershop",),
    official_path="ffhq_PCA.npz",
    download=("https://github.com/ZPdesu/Barbershop/raw/main/pretrained_models/ffhq_PCA.npz",),
)
PCA_FIT_SEED = 0


@dataclass
class InputImage:
    """One distinct input image at the working size."""

    key: str  # content key of the pixels at the working size
    name: str  # harness image id, or a key prefix
    hi: torch.Tensor  # [1,3,size,size] in [-1,1]
    lo: torch.Tensor  # [1,3,L,L] in [-1,1], PIL LANCZOS from the working-size image


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """The official ``ToPILImage(((x + 1) / 2).clamp(0, 1))`` (``mul(255).byte()``: truncation)."""
    x = ((image.detach().float().cpu() + 1) / 2).clamp(0, 1)
    return Image.fromarray(x.mul(255).byte().permute(1, 2, 0).numpy(), "RGB")


def load_barbershop_generator(weights: WeightStore, device: torch.device, params: BarbershopParams
                              ) -> tuple[stylegan2.Generator, torch.Tensor]:
    """The StyleGAN2 generator of ``ffhq.pt`` (``g_ema``, ``latent_avg``) with the parameters' sizes, frozen;
    filled weights get the mean mapping output of 4096 seeded z as ``latent_avg`` (as :func:`load_generator`)."""
    gen = stylegan2.Generator(params.size, params.latent, params.n_mlp, params.channel_multiplier)
    obj = weights.load_network(gen, stylegan2.CHECKPOINT, extract=lambda o: o["g_ema"],
                               recipe=stylegan2.fill_recipe)
    gen = gen.to(device).eval().requires_grad_(False)
    if obj is not None and "latent_avg" in obj:
        latent_avg = torch.as_tensor(obj["latent_avg"]).reshape(-1).to(device=device, dtype=torch.float32)
    else:
        seeded = torch.Generator().manual_seed(stylegan2.LATENT_AVG_SEED)
        latent_avg = gen.mean_latent(stylegan2.LATENT_AVG_SAMPLES, seeded)
    return gen, latent_avg


def latent_pca(generator: stylegan2.Generator, weights: WeightStore, params: BarbershopParams,
               mapping_id: str, device: torch.device) -> tuple[LatentPCA, str]:
    """The P-norm PCA: ``ffhq_PCA.npz`` when present (real weights only), else fitted on
    ``effective_pca_samples`` mapping outputs and cached under ``cache_dir()/barbershop/pca``."""
    if not weights.fill:
        path = weights.find(PCA_CHECKPOINT)
        if path is not None:
            return LatentPCA.load(path, device), f"file:{sha256_file(path)}"
    n = params.effective_pca_samples
    key = cache_key("pca", mapping_id, n, PCA_FIT_SEED)
    path = cache_dir() / "barbershop" / "pca" / f"{key}.npz"
    if not path.is_file():
        pca = fit_latent_pca(generator.mapping, n_samples=n, seed=PCA_FIT_SEED, device=device,
                             latent_dim=params.latent, n_components=params.latent)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            pca.save(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return LatentPCA.load(path, device), f"fitted:{key}"


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-item tensors that carry a batch axis of 1."""
    return torch.cat(list(tensors))


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Barbershop(Method):
    """Barbershop: per-image W+/FS optimisation, segmentation-guided alignment, S blending (minutes per image)."""

    name: ClassVar[str] = "barbershop"
    description: ClassVar[str] = ("Barbershop (ZPdesu/Barbershop): W+/FS embedding, alignment to a target "
                                  "segmentation, masked-LPIPS blending of S; latent optimisation per image")
    Params: ClassVar[type] = BarbershopParams
    # One call is minutes of optimisation, and a warm-up call would only repeat it: none.
    warmup_calls: ClassVar[int | None] = 0

    def __init__(self, params: Any = None, variant: str | None = None):
        super().__init__(params, variant)
        self.stats: Counter = Counter()
        self.last_stats: dict[str, int] = {}

    # ------------------------------------------------------------ set-up
    def checkpoints(self) -> Sequence[Checkpoint]:
        return (stylegan2.CHECKPOINT, BISENET16, VGG16_IMAGENET, LPIPS_VGG_HEADS)

    def setup(self, device, weights: WeightStore) -> None:
        p = self.params
        device = torch.device(device)
        generator, latent_avg = load_barbershop_generator(weights, device, p)
        gen_id = weights.identity(stylegan2.CHECKPOINT, f"{p.size}:{p.latent}:{p.n_mlp}:{p.channel_multiplier}")
        mapping_id = gen_id if not weights.fill else f"filled:mapping:{p.latent}:{p.n_mlp}"
        pca, pca_id = latent_pca(generator, weights, p, mapping_id, device)
        lpips = load_lpips(weights, device)
        vgg = load_vgg16_features(weights, device)
        parser = load_bisenet(weights, device, "bisenet16")
        style = StyleLoss(vgg, distance="l2", size=p.low_size, per_sample=True)
        self.nets = pipeline.Networks(generator, latent_avg, pca, parser, lpips, style)
        self.noise = pipeline.Noise(p.noise, generator, p.seed)
        self.identity = {
            "generator": gen_id, "pca": pca_id,
            "vgg16": weights.identity(VGG16_IMAGENET, "vgg16"),
            "lpips": weights.identity(LPIPS_VGG_HEADS, "lpips"),
            "parser": weights.identity(BISENET16, "bisenet16"),
        }
        self.cache = NpzStore(cache_dir() / "barbershop" if p.cache else None)
        self.batch = p.batch_images

    # ------------------------------------------------------------ cache keys
    def _w_key(self, image: InputImage) -> str:
        p = self.params
        return cache_key("w_plus", image.key, self.identity["generator"], self.identity["pca"],
                         self.identity["vgg16"], self.identity["lpips"],
                         {k: getattr(p, k) for k in ("size", "channel_multiplier", "latent", "n_mlp", "opt_name",
                                                      "learning_rate", "lr_schedule", "percept_lambda", "l2_lambda",
                                                      "p_norm_lambda", "noise", "seed")},
                         p.steps("W_steps"))

    def _fs_key(self, image: InputImage) -> str:
        p = self.params
        return cache_key("fs", self._w_key(image), p.steps("FS_steps"), p.use_l_F,
                         p.l_F_lambda if p.use_l_F else None)

    def _align_key(self, face: InputImage, other: InputImage) -> str:
        p = self.params
        return cache_key("alignment", self._fs_key(face), self._fs_key(other), self.identity["parser"],
                         {k: getattr(p, k) for k in ("sign", "smooth", "ce_lambda", "style_lambda",
                                                      "align_more_region")},
                         [p.steps(k) for k in ("mask_steps", "align_steps1", "align_steps2")])

    # ------------------------------------------------------------ inputs
    def _input(self, image: Image.Image, images: dict[str, InputImage]) -> str:
        p = self.params
        rgb = image.convert("RGB")
        if rgb.size != (p.size, p.size):
            rgb = rgb.resize((p.size, p.size), Image.Resampling.LANCZOS)
        pixels = np.asarray(rgb)
        key = image_key(pixels)
        if key not in images:
            low = rgb if p.low_size == p.size else rgb.resize((p.low_size, p.low_size), Image.Resampling.LANCZOS)
            name = annotations.of(image).image_id or key[:12]
            device = self.nets.device
            images[key] = InputImage(key, name, signed_tensor(pixels).to(device),
                                     signed_tensor(np.asarray(low)).to(device))
        return key

    def _batch_size(self) -> int:
        if self.batch:
            return self.batch
        return 1 if self.nets.device.type == "cpu" else 4

    # ------------------------------------------------------------ stages
    def _embed(self, images: dict[str, InputImage], stats: Counter) -> dict[str, pipeline.EmbeddingResult]:
        """Stages 1-2 for every image (cache first); returns per-image results with a batch axis of 1."""
        p, device = self.params, self.nets.device
        out: dict[str, pipeline.EmbeddingResult] = {}
        w_plus: dict[str, torch.Tensor] = {}
        need_fs = []
        with stages("embedding"):
            need_w = []
            for key, image in images.items():
                fs = self.cache.load("embeddings/fs", self._fs_key(image))
                if fs is not None:  # holds the W+ latent too
                    out[key] = pipeline.EmbeddingResult(*(torch.from_numpy(fs[k]).to(device)[None]
                                                          for k in ("w_plus", "latent", "F")))
                    stats["fs_cache_hits"] += 1
                    continue
                need_fs.append(key)
                w = self.cache.load("embeddings/w_plus", self._w_key(image))
                if w is not None:
                    w_plus[key] = torch.from_numpy(w["w_plus"]).to(device)[None]
                    stats["w_plus_cache_hits"] += 1
                else:
                    need_w.append(key)
            for chunk in _chunks(need_w, self._batch_size()):
                batch = [images[k] for k in chunk]
                result, _ = pipeline.embed_w_plus(self.nets, self.noise, p, _stack([b.hi for b in batch]),
                                                  _stack([b.lo for b in batch]), chunk)
                for i, image in enumerate(batch):
                    w_plus[image.key] = result[i:i + 1]
                    self.cache.save("embeddings/w_plus", self._w_key(image), {"w_plus": result[i].cpu().numpy()})
                stats["images_embedded"] += len(batch)
                stats["steps_w_plus"] += p.steps("W_steps") * len(batch)
        with stages("fs"):
            for chunk in _chunks(need_fs, self._batch_size()):
                batch = [images[k] for k in chunk]
                result, _ = pipeline.embed_fs(self.nets, self.noise, p, _stack([w_plus[k] for k in chunk]),
                                              _stack([b.hi for b in batch]), _stack([b.lo for b in batch]), chunk)
                for i, image in enumerate(batch):
                    one = pipeline.EmbeddingResult(result.w_plus[i:i + 1], result.latent[i:i + 1],
                                                   result.feat[i:i + 1])
                    out[image.key] = one
                    self.cache.save("embeddings/fs", self._fs_key(image),
                                    {"w_plus": one.w_plus[0].cpu().numpy(), "latent": one.latent[0].cpu().numpy(),
                                     "F": one.feat[0].cpu().numpy()})
                stats["images_fs_embedded"] += len(batch)
                stats["steps_fs"] += p.steps("FS_steps") * len(batch)
        return out

    def _labels(self, images: dict[str, InputImage]) -> dict[str, torch.Tensor]:
        """Parser labels ``[1,P,P]`` of the input images (official ``preprocess_img``: clamped, normalised)."""
        with torch.no_grad():
            return {k: pipeline.parser_logits(self.nets, im.hi, self.params.parser_size, real=True).argmax(1)
                    for k, im in images.items()}

    def _align(self, pairs: list[tuple[str, str]], images: dict[str, InputImage],
               emb: dict[str, pipeline.EmbeddingResult], labels: dict[str, torch.Tensor], stats: Counter
               ) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
        """Alignment of each (face, other) pair -> {"F": mixed F [1,512,32,32], masks...} (cache first)."""
        p, device = self.params, self.nets.device
        out: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        todo = []
        for pair in pairs:
            cached = self.cache.load("alignments", self._align_key(images[pair[0]], images[pair[1]]))
            if cached is None:
                todo.append(pair)
                continue
            out[pair] = {k: torch.from_numpy(v).to(device)[None] for k, v in cached.items()}
            stats["alignment_cache_hits"] += 1
        for chunk in _chunks(todo, self._batch_size()):
            keys = [f"{a}/{b}" for a, b in chunk]
            face = pipeline.EmbeddingResult(*(_stack([getattr(emb[a], f) for a, _ in chunk])
                                              for f in ("w_plus", "latent", "feat")))
            other = pipeline.EmbeddingResult(*(_stack([getattr(emb[b], f) for _, b in chunk])
                                               for f in ("w_plus", "latent", "feat")))
            seg, _ = pipeline.target_segmentation(self.nets, self.noise, p, _stack([labels[a] for a, _ in chunk]),
                                                  _stack([labels[b] for _, b in chunk]), keys)
            mixed, _ = pipeline.align(self.nets, self.noise, p, face, other, seg, keys)
            for i, pair in enumerate(chunk):
                result = {"F": mixed[i], "target": seg.target[i].to(torch.uint8), "hair_target": seg.hair_target[i],
                          "hair_face": seg.hair_face[i], "hair_other": seg.hair_other[i],
                          "occluded": seg.occluded[i]}
                out[pair] = {k: v[None] for k, v in result.items()}
                self.cache.save("alignments", self._align_key(images[pair[0]], images[pair[1]]),
                                {k: v.cpu().numpy() for k, v in result.items()})
            stats["pairs_aligned"] += len(chunk)
            stats["steps_mask"] += 2 * p.steps("mask_steps") * len(chunk)
            stats["steps_align1"] += p.steps("align_steps1") * len(chunk)
            stats["steps_align2"] += p.steps("align_steps2") * len(chunk)
        return out

    def _blend(self, roles: list[tuple[str, str, str]], images: dict[str, InputImage],
               emb: dict[str, pipeline.EmbeddingResult], aligned: dict[tuple[str, str], dict[str, torch.Tensor]],
               labels: dict[str, torch.Tensor], stats: Counter) -> list[pipeline.BlendResult]:
        p = self.params
        results: list[pipeline.BlendResult] = []
        for chunk in _chunks(roles, self._batch_size()):
            hair = {k: pipeline.hair_of(labels[k]) for triplet in chunk for k in triplet}
            result = pipeline.blend(
                self.nets, self.noise, p,
                face_latent=_stack([emb[f].latent for f, _, _ in chunk]),
                color_latent=_stack([emb[c].latent for _, _, c in chunk]),
                feat_color=_stack([aligned[(f, c)]["F"] for f, _, c in chunk]),
                feat_shape=_stack([aligned[(f, s)]["F"] for f, s, _ in chunk]),
                face_lo=_stack([images[f].lo for f, _, _ in chunk]),
                color_lo=_stack([images[c].lo for _, _, c in chunk]),
                hair_face=_stack([hair[f] for f, _, _ in chunk]),
                hair_color=_stack([hair[c] for _, _, c in chunk]),
                keys=["/".join(t) for t in chunk])
            for i in range(len(chunk)):
                results.append(pipeline.BlendResult(
                    result.image[i:i + 1], result.interpolation[i:i + 1], result.latent[i:i + 1],
                    result.mask_face[i:i + 1], result.mask_hair[i:i + 1], result.trace))
            stats["triplets_blended"] += len(chunk)
            stats["steps_blend"] += p.steps("blend_steps") * len(chunk)
        return results

    def teardown(self) -> None:
        """Drop the networks; keep parameters and the step / cache statistics."""
        for name in list(vars(self)):
            if name not in ("params", "variant", "stats", "last_stats"):
                delattr(self, name)

    # ------------------------------------------------------------ transfer
    def transfer(self, face: Image.Image, shape: Image.Image, color: Image.Image) -> Image.Image:
        return self.transfer_batch([(face, shape, color)])[0]

    def transfer_batch(self, triplets: Sequence[Triplet]) -> list[Image.Image]:
        stats: Counter = Counter()
        images: dict[str, InputImage] = {}
        roles = [tuple(self._input(im, images) for im in triplet) for triplet in triplets]
        emb = self._embed(images, stats)
        with stages("alignment"):
            labels = self._labels(images)
            pairs = list(dict.fromkeys(pair for f, s, c in roles for pair in ((f, s), (f, c))))
            aligned = self._align(pairs, images, emb, labels, stats)
        with stages("blending"):
            blended = self._blend(roles, images, emb, aligned, labels, stats)
        self.last_stats = dict(stats)
        self.stats.update(stats)
        unit.note(**self.last_stats)  # -> the unit's record (records.jsonl "extras")
        if self.params.save_intermediates:
            for index, (triplet, result) in enumerate(zip(roles, blended, strict=True)):
                folder = self.intermediates_folder([images[k].name for k in triplet], index)
                if folder is not None:
                    self._save_intermediates(folder, triplet, images, emb, aligned, result, stats)
        outputs = []
        for (face, _, _), result in zip(triplets, blended, strict=True):
            image = tensor_to_pil(result.image[0])
            if image.size != face.size:
                image = image.resize(face.size, Image.Resampling.LANCZOS)
            outputs.append(image)
        return outputs

    def intermediates_folder(self, names: Sequence[str], index: int = 0) -> Path | None:
        """``intermediates_dir/<face>_<shape>_<color>/``; without ``intermediates_dir``, under the harness,
        ``RUN/intermediates/barbershop/<task>/<triplet>/`` (:func:`harness.unit.intermediates_dir`)."""
        chosen = self.params.intermediates_dir
        return unit.intermediates_dir(index, Path(chosen) / "_".join(names) if chosen else None)

    def _save_intermediates(self, folder: Path, triplet: tuple[str, str, str], images: dict[str, InputImage],
                            emb: dict[str, pipeline.EmbeddingResult],
                            aligned: dict[tuple[str, str], dict[str, torch.Tensor]], result: pipeline.BlendResult,
                            stats: Counter) -> None:
        folder.mkdir(parents=True, exist_ok=True)

        def save(name: str, arrays: dict[str, torch.Tensor]) -> None:
            path = folder / name
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **{k: v.detach().cpu().numpy()[0] for k, v in arrays.items()})
            os.replace(tmp, path)

        for key in dict.fromkeys(triplet):
            e = emb[key]
            save(f"embedding_{images[key].name}.npz", {"w_plus": e.w_plus, "latent": e.latent, "F": e.feat})
        face, shape, color = triplet
        for other in dict.fromkeys((shape, color)):
            save(f"alignment_{images[face].name}_{images[other].name}.npz", aligned[(face, other)])
        save("blending.npz", {"interpolation": result.interpolation, "latent": result.latent,
                              "mask_face": result.mask_face, "mask_hair": result.mask_hair,
                              "F_shape": aligned[(face, shape)]["F"], "F_color": aligned[(face, color)]["F"]})
        counts = {"call": dict(stats), "params_steps": {k: self.params.steps(k) for k in (
            "W_steps", "FS_steps", "mask_steps", "align_steps1", "align_steps2", "blend_steps")}}
        atomic_write_text(folder / "counts.json", json.dumps(counts, indent=2, sort_keys=True))
