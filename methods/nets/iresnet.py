"""The ArcFace iresnet-50 trunk and the Feature-Style encoder built on it (HairFast's FS-space embedding).

Key names follow AIRI-Institute/HairFastGAN: ``fs_encoder_v2`` (``models/FeatureStyleEncoder/nets/
feature_style_encoder.py``) and ``FeatureEncoderMult`` (``models/Net.py``, the post-processing encoder) both take
children 0..6 of insightface's ``iresnet50`` as ``conv`` (``conv.0/1/2`` = 3x3 stem conv, BN, PReLU) and
``block_1`` .. ``block_4``, add a content branch ``content_layer`` and 18 style heads ``styles.N``. So the bare
state dict of ``FeatureStyleEncoder/143_enc.pth`` loads unchanged into :class:`FSEncoder`, and the
``encoder_face.*`` part of ``PostProcess/pp_model.pth`` into :class:`FeatureEncoder`
(see :mod:`methods.hairflash.encoders`).

Trunk: four stages of :class:`IBasicBlock` (3/4/14/3 blocks, widths 64/128/256/512), each halving the resolution
in its first block. Styles: each stage's output is average-pooled to 3x3, the four maps are concatenated on
channels (960) and flattened channel-major (8640 values); 18 ``Linear(8640, 512)`` heads give one row each.
Content: ``BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN`` on one stage's output.

HairFast's embedding (:meth:`FSEncoder.embed`): the [-1, 1] 1024 image is halved twice with bilinear interpolation
(``F.interpolate(scale_factor=0.5)``, i.e. 2x2 means: a 4x4 box mean overall) to 256, encoded, and
``S = styles + dlatent_avg`` ([B,18,512]); the content map [B,512,16,16] is HairFast's initial F. ``dlatent_avg``
is the ``latent_avg`` of ``FeatureStyleEncoder/psp_ffhq_encode.pt`` (a pSp checkpoint), not part of
``143_enc.pth``.

All BatchNorms run on their running statistics (eval); eps 1e-5 everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.method import Checkpoint
from harness.parity import Fixture, fill_value, to_numpy
from harness.weights import load_state_dict_into, safe_load

HF_REPO = "https://huggingface.co/AIRI-Institute/HairFastGAN"

FSE_CHECKPOINT = Checkpoint(
    key="hairfast_fse",
    filename="143_enc.pth",
    source=f"{HF_REPO} pretrained_models/FeatureStyleEncoder/143_enc.pth (456 MB on the Hub)",
    purpose="HairFast Feature-Style encoder (fs_encoder_v2, iresnet-50 trunk): image -> S [18,512] and F "
            "content [512,16,16]; a bare state dict",
    download=("hf:AIRI-Institute/HairFastGAN/pretrained_models/FeatureStyleEncoder/143_enc.pth",),
)
PSP_CHECKPOINT = Checkpoint(
    key="hairfast_psp_ffhq",
    filename="psp_ffhq_encode.pt",
    source=f"{HF_REPO} pretrained_models/FeatureStyleEncoder/psp_ffhq_encode.pt (1.2 GB on the Hub; the pSp "
           "FFHQ encoder of eladrich/pixel2style2pixel)",
    purpose="pSp FFHQ checkpoint; HairFast's FS encoder reads only its 'latent_avg' (added to the 18 style rows)",
    download=("hf:AIRI-Institute/HairFastGAN/pretrained_models/FeatureStyleEncoder/psp_ffhq_encode.pt",),
)
CHECKPOINTS = [FSE_CHECKPOINT, PSP_CHECKPOINT]

BN_EPS = 1e-5
# (width, blocks) of the four iresnet-50 stages; the first block of each stage has stride 2.
IRESNET50_STAGES: tuple[tuple[int, int], ...] = ((64, 3), (128, 4), (256, 14), (512, 3))
STEM_WIDTH = 64


# ---------------------------------------------------------------- building blocks

def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """ArcFace residual block: ``bn1 -> conv1 -> bn2 -> prelu -> conv2(stride) -> bn3`` plus the identity (or a
    1x1 conv + BN ``downsample`` projection); no activation after the sum."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, project: bool | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        if project is None:
            project = stride != 1 or inplanes != planes
        self.downsample = (nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes, eps=BN_EPS))
                           if project else None)

    def forward(self, x: Tensor) -> Tensor:
        return self.after_conv1(x, self.conv1(self.bn1(x)))

    def after_conv1(self, x: Tensor, conv1_out: Tensor) -> Tensor:
        """:meth:`forward` of ``x`` given ``conv1(bn1(x))``."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(conv1_out))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def conv1_part(self, x: Tensor, start: int) -> Tensor:
        """``conv1(bn1(.))`` of input channels ``start .. start + x.shape[1]`` alone, without ``conv1``'s bias.
        BatchNorm (per channel) then convolution is linear in each input channel, so the parts of a concatenated
        input plus the bias make ``conv1(bn1(x))`` (up to float rounding): a part that depends on one image can be
        computed once for it."""
        bn, conv = self.bn1, self.conv1
        channels = slice(start, start + x.shape[1])
        x = F.batch_norm(x, bn.running_mean[channels], bn.running_var[channels], bn.weight[channels],
                         bn.bias[channels], False, 0.0, bn.eps)
        return F.conv2d(x, conv.weight[:, channels], None, conv.stride, conv.padding)

    def conv1_from_parts(self, parts: Sequence[Tensor]) -> Tensor:
        """``conv1(bn1(x))`` from the :meth:`conv1_part` of every channel group of ``x``."""
        out = sum(parts[1:], parts[0])
        return out if self.conv1.bias is None else out + self.conv1.bias.view(1, -1, 1, 1)


def make_stage(inplanes: int, planes: int, blocks: int, stride: int = 2) -> nn.Sequential:
    """One iresnet stage (insightface ``IResNet._make_layer``): the first block strides and projects."""
    layers = [IBasicBlock(inplanes, planes, stride)]
    layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def content_branch(in_channels: int, out_channels: int = 512, stride: int = 1) -> nn.Sequential:
    """``BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN`` (keys ``0``..``5``)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels, eps=BN_EPS),
        conv3x3(in_channels, out_channels),
        nn.BatchNorm2d(out_channels, eps=BN_EPS),
        nn.PReLU(out_channels),
        conv3x3(out_channels, out_channels, stride),
        nn.BatchNorm2d(out_channels, eps=BN_EPS),
    )


# ---------------------------------------------------------------- the encoder

@dataclass(frozen=True)
class EncoderConfig:
    """Shape of a Feature-Style encoder.

    ``content_stage`` (1-based) is the stage whose output feeds the content branch: 3 for ``fs_encoder_v2``
    (256 ch -> stride-2 conv -> [512,16,16] for a 256 input), 2 for HairFast's post-processing
    ``FeatureEncoderMult(fs_layers=[9])`` (128 ch, stride 1 -> [512,64,64]). ``content_in_list``: the branch sits
    in a one-element ``ModuleList`` (keys ``content_layer.0.*``, as ``FeatureEncoderMult`` stores it).
    ``resize_to``: ``FeatureEncoderMult`` first applies torchvision ``Resize((256, 256))``; we resize bilinearly with
    antialiasing (torchvision >= 0.17's default for tensors; older versions did not antialias). The pipeline only
    passes 256 inputs, for which it is the identity.
    """

    n_styles: int = 18
    style_dim: int = 512
    stages: tuple[tuple[int, int], ...] = IRESNET50_STAGES
    content_stage: int = 3
    content_stride: int = 2
    content_channels: int = 512
    content_in_list: bool = False
    pool_size: int = 3
    resize_to: int | None = None

    @property
    def pooled_features(self) -> int:
        """Length of the flattened pooled multi-scale feature (960 * 9 = 8640 for iresnet-50)."""
        return sum(width for width, _ in self.stages) * self.pool_size ** 2

    @classmethod
    def fse(cls, n_styles: int = 18, content_stride: int = 2) -> EncoderConfig:
        """HairFast's ``fs_encoder_v2(n_styles=18, resnet_layer=[4,5,6], stride=(2,2))``."""
        return cls(n_styles=n_styles, content_stage=3, content_stride=content_stride)

    @classmethod
    def postprocess(cls) -> EncoderConfig:
        """HairFast's ``FeatureEncoderMult(fs_layers=[9])`` (post-processing ``encoder_face``)."""
        return cls(content_stage=2, content_stride=1, content_in_list=True, resize_to=256)


FSE_CONFIG = EncoderConfig.fse()
POSTPROCESS_ENCODER_CONFIG = EncoderConfig.postprocess()


class FeatureEncoder(nn.Module):
    """iresnet trunk + pooled multi-scale style heads + content branch: ``x -> (styles [B,n,512], content)``."""

    def __init__(self, config: EncoderConfig = EncoderConfig()):
        super().__init__()
        self.config = config
        self.conv = nn.Sequential(conv3x3(3, STEM_WIDTH), nn.BatchNorm2d(STEM_WIDTH, eps=BN_EPS),
                                  nn.PReLU(STEM_WIDTH))
        inplanes = STEM_WIDTH
        for index, (width, blocks) in enumerate(config.stages, start=1):
            setattr(self, f"block_{index}", make_stage(inplanes, width, blocks))
            inplanes = width
        branch = content_branch(config.stages[config.content_stage - 1][0], config.content_channels,
                                config.content_stride)
        self.content_layer = nn.ModuleList([branch]) if config.content_in_list else branch
        self.styles = nn.ModuleList(nn.Linear(config.pooled_features, config.style_dim)
                                    for _ in range(config.n_styles))

    @property
    def content_module(self) -> nn.Sequential:
        return self.content_layer[0] if self.config.content_in_list else self.content_layer

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"block_{i}") for i in range(1, len(self.config.stages) + 1)]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        size = self.config.resize_to
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        pool = self.config.pool_size
        x = self.conv(x)
        pooled = []
        content = None
        for index, stage in enumerate(self.stages(), start=1):
            x = stage(x)
            if index == self.config.content_stage:
                content = self.content_module(x)
            pooled.append(F.adaptive_avg_pool2d(x, pool))
        features = torch.cat(pooled, dim=1).flatten(1)
        styles = torch.stack([head(features) for head in self.styles], dim=1)
        return styles, content


def halve_bilinear(image: Tensor, times: int) -> Tensor:
    """``times`` halvings with ``F.interpolate(scale_factor=0.5, mode="bilinear")`` (FSE's ``downscale``); for
    even sizes each halving is the mean of 2x2 blocks."""
    for _ in range(times):
        image = F.interpolate(image, scale_factor=0.5, mode="bilinear", align_corners=False)
    return image


class FSEncoder(FeatureEncoder):
    """HairFast's FS encoder: :class:`FeatureEncoder` (``fs_encoder_v2`` layout) plus the average latent.

    ``latent_avg`` is a non-persistent buffer (``[n_styles, 512]`` or ``[1, 512]``), so ``state_dict()`` is
    exactly the bare ``143_enc.pth``. ``halvings`` = log2(resolution / enc_resolution) = 2 for HairFast's config.
    """

    def __init__(self, config: EncoderConfig = FSE_CONFIG, halvings: int = 2):
        super().__init__(config)
        self.halvings = halvings
        self.register_buffer("latent_avg", torch.zeros(config.n_styles, config.style_dim), persistent=False)

    def set_latent_avg(self, latent_avg: Tensor) -> None:
        """Accepts ``[n, 512]``, ``[1, n, 512]``, ``[512]`` or ``[1, 512]`` (broadcast over the rows)."""
        value = torch.as_tensor(latent_avg).detach().float()
        dim = self.config.style_dim
        if value.numel() == dim:
            value = value.reshape(1, dim)
        elif value.numel() == self.config.n_styles * dim:
            value = value.reshape(self.config.n_styles, dim)
        else:
            raise ValueError(f"latent_avg of shape {tuple(value.shape)} does not fit [{self.config.n_styles}, {dim}]")
        self.latent_avg = value.to(self.latent_avg.device)

    def embed(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """[-1, 1] image [B,3,1024,1024] -> ``(S [B,n,512] = styles + latent_avg, content [B,512,16,16])``."""
        styles, content = self(halve_bilinear(image, self.halvings))
        return styles + self.latent_avg.to(styles.dtype), content


# ---------------------------------------------------------------- fill recipe (parity rule, --fill-weights)

_BN_STAT = re.compile(r"\.(running_mean|running_var|num_batches_tracked)$")
_PRELU = re.compile(r"(^|\.)(prelu|conv\.2|content_layer\.(\d+\.)?3)\.weight$")
_STYLE_HEAD = re.compile(r"(^|\.)styles\.\d+\.(weight|bias)$")
_BATCHNORM = re.compile(r"(^|\.)(bn\d|conv\.1|downsample\.1|content_layer\.(\d+\.)?[025])\.(weight|bias)$")


def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Fill of one encoder entry (any key prefix), identical to the ``fse`` / ``hairfast_postprocess`` recipes:
    convs and linears ``1/sqrt(fan_in)``, linear biases 0.01; BatchNorm weight 1 +- 0.1 (``bn3``: 0.5 +- 0.1),
    bias and running mean 0.1, running var 1; PReLU 0.25 +- 0.05; the extra ``dlatent_avg`` / ``latent_avg``
    rows N(0, 0.5)."""
    name = key.rsplit(".", 1)[-1]
    if key in ("dlatent_avg", "latent_avg"):
        return {"kind": "normal", "mean": 0.0, "std": 0.5}
    if name == "num_batches_tracked":
        return {"kind": "int_zero"}
    if _BN_STAT.search(key):
        return {"kind": "normal", "mean": 1.0, "std": 0.0} if name == "running_var" else \
            {"kind": "normal", "mean": 0.0, "std": 0.1}
    if _PRELU.search(key):
        return {"kind": "normal", "mean": 0.25, "std": 0.05}
    if _BATCHNORM.search(key) and len(shape) == 1:
        if name == "bias":
            return {"kind": "normal", "mean": 0.0, "std": 0.1}
        return {"kind": "normal", "mean": 0.5 if ".bn3." in f".{key}" else 1.0, "std": 0.1}
    if name == "bias":
        return {"kind": "normal", "mean": 0.0, "std": 0.01}
    fan_in = int(np.prod(shape[1:]))
    return {"kind": "normal", "mean": 0.0, "std": 1.0 / math.sqrt(fan_in)}


# ---------------------------------------------------------------- loading

def latent_avg_from(obj: Any) -> Tensor:
    """The average latent of a pSp-style checkpoint (``obj["latent_avg"]``) or of a bare tensor file."""
    if isinstance(obj, Mapping):
        if "latent_avg" not in obj:
            raise KeyError("checkpoint has no 'latent_avg' entry")
        obj = obj["latent_avg"]
    if not isinstance(obj, Tensor):
        raise TypeError(f"latent_avg is a {type(obj).__name__}, not a tensor")
    return obj.float()


def load_fse(weights, device: str | torch.device = "cpu", config: EncoderConfig = FSE_CONFIG,
             halvings: int = 2) -> FSEncoder:
    """HairFast's FS encoder from ``143_enc.pth`` (bare state dict, strict) with ``latent_avg`` from
    ``psp_ffhq_encode.pt``, both found by ``weights`` (a ``harness.weights.WeightStore``); eval, no grad.

    With ``weights.fill`` the encoder is filled by the parity rule under namespace ``hairfast_fse`` and the average
    latent is the rule's fill of key ``dlatent_avg`` in that namespace (as the ``fse`` fixture does)."""
    model = FSEncoder(config, halvings)
    weights.load_network(model, FSE_CHECKPOINT, recipe=fill_recipe)
    if weights.fill:
        shape = (config.n_styles, config.style_dim)
        latent_avg = torch.from_numpy(fill_value(FSE_CHECKPOINT.key, "dlatent_avg", shape,
                                                 **_normal(fill_recipe("dlatent_avg", shape))))
    else:
        latent_avg = latent_avg_from(safe_load(weights.path(PSP_CHECKPOINT)))
    model.set_latent_avg(latent_avg)
    return model.float().to(device).eval().requires_grad_(False)


def _normal(fill: Mapping[str, Any]) -> dict[str, float]:
    return {"mean": float(fill["mean"]), "std": float(fill["std"])}


# ---------------------------------------------------------------- parity

def _constructor_text(fixture: Fixture) -> str:
    return " ".join(str(v) for v in fixture.constructor.values())


def config_from_state(state: Mapping[str, Any], prefix: str = "", **overrides: Any) -> EncoderConfig:
    """An :class:`EncoderConfig` whose sizes follow a state dict (style heads, stage widths and depths, content
    branch input), so fixtures with other sizes build the matching network."""
    def shape(key: str) -> tuple[int, ...]:
        return tuple(state[prefix + key].shape)

    n_styles = len({k for k in state if re.fullmatch(rf"{re.escape(prefix)}styles\.\d+\.weight", k)})
    stages = []
    index = 1
    while f"{prefix}block_{index}.0.conv1.weight" in state:
        blocks = len({m.group(1) for k in state
                      if (m := re.fullmatch(rf"{re.escape(prefix)}block_{index}\.(\d+)\.conv1\.weight", k))})
        stages.append((shape(f"block_{index}.0.conv1.weight")[0], blocks))
        index += 1
    in_list = f"{prefix}content_layer.0.0.weight" in state
    branch = "content_layer.0." if in_list else "content_layer."
    content_in = shape(f"{branch}0.weight")[0]
    widths = [w for w, _ in stages]
    style_dim = shape("styles.0.weight")[0]
    values = dict(n_styles=n_styles, style_dim=style_dim, stages=tuple(stages),
                  content_stage=widths.index(content_in) + 1, content_channels=shape(f"{branch}5.weight")[0],
                  content_in_list=in_list)
    values.update(overrides)
    config = EncoderConfig(**values)
    if config.pooled_features != shape("styles.0.weight")[1]:
        raise ValueError(f"style heads take {shape('styles.0.weight')[1]} features, the trunk gives "
                         f"{config.pooled_features}")
    return config


def _fse_from_fixture(fixture: Fixture) -> tuple[EncoderConfig, int]:
    text = _constructor_text(fixture)
    stride = re.search(r"stride=\((\d+),\s*(\d+)\)", text)
    sizes = re.search(r"resolution (\d+), enc_resolution (\d+)", text)
    halvings = int(round(math.log2(int(sizes.group(1)) / int(sizes.group(2))))) if sizes else 2
    shapes = {e["key"]: _Shape(tuple(e["shape"])) for e in fixture.spec["state_dict"]}
    config = config_from_state(shapes, content_stride=int(stride.group(1)) if stride else 2)
    return config, halvings


@dataclass(frozen=True)
class _Shape:
    """Stands in for a tensor when only its shape is needed."""

    shape: tuple[int, ...]


def fse_parity_adapter(fixture: Fixture) -> Callable[[dict], dict[str, np.ndarray]]:
    """``fse``: builds :class:`FSEncoder` from the spec, loads the filled state dict strictly, sets the extra
    ``dlatent_avg``; runs the ``Trainer.test`` path on ``img_u8 / 255`` normalised to [-1, 1]."""
    config, halvings = _fse_from_fixture(fixture)
    model = FSEncoder(config, halvings)
    load_state_dict_into(model, fixture.torch_state_dict(), f"fixture {fixture.name}")
    extra = {e["key"]: e for e in fixture.spec.get("extra_tensors", [])}
    avg = extra["dlatent_avg"]
    model.set_latent_avg(torch.from_numpy(fill_value(fixture.namespace, avg["key"], avg["shape"],
                                                     **_normal(avg["fill"]))))
    model = model.float().eval()

    def run(case: dict) -> dict[str, np.ndarray]:
        inputs = {re.split(r"[\s(]", name, maxsplit=1)[0]: key for name, key in case["inputs"].items()}
        image = torch.from_numpy(np.ascontiguousarray(fixture.data[inputs["img_u8"]])).float() / 255.0
        with torch.no_grad():
            x = (image - 0.5) / 0.5
            x256 = halve_bilinear(x, model.halvings)
            styles, content = model(x256)
            values = {"latent_S": styles + model.latent_avg, "content": content, "styles_raw": styles,
                      "x256": x256}
        return {name: to_numpy(values[re.split(r"[\s(]", name, maxsplit=1)[0]]) for name in case["outputs"]}

    return run


PARITY = {"fse": fse_parity_adapter}

