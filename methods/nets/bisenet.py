"""BiSeNet face parser (the zllrunning face-parsing.PyTorch architecture) and HairFast's way of using it.

Two checkpoints share the architecture and differ only in the three output heads:

* ``79999_iter.pth`` (zllrunning), ``n_classes=19``: the parser HairFast uses to find hair; its labels are
  renamed to the CelebAMask-HQ order of CtrlHair (:data:`BISENET19_TO_CELEBAMASKHQ`, hair 17 -> 13).
* Barbershop's ``seg.pth``, ``n_classes=16`` (left/right parts merged, hair 10).

Both files are plain state dicts without prefix; key names follow the official modules (``cp.resnet.*``,
``cp.arm16.*``, ``ffm.*``, ``conv_out*.*``). The official constructor downloads an ImageNet ResNet-18 for
training; ours never does (the whole state dict is loaded afterwards anyway).

:class:`FaceParser` wraps the 19-class network with HairFast's preprocessing: RGB in [0,1], HairFast's
strided bicubic filter down to 512 (area interpolation for other sizes), ImageNet normalisation, argmax of
the main head, renaming to CelebAMask-HQ ids, and a nearest resize back to the input size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.method import Checkpoint
from harness.parity import Fixture, to_numpy
from harness.weights import WeightStore, load_state_dict_into, sha256_file

# ---------------------------------------------------------------- labels

BISENET19_LABELS = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
                    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")
BISENET19_HAIR = 17

BISENET16_LABELS = ("background", "skin", "nose", "eye_g", "eyes", "brows", "ears", "mouth", "u_lip", "l_lip",
                    "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
BISENET16_HAIR = 10

# CtrlHair's PARSING_LABEL_LIST, the label order HairFast works in after parsing.
CELEBAMASKHQ_LABELS = ("background", "skin_other", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow",
                       "l_ear", "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck",
                       "cloth")
CELEBAMASKHQ_HAIR = 13

# BiSeNet-19 label i becomes CelebAMask-HQ label BISENET19_TO_CELEBAMASKHQ[i] (HairFast's renaming).
BISENET19_TO_CELEBAMASKHQ = (0, 1, 6, 7, 4, 5, 3, 8, 9, 15, 2, 10, 11, 12, 17, 16, 18, 13, 14)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PARSER_RESOLUTION = 512

# ---------------------------------------------------------------- checkpoints

BISENET19 = Checkpoint(
    key="bisenet19",
    filename="79999_iter.pth",
    source="https://drive.google.com/open?id=154JgKpzCPW82qINcVieuPH3fZ2e0P812 "
           "(zllrunning/face-parsing.PyTorch README, res/cp/79999_iter.pth); HairFast loads it from "
           "https://huggingface.co/AIRI-Institute/HairFastGAN "
           "pretrained_models/BiSeNet/face_parsing_79999_iter.pth",
    purpose="BiSeNet face parser, 19 CelebAMask-HQ classes (hair masks for HairFast and the metrics)",
    download=("gdrive:154JgKpzCPW82qINcVieuPH3fZ2e0P812",
              "hf:AIRI-Institute/HairFastGAN/pretrained_models/BiSeNet/face_parsing_79999_iter.pth"),
)
BISENET16 = Checkpoint(
    key="bisenet16",
    filename="seg.pth",
    source="https://drive.google.com/file/d/1lIKvQaFKHT5zC7uS4p17O9ZpfwmwlS62/view (ZPdesu/Barbershop "
           "utils/model_utils.py, pretrained_models/seg.pth)",
    purpose="Barbershop's 16-class BiSeNet face parser (segmentation targets and losses)",
    download=("gdrive:1lIKvQaFKHT5zC7uS4p17O9ZpfwmwlS62",),
)
CHECKPOINTS = [BISENET19, BISENET16]


@dataclass(frozen=True)
class ParserVariant:
    """One trained BiSeNet: class count, label order, hair class and checkpoint."""

    n_classes: int
    labels: tuple[str, ...]
    hair: int
    checkpoint: Checkpoint


VARIANTS = {
    "bisenet19": ParserVariant(19, BISENET19_LABELS, BISENET19_HAIR, BISENET19),
    "bisenet16": ParserVariant(16, BISENET16_LABELS, BISENET16_HAIR, BISENET16),
}


# ---------------------------------------------------------------- network

class ConvBNReLU(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; ``downsample`` (1x1 conv + BN) when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if in_ch != out_ch or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1))


class ResNet18Backbone(nn.Module):
    """ResNet-18 without the classifier; returns the features at strides 8, 16 and 32."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


def _global_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinement(nn.Module):
    """3x3 conv block, then a channel gate: sigmoid(BN(1x1 conv(global average)))."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch)
        self.conv_atten = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_pool(feat))))


class ContextPath(nn.Module):
    """Backbone plus the refined stride-32 and stride-16 context (nearest upsampling between levels)."""

    def __init__(self):
        super().__init__()
        self.resnet = ResNet18Backbone()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        global_context = self.conv_avg(_global_pool(feat32))  # [B,128,1,1], broadcast over stride 32
        up32 = F.interpolate(self.arm32(feat32) + global_context, size=feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, size=feat8.shape[2:], mode="nearest")
        up16 = self.conv_head16(up16)
        return feat8, up16, up32


class FeatureFusion(nn.Module):
    """Concatenate spatial and context features, 1x1 conv block, then ``x * gate + x``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_ch, out_ch, kernel=1, padding=0)
        self.conv1 = nn.Conv2d(out_ch, out_ch // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch // 4, out_ch, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_pool(feat)))))
        return feat * gate + feat


class OutputHead(nn.Module):
    def __init__(self, in_ch: int, mid_ch: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, mid_ch)
        self.conv_out = nn.Conv2d(mid_ch, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """``forward(x)`` -> (main, aux16, aux32) class logits, each bilinearly resized to the input size.

    ``x`` is an ImageNet-normalised RGB batch ``[B,3,H,W]``; only the main head is used for parsing.
    """

    def __init__(self, n_classes: int = 19):
        super().__init__()
        self.n_classes = n_classes
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[2:]
        feat8, context8, context16 = self.cp(x)
        main = self.conv_out(self.ffm(feat8, context8))
        heads = (main, self.conv_out16(context8), self.conv_out32(context16))
        return tuple(F.interpolate(h, size=size, mode="bilinear", align_corners=True) for h in heads)


def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """The parity fill of a BiSeNet entry: conv std 1/sqrt(fan_in), BN gamma 1+-0.1, beta/mean std 0.1."""
    name = key.rsplit(".", 1)[-1]
    if name == "num_batches_tracked":
        return {"kind": "int_zero"}
    if name == "running_var":
        return {"kind": "normal", "mean": 1.0, "std": 0.0}
    if len(shape) == 4:
        return {"kind": "normal", "mean": 0.0, "std": float(1.0 / np.sqrt(np.prod(shape[1:])))}
    if name == "weight":
        return {"kind": "normal", "mean": 1.0, "std": 0.1}
    return {"kind": "normal", "mean": 0.0, "std": 0.1}  # BN bias, running_mean


def load_bisenet(weights: WeightStore, device: torch.device | str = "cpu",
                 variant: str = "bisenet19") -> BiSeNet:
    """The BiSeNet of ``variant`` (``bisenet19``/``bisenet16``) with its checkpoint, frozen, in eval mode."""
    spec = VARIANTS[variant]
    net = BiSeNet(spec.n_classes)
    weights.load_network(net, spec.checkpoint, recipe=fill_recipe)
    return net.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------- preprocessing

def keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """The Keys cubic convolution kernel."""
    t = np.abs(t)
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def bicubic_taps(factor: int) -> torch.Tensor:
    """HairFast's/Barbershop's 1-D downsampling taps: ``4*factor`` Keys (a=-0.5) samples, summing to 1."""
    taps = keys_cubic((np.arange(4 * factor) - 2 * factor + 0.5) / factor)
    return torch.from_numpy((taps / taps.sum()).astype(np.float32))


def bicubic_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """HairFast's ``BicubicDownSample(factor)``: separable strided bicubic filter with reflect padding.

    Rows first, then columns; ``[B,C,H,W]`` -> ``[B,C,H/factor,W/factor]``.
    """
    if factor == 1:
        return x
    channels = x.shape[1]
    taps = bicubic_taps(factor).to(x.device, x.dtype)
    before = (3 * factor) // 2
    after = 3 * factor - before
    rows = taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    cols = taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    x = F.conv2d(F.pad(x, (0, 0, before, after), mode="reflect"), rows, stride=(factor, 1), groups=channels)
    x = F.conv2d(F.pad(x, (before, after, 0, 0), mode="reflect"), cols, stride=(1, factor), groups=channels)
    return x


def resize_for_parser(x: torch.Tensor, size: int = PARSER_RESOLUTION) -> torch.Tensor:
    """``[B,3,H,W]`` in [0,1] -> ``[B,3,size,size]``: HairFast's bicubic filter for square multiples of
    ``size`` (1024 -> 512), area interpolation for other larger inputs, bilinear for smaller ones."""
    height, width = x.shape[2:]
    if (height, width) == (size, size):
        return x
    if height == width and height % size == 0:
        return bicubic_downsample(x, height // size)
    if height >= size and width >= size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def remap_labels(labels: torch.Tensor, table: Sequence[int]) -> torch.Tensor:
    """Rename integer labels: ``out = table[labels]``."""
    return torch.as_tensor(table, device=labels.device, dtype=torch.long)[labels.long()]


def as_image_batch(images: Any) -> torch.Tensor:
    """RGB images -> float ``[B,3,H,W]`` in [0,1].

    Accepts a uint8 ``HxWx3`` / ``BxHxWx3`` array, a PIL image, a float tensor ``[3,H,W]`` / ``[B,3,H,W]`` in
    [0,1], or a list of equally sized such images.
    """
    if isinstance(images, (list, tuple)):
        return torch.cat([as_image_batch(im) for im in images])
    if isinstance(images, torch.Tensor):
        x = images if images.dim() == 4 else images.unsqueeze(0)
        if x.dtype == torch.uint8:
            raise TypeError("uint8 tensors are ambiguous; pass a uint8 numpy HxWx3 array or a float tensor")
        return x.float()
    array = np.asarray(images)  # PIL images convert here
    if array.dtype != np.uint8 or array.shape[-1] != 3 or array.ndim not in (3, 4):
        raise TypeError(f"expected uint8 HxWx3 RGB, got {array.dtype} {array.shape}")
    x = torch.from_numpy(np.array(array, dtype=np.float32)).div(255.0)
    x = x.permute(2, 0, 1).unsqueeze(0) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x


class FaceParser:
    """Label maps of RGB face images, parsed the way HairFast does it.

    ``parser(images)`` -> ``[B,H,W]`` uint8 labels at the input size, in CelebAMask-HQ order (hair 13) for the
    19-class network; a network with another label set is returned in its own order (``remap=None``).
    """

    def __init__(self, net: BiSeNet, remap: Sequence[int] | None = BISENET19_TO_CELEBAMASKHQ,
                 resolution: int = PARSER_RESOLUTION):
        self.net = net
        self.remap = tuple(remap) if remap is not None else None
        self.resolution = resolution

    @classmethod
    def load(cls, weights: WeightStore, device: torch.device | str = "cpu",
             variant: str = "bisenet19") -> FaceParser:
        remap = BISENET19_TO_CELEBAMASKHQ if variant == "bisenet19" else None
        return cls(load_bisenet(weights, device, variant), remap)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def hair(self) -> int:
        """The hair label in this parser's output order."""
        if self.remap is not None:
            return self.remap[BISENET19_HAIR]
        return BISENET16_HAIR if self.net.n_classes == 16 else BISENET19_HAIR

    def logits(self, images: Any) -> torch.Tensor:
        """Main-head logits ``[B,n_classes,R,R]`` at the parser resolution (differentiable)."""
        x = as_image_batch(images).to(self.device)
        return self.net(imagenet_normalize(resize_for_parser(x, self.resolution)))[0]

    @torch.no_grad()
    def __call__(self, images: Any) -> torch.Tensor:
        x = as_image_batch(images)
        labels = self.logits(x).argmax(dim=1)
        if self.remap is not None:
            labels = remap_labels(labels, self.remap)
        labels = F.interpolate(labels[:, None].float(), size=x.shape[2:], mode="nearest")[:, 0]
        return labels.to(torch.uint8)


def face_parser_extractor(device: torch.device | str, weights: WeightStore) -> Callable[[Sequence], list]:
    """Feature extractor ``face_parser``: PIL RGB images -> uint8 ``HxW`` label maps (CelebAMask-HQ order)."""
    parser = FaceParser.load(weights, device)

    def extract(images: Sequence) -> list[np.ndarray]:
        return [parser(np.asarray(im.convert("RGB")))[0].cpu().numpy() for im in images]

    # what the labels depend on, for caches keyed by it (filled weights never share a cache with real ones)
    ckpt = VARIANTS["bisenet19"].checkpoint
    extract.identity = "filled" if weights.fill else f"bisenet19-{sha256_file(weights.path(ckpt))[:16]}"
    return extract


FEATURE_EXTRACTORS = {"face_parser": face_parser_extractor}


# ---------------------------------------------------------------- parity

_HEAD_INDEX = {"out": 0, "out16": 1, "out32": 2}


def parity_adapter(fixture: Fixture) -> Callable[[Mapping], dict[str, np.ndarray]]:
    """Fixtures ``bisenet19`` / ``bisenet16``: ``out, out16, out32 = model(x)``."""
    net = BiSeNet(int(fixture.constructor["n_classes"]))
    load_state_dict_into(net, fixture.torch_state_dict(), f"fixture {fixture.name}")
    net.eval().float()

    def run(case: Mapping) -> dict[str, np.ndarray]:
        (arg,) = case["inputs"]
        with torch.no_grad():
            heads = net(torch.from_numpy(fixture.input(case, arg)).float())
        return {name: to_numpy(heads[_HEAD_INDEX[name]]) for name in case["outputs"]}

    return run


PARITY = {"bisenet19": parity_adapter, "bisenet16": parity_adapter}
