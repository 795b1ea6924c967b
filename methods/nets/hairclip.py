"""HairCLIP's latent mapper (wty-ustc/HairCLIP ``mapper/latent_mappers.py``, class ``HairMapper``), with the CLIP
ViT-B/32 it owns, and the loading of the released ``hairclip.pt``.

The mapper edits an e4e W+ code ``w`` [B,18,512] toward a hairstyle and/or a hair colour, each given as CLIP token
ids (a text such as ``"afro hairstyle"`` / ``"purple hair"``) or as a reference image already multiplied by its
hair mask ([-1, 1], any size). Three sub-mappers, each PixelNorm over the rows then five modulation modules
(:mod:`methods.nets.modulation`, a LeakyReLU after every module): ``course_mapping`` (the official spelling) on rows
0-3 and ``medium_mapping`` on rows 4-7, conditioned on the hairstyle embedding; ``fine_mapping`` on rows 8-17,
conditioned on the colour embedding. A sub-mapper whose condition is absent takes the *cut* path: it still emits
``LayerNorm(fc(x))`` per module, without conditioning or activation. The edit is ``w_hat = w + 0.1 * mapper(w)``
(:func:`edit`), rendered by the StyleGAN2 decoder stored beside the mapper (``input_is_latent``, stored noise,
truncation 1).

Embeddings (not L2-normalised): image -> ``AdaptiveAvgPool2d(224)``, ``x * 0.5 + 0.5``, CLIP mean/std,
``encode_image``; text -> ``encode_text`` of ``clip.tokenize`` ids (tokenising is the caller's; the official code
uses OpenAI's BPE tokenizer). Text wins over an image for the same attribute.

``hairclip.pt`` = ``{'state_dict': {'mapper.<HairMapper key>', 'decoder.<StyleGAN2 g_ema key>'}, 'opts': {...}}``;
the official loader strips the prefixes and loads each part strictly. The mapper's CLIP tensors there are a
float16/float32 mix (``clip.load`` on GPU converts them); they load into float32 here, as the fixture runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.method import Checkpoint
from harness.parity import Fixture
from harness.weights import load_state_dict_into, safe_load
from methods.nets import clip as clip_net
from methods.nets import modulation, stylegan2
from methods.nets.clip import CLIP, CLIP_MEAN, CLIP_STD, ClipConfig
from methods.nets.modulation import DT_SCALE, ModulationModule, pixel_norm_rows

CHECKPOINT = Checkpoint(
    key="hairclip",
    filename="hairclip.pt",
    source="https://github.com/wty-ustc/HairCLIP (README, 'Pretrained Models': hairclip.pt on Google Drive)",
    purpose="HairCLIP mapper (with its CLIP ViT-B/32) and its StyleGAN2 1024 decoder; "
            "{'state_dict': {'mapper.*', 'decoder.*'}, 'opts': {...}}",
)
CHECKPOINTS = [CHECKPOINT]

CLIP_PREFIX = "clip_model."
N_MODULES = 5
# (sub-mapper, first W+ row, rows, condition)
SUB_MAPPERS = (("course_mapping", 0, 4, "hairstyle"), ("medium_mapping", 4, 4, "hairstyle"),
               ("fine_mapping", 8, 10, "color"))
JIT_ONLY_CLIP_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class MapperConfig:
    """The official ``opts.no_coarse_mapper`` / ``no_medium_mapper`` / ``no_fine_mapper`` (as ``coarse`` ...
    True = built) and the CLIP configuration (ViT-B/32)."""

    coarse: bool = True
    medium: bool = True
    fine: bool = True
    clip: ClipConfig = field(default_factory=ClipConfig)

    @classmethod
    def from_opts(cls, opts: Mapping[str, Any], clip: ClipConfig | None = None) -> MapperConfig:
        return cls(not opts.get("no_coarse_mapper", False), not opts.get("no_medium_mapper", False),
                   not opts.get("no_fine_mapper", False), clip or ClipConfig())

    def built(self, name: str) -> bool:
        return {"course_mapping": self.coarse, "medium_mapping": self.medium, "fine_mapping": self.fine}[name]


class SubMapper(nn.Module):
    """PixelNorm over the rows, then five modulation modules, each followed by a LeakyReLU."""

    def __init__(self, rows: int):
        super().__init__()
        self.modulation_module_list = nn.ModuleList(ModulationModule(rows) for _ in range(N_MODULES))

    def forward(self, x: Tensor, condition: Tensor | None) -> Tensor:
        """``x`` [B,rows,512]; ``condition`` [B,512] (``None``: the cut path)."""
        x = pixel_norm_rows(x)
        condition = None if condition is None else condition.float().unsqueeze(1)
        for block in self.modulation_module_list:
            x = block(x, condition, cut=condition is None)
        return x


class HairMapper(nn.Module):
    """HairCLIP's ``HairMapper`` (same state-dict keys): ``forward`` gives the mapper output [B,18,512]."""

    def __init__(self, config: MapperConfig | None = None):
        super().__init__()
        self.config = config or MapperConfig()
        self.clip_model = CLIP(self.config.clip)
        for name, _, rows, _ in SUB_MAPPERS:
            if self.config.built(name):
                self.add_module(name, SubMapper(rows))
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def image_embedding(self, image: Tensor) -> Tensor:
        """Hair-masked image(s) in [-1, 1] -> CLIP embedding [B,512] (float32)."""
        size = self.clip_model.visual.input_resolution
        x = F.adaptive_avg_pool2d(image.float(), (size, size)) * 0.5 + 0.5
        return self.clip_model.encode_image((x - self.clip_mean) / self.clip_std).float()

    def text_embedding(self, tokens: Tensor) -> Tensor:
        """CLIP token ids [B,77] -> CLIP embedding [B,512] (float32)."""
        return self.clip_model.encode_text(tokens).float()

    def embedding(self, text: Tensor | None, image: Tensor | None) -> Tensor | None:
        """One attribute's condition: text first, else the image, else ``None``."""
        if text is not None:
            return self.text_embedding(text)
        return None if image is None else self.image_embedding(image)

    def forward(self, w: Tensor, hairstyle_text: Tensor | None = None, color_text: Tensor | None = None,
                hairstyle_image: Tensor | None = None, color_image: Tensor | None = None) -> Tensor:
        embeddings = {"hairstyle": self.embedding(hairstyle_text, hairstyle_image),
                      "color": self.embedding(color_text, color_image)}
        return self.map(w, embeddings["hairstyle"], embeddings["color"])

    def map(self, w: Tensor, hairstyle: Tensor | None, color: Tensor | None) -> Tensor:
        """The mapper output from precomputed embeddings (``None``: that attribute is not edited)."""
        conditions = {"hairstyle": hairstyle, "color": color}
        parts = []
        for name, start, rows, condition in SUB_MAPPERS:
            x = w[:, start:start + rows]
            parts.append(getattr(self, name)(x, conditions[condition]) if self.config.built(name)
                         else torch.zeros_like(x))
        return torch.cat(parts, dim=1)


def edit(w: Tensor, mapper_out: Tensor) -> Tensor:
    """``w_hat = w + 0.1 * mapper_out`` (the inference edit rule)."""
    return w + DT_SCALE * mapper_out


# ---------------------------------------------------------------- fill rule and loading

def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Fill of one ``HairMapper`` entry as the ``hairclip_mapper`` fixture states it: ``clip_model.*`` by CLIP's
    init scales (:func:`methods.nets.clip.init_scale_fill_recipe`), the rest by :func:`methods.nets.modulation.
    fill_recipe`."""
    if key.startswith(CLIP_PREFIX):
        return clip_net.init_scale_fill_recipe(key[len(CLIP_PREFIX):], shape)
    return modulation.fill_recipe(key, shape)


def part_state_dict(obj: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The ``mapper`` or ``decoder`` part of a ``hairclip.pt`` object, prefix stripped (the official loader's
    selection); CLIP's TorchScript-only entries are dropped."""
    state = obj.get("state_dict", obj)
    out = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    if prefix == "mapper":
        for key in JIT_ONLY_CLIP_KEYS:
            out.pop(CLIP_PREFIX + key, None)
    return out


def load_hairclip(weights, device: str | torch.device = "cpu", clip: ClipConfig | None = None
                  ) -> tuple[HairMapper, stylegan2.Generator]:
    """``(mapper, decoder)`` from ``hairclip.pt`` (sub-mappers as its ``opts`` say), or both filled by the parity
    rule (mapper under the ``hairclip`` namespace, decoder as ``stylegan2``) when ``weights.fill``. Float32, eval,
    no grad."""
    obj = None if weights.fill else safe_load(weights.path(CHECKPOINT))
    config = MapperConfig.from_opts((obj or {}).get("opts") or {}, clip)
    mapper = HairMapper(config)
    decoder = stylegan2.Generator(1024, 512, 8, 2)
    if obj is None:
        weights.load_network(mapper, CHECKPOINT, recipe=fill_recipe)
        weights.load_network(decoder, CHECKPOINT, namespace=f"{CHECKPOINT.key}.decoder", recipe=stylegan2.fill_recipe)
    else:
        load_state_dict_into(mapper, part_state_dict(obj, "mapper"), f"{CHECKPOINT.filename} (mapper)")
        load_state_dict_into(decoder, part_state_dict(obj, "decoder"), f"{CHECKPOINT.filename} (decoder)")
    return (mapper.float().to(device).eval().requires_grad_(False),
            decoder.float().to(device).eval().requires_grad_(False))


# ---------------------------------------------------------------- parity

def _optional(fixture: Fixture, case: dict, name: str, dtype: torch.dtype) -> Tensor | None:
    """A case input; the official placeholder (shape [B,1]) means "not given"."""
    value = fixture.input(case, name)
    return None if value.ndim == 2 and value.shape[1] == 1 else torch.from_numpy(np.array(value)).to(dtype)


def parity_adapter(fixture: Fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """``hairclip_mapper``: the mapper with the fixture's sub-mappers and CLIP, filled state dict (strict);
    ``mapper_out``, ``w_hat`` and the CLIP embeddings per case."""
    constructor = fixture.constructor
    clip_config = ClipConfig.from_mapping({k: v for k, v in constructor.get("clip_model", {}).items() if k != "how"})
    mapper = HairMapper(MapperConfig.from_opts(constructor.get("opts", {}), clip_config))
    load_state_dict_into(mapper, fixture.torch_state_dict(), f"fixture {fixture.name}")
    mapper = mapper.float().eval()

    def run(case: dict) -> dict[str, np.ndarray]:
        w = torch.from_numpy(np.array(fixture.input(case, "x"))).float()
        with torch.no_grad():
            embeddings = {
                "hairstyle_embedding": mapper.embedding(_optional(fixture, case, "hairstyle_text_inputs", torch.long),
                                                        _optional(fixture, case, "hairstyle_tensor", torch.float)),
                "color_embedding": mapper.embedding(_optional(fixture, case, "color_text_inputs", torch.long),
                                                    _optional(fixture, case, "color_tensor", torch.float)),
            }
            out = mapper.map(w, embeddings["hairstyle_embedding"], embeddings["color_embedding"])
        values = {"mapper_out": out, "w_hat": edit(w, out), **{k: v for k, v in embeddings.items() if v is not None}}
        return {name: values[name].numpy() for name in case["outputs"]}

    return run


PARITY = {"hairclip_mapper": parity_adapter}
