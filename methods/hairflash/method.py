"""The ``hairflash`` method: HairFast (AIRI-Institute/HairFastGAN, published as HairFlash in the source report) as a
harness plugin, with the report's variants (:mod:`methods.hairflash.variants`).

Per triplet (face, shape, colour), as the official ``HairFast.swap``: identical inputs are merged; the distinct
images are embedded; the face is aligned to the shape image (always, even when they are one image -- the
official identity checks never fire); the colour image gets its own hair-shape step unless it is the shape image
(or the variant drops colour alignment); blending; post-processing (:mod:`methods.hairflash.pipeline`).

Beyond the official script:

* CPU and CUDA; inputs of any size are LANCZOS-resized to ``size`` (1024) and the result back to the face size.
* Work is cached by content (:mod:`methods.hairflash.cache`; ``cache=False`` turns it off): the per-image
  embedding, the (face, other) hair-shape step, the (face, shape) SEAN inpainting + re-encoding, the face
  image's post-processing encoder pass and the CLIP embeddings of the blending encoder's masked images, in memory
  (LRU) and on disk under ``cache_dir()/hairflash`` -- reused across triplets, task variants, method variants that
  share the networks, and ``--resume``. Keys hold the image content, the parameters that matter, the noise and
  the weights' identity (file sha256, or the fill rule).
* The distinct images of a call are embedded in batches of ``batch_size``; ``triplet_batch`` triplets per call.
* ``hairflash:balding``: the face image is first replaced by HairMapper's bald version (:mod:`methods.balding`;
  cached per image under the kind ``bald``; stage ``balding``), as the report's WithBalding experiment did.
* Stage timings ``embedding``, ``alignment`` (hair-shape steps, inpainting, F blend), ``blending``,
  ``post_processing``. Work counts and cache hits: :attr:`HairFlash.last_stats` / :attr:`HairFlash.stats`, and
  in each unit's record (``harness.unit.note``). Warm-up calls fill no cache.
* ``save_intermediates=True`` writes, per triplet, into ``RUN/intermediates/<method>/<task>/<triplet>/`` under
  ``harness run`` (or ``DIR/<variant>/<face>_<shape>_<color>/`` with ``intermediates_dir=DIR``):
  ``embedding_<image>.npz`` (W, S, F_fs, F_w, F as used, labels), ``alignment.npz`` (rotated and target labels,
  HM_X, SEAN images, their W and F, alignment masks, F_align), ``color_shape.npz`` (when the colour step ran on
  its own), ``blending.npz`` (masks incl. target_mask, S_blend, I_blend), ``final.npz`` (S_final, F_final, image).
  Image names are the harness image ids, else content-key prefixes.
"""

from __future__ import annotations

import io
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
from harness.store import atomic_write_bytes
from harness.timing import stages
from harness.weights import WeightStore, cache_dir
from methods import balding
from methods.hairflash import checkpoints as ckpts
from methods.hairflash import pipeline
from methods.hairflash.cache import StageCache, cache_key, image_key
from methods.hairflash.checkpoints import OfficialLayout
from methods.hairflash.params import HairFlashParams
from methods.hairflash.pipeline import Embedding, HairShape, Inpainting
from methods.hairflash.variants import DEFAULT_VARIANT, VARIANTS, Variant
from methods.ops import tensor_to_pil, unit_tensor

Pair = tuple[str, str]
# The weight files whose identity (sha256, or the fill rule) the cached stages depend on, by network name.
NETWORK_CHECKPOINTS: dict[str, Checkpoint] = {
    "generator": ckpts.GENERATOR, "fse": ckpts.FSE, "psp": ckpts.PSP, "e4e": ckpts.E4E, "parser": ckpts.PARSER,
    "rotate": ckpts.ROTATE, "shape_adaptor": ckpts.SHAPE_ADAPTOR, "sean": ckpts.SEAN,
}


@dataclass
class InputImage:
    """One distinct input image at the working size."""

    key: str  # content key of the pixels at the working size
    name: str  # harness image id, or a key prefix
    pixels: torch.Tensor  # [1,3,size,size] in [0, 1]

    @property
    def image_256(self) -> torch.Tensor:
        return pipeline.downsample_to(self.pixels, pipeline.MASK_SIZE)

    @property
    def norm_256(self) -> torch.Tensor:
        return pipeline.normalize(self.image_256)


@dataclass
class Alignment:
    """Alignment-stage results of one triplet (batch axis of 1)."""

    F_align: torch.Tensor
    masks: Any  # masks.AlignmentMasks
    shape: HairShape  # (face, shape)
    color: HairShape | None  # (face, colour) when it ran on its own
    inpainting: Inpainting
    hair_target: torch.Tensor | None  # HM_X for the blending target mask (None: no colour alignment)
    F_face: torch.Tensor
    F_shape: torch.Tensor


@dataclass
class Finished:
    """Blending and post-processing results of one triplet: row ``index`` of its chunk's ``batch`` / ``final``."""

    batch: pipeline.BlendingBatch
    index: int
    S_blend: torch.Tensor  # [1,n,512]
    I_blend: torch.Tensor  # [1,3,size,size]
    final: pipeline.Final

    @property
    def image(self) -> torch.Tensor:
        return self.final.image[self.index]


def _cat(tensors) -> torch.Tensor:
    return torch.cat(list(tensors))


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class HairFlash(Method):
    """HairFast / HairFlash: encoder-based hair transfer (FS embedding, pose alignment, CLIP blending, refinement)."""

    name: ClassVar[str] = "hairflash"
    description: ClassVar[str] = ("HairFast / HairFlash (AIRI-Institute/HairFastGAN): FS + W+ encoders, rotate + shape "
                                  "adaptor + SEAN alignment, CLIP blending encoder, post-processing; one forward pass")
    Params: ClassVar[type] = HairFlashParams
    variants: ClassVar[tuple[str, ...]] = tuple(VARIANTS)
    default_variant: ClassVar[str | None] = DEFAULT_VARIANT

    def __init__(self, params: Any = None, variant: str | None = None):
        super().__init__(params, variant)
        self.spec: Variant = VARIANTS[self.variant]
        self.batch_size = self.params.triplet_batch
        self.stats: Counter = Counter()
        self.last_stats: dict[str, int] = {}

    # ------------------------------------------------------------ set-up
    def checkpoints(self) -> Sequence[Checkpoint]:
        return self.spec.checkpoints

    def setup(self, device, weights: WeightStore) -> None:
        store = OfficialLayout(weights)
        nets = pipeline.load_nets(store, device, self.params, self.spec)
        identity = {name: store.identity(ckpt) for name, ckpt in NETWORK_CHECKPOINTS.items()}
        identity["sean_median_codes"] = image_key(nets.sean.median_style_codes.detach().cpu().numpy())
        identity["postprocess"] = store.identity(ckpts.POSTPROCESS)
        identity["clip"] = store.identity(ckpts.CLIP)
        identity["blending"] = store.identity(self.spec.blending)
        bald = None
        if self.spec.balding:
            bald = balding.load_balding_nets(store, device, nets.e4e, nets.parser, size=self.params.size)
            identity["balding"] = [store.identity(ckpts.HAIRMAPPER), store.identity(ckpts.HAIRMAPPER_GENERATOR)]
        self.use_networks(nets, identity, bald)

    def use_networks(self, nets: pipeline.HairFastNets, weights_identity: dict[str, str],
                     balding_nets: balding.BaldingNets | None = None) -> None:
        """Run on ``nets``; ``weights_identity`` (one string per name of :data:`NETWORK_CHECKPOINTS` and
        ``sean_median_codes``) goes into the cache keys. Optional entries ``postprocess``, ``clip`` and ``blending``
        (the variant's blending file) let the post-processing face codes and the CLIP embeddings be cached too.
        The balding variant needs ``balding_nets`` and the entry ``balding`` (the mapper's and its generator's
        identities)."""
        p = self.params
        if self.spec.balding and balding_nets is None:
            raise ValueError("hairflash:balding needs the HairMapper networks (balding_nets)")
        self.nets = nets
        self.balding_nets = balding_nets
        self.weights_identity = dict(weights_identity)
        self.noise = pipeline.Noise(p.noise, p.seed)
        ident = weights_identity
        gen = [ident["generator"], p.size, p.channel_multiplier, p.n_mlp, p.latent, self.noise.identity]
        self.identity = {
            "embedding": [*gen, ident["fse"], ident["psp"], ident["e4e"], ident["parser"]],
            "shape": [*gen, ident["rotate"], ident["shape_adaptor"], ident["parser"]],
            "inpaint": [*gen, ident["sean"], ident["sean_median_codes"], ident["e4e"]],
            # the face's post-processing codes depend on the face pixels and pp_model.pth only
            "postprocess_face": ident.get("postprocess"),
            # CLIP embeddings of the blending encoder's masked images: CLIP's weights (ViT-B-32.pt, or the blending
            # file when it holds them too) and precision
            "clip": [ident["clip"], ident.get("blending"), p.clip_precision] if "clip" in ident else None,
            # the bald face: HairMapper's files, the e4e and parser files it shares, the working size, the BGR quirk
            "balding": [ident.get("balding"), ident["e4e"], ident["parser"], p.size, p.balding_parser_bgr],
        }
        self.cache = StageCache(cache_dir() / "hairflash", p.cache_entries, enabled=p.cache)

    def teardown(self) -> None:
        """Drop the networks and caches; keep parameters, variant and statistics."""
        for name in list(vars(self)):
            if name not in ("params", "variant", "spec", "batch_size", "stats", "last_stats"):
                delattr(self, name)

    @property
    def device(self) -> torch.device:
        return self.nets.device

    # ------------------------------------------------------------ cache keys
    def _embedding_key(self, image: str) -> str:
        return cache_key("embedding", image, self.identity["embedding"])

    def _shape_key(self, pair: Pair) -> str:
        return cache_key("shape", *(self._embedding_key(k) for k in pair), self.identity["shape"])

    def _inpaint_key(self, pair: Pair) -> str:
        return cache_key("inpaint", *(self._embedding_key(k) for k in pair), self._shape_key(pair),
                         self.identity["inpaint"])

    # ------------------------------------------------------------ inputs
    def _roles(self, triplets: Sequence[Triplet], images: dict[str, InputImage], stats: Counter
               ) -> list[tuple[str, str, str]]:
        """Content keys of each triplet's (face, shape, colour) images, added to ``images``; the balding variant
        replaces the face image by its bald version first (report 8.3: HairFlash runs on the bald source)."""
        roles = []
        for face, shape, color in triplets:
            if self.spec.balding:
                face = self._bald(face, stats)
            roles.append((self._input(face, images), self._input(shape, images), self._input(color, images)))
        return roles

    def _bald(self, image: Image.Image, stats: Counter) -> Image.Image:
        """HairMapper's bald version of ``image`` at the working size (:mod:`methods.balding`), cached by content."""
        size = self.params.size
        rgb = image.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
        key = cache_key("bald", image_key(np.asarray(rgb)), self.identity["balding"])

        def compute() -> dict[str, torch.Tensor]:
            stats["faces_balded"] += 1
            bald = balding.remove_hair(self.balding_nets, rgb, self.params.balding_parser_bgr)
            return {"pixels": torch.from_numpy(np.asarray(bald).copy())}

        with stages("balding"):
            entry, _ = self.cache.get_or_compute("bald", key, compute, "cpu")
        return Image.fromarray(entry["pixels"].numpy())

    def _input(self, image: Image.Image, images: dict[str, InputImage]) -> str:
        size = self.params.size
        rgb = image.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
        pixels = np.asarray(rgb)
        key = image_key(pixels)
        if key not in images:
            name = annotations.of(image).image_id or key[:12]
            images[key] = InputImage(key, name, unit_tensor(pixels).to(self.device))
        return key

    # ------------------------------------------------------------ stage 1
    def _embed(self, images: dict[str, InputImage], stats: Counter) -> dict[str, Embedding]:
        out: dict[str, Embedding] = {}
        todo = []
        for key in images:
            cached = self.cache.get("embedding", self._embedding_key(key), self.device)
            if cached is None:
                todo.append(key)
            else:
                out[key] = Embedding(**cached)
        for chunk in _chunks(todo, self.params.batch_size):
            batch = torch.cat([images[k].pixels for k in chunk])
            result = pipeline.embed_images(self.nets, batch, self.noise.items("embedding", [[k] for k in chunk]))
            for i, key in enumerate(chunk):
                out[key] = result[i]
                self.cache.put("embedding", self._embedding_key(key), out[key].tensors())
            stats["images_embedded"] += len(chunk)
        return out

    # ------------------------------------------------------------ stage 2
    def _hair_shapes(self, pairs: Sequence[Pair], emb: dict[str, Embedding], stats: Counter
                     ) -> dict[Pair, HairShape]:
        out: dict[Pair, HairShape] = {}
        todo = []
        for pair in dict.fromkeys(pairs):
            cached = self.cache.get("shape", self._shape_key(pair), self.device)
            if cached is None:
                todo.append(pair)
            else:
                out[pair] = HairShape(**cached)
        for chunk in _chunks(todo, self.params.batch_size):
            result = pipeline.hair_shape(
                self.nets, torch.cat([emb[f].W for f, _ in chunk]), torch.cat([emb[o].W for _, o in chunk]),
                torch.cat([emb[f].labels for f, _ in chunk]), self.noise.items("shape", chunk))
            for i, pair in enumerate(chunk):
                out[pair] = HairShape(result.rotated_labels[i:i + 1], result.target[i:i + 1])
                self.cache.put("shape", self._shape_key(pair), vars(out[pair]))
            stats["hair_shapes"] += len(chunk)
        return out

    def _inpaintings(self, pairs: Sequence[Pair], images: dict[str, InputImage], emb: dict[str, Embedding],
                     shapes: dict[Pair, HairShape], stats: Counter) -> dict[Pair, Inpainting]:
        out: dict[Pair, Inpainting] = {}
        for pair in dict.fromkeys(pairs):
            cached = self.cache.get("inpaint", self._inpaint_key(pair), self.device)
            if cached is not None:
                out[pair] = Inpainting(**cached)
                continue
            face, shape = pair
            out[pair] = pipeline.inpaint(
                self.nets, torch.cat([images[face].image_256, images[shape].image_256]),
                torch.cat([emb[face].labels, emb[shape].labels]), shapes[pair].target,
                self.noise.item("inpaint", face, shape), same_image=face == shape)
            self.cache.put("inpaint", self._inpaint_key(pair), vars(out[pair]))
            stats["inpaintings"] += 1
        return out

    def _align(self, roles: Sequence[tuple[str, str, str]], images: dict[str, InputImage],
               emb: dict[str, Embedding], stats: Counter) -> list[Alignment]:
        p = self.params
        color_pairs = [(f, c) for f, s, c in roles if self.spec.color_alignment and c != s]
        shapes = self._hair_shapes([(f, s) for f, s, _ in roles] + color_pairs, emb, stats)
        inpaintings = self._inpaintings([(f, s) for f, s, _ in roles], images, emb, shapes, stats)
        out = []
        for f, s, c in roles:
            multi = len({f, s, c}) > 1
            F_face = pipeline.mixed_features(emb[f], p.mixing, multi)
            F_shape = pipeline.mixed_features(emb[s], p.mixing, multi)
            shape = shapes[(f, s)]
            inpainting = inpaintings[(f, s)]
            F_align, align_masks = pipeline.align_features(F_face, F_shape, inpainting.F, emb[f].labels,
                                                           emb[s].labels, shape.hair_target, p.smooth)
            color = shapes[(f, c)] if self.spec.color_alignment and c != s else None
            hair_target = None if not self.spec.color_alignment else (color or shape).hair_target
            out.append(Alignment(F_align, align_masks, shape, color, inpainting, hair_target, F_face, F_shape))
        return out

    # ------------------------------------------------------------ stages 3-4
    def _blend_and_finish(self, roles: Sequence[tuple[str, str, str]], images: dict[str, InputImage],
                          emb: dict[str, Embedding], aligned: Sequence[Alignment], stats: Counter
                          ) -> list[Finished]:
        """Blending and post-processing, ``batch_size`` triplets at a time. Each triplet has one noise generator:
        the blend render draws first, the final render next."""
        p = self.params
        out = []
        for chunk in _chunks(list(range(len(roles))), p.batch_size):
            items = self.noise.items("triplet", [roles[i] for i in chunk])
            with stages("blending"):
                batch = self._blending_batch([roles[i] for i in chunk], images, emb, [aligned[i] for i in chunk])
                S_blend, I_blend = pipeline.blend(self.nets, batch, items, self._clip_embeds(batch, stats))
            with stages("post_processing"):
                face_codes = self._postprocess_face_codes([roles[i][0] for i in chunk], images)
                final = pipeline.post_process(self.nets, face_codes, I_blend, items)
            out += [Finished(batch, j, S_blend[j:j + 1], I_blend[j:j + 1], final) for j in range(len(chunk))]
        return out

    def _clip_embeds(self, batch: pipeline.BlendingBatch, stats: Counter
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """CLIP embeddings of the blending encoder's masked images (:func:`pipeline.clip_images`), cached by the
        masked image's content: the face outside any hair depends on the (face, colour) pair only, the colour
        image's hair on the colour image, so task variants and triplets share them. The images not cached go
        through CLIP in one pass in the official order (without a cache: exactly the official call)."""
        groups = pipeline.clip_images(self.nets, batch)
        rows = [image[i:i + 1] for image in groups for i in range(image.shape[0])]
        identity = self.identity["clip"] if self.cache.enabled else None
        keys = [cache_key("clip", image_key(row.cpu().numpy()), identity) for row in rows] if identity else []
        found: dict[int, torch.Tensor] = {}
        for index, key in enumerate(keys):
            hit = self.cache.get("clip", key, self.device)
            if hit is not None:
                found[index] = hit["embed"]
        todo = [i for i in range(len(rows)) if i not in found]
        if todo:
            embeds = self.nets.blending.get_image_embed(_cat(rows[i] for i in todo))
            for j, index in enumerate(todo):
                found[index] = embeds[j:j + 1]
                if identity:
                    self.cache.put("clip", keys[index], {"embed": found[index]})
            stats["clip_images"] += len(todo)
        face, color, *shape = _cat(found[i] for i in range(len(rows))).chunk(len(groups))
        return face, color, (shape[0] if shape else None)

    def _postprocess_face_codes(self, faces: Sequence[str], images: dict[str, InputImage]) -> pipeline.FaceCodes:
        """The post-processing stage's face-only work (:class:`pipeline.FaceCodes`), one image per pass (so that a
        cached and a computed entry are the same numbers), cached per face when the weights' identity is known."""
        identity = self.identity["postprocess_face"]
        codes: dict[str, pipeline.FaceCodes] = {}
        for face in dict.fromkeys(faces):
            key = None if identity is None else cache_key("postprocess_face", pipeline.FaceCodes.names(),
                                                          self._embedding_key(face), identity)
            entry, _ = self.cache.get_or_compute(
                "postprocess_face", key,
                lambda face=face: pipeline.postprocess_face_codes(self.nets, images[face].norm_256).tensors(),
                self.device)
            codes[face] = pipeline.FaceCodes(**entry)
        return pipeline.FaceCodes.cat([codes[f] for f in faces])

    def _blending_batch(self, roles: Sequence[tuple[str, str, str]], images: dict[str, InputImage],
                        emb: dict[str, Embedding], aligned: Sequence[Alignment]) -> pipeline.BlendingBatch:
        face, shape, color = ([r[i] for r in roles] for i in range(3))
        hair_targets = [a.hair_target for a in aligned]
        return pipeline.blending_batch(
            _cat(emb[k].S for k in face), _cat(emb[k].S for k in color), _cat(emb[k].S for k in shape),
            _cat(images[k].norm_256 for k in face), _cat(images[k].norm_256 for k in color),
            _cat(images[k].norm_256 for k in shape), _cat(emb[k].labels for k in face),
            _cat(emb[k].labels for k in color), _cat(emb[k].labels for k in shape),
            None if hair_targets[0] is None else _cat(hair_targets), _cat(a.F_align for a in aligned),
            self.params.smooth)

    def blending_inputs(self, triplets: Sequence[Triplet]) -> pipeline.BlendingBatch:
        """Stages 1-2 (cached like :meth:`transfer_batch`) for (face, shape, colour) PIL triplets -> everything
        the blending stage takes (S codes, masked-image inputs, masks, F_align), batched: what training the
        blending encoder needs per triplet."""
        stats: Counter = Counter()
        images: dict[str, InputImage] = {}
        roles = self._roles(triplets, images, stats)
        emb = self._embed(images, stats)
        aligned = self._align(roles, images, emb, stats)
        self.stats.update(stats)
        return self._blending_batch(roles, images, emb, aligned)

    # ------------------------------------------------------------ transfer
    def transfer(self, face: Image.Image, shape: Image.Image, color: Image.Image) -> Image.Image:
        return self.transfer_batch([(face, shape, color)])[0]

    def transfer_batch(self, triplets: Sequence[Triplet]) -> list[Image.Image]:
        stats: Counter = Counter()
        cache_before = Counter(self.cache.stats)
        images: dict[str, InputImage] = {}
        roles = self._roles(triplets, images, stats)
        with stages("embedding"):
            emb = self._embed(images, stats)
        with stages("alignment"):
            aligned = self._align(roles, images, emb, stats)
        finished = self._blend_and_finish(roles, images, emb, aligned, stats)
        stats["triplets"] += len(roles)
        stats.update(Counter(self.cache.stats) - cache_before)
        self.last_stats = dict(stats)
        self.stats.update(stats)
        unit.note(**self.last_stats)  # -> the unit's record (records.jsonl "extras")
        outputs = []
        for index, (triplet, role, alignment, done) in enumerate(zip(triplets, roles, aligned, finished,
                                                                      strict=True)):
            result = tensor_to_pil(done.image)
            if result.size != triplet[0].size:
                result = result.resize(triplet[0].size, Image.Resampling.LANCZOS)
            outputs.append(result)
            if self.params.save_intermediates:
                folder = self.intermediates_folder([images[k].name for k in role], index)
                if folder is not None:
                    self._save_intermediates(folder, role, images, emb, alignment, done)
        return outputs

    # ------------------------------------------------------------ intermediates
    def intermediates_folder(self, names: Sequence[str], index: int = 0) -> Path | None:
        """``intermediates_dir/<variant>/<face>_<shape>_<color>/``; without ``intermediates_dir``, under the
        harness, ``RUN/intermediates/<method>/<task>/<triplet>/`` (:func:`harness.unit.intermediates_dir`)."""
        chosen = self.params.intermediates_dir
        return unit.intermediates_dir(index, Path(chosen) / self.variant / "_".join(names) if chosen else None)

    def _save_intermediates(self, folder: Path, roles: tuple[str, str, str], images: dict[str, InputImage],
                            emb: dict[str, Embedding], aligned: Alignment, done: Finished) -> None:
        """One triplet's stage tensors (batch axis dropped) as .npz files; labels as uint8."""

        def save(name: str, arrays: dict[str, torch.Tensor]) -> None:
            out = {}
            for key, value in arrays.items():
                array = value.detach().cpu().numpy()
                out[key] = array if np.issubdtype(array.dtype, np.floating) else array.astype(np.uint8)
            buffer = io.BytesIO()
            np.savez(buffer, **out)
            atomic_write_bytes(folder / name, buffer.getvalue())

        f, s, _ = roles
        for key in dict.fromkeys(roles):
            e = emb[key]
            used = aligned.F_face if key == f else aligned.F_shape
            save(f"embedding_{images[key].name}.npz", {**{k: v[0] for k, v in e.tensors().items()}, "F": used[0]})
        m = aligned.masks
        save("alignment.npz", {
            "rotated_labels": aligned.shape.rotated_labels[0], "target": aligned.shape.target[0],
            "HM_X": aligned.shape.hair_target[0], "sean_images": aligned.inpainting.images,
            "W_inpaint": aligned.inpainting.W, "F_inpaint": aligned.inpainting.F,
            "masks": m.masks[:, 0], "free_mask": m.free[:, 0], "interpolation_low": m.low[:, 0],
            "F_align": aligned.F_align[0]})
        if aligned.color is not None:
            save("color_shape.npz", {"rotated_labels": aligned.color.rotated_labels[0],
                                     "target": aligned.color.target[0], "HM_X": aligned.color.hair_target[0]})
        bm, j = done.batch.masks, done.index
        save("blending.npz", {"HM_1D": bm.hair_face_dilated[j], "HM_3D": bm.hair_color_dilated[j],
                              "HM_3E": bm.hair_color_eroded[j], "HM_XD": bm.hair_target_dilated[j],
                              "target_mask": bm.target_mask[j], "hair_shape_eroded": done.batch.hair_shape_eroded[j],
                              "S_blend": done.S_blend[0], "I_blend": done.I_blend[0]})
        save("final.npz", {"S_final": done.final.S[j], "F_final": done.final.F[j], "image": done.image})
