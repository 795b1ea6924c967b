"""The UNet face parser HairCLIP masks reference images with (``criteria/parse_related_loss/unet.py`` of
wty-ustc/HairCLIP, built as ``unet(feature_scale=4, n_classes=19, is_deconv=True, in_channels=3,
is_batchnorm=True)``; weights ``parsenet.pth``, CelebAMask-HQ's 19 classes, 13 = hair).

Structure (checked against the key listing ``aux_parsenet_keys`` of the ``hairclip_mapper`` fixture): widths
``[64, 128, 256, 512, 1024] / 4``; ``conv1..conv4`` and ``center`` are ``unetConv2`` blocks (two ``Conv2d 3x3 pad 1
-> BatchNorm -> ReLU``, keys ``conv1.0/1`` and ``conv2.0/1``), each of ``conv1..conv4`` followed by a 2x2 max pool;
``up_concat4..1`` upsample with ``ConvTranspose2d(in, out, 2, stride 2)`` (``up``), pad the skip tensor to the same
size, concatenate ``[skip, upsampled]`` and run a ``unetConv2`` (``conv``); ``final`` is a 1x1 conv to the 19 class
logits. No parity fixture covers its outputs (only its keys), so its numbers are unverified here.

HairCLIP's hair mask (:func:`hair_mask`): average-pool the [-1, 1] reference image to 512 (fed without any other
normalisation), argmax over the classes == 13, nearest upsampling back to the image size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.method import Checkpoint

CHECKPOINT = Checkpoint(
    key="hairclip_parsenet",
    filename="parsenet.pth",
    source="wty-ustc/HairCLIP (the parser weights its criteria/parse_related_loss/unet.py loads)",
    purpose="UNet face parser (CelebAMask-HQ 19 classes) for HairCLIP's reference-image hair masks; a state_dict",
)
CHECKPOINTS = [CHECKPOINT]

HAIR = 13
MASK_INPUT_SIZE = 512
WIDTHS = (16, 32, 64, 128, 256)  # (64, 128, 256, 512, 1024) / feature_scale 4


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU())


class UNetConv(nn.Module):
    """``unetConv2`` with batch norm."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout)
        self.conv2 = conv_bn_relu(cout, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class UNetUp(nn.Module):
    """``unetUp`` with a transposed-conv upsampling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = UNetConv(cin, cout)
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)

    def forward(self, skip: Tensor, below: Tensor) -> Tensor:
        up = self.up(below)
        offset = up.shape[2] - skip.shape[2]
        skip = F.pad(skip, 2 * [offset // 2, offset // 2])
        return self.conv(torch.cat([skip, up], dim=1))


class UNetParser(nn.Module):
    """Image [B,3,H,W] (H, W multiples of 16) -> class logits [B,19,H,W]."""

    def __init__(self, in_channels: int = 3, n_classes: int = 19):
        super().__init__()
        w = WIDTHS
        self.conv1 = UNetConv(in_channels, w[0])
        self.conv2 = UNetConv(w[0], w[1])
        self.conv3 = UNetConv(w[1], w[2])
        self.conv4 = UNetConv(w[2], w[3])
        self.center = UNetConv(w[3], w[4])
        self.up_concat4 = UNetUp(w[4], w[3])
        self.up_concat3 = UNetUp(w[3], w[2])
        self.up_concat2 = UNetUp(w[2], w[1])
        self.up_concat1 = UNetUp(w[1], w[0])
        self.final = nn.Conv2d(w[0], n_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for block in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.center(x)
        for up, skip in zip((self.up_concat4, self.up_concat3, self.up_concat2, self.up_concat1), reversed(skips),
                            strict=True):
            x = up(skip, x)
        return self.final(x)


def hair_mask(parser: UNetParser, image: Tensor) -> Tensor:
    """HairCLIP's hair mask of [-1, 1] images ``[B,3,H,W]`` (H = W, a multiple of 512): ``[B,1,H,W]`` float."""
    small = F.adaptive_avg_pool2d(image, MASK_INPUT_SIZE)
    mask = (parser(small).argmax(dim=1, keepdim=True) == HAIR).float()
    return F.interpolate(mask, size=image.shape[-2:], mode="nearest")


def parser_state_dict(obj: dict[str, Any]) -> dict[str, Any]:
    """A saved parser's entries (a ``module.`` prefix from DataParallel dropped)."""
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_parser(weights, device: str | torch.device = "cpu") -> UNetParser:
    """The parser from ``parsenet.pth`` (strict), or filled by the generic rule; eval, no grad."""
    parser = UNetParser()
    weights.load_network(parser, CHECKPOINT, extract=parser_state_dict)  # filled: the generic rule
    return parser.to(device).eval().requires_grad_(False)
