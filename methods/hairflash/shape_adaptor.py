"""HairFast's shape adaptor: CtrlHair's shape-branch mask generator (``Generator`` of ``shape_branch/model.py`` in
XuyangGuo/CtrlHair, config '054'; HairFast ships a copy under ``models/CtrlHair``).

HairFast uses it in the alignment stage to build the target segmentation: the face layout of the face image combined
with the hair shape of the pose-aligned shape image (:meth:`ShapeAdaptor.transfer_shape`). Label maps are in
CelebAMask-HQ order (19 labels, hair = 13; 255 = "no label", one-hot all zero).

Key names follow the official module, so ``ShapeAdaptor/mask_generator.pth`` (the generator's bare state dict, no
prefix) loads unchanged:

* two encoders (``hair_encoder``: the hair channel; ``face_encoder``: the 18 other channels in label order), each
  reading ``cat(mask channels, position encoding)``: ``layers.0..6`` are 4x4 stride-2 convolutions (zero padding 1,
  widths 32, 64, ..., 2048; 256 -> 2 pixels) each followed by CtrlHair's LayerNorm and LeakyReLU(0.2), then
  ``out_layer.fc`` on the flattened (channel-major) features. The hair encoder gives a 16-d code; its
  ``std_out_layer`` (a VAE head) is only used for sampling in training, inference takes the mean head. The face
  encoder gives a 1024-d code.
* two decoders: ``in_layer.fc`` to ``2048 x 2 x 2``, seven rounds of nearest x2 upsampling (``layers.0, 2, ..``,
  no weights) + 3x3 conv + LayerNorm + LeakyReLU (``layers.1, 3, ..``; widths 2048, 1024, ..., 32), ``out_layer``
  a 3x3 conv to logits. ``hair_decoder`` reads ``cat(face_code, hair_code)`` -> 1 logit, ``face_decoder`` reads
  ``face_code`` -> 18 logits.
* assembly: the hair logit goes in as channel 13 between face channels 0..12 and 13..17; softmax over the 19
  channels; argmax -> label map.

CtrlHair's LayerNorm (``my_torchlib/module.py``) is not torch's: per sample, mean and *unbiased* std over all of
C, H, W; ``(x - mean) / (std + 1e-5) * gamma + beta`` with per-channel ``gamma`` / ``beta``.

Position encoding (fixed, not in the state dict): coordinates ``k / 256`` (k = 0..255) along width (x) and height
(y); frequencies ``2^j * pi`` (j = 0..9); channels ``sin(f_0 x), sin(f_0 y), .., sin(f_9 y)`` then the cosines in
the same order -> 40 channels, computed in float64 and stored as float32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.method import Checkpoint
from harness.parity import Fixture, Op, case_op, to_numpy
from harness.weights import load_state_dict_into
from methods.nets.iresnet import HF_REPO

CHECKPOINT = Checkpoint(
    key="shape_adaptor",
    filename="mask_generator.pth",
    source=f"{HF_REPO} pretrained_models/ShapeAdaptor/mask_generator.pth (CtrlHair's shape-branch generator, "
           "https://github.com/XuyangGuo/CtrlHair config 054)",
    purpose="HairFast shape adaptor: face code of the face mask + hair code of the rotated shape mask -> target "
            "segmentation; bare state dict of CtrlHair's shape Generator",
    official_path="ShapeAdaptor/mask_generator.pth",
    download=("hf:AIRI-Institute/HairFastGAN/pretrained_models/ShapeAdaptor/mask_generator.pth",),
)
CHECKPOINTS = [CHECKPOINT]

HAIR_LABEL = 13  # CelebAMask-HQ / CtrlHair HAIR_IDX
N_LABELS = 19
NO_LABEL = 255  # one-hot all zero (CtrlHair maps it to a 20th channel that is dropped)
LEAKY_SLOPE = 0.2
NORM_EPS = 1e-5


@dataclass(frozen=True)
class ShapeAdaptorConfig:
    """Sizes of the generator (defaults: HairFast's ``mask_generator.pth``)."""

    hair_dim: int = 16
    face_dim: int = 1024
    pos_encoding_order: int = 10
    size: int = 256  # label map side; the encoders halve it n_layers times
    n_layers: int = 7
    base_channels: int = 32
    max_channels: int = 2048
    n_labels: int = N_LABELS
    hair_label: int = HAIR_LABEL
    norm: Literal["ln", "none"] = "ln"
    hair_std_head: bool = True  # the VAE std head of the hair encoder (in the weights, unused at inference)

    def __post_init__(self):
        if self.size % (2 ** self.n_layers):
            raise ValueError(f"size {self.size} is not divisible by 2^{self.n_layers}")
        if not 0 <= self.hair_label < self.n_labels:
            raise ValueError(f"hair_label {self.hair_label} outside 0..{self.n_labels - 1}")
        if self.norm not in ("ln", "none"):
            raise ValueError(f"unsupported norm {self.norm!r} (ln or none)")

    @property
    def pos_channels(self) -> int:
        return 4 * self.pos_encoding_order

    @property
    def bottom_size(self) -> int:
        return self.size // 2 ** self.n_layers

    @property
    def encoder_widths(self) -> tuple[int, ...]:
        return tuple(min(self.max_channels, self.base_channels * 2 ** i) for i in range(self.n_layers))

    @property
    def decoder_in_channels(self) -> int:
        return min(self.max_channels, self.base_channels * 2 ** self.n_layers)

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        return tuple(min(self.max_channels, self.base_channels * 2 ** (self.n_layers - 1 - i))
                     for i in range(self.n_layers))


# ---------------------------------------------------------------- pure pieces

def position_encoding(size: int = 256, order: int = 10) -> Tensor:
    """CtrlHair's fixed sinusoidal encoding ``[4 * order, size, size]`` (float32, computed in float64)."""
    coords = torch.arange(size, dtype=torch.float64) * (1.0 / size)  # linspace(0, 1, size, endpoint=False)
    x = coords.expand(size, size)  # varies along the width
    y = x.t()
    freqs = (2.0 ** torch.arange(order, dtype=torch.float64) * math.pi)[:, None, None, None]
    angles = freqs * torch.stack([x, y])  # [order, 2, size, size]
    return torch.cat([angles.sin(), angles.cos()]).reshape(4 * order, size, size).float()


def ctrlhair_layer_norm(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Per sample over all of C, H, W: ``(x - mean) / (unbiased std + eps)``, then per-channel ``gamma``/``beta``."""
    flat = x.flatten(1)
    shape = (-1,) + (1,) * (x.ndim - 1)
    x = (x - flat.mean(1).view(shape)) / (flat.std(1).view(shape) + eps)
    affine = (1, -1) + (1,) * (x.ndim - 2)
    return x * gamma.view(affine) + beta.view(affine)


def as_label_batch(labels: Tensor, size: int) -> Tensor:
    """``[H,W]``, ``[B,H,W]`` or ``[B,1,H,W]`` integer labels -> ``[B,size,size]`` int64 (nearest resize, as
    CtrlHair's ``get_hair_face_code`` does with torchvision's legacy nearest)."""
    if labels.is_floating_point():
        raise TypeError(f"label maps must be integer tensors, got {labels.dtype}")
    if labels.ndim == 2:
        labels = labels[None]
    elif labels.ndim == 4:
        if labels.shape[1] != 1:
            raise ValueError(f"expected [B,1,H,W] labels, got {tuple(labels.shape)}")
        labels = labels[:, 0]
    elif labels.ndim != 3:
        raise ValueError(f"expected [H,W], [B,H,W] or [B,1,H,W] labels, got {tuple(labels.shape)}")
    labels = labels.long()
    if labels.shape[-2:] != (size, size):
        labels = F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    return labels


def one_hot_labels(labels: Tensor, n_labels: int = N_LABELS) -> Tensor:
    """``[B,H,W]`` labels -> ``[B,n_labels,H,W]`` float one-hot; label 255 gives all zeros."""
    bad = (labels < 0) | ((labels >= n_labels) & (labels != NO_LABEL))
    if bool(bad.any()):
        raise ValueError(f"labels must be in 0..{n_labels - 1} or {NO_LABEL}, got {labels[bad][0].item()}")
    index = torch.where(labels == NO_LABEL, torch.full_like(labels, n_labels), labels)
    return F.one_hot(index, n_labels + 1)[..., :n_labels].permute(0, 3, 1, 2).float()


def split_hair_face(one_hot: Tensor, hair_label: int = HAIR_LABEL) -> tuple[Tensor, Tensor]:
    """``[B,19,H,W]`` -> hair channel ``[B,1,H,W]`` and the 18 other channels in label order."""
    return one_hot[:, hair_label:hair_label + 1], torch.cat([one_hot[:, :hair_label], one_hot[:, hair_label + 1:]], 1)


def assemble_logits(face_logits: Tensor, hair_logit: Tensor, hair_label: int = HAIR_LABEL) -> Tensor:
    """Insert the hair logit as channel ``hair_label`` between the face logits."""
    return torch.cat([face_logits[:, :hair_label], hair_logit, face_logits[:, hair_label:]], 1)


def logits_to_labels(logits: Tensor) -> Tensor:
    """``[B,19,H,W]`` logits -> ``[B,H,W]`` labels: argmax of the softmax, as the official code takes it."""
    return torch.softmax(logits, 1).argmax(1)


# ---------------------------------------------------------------- layers (official key names)

class LayerNorm(nn.Module):
    """CtrlHair's LayerNorm (keys ``gamma``, ``beta``): see :func:`ctrlhair_layer_norm`."""

    def __init__(self, channels: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return ctrlhair_layer_norm(x, self.gamma, self.beta, self.eps)


class ConvBlock(nn.Module):
    """``conv`` (zero padding) -> optional ``norm`` -> optional LeakyReLU(0.2) (CtrlHair's ``Conv2dBlock``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, norm: bool, activation: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=1)
        self.norm = LayerNorm(out_channels) if norm else None
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.leaky_relu(x, LEAKY_SLOPE) if self.activation else x


class LinearBlock(nn.Module):
    """A plain linear layer under the key ``fc`` (CtrlHair's ``LinearBlock`` with no norm, no activation)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class MaskEncoder(nn.Module):
    """Mask channels + position encoding -> code (the mean head)."""

    def __init__(self, in_channels: int, out_dim: int, config: ShapeAdaptorConfig, std_head: bool = False):
        super().__init__()
        blocks, width = [], in_channels + config.pos_channels
        for out_width in config.encoder_widths:
            blocks.append(ConvBlock(width, out_width, 4, 2, config.norm == "ln", activation=True))
            width = out_width
        self.layers = nn.Sequential(*blocks)
        features = width * config.bottom_size ** 2
        self.out_layer = LinearBlock(features, out_dim)
        self.std_out_layer = LinearBlock(features, out_dim) if std_head else None

    def features(self, masks: Tensor, pos: Tensor) -> Tensor:
        x = torch.cat([masks, pos.to(masks.dtype).expand(masks.shape[0], -1, -1, -1)], 1)
        return self.layers(x).flatten(1)

    def forward(self, masks: Tensor, pos: Tensor) -> Tensor:
        return self.out_layer(self.features(masks, pos))

    def mean_and_std(self, masks: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """The VAE head pair ``(mean, |std head|)`` (training-time sampling; HairFast uses the mean only)."""
        if self.std_out_layer is None:
            raise ValueError("this encoder has no std head")
        feats = self.features(masks, pos)
        return self.out_layer(feats), self.std_out_layer(feats).abs()


class MaskDecoder(nn.Module):
    """Code -> ``[B, out_channels, size, size]`` logits."""

    def __init__(self, in_dim: int, out_channels: int, config: ShapeAdaptorConfig):
        super().__init__()
        self.in_channels, self.bottom = config.decoder_in_channels, config.bottom_size
        self.in_layer = LinearBlock(in_dim, self.in_channels * self.bottom ** 2)
        layers: list[nn.Module] = []
        width = self.in_channels
        for out_width in config.decoder_widths:  # even indices: upsampling (no weights), odd: conv blocks
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       ConvBlock(width, out_width, 3, 1, config.norm == "ln", activation=True)]
            width = out_width
        self.layers = nn.Sequential(*layers)
        self.out_layer = ConvBlock(width, out_channels, 3, 1, norm=False, activation=False)

    def forward(self, code: Tensor) -> Tensor:
        x = self.in_layer(code).reshape(-1, self.in_channels, self.bottom, self.bottom)
        return self.out_layer(self.layers(x))


class ShapeAdaptor(nn.Module):
    """CtrlHair's shape generator with HairFast's inference helpers.

    ``codes(labels)`` -> ``(face_code [B,1024], hair_code [B,16])``; ``generate(face_code, hair_code)`` ->
    ``(logits [B,19,S,S], labels [B,S,S])``; ``transfer_shape(face_labels, shape_labels)`` -> ``[B,1,S,S]`` int64
    target labels (face layout of ``face_labels``, hair shape of ``shape_labels``), S = 256.
    """

    def __init__(self, config: ShapeAdaptorConfig = ShapeAdaptorConfig()):
        super().__init__()
        self.config = config
        face_channels = config.n_labels - 1
        self.hair_encoder = MaskEncoder(1, config.hair_dim, config, std_head=config.hair_std_head)
        self.face_encoder = MaskEncoder(face_channels, config.face_dim, config)
        self.hair_decoder = MaskDecoder(config.face_dim + config.hair_dim, 1, config)
        self.face_decoder = MaskDecoder(config.face_dim, face_channels, config)
        self.register_buffer("position_encoding", position_encoding(config.size, config.pos_encoding_order),
                             persistent=False)

    def encode_hair(self, hair: Tensor) -> Tensor:
        """``[B,1,S,S]`` hair mask -> hair code (mean head)."""
        return self.hair_encoder(hair, self.position_encoding)

    def encode_face(self, face: Tensor) -> Tensor:
        """``[B,18,S,S]`` non-hair masks -> face code."""
        return self.face_encoder(face, self.position_encoding)

    def one_hot(self, labels: Tensor) -> Tensor:
        """Label maps (any accepted layout, resized to S) -> ``[B,19,S,S]`` one-hot on the model's device."""
        labels = as_label_batch(labels.to(self.position_encoding.device), self.config.size)
        return one_hot_labels(labels, self.config.n_labels).to(self.position_encoding.dtype)

    def codes(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``get_hair_face_code`` for a batch: label maps -> ``(face_code, hair_code)``."""
        hair, face = split_hair_face(self.one_hot(labels), self.config.hair_label)
        return self.encode_face(face), self.encode_hair(hair)

    def decode_parts(self, face_code: Tensor, hair_code: Tensor) -> tuple[Tensor, Tensor]:
        """``(hair_logit [B,1,S,S], face_logits [B,18,S,S])``."""
        return self.hair_decoder(torch.cat([face_code, hair_code], 1)), self.face_decoder(face_code)

    def generate(self, face_code: Tensor, hair_code: Tensor) -> tuple[Tensor, Tensor]:
        """``get_new_shape`` for a batch: assembled logits ``[B,19,S,S]`` and their labels ``[B,S,S]``."""
        hair_logit, face_logits = self.decode_parts(face_code, hair_code)
        logits = assemble_logits(face_logits, hair_logit, self.config.hair_label)
        return logits, logits_to_labels(logits)

    @torch.no_grad()
    def transfer_shape(self, face_labels: Tensor, shape_labels: Tensor) -> Tensor:
        """HairFast's target segmentation: face code of ``face_labels``, hair code of ``shape_labels`` (the
        pose-aligned shape mask) -> ``[B,1,S,S]`` int64 labels; ``target == 13`` is HairFast's ``HM_X``."""
        face = split_hair_face(self.one_hot(face_labels), self.config.hair_label)[1]
        hair = split_hair_face(self.one_hot(shape_labels), self.config.hair_label)[0]
        if face.shape[0] != hair.shape[0]:
            raise ValueError(f"batch sizes differ: {face.shape[0]} face maps, {hair.shape[0]} shape maps")
        return self.generate(self.encode_face(face), self.encode_hair(hair))[1][:, None]


# ---------------------------------------------------------------- fill recipe and loading

def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Fill of one entry, identical to the ``shape_adaptor`` fixture: weights ``1/sqrt(fan_in)`` (convs:
    ``C_in * k * k``), biases 0.01, LayerNorm ``gamma`` 1 +- 0.1 and ``beta`` 0.1."""
    name = key.rsplit(".", 1)[-1]
    if name == "gamma":
        return {"kind": "normal", "mean": 1.0, "std": 0.1}
    if name == "beta":
        return {"kind": "normal", "mean": 0.0, "std": 0.1}
    if name == "bias":
        return {"kind": "normal", "mean": 0.0, "std": 0.01}
    return {"kind": "normal", "mean": 0.0, "std": 1.0 / math.sqrt(int(np.prod(shape[1:])))}


def load_shape_adaptor(weights, device: str | torch.device = "cpu",
                       config: ShapeAdaptorConfig = ShapeAdaptorConfig()) -> ShapeAdaptor:
    """:class:`ShapeAdaptor` from ``mask_generator.pth`` (bare state dict, strict; also found at its official
    path ``ShapeAdaptor/mask_generator.pth`` under ``--weights-dir``), or filled by the rule (namespace
    ``shape_adaptor``, the fixture's) when ``weights.fill``; float32, eval, no grad, on ``device``."""
    model = ShapeAdaptor(config)
    weights.load_network(model, CHECKPOINT, recipe=fill_recipe)
    return model.float().to(device).eval().requires_grad_(False)


def config_from_state(shapes: Mapping[str, tuple[int, ...]], cfg: Mapping[str, Any] | None = None
                      ) -> ShapeAdaptorConfig:
    """The config whose sizes give a state dict with these entry shapes; CtrlHair's ``cfg`` values
    (``hair_dim``, ``pos_encoding_order``, ``vae_hair_mode``, ``g_norm``) must agree when given."""
    n_layers = sum(1 for k in shapes if re.fullmatch(r"hair_encoder\.layers\.\d+\.conv\.weight", k))
    first = shapes["hair_encoder.layers.0.conv.weight"]
    last_width = shapes[f"hair_encoder.layers.{n_layers - 1}.conv.weight"][0]
    pos_channels = first[1] - 1
    hair_dim, features = shapes["hair_encoder.out_layer.fc.weight"]
    bottom = math.isqrt(features // last_width)
    config = ShapeAdaptorConfig(
        hair_dim=hair_dim,
        face_dim=shapes["face_encoder.out_layer.fc.weight"][0],
        pos_encoding_order=pos_channels // 4,
        size=bottom * 2 ** n_layers,
        n_layers=n_layers,
        base_channels=first[0],
        max_channels=shapes["hair_decoder.layers.1.conv.weight"][1],
        n_labels=shapes["face_encoder.layers.0.conv.weight"][1] - pos_channels + 1,
        norm="ln" if "hair_encoder.layers.0.norm.gamma" in shapes else "none",
        hair_std_head="hair_encoder.std_out_layer.fc.weight" in shapes,
    )
    expected = {"hair_dim": config.hair_dim, "pos_encoding_order": config.pos_encoding_order,
                "vae_hair_mode": config.hair_std_head, "g_norm": config.norm}
    clashes = {k: (v, expected[k]) for k, v in (cfg or {}).items() if k in expected and v != expected[k]}
    if clashes:
        raise ValueError(f"constructor cfg disagrees with the state dict (cfg, state): {clashes}")
    return config


# ---------------------------------------------------------------- parity

LABEL_OUTPUTS = ("target_label", "hair_mask_target")


def _word(name: str) -> str:
    return re.split(r"[\s(]", name.strip(), maxsplit=1)[0]


def min_agreement(case: Mapping[str, Any], default: float = 0.999) -> float:
    """The case's pixel-agreement threshold for label maps ("at least 99.9% identical pixels")."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*%\s*identical", case.get("compare", ""))
    return float(match.group(1)) / 100 if match else default


def pixel_agreement(ours: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of identical pixels of two label maps of the same size."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    if ours.size != reference.size:
        return 0.0
    return float(np.mean(ours.reshape(reference.shape).astype(np.int64) == reference.astype(np.int64)))


def agreement_checked(ours: np.ndarray, reference: np.ndarray, threshold: float) -> np.ndarray:
    """A label map for the generic relative-L2 comparison that passes iff ``ours`` agrees with ``reference`` on
    at least ``threshold`` of the pixels: then the few differing pixels (argmax flips at near ties) take the
    reference value; otherwise ``ours`` is returned unchanged and fails (any differing pixel of a label map
    gives a relative error far above 1e-4)."""
    ours = np.asarray(ours).reshape(np.shape(reference))
    return np.asarray(reference, dtype=ours.dtype).copy() if pixel_agreement(ours, reference) >= threshold else ours


#: the ops of ``shape_adaptor`` and how a case shows which one it exercises (see :func:`harness.parity.case_op`)
PARITY_OPS = {"masks_to_codes": Op(call=(r"get_hair_face_code",)),
              "codes_to_new_shape": Op(call=(r"get_new_shape|forward_decode_by_code",)),
              "positional_encoding": Op(call=(r"generate_pos_embedding",))}


def _mask_number(case: dict, position: int, key: str) -> int:
    """The ``k`` the call gives the mask input stored at ``key`` (``for k=1 (in/mask_face)``), else position+1."""
    match = re.search(rf"k\s*=\s*(\d+)\s*\(\s*{re.escape(key)}\s*\)", case.get("call", ""))
    return int(match.group(1)) if match else position + 1


def parity_adapter(fixture: Fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """``shape_adaptor``: the generator sized from the spec's state dict, strict load; per case (as its spec
    entry says) mask -> codes (``face_code_k``/``hair_code_k`` per mask input), codes -> new shape (label maps
    compared by pixel agreement, see :func:`agreement_checked`) or the positional encoding."""
    shapes = {e["key"]: tuple(e["shape"]) for e in fixture.spec["state_dict"]}
    model = ShapeAdaptor(config_from_state(shapes, fixture.constructor.get("cfg")))
    load_state_dict_into(model, fixture.torch_state_dict(), f"fixture {fixture.name}")
    model = model.float().eval()

    def tensor(case: dict, name: str) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(fixture.input(case, name)))

    def reference_shape(case: dict, word: str) -> tuple[int, ...] | None:
        target = next((t for n, t in case["outputs"].items() if _word(n) == word), None)
        ref = None if target is None else fixture.reference(target)
        return None if ref is None else tuple(int(v) for v in (ref["shape"] if isinstance(ref, dict) else ref.shape))

    def code(case: dict, kind: str) -> Tensor:
        name = next((n for n in case["inputs"] if _word(n).startswith(kind)), None)
        if name is None:
            raise KeyError(f"case {case['name']!r} has no {kind}* input")
        return tensor(case, name).float()

    def run(case: dict) -> dict[str, np.ndarray]:
        op = case_op(case, PARITY_OPS)
        with torch.no_grad():
            if op == "masks_to_codes":
                values = {}
                for i, (name, key) in enumerate(case["inputs"].items()):
                    k = _mask_number(case, i, key)
                    values[f"face_code_{k}"], values[f"hair_code_{k}"] = model.codes(tensor(case, name).long())
            elif op == "codes_to_new_shape":
                face_code, hair_code = code(case, "face_code"), code(case, "hair_code")
                hair_logit, face_logit = model.decode_parts(face_code, hair_code)
                logits = assemble_logits(face_logit, hair_logit, model.config.hair_label)
                target = logits_to_labels(logits)[:, None]
                values = {"target_label": target, "hair_mask_target": (target == model.config.hair_label),
                          "target_prob": torch.softmax(logits, 1), "hair_logit": hair_logit, "face_logit": face_logit}
            else:  # the module's encoding, or one sized like the reference [4*order, size, size]
                own = tuple(model.position_encoding.shape)
                shape = reference_shape(case, "pos_embedding") or own
                values = {"pos_embedding": model.position_encoding if shape[-3:] == own
                          else position_encoding(shape[-1], shape[-3] // 4)}
        out = {}
        for name, target in case["outputs"].items():
            value = to_numpy(values[_word(name)])
            if _word(name) in LABEL_OUTPUTS:
                value = agreement_checked(value, fixture.reference(target), min_agreement(case))
            out[name] = value
        return out

    return run


PARITY = {"shape_adaptor": parity_adapter}
