"""ArcFace iresnet-50 (insightface ``arcface_torch``) as HairFast ships it: ``FeatureStyleEncoder/backbone.pth``.

HairFast's Feature-Style encoder code loads this file strictly into insightface's ``iresnet50()``
(``models/FeatureStyleEncoder/trainer.py``: ``self.Arcface = iresnet50()``, ``load_state_dict(torch.load(
opts.arcface_model_path))`` with ``arcface_model_path='pretrained_models/FeatureStyleEncoder/backbone.pth'``;
``download_models.sh`` fetches it from Google Drive as the "ArcFace pretrained model"). Key layout: ``conv1``
(3x3, no bias), ``bn1``, ``prelu``, ``layer1`` .. ``layer4`` (3/4/14/3 :class:`~methods.nets.iresnet.IBasicBlock`,
widths 64/128/256/512, first block of each strided with a 1x1 conv + BN ``downsample``), ``bn2``, ``fc``
(``Linear(512 * 7 * 7, 512)`` = [512, 25088]) and ``features`` (``BatchNorm1d(512)``); all BatchNorms eps 1e-5.
Forward: stem, stages, ``bn2``, flatten, dropout (p=0, nothing to load), ``fc``, ``features`` -> a 512-d
embedding (not L2-normalised). Input: 112x112 RGB in [-1, 1].

The trunk's blocks are HairFast's FS encoder ones (:mod:`methods.nets.iresnet`, the same insightface block);
only the head differs. HairFast also ships ``ArcFace/backbone_ir50.pth`` (an IR-SE-50 ``Backbone``, the other
ArcFace layout, for its post-processing training); that one is not this network.

:func:`identity_crop` is StyleCLIP's ID-loss preprocessing (``criteria/id_loss.py``): average-pool to 256, crop
rows 35:223 and columns 32:220 (the face of an FFHQ-aligned image), average-pool to 112.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.method import Checkpoint
from methods.nets import iresnet
from methods.nets.iresnet import BN_EPS, IRESNET50_STAGES, conv3x3, make_stage

HF_REPO = "https://huggingface.co/AIRI-Institute/HairFastGAN"
GDRIVE_ID = "1coFTz-Kkgvoc_gRT8JFzqCgeC3lAFWQp"  # models/FeatureStyleEncoder/download_models.sh

CHECKPOINT = Checkpoint(
    key="arcface_iresnet50",
    filename="backbone.pth",
    source=f"{HF_REPO} pretrained_models/FeatureStyleEncoder/backbone.pth (HairFast's FeatureStyleEncoder "
           f"download_models.sh: Google Drive file {GDRIVE_ID}); insightface arcface_torch iresnet50",
    purpose="ArcFace iresnet-50 face-recognition network (512-d identity embedding; clip-opt's ID loss); "
            "a bare state dict",
    official_path="FeatureStyleEncoder/backbone.pth",
    download=("hf:AIRI-Institute/HairFastGAN/pretrained_models/FeatureStyleEncoder/backbone.pth",
              f"gdrive:{GDRIVE_ID}"),
)
CHECKPOINTS = [CHECKPOINT]

INPUT_SIZE = 112
# StyleCLIP criteria/id_loss.py: pool to 256, crop the face region, pool to 112
CROP_POOL, CROP_ROWS, CROP_COLS = 256, (35, 223), (32, 220)


@dataclass(frozen=True)
class ArcFaceConfig:
    """``IResNet(IBasicBlock, layers)``: (width, blocks) per stage, embedding size, input resolution."""

    stages: tuple[tuple[int, int], ...] = IRESNET50_STAGES
    embedding: int = 512
    input_size: int = INPUT_SIZE

    @property
    def fc_features(self) -> int:
        """Flattened ``bn2`` output: last width x (input / 16)^2 (25088 for iresnet-50 at 112)."""
        side = self.input_size // 2 ** len(self.stages)
        return self.stages[-1][0] * side * side


class ArcFace(nn.Module):
    """insightface ``IResNet``: image [B,3,112,112] in [-1, 1] -> embedding [B, 512]."""

    def __init__(self, config: ArcFaceConfig = ArcFaceConfig()):
        super().__init__()
        self.config = config
        stem = config.stages[0][0]
        self.conv1 = conv3x3(3, stem)
        self.bn1 = nn.BatchNorm2d(stem, eps=BN_EPS)
        self.prelu = nn.PReLU(stem)
        inplanes = stem
        for index, (width, blocks) in enumerate(config.stages, start=1):
            setattr(self, f"layer{index}", make_stage(inplanes, width, blocks))
            inplanes = width
        self.bn2 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.fc = nn.Linear(config.fc_features, config.embedding)
        self.features = nn.BatchNorm1d(config.embedding, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for index in range(1, len(self.config.stages) + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))


def identity_crop(image: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """StyleCLIP's ID-loss input: [B,3,H,W] -> pooled to 256 (unless 256), face crop, pooled to ``size``."""
    if image.shape[-1] != CROP_POOL or image.shape[-2] != CROP_POOL:
        image = F.adaptive_avg_pool2d(image, (CROP_POOL, CROP_POOL))
    image = image[:, :, CROP_ROWS[0]:CROP_ROWS[1], CROP_COLS[0]:CROP_COLS[1]]
    return F.adaptive_avg_pool2d(image, (size, size))


def fill_recipe(key: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Parity fill: the trunk's entries as :func:`methods.nets.iresnet.fill_recipe`; the ``features``
    BatchNorm1d like the other BatchNorms (weight 1 +- 0.1, bias / running mean 0.1, running var 1)."""
    name = key.rsplit(".", 1)[-1]
    if key.startswith("features.") and name in ("weight", "bias"):
        return {"kind": "normal", "mean": 1.0 if name == "weight" else 0.0, "std": 0.1}
    return iresnet.fill_recipe(key, shape)


def load_arcface(weights, device: str | torch.device = "cpu", config: ArcFaceConfig = ArcFaceConfig()) -> ArcFace:
    """The ArcFace network from ``backbone.pth`` (bare state dict, strict) found by ``weights`` (a
    ``harness.weights.WeightStore``; also at HairFast's ``FeatureStyleEncoder/backbone.pth``), or filled by the
    parity rule (namespace ``arcface_iresnet50``); eval, frozen, on ``device``."""
    model = ArcFace(config)
    weights.load_network(model, CHECKPOINT, recipe=fill_recipe)
    return model.float().to(device).eval().requires_grad_(False)
