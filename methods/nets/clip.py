"""OpenAI CLIP ViT-B/32: image and text towers, the official checkpoint reader, a FID_CLIP feature extractor.

Key names follow the official ``CLIP`` module (openai/CLIP ``clip/model.py``), so the state dict of the
released ``ViT-B-32.pt`` loads unchanged. That file is a TorchScript archive: :func:`read_torchscript_state_dict`
reads its tensors straight from the zip (``data.pkl`` through an unpickler that only knows tensor-rebuild
globals, storages from ``data/``) and never runs TorchScript code. Plain state-dict files go through
``safe_load``.

Precision (``load_clip(..., precision=)``):

- ``"fp32"``: every weight in float32 (the parity fixtures run this way).
- ``"fp16_weights"``: the official ``clip.load(device="cpu")`` path: conv/linear/attention weights and the two
  projection matrices rounded to float16, then everything computed in float32. For the released archive
  (stored in float16) this equals ``"fp32"``.
- ``"fp16"``: the official CUDA path (what HairFast runs): those weights stay float16 and the towers compute
  in float16, with LayerNorm in float32.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.method import Checkpoint
from harness.parity import Fixture, Op, case_op
from harness.text import bpe_tokenizer
from harness.weights import (
    UnsafeCheckpoint,
    filled_state_dict,
    is_torchscript_archive,
    load_state_dict_into,
    safe_load,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Scalar entries of the released TorchScript archives that ``build_model`` deletes before loading.
ARCHIVE_SCALAR_KEYS = ("input_resolution", "context_length", "vocab_size")

CHECKPOINT = Checkpoint(
    key="clip_vitb32",
    filename="ViT-B-32.pt",
    source="https://openaipublic.azureedge.net/clip/models/"
           "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    purpose="OpenAI CLIP ViT-B/32 (FID_CLIP features; the text-reference CLIP scores; HairFast blending encoder's CLIP "
            "embeddings)",
    # openai/CLIP checks the file against the sha256 that is part of its URL
    sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    download=("https://openaipublic.azureedge.net/clip/models/"
              "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",),
)
CHECKPOINTS = [CHECKPOINT]

Precision = Literal["fp32", "fp16_weights", "fp16"]


def tokenize(texts: str | list[str], context_length: int = 77) -> torch.Tensor:
    """CLIP BPE token ids ``[len(texts), context_length]`` (int64) as OpenAI's ``clip.tokenize`` gives them:
    start 49406, the text's tokens (cleaned with ftfy, whitespace collapsed, lower-cased), end 49407, zeros.

    The tokenizer and its vocabulary (``bpe_simple_vocab_16e6.txt.gz``) come from the ``open_clip_torch``
    package (:func:`harness.text.bpe_tokenizer`, imported lazily: it takes seconds). A text longer than
    ``context_length - 2`` tokens is refused (OpenAI's default) rather than silently truncated."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    tokenizer = bpe_tokenizer()
    rows = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [tokenizer.sot_token_id, *tokenizer.encode(text), tokenizer.eot_token_id]
        if len(ids) > context_length:
            raise ValueError(f"text reference {text!r} is {len(ids) - 2} CLIP tokens; at most {context_length - 2}")
        rows[i, :len(ids)] = torch.tensor(ids)
    return rows




@dataclass(frozen=True)
class ClipConfig:
    """Constructor arguments of the official ``CLIP`` (ViT image tower only); defaults are ViT-B/32."""

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 32
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12

    @property
    def vision_heads(self) -> int:
        return self.vision_width // 64

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ClipConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown CLIP constructor arguments: {sorted(unknown)}")
        if not isinstance(values.get("vision_layers", 12), int):
            raise ValueError("only the ViT image tower is implemented (vision_layers must be an int)")
        return cls(**values)


# ---------------------------------------------------------------- the network

class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (as the official module does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention named like ``torch.nn.MultiheadAttention`` (packed q, k, v projection)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        head_dim = width // self.heads
        q, k, v = (t.reshape(batch, length, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm32(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))
        self.ln_2 = LayerNorm32(width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """``x``: [batch, tokens, width] (batch first; the official module runs sequence first)."""
        for block in self.resblocks:
            x = block(x, causal)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int):
        super().__init__()
        self.input_resolution = resolution
        tokens = (resolution // patch_size) ** 2 + 1
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(tokens, width))
        self.ln_pre = LayerNorm32(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm32(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # [B, patches, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """CLIP with a ViT image tower; state-dict keys as in the official module."""

    def __init__(self, config: ClipConfig = ClipConfig()):
        super().__init__()
        self.config = config
        self.context_length = config.context_length
        self.visual = VisionTransformer(config.image_resolution, config.vision_patch_size,
                                        config.vision_width, config.vision_layers, config.vision_heads,
                                        config.embed_dim)
        self.transformer = Transformer(config.transformer_width, config.transformer_layers,
                                       config.transformer_heads)
        self.token_embedding = nn.Embedding(config.vocab_size, config.transformer_width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, config.transformer_width))
        self.ln_final = LayerNorm32(config.transformer_width)
        self.text_projection = nn.Parameter(torch.zeros(config.transformer_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (float16 after :func:`convert_weights_to_fp16`)."""
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised images [B, 3, R, R] -> [B, embed_dim] (not L2-normalised), in ``self.dtype``."""
        return self.visual(image.to(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids [B, context_length] (end-of-text = largest id) -> [B, embed_dim]."""
        x = self.token_embedding(text).to(self.dtype) + self.positional_embedding.to(self.dtype)
        x = self.ln_final(self.transformer(x, causal=True)).to(self.dtype)
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-text logits as the official module returns them: ``(logits_per_image, logits_per_text)``."""
        image_features = F.normalize(self.encode_image(image), dim=1)
        text_features = F.normalize(self.encode_text(text), dim=1)
        logits = self.logit_scale.exp() * image_features @ text_features.t()
        return logits, logits.t()


# ---------------------------------------------------------------- precision (the official convert_weights)

def fp16_parameter_names(model: CLIP) -> list[str]:
    """Parameters that the official ``convert_weights`` casts to float16: conv/linear weights and biases, the
    attention's packed projection, ``visual.proj`` and ``text_projection`` (not LayerNorms nor embeddings)."""
    names = []
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, nn.Conv2d | nn.Linear):
            names += [f"{dot}{n}" for n, p in module.named_parameters(recurse=False) if p is not None]
        elif isinstance(module, SelfAttention):
            names += [f"{dot}in_proj_weight", f"{dot}in_proj_bias"]
        elif isinstance(module, VisionTransformer):
            names.append(f"{dot}proj")
    names.append("text_projection")
    return names


def convert_weights_to_fp16(model: CLIP) -> CLIP:
    """The official CUDA state: the :func:`fp16_parameter_names` in float16, the rest float32 (in place)."""
    params = dict(model.named_parameters())
    for name in fp16_parameter_names(model):
        params[name].data = params[name].data.half()
    return model


def round_weights_through_fp16(model: CLIP) -> CLIP:
    """The official CPU state: those weights rounded to float16 and back to float32 (in place)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in fp16_parameter_names(model):
            params[name].copy_(params[name].half().float())
    return model


# ---------------------------------------------------------------- fill recipe (parity rule, --fill-weights)

_CLIP_LAYERNORM = re.compile(r"(^|\.)ln_[a-z0-9]+\.(weight|bias)$")


def init_scale_fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """CLIP entries as the ``hairfast_blending`` and ``hairclip_mapper`` fixtures fill them (keys without
    ``clip_model.``): CLIP's own init scales (class/positional embedding, ``visual.proj`` and attention
    ``in_proj_weight`` width^-0.5, text positional embedding 0.01, token embedding 0.02, ``logit_scale`` =
    ln(1/0.07)); LayerNorm 1 +- 0.1 / 0.1; biases 0.01; other weights ``1/sqrt(fan_in)``. (The ``clip_vitb32``
    fixture uses other scales: :func:`fill_recipe`.)"""
    name = key.rsplit(".", 1)[-1]
    if key == "logit_scale":
        return {"kind": "normal", "mean": math.log(1 / 0.07), "std": 0.0}
    if key == "positional_embedding":
        return {"kind": "normal", "mean": 0.0, "std": 0.01}
    if key == "token_embedding.weight":
        return {"kind": "normal", "mean": 0.0, "std": 0.02}
    if key in ("visual.class_embedding", "visual.positional_embedding"):
        return {"kind": "normal", "mean": 0.0, "std": shape[-1] ** -0.5}
    if key in ("visual.proj", "text_projection"):
        return {"kind": "normal", "mean": 0.0, "std": shape[0] ** -0.5}
    if name == "in_proj_weight":
        return {"kind": "normal", "mean": 0.0, "std": shape[1] ** -0.5}
    if _CLIP_LAYERNORM.search(key):
        return {"kind": "normal", "mean": 1.0 if name == "weight" else 0.0, "std": 0.1}
    if name in ("bias", "in_proj_bias"):
        return {"kind": "normal", "mean": 0.0, "std": 0.01}
    return {"kind": "normal", "mean": 0.0, "std": 1.0 / math.sqrt(int(np.prod(shape[1:])))}


def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Fill of one state-dict entry, identical to the ``clip_vitb32`` fixture's recipe."""
    name = key.rsplit(".", 1)[-1]
    if key == "logit_scale":
        return {"kind": "normal", "mean": float(np.float32(math.log(100.0))), "std": 0.0}  # ln 100 in float32
    if key in ("positional_embedding", "token_embedding.weight"):
        return {"kind": "normal", "mean": 0.0, "std": 0.1}
    if key in ("visual.class_embedding", "visual.positional_embedding"):
        return {"kind": "normal", "mean": 0.0, "std": 1.0 / math.sqrt(shape[-1])}
    if key in ("visual.proj", "text_projection"):
        return {"kind": "normal", "mean": 0.0, "std": 1.0 / math.sqrt(shape[0])}
    if re.search(r"(^|\.)ln_[a-z0-9]+\.(weight|bias)$", key):
        return {"kind": "normal", "mean": 1.0, "std": 0.1} if name == "weight" else \
            {"kind": "normal", "mean": 0.0, "std": 0.1}
    if name in ("bias", "in_proj_bias"):
        return {"kind": "normal", "mean": 0.0, "std": 0.01}
    fan_in = int(np.prod(shape[1:]))
    return {"kind": "normal", "mean": 0.0, "std": 1.0 / math.sqrt(fan_in)}


# ---------------------------------------------------------------- reading the official TorchScript archive

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


class _ScriptObject:
    """Inert stand-in for a TorchScript class instance: keeps the attributes the pickle sets, runs nothing."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.attributes = dict(state) if isinstance(state, Mapping) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple,
                    *_ignored: Any) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset)


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: only tensor rebuilding, storage types, ``OrderedDict`` and
    ``__torch__`` classes (as :class:`_ScriptObject`) are known; any other global is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.storages: dict[str, torch.Tensor] = {}
        self.script_classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.script_classes:
                self.script_classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self.script_classes[qualified]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsafeCheckpoint(f"global '{module}.{name}' is not allowed in a checkpoint")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeCheckpoint(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
            flat = torch.frombuffer(raw, dtype=storage_type.dtype) if raw else \
                torch.empty(0, dtype=storage_type.dtype)
            if flat.numel() < int(numel):
                raise ValueError(f"storage {key}: {flat.numel()} elements, expected {numel}")
            self.storages[key] = flat
        return self.storages[key]


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    names = archive.namelist()
    prefixes = {n.rsplit("/", 1)[0] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")}
    if len(prefixes) != 1:
        raise ValueError(f"{archive.filename}: expected one '<name>/data.pkl', found {sorted(prefixes)}")
    return prefixes.pop()


def _declared_tensors(archive: zipfile.ZipFile, prefix: str, qualified_name: str) -> set[str] | None:
    """Parameter and buffer names a TorchScript class declares in its ``code/`` listing (read as text)."""
    module, _, cls = qualified_name.rpartition(".")
    try:
        source = archive.read(f"{prefix}/code/{module.replace('.', '/')}.py").decode("utf-8")
    except KeyError:
        return None
    match = re.search(rf"^class {re.escape(cls)}\(Module\):\n((?:[ \t]+.*\n|\n)*)", source, re.MULTILINE)
    if match is None:
        return None
    names: set[str] = set()
    for kind in ("__parameters__", "__buffers__"):
        declared = re.search(rf"^\s+{kind} = \[(.*?)\]", match.group(1), re.MULTILINE)
        if declared is None:
            return None
        names.update(re.findall(r'"([^"]*)"', declared.group(1)))
    return names


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict (parameters and buffers by dotted name) of a TorchScript archive, without running it.

    Refuses (:class:`harness.weights.UnsafeCheckpoint`) a ``data.pkl`` that references any global beyond
    tensor rebuilding, storage types, ``OrderedDict`` and the archive's own ``__torch__`` classes.
    """
    with zipfile.ZipFile(path) as archive:
        prefix = _archive_prefix(archive)
        try:
            byteorder = archive.read(f"{prefix}/byteorder").decode().strip()
        except KeyError:
            byteorder = "little"
        if byteorder != "little":
            raise ValueError(f"{path}: {byteorder}-endian archives are not supported")
        with archive.open(f"{prefix}/data.pkl") as fh:
            unpickler = _ArchiveUnpickler(fh, archive, prefix)
            try:
                root = unpickler.load()
            except UnsafeCheckpoint as exc:
                raise UnsafeCheckpoint(f"{path}: refused to load: {exc}") from None
        if not isinstance(root, _ScriptObject):
            raise ValueError(f"{path}: data.pkl does not hold a TorchScript module")
        state: dict[str, torch.Tensor] = {}
        declared_cache: dict[str, set[str] | None] = {}

        def walk(obj: _ScriptObject, dot: str) -> None:
            name = obj.qualified_name
            if name not in declared_cache:
                declared_cache[name] = _declared_tensors(archive, prefix, name)
            declared = declared_cache[name]
            for attr, value in getattr(obj, "attributes", {}).items():
                if isinstance(value, torch.Tensor) and (declared is None or attr in declared):
                    state[dot + attr] = value
                elif isinstance(value, _ScriptObject):
                    walk(value, f"{dot}{attr}.")

        walk(root, "")
    return state


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of a CLIP checkpoint (TorchScript archive or plain state dict), without the
    archive's scalar entries ``input_resolution``, ``context_length`` and ``vocab_size``; dtypes as stored."""
    if is_torchscript_archive(path):
        state = read_torchscript_state_dict(path)
    else:
        state = safe_load(path)
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: not a CLIP state dict ({type(state).__name__})")
    return {k: v for k, v in state.items() if k not in ARCHIVE_SCALAR_KEYS}


# ---------------------------------------------------------------- loading

def apply_precision(model: CLIP, precision: Precision) -> CLIP:
    """Put a float32 model in one of the official precision states (see the module docstring)."""
    if precision == "fp32":
        return model.float()
    if precision == "fp16_weights":
        return round_weights_through_fp16(model.float())
    if precision == "fp16":
        return convert_weights_to_fp16(model.float())
    raise ValueError(f"unknown precision {precision!r} (fp32, fp16_weights, fp16)")


def load_clip(weights, device: str | torch.device = "cpu", precision: Precision = "fp32",
              config: ClipConfig = ClipConfig()) -> CLIP:
    """CLIP ViT-B/32 from ``ViT-B-32.pt`` found by ``weights`` (a ``harness.weights.WeightStore``), or filled
    by the parity rule (namespace ``clip_vitb32``) when ``weights.fill``; eval mode on ``device``."""
    model = CLIP(config)
    if weights.fill:
        state = filled_state_dict(model, CHECKPOINT.key, fill_recipe)
        load_state_dict_into(model, state, "filled weights")
    else:
        path = weights.path(CHECKPOINT)
        load_state_dict_into(model, read_clip_state_dict(path), CHECKPOINT.filename)
    return apply_precision(model, precision).to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------- FID_CLIP feature extractor (clean-fid)

def clean_fid_clip_resize(image: np.ndarray) -> np.ndarray:
    """clean-fid's own CLIP preprocessing (``model_name="clip_vit_b_32"``): uint8 HxWx3 -> short side resized
    to 224 (PIL bicubic), centre crop 224x224, uint8. Pass it as ``compute_fid(custom_fn_resize=...)`` to get
    the images clean-fid's CLIP mode feeds to CLIP; the extractor then sees 224x224 and does not resize."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    pil = Image.fromarray(np.asarray(image).astype(np.uint8)).convert("RGB")
    pil = TF.center_crop(TF.resize(pil, 224, interpolation=InterpolationMode.BICUBIC), 224)
    return np.asarray(pil).clip(0, 255).astype(np.uint8)


def resize_for_clip(batch: torch.Tensor, resolution: int, resample: str = "bicubic") -> torch.Tensor:
    """[N, 3, H, W] pixel values -> [N, 3, R, R]: short side to R then centre crop (``"bicubic"``: antialiased
    bicubic, clamped to the input range 0..255) or adaptive average pooling to RxR (``"area"``, HairFast's
    ``AdaptiveAvgPool2d(224)``). Unchanged if already RxR."""
    height, width = batch.shape[-2:]
    if (height, width) == (resolution, resolution):
        return batch
    if resample == "area":
        return F.adaptive_avg_pool2d(batch, (resolution, resolution))
    if resample != "bicubic":
        raise ValueError(f"unknown resample {resample!r} (bicubic, area)")
    scale = resolution / min(height, width)
    size = (resolution, int(resolution * width / height)) if height <= width else \
        (int(resolution * height / width), resolution)
    out = F.interpolate(batch, size=size, mode="bicubic", align_corners=False, antialias=scale < 1)
    out = out.clamp(0, 255)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return out[..., top:top + resolution, left:left + resolution]


class ClipFeatureExtractor(nn.Module):
    """clean-fid ``custom_feat_extractor``: float [N, 3, H, W] (or [3, H, W]) pixel values in 0..255 ->
    float32 [N, embed_dim] CLIP image embeddings.

    What it receives from ``compute_fid(fdir1, fdir2, mode="clean", custom_feat_extractor=...)``: each image
    read as uint8 RGB and resized by clean-fid to 299x299 with PIL bicubic per channel in float (no
    quantisation, clipped to 0..255). This extractor then resizes 299 -> 224 (antialiased bicubic by default,
    ``resample="area"`` for an average pool as HairFast does), divides by 255, normalises with CLIP's mean/std
    and calls ``encode_image`` - the same steps as clean-fid's ``CLIP_fx`` after its resize. With
    ``custom_fn_resize=clean_fid_clip_resize`` clean-fid hands over 224x224 images and nothing is resized
    here: that reproduces clean-fid's ``model_name="clip_vit_b_32"`` mode exactly.
    """

    name = "clip_vit_b_32"

    def __init__(self, model: CLIP, resample: str = "bicubic"):
        super().__init__()
        self.model = model
        self.resample = resample
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def fn_resize(self) -> Callable[[np.ndarray], np.ndarray]:
        """clean-fid's CLIP-mode resize, for ``compute_fid(custom_fn_resize=...)``."""
        return clean_fid_clip_resize

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch if batch.ndim == 4 else batch.unsqueeze(0)
        x = x.to(self.mean.device, torch.float32)
        x = resize_for_clip(x, self.model.visual.input_resolution, self.resample)
        x = (x / 255.0 - self.mean) / self.std
        return self.model.encode_image(x).float()


def feature_extractor(device: str | torch.device, weights, precision: Precision = "fp32",
                      resample: str = "bicubic") -> ClipFeatureExtractor:
    """The FID_CLIP extractor on ``device`` from ``ViT-B-32.pt`` (or filled weights when ``weights.fill``)."""
    return ClipFeatureExtractor(load_clip(weights, device, precision), resample).to(device).eval()


class ClipTextScorer:
    """The ``"clip_text"`` network of the text-reference metrics: images and prompts in CLIP's joint space.

    ``image_embeddings``: uint8 HxWx3 images -> short side to 224 (antialiased bicubic), centre crop, CLIP mean/std
    -> ``encode_image``; ``text_embeddings``: prompts -> :func:`tokenize` -> ``encode_text``. Both float32 ``[N, D]``,
    not normalised (the metric takes the cosine)."""

    def __init__(self, model: CLIP):
        self.model = model
        self.device = model.positional_embedding.device
        self.mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def image_embeddings(self, images: list[np.ndarray]) -> torch.Tensor:
        batch = torch.stack([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images])
        x = resize_for_clip(batch.to(self.device, torch.float32), self.model.visual.input_resolution)
        return self.model.encode_image((x / 255.0 - self.mean) / self.std).float()

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(tokenize(prompts, self.model.context_length).to(self.device)).float()


def text_scorer(device: str | torch.device, weights) -> ClipTextScorer:
    """The ``"clip_text"`` network on ``device`` from ``ViT-B-32.pt`` (or filled weights when ``weights.fill``)."""
    return ClipTextScorer(load_clip(weights, device))


FEATURE_EXTRACTORS = {"clip_vitb32": feature_extractor, "clip_text": text_scorer}


# ---------------------------------------------------------------- parity


#: the ops of ``clip_vitb32`` and how a case shows which one it exercises (see :func:`harness.parity.case_op`)
PARITY_OPS = {"encode_image": Op(call=(r"encode_image\(",)), "encode_text": Op(call=(r"encode_text\(",))}


def parity_adapter(fixture: Fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """Builds CLIP from the fixture's constructor, loads its filled state dict (strict), runs
    ``encode_image`` / ``encode_text`` (as the case's call says) in float32 on the case's one input."""
    model = CLIP(ClipConfig.from_mapping(fixture.constructor))
    load_state_dict_into(model, fixture.torch_state_dict(), f"fixture {fixture.name}")
    model = model.float().eval()
    calls = {"encode_image": model.encode_image, "encode_text": model.encode_text}

    def run(case: dict) -> dict[str, np.ndarray]:
        call = calls[case_op(case, PARITY_OPS)]
        (arg,) = case["inputs"]
        value = torch.from_numpy(np.ascontiguousarray(fixture.input(case, arg)))
        with torch.no_grad():
            out = call(value.float() if value.dtype.is_floating_point else value.long())
        return {name: out.numpy() for name in case["outputs"]}

    return run


PARITY = {"clip_vitb32": parity_adapter}
