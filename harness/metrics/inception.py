"""clean-fid's Inception-v3 feature network, loaded from a local file only.

``inception-2015-12-05.pt`` (NVIDIA's TorchScript export of TensorFlow's 2015-12-05 Inception graph, the file
StyleGAN2-ADA and clean-fid use) is a TorchScript archive: code plus weights, which ``torch.load(weights_only=True)``
cannot read. It is opened with ``torch.jit.load`` (TorchScript deserialisation runs TorchScript ops only, no
arbitrary Python pickle globals) with ``map_location="cpu"`` and then moved to the requested device.

clean-fid's own loader (``cleanfid.inception_torchscript.InceptionV3W``) looks for the file in the system temp
directory and downloads it when absent; it is never called here. :class:`InceptionFeatures` runs the same
computation as ``InceptionV3W(resize_inside=False)`` — clean-fid's ``mode="clean"`` path — on images that
clean-fid's data pipeline has already resized to 299x299 (PIL bicubic, float, no quantisation).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

INPUT_SIZE = 299


class InceptionFeatures(torch.nn.Module):
    """Pool3 features ``[B, 2048]`` of images ``[B, 3, 299, 299]`` with values in 0..255."""

    def __init__(self, scripted: torch.nn.Module):
        super().__init__()
        self.base = scripted
        self.layers = scripted.layers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"Inception expects {INPUT_SIZE}x{INPUT_SIZE} inputs (clean-fid resizes them), "
                             f"got {tuple(images.shape[2:])}")
        scaled = (images - 128) / 128  # clean-fid's normalisation of 0..255 inputs to [-1, 1]
        return self.layers.forward(scaled).reshape(images.shape[0], -1)


def load_inception(path: str | Path, device: torch.device | str = "cpu") -> InceptionFeatures:
    """The feature network from a local ``inception-2015-12-05.pt`` (never downloads)."""
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; the file only exists as one
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
    return InceptionFeatures(scripted).to(torch.device(device)).eval()


__all__ = ["INPUT_SIZE", "InceptionFeatures", "load_inception"]
