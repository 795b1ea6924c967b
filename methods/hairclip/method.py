"""The ``hairclip`` method: HairCLIP (wty-ustc/HairCLIP) conditioned on reference images, the way hair-transfer
comparisons run it (``--editing_type both --input_type image_image``; protocol.md: ``stylegan_size`` 1024,
``test_batch_size`` 1).

Per triplet: the face image is inverted with e4e (PIL bilinear resize to 256, [-1, 1]; ``W = e4e(x) +
latent_avg``); the shape and colour images (LANCZOS-resized to 1024, [-1, 1]) are multiplied by their hair masks
from HairCLIP's UNet parser (:func:`methods.nets.unet_parser.hair_mask`); the mapper takes the shape image's hair as
the hairstyle condition and the colour image's hair as the colour condition; ``w_hat = W + 0.1 * mapper(W)`` is
rendered by the decoder stored in ``hairclip.pt`` with its noise buffers (``randomize_noise=False``, truncation 1)
and saved as ``save_image`` does ((x + 1) / 2, rounded); the result is resized back to the face image's size.

Text references (``harness run --shape-text "afro hairstyle" --color-text "purple hair"``): a role given as a
:class:`harness.method.TextPrompt` is tokenised with CLIP's BPE tokenizer and embedded by the mapper's CLIP text
tower (``encode_text``), HairCLIP's ``--input_type text`` path (fixture case ``both_text``). HairCLIP was trained on
prompts of the forms "<style> hairstyle" and "<colour> hair"; the prompt is passed as given.

Weights: ``hairclip.pt`` (mapper + decoder), ``e4e_ffhq_encode.pt``, ``parsenet.pth``.

Cached by content (:class:`HairCLIPParams`; in memory and on disk under ``cache_dir()/hairclip``, shared by runs,
shards and ``--resume``): the face's e4e inversion, and each reference image's hair embedding (CLIP of the
parser-masked image), so a triplet costs at most one inversion, two references and one render, and the five task
variants reuse them. Keys hold the resized pixels and the weights' identity. Work counts and cache hits go to each
unit's record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from harness import unit
from harness.method import Checkpoint, Method, Reference, TextPrompt
from harness.timing import stages
from harness.weights import WeightStore, cache_dir
from methods.cache import StageCache, image_key
from methods.cache import cache_key as versioned_key
from methods.nets import e4e, hairclip, unet_parser
from methods.nets.clip import tokenize
from methods.nets.e4e import E4EConfig
from methods.ops import resized_pixels, signed_tensor, tensor_to_pil

SIZE = 1024
E4E_SIZE = 256


CACHE_VERSION = 1  # bump when a cached result's computation changes


@dataclass(frozen=True)
class HairCLIPParams:
    """``cache``: cache the inversions and reference embeddings (see the module docstring); ``cache_entries``:
    in-memory LRU entries per kind (an entry is at most 36 kB)."""

    cache: bool = True
    cache_entries: int = 256


def to_signed_tensor(image: Image.Image, size: int, resample: Image.Resampling) -> torch.Tensor:
    """RGB PIL resized to ``size`` -> ``[1,3,size,size]`` in [-1, 1]."""
    return signed_tensor(resized_pixels(image, size, resample))


def to_pil(image: torch.Tensor) -> Image.Image:
    """``[3,H,W]`` in [-1, 1] -> RGB PIL as ``torchvision.utils.save_image(normalize=True, value_range=(-1, 1))``."""
    return tensor_to_pil((image + 1) / 2)


class HairCLIP(Method):
    """HairCLIP: e4e inversion, a CLIP-conditioned latent mapper (hairstyle and colour references), StyleGAN2."""

    name: ClassVar[str] = "hairclip"
    description: ClassVar[str] = ("HairCLIP (wty-ustc/HairCLIP): e4e inversion, latent mapper conditioned on CLIP "
                                  "embeddings of shape's and color's hair, StyleGAN2 1024 render; one forward pass")
    Params: ClassVar[type] = HairCLIPParams
    accepts_text: ClassVar[frozenset[str]] = frozenset({"shape", "color"})

    def checkpoints(self) -> Sequence[Checkpoint]:
        return (hairclip.CHECKPOINT, e4e.CHECKPOINT, unet_parser.CHECKPOINT)

    def setup(self, device, weights: WeightStore) -> None:
        mapper, decoder = hairclip.load_hairclip(weights, device)
        encoder, _ = e4e.load_e4e(weights, device, E4EConfig(stylegan_size=SIZE))
        identity = {"inversion": weights.identity(e4e.CHECKPOINT),
                    "reference": [weights.identity(unet_parser.CHECKPOINT), weights.identity(hairclip.CHECKPOINT)]}
        self.use_networks(mapper, decoder, encoder, unet_parser.load_parser(weights, device), identity)

    def use_networks(self, mapper, decoder, encoder, parser, identity: dict) -> None:
        """Run on these networks (on one device); ``identity`` (``inversion``: the e4e file's, ``reference``: the
        parser's and ``hairclip.pt``'s) goes into the cache keys."""
        self.mapper, self.decoder, self.encoder, self.parser = mapper, decoder, encoder, parser
        self.device = decoder.input.input.device
        self.identity = identity
        self.cache = StageCache(cache_dir() / "hairclip", self.params.cache_entries, enabled=self.params.cache)
        self.stats: Counter = Counter()
        self.texts: dict[str, torch.Tensor] = {}

    def teardown(self) -> None:
        for name in ("mapper", "decoder", "encoder", "parser", "cache", "texts"):
            self.__dict__.pop(name, None)

    def _cached(self, kind: str, key: str, compute) -> torch.Tensor:
        entry, computed = self.cache.get_or_compute(kind, key, lambda: {"value": compute()}, self.device)
        if computed:
            self.stats[f"{kind}s_computed"] += 1
        return entry["value"]

    def _hair_only(self, pixels: np.ndarray) -> torch.Tensor:
        x = signed_tensor(pixels).to(self.device)
        return x * unet_parser.hair_mask(self.parser, x)

    @torch.no_grad()
    def hair_only(self, image: Image.Image) -> torch.Tensor:
        """The reference image at 1024 in [-1, 1] times its hair mask."""
        return self._hair_only(resized_pixels(image, SIZE, Image.Resampling.LANCZOS))

    @torch.no_grad()
    def reference_embedding(self, image: Image.Image) -> torch.Tensor:
        """CLIP embedding [1,512] of the reference image's hair (cached by content)."""
        pixels = resized_pixels(image, SIZE, Image.Resampling.LANCZOS)
        key = versioned_key(CACHE_VERSION, "reference", image_key(pixels), self.identity["reference"])
        return self._cached("reference", key, lambda: self.mapper.image_embedding(self._hair_only(pixels)))

    @torch.no_grad()
    def text_embedding(self, prompt: TextPrompt) -> torch.Tensor:
        """CLIP text embedding [1,512] of a prompt (kept in memory per prompt, except in warm-up calls)."""
        if prompt.text in self.texts:
            return self.texts[prompt.text]
        embedding = self.mapper.text_embedding(tokenize(prompt.text).to(self.device))
        self.stats["texts_computed"] += 1
        if not unit.in_warmup():  # a warm-up call must not make the timed calls cheaper
            self.texts[prompt.text] = embedding
        return embedding

    def condition(self, reference: Reference) -> torch.Tensor:
        """The mapper's condition for a shape or colour reference: its text or its hair's image embedding."""
        if isinstance(reference, TextPrompt):
            return self.text_embedding(reference)
        return self.reference_embedding(reference)

    @torch.no_grad()
    def invert(self, face: Image.Image) -> torch.Tensor:
        """e4e W+ [1,18,512] of the face image (cached by content)."""
        pixels = resized_pixels(face, E4E_SIZE, Image.Resampling.BILINEAR)
        key = versioned_key(CACHE_VERSION, "inversion", image_key(pixels), self.identity["inversion"])
        return self._cached("inversion", key, lambda: self.encoder.encode(signed_tensor(pixels).to(self.device)))

    @torch.no_grad()
    def transfer(self, face: Image.Image, shape: Reference, color: Reference) -> Image.Image:
        before = Counter(self.stats) + Counter(self.cache.stats)
        with stages("inversion"):
            w = self.invert(face)
        with stages("mapping"):
            out = self.mapper.map(w, self.condition(shape), self.condition(color))
            w_hat = hairclip.edit(w, out)
        with stages("rendering"):
            image = self.decoder.synthesis(w_hat, noise="buffers").rgb
        unit.note(**(Counter(self.stats) + Counter(self.cache.stats) - before))
        result = to_pil(image[0])
        return result if result.size == face.size else result.resize(face.size, Image.Resampling.LANCZOS)
