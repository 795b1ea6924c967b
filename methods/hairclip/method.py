"""The ``hairclip`` method: HairCLIP (wty-ustc/HairCLIP) conditioned on reference images, the way hair-transfer
comparisons run it (``--editing_type both --input_type image_image``; protocol.md: ``stylegan_size`` 1024,
``test_batch_size`` 1).

Per triplet: the face image is inverted with e4e (PIL bilinear resize to 256, [-1, 1]; ``W = e4e(x) +
latent_avg``); the shape and colour images (LANCZOS-resized to 1024, [-1, 1]) are multiplied by their hair masks
from HairCLIP's UNet parser (:func:`methods.nets.unet_parser.hair_mask`); the mapper takes the shape image's hair as
the hairstyle condition and the colour image's hair as the colour condition; ``w_hat = W + 0.1 * mapper(W)`` is
rendered by the decoder stored in ``hairclip.pt`` with its noise buffers (``randomize_noise=False``, truncation 1)
and saved as ``save_image`` does ((x + 1) / 2, rounded); the result is resized back to the face image's size.

Weights: ``hairclip.pt`` (mapper + decoder), ``e4e_ffhq_encode.pt``, ``parsenet.pth``. Not cached: one call is one
e4e pass, one parser pass per reference, two CLIP passes and one render.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from harness.method import Checkpoint, Method
from harness.timing import stages
from harness.weights import WeightStore
from methods.nets import e4e, hairclip, unet_parser
from methods.nets.e4e import E4EConfig

SIZE = 1024
E4E_SIZE = 256


def to_signed_tensor(image: Image.Image, size: int, resample: Image.Resampling) -> torch.Tensor:
    """RGB PIL resized to ``size`` -> ``[1,3,size,size]`` in [-1, 1] (``ToTensor`` then mean/std 0.5)."""
    rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), resample)
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    return x.sub(0.5).div(0.5)[None]


def to_pil(image: torch.Tensor) -> Image.Image:
    """``[3,H,W]`` in [-1, 1] -> RGB PIL as ``torchvision.utils.save_image(normalize=True, value_range=(-1, 1))``."""
    x = ((image.detach().float().cpu() + 1) / 2).clamp(0, 1).mul(255).add(0.5).floor().byte()
    return Image.fromarray(x.permute(1, 2, 0).numpy(), "RGB")


class HairCLIP(Method):
    """HairCLIP: e4e inversion, a CLIP-conditioned latent mapper (hairstyle and colour references), StyleGAN2."""

    name: ClassVar[str] = "hairclip"
    description: ClassVar[str] = ("HairCLIP (wty-ustc/HairCLIP): e4e inversion, latent mapper conditioned on CLIP "
                                  "embeddings of shape's and color's hair, StyleGAN2 1024 render; one forward pass")

    def checkpoints(self) -> Sequence[Checkpoint]:
        return (hairclip.CHECKPOINT, e4e.CHECKPOINT, unet_parser.CHECKPOINT)

    def setup(self, device, weights: WeightStore) -> None:
        self.mapper, self.decoder = hairclip.load_hairclip(weights, device)
        self.encoder, _ = e4e.load_e4e(weights, device, E4EConfig(stylegan_size=SIZE))
        self.parser = unet_parser.load_parser(weights, device)
        self.device = torch.device(device)

    def teardown(self) -> None:
        for name in ("mapper", "decoder", "encoder", "parser"):
            self.__dict__.pop(name, None)

    @torch.no_grad()
    def hair_only(self, image: Image.Image) -> torch.Tensor:
        """The reference image at 1024 in [-1, 1] times its hair mask."""
        x = to_signed_tensor(image, SIZE, Image.Resampling.LANCZOS).to(self.device)
        return x * unet_parser.hair_mask(self.parser, x)

    @torch.no_grad()
    def invert(self, face: Image.Image) -> torch.Tensor:
        """e4e W+ [1,18,512] of the face image."""
        return self.encoder.encode(to_signed_tensor(face, E4E_SIZE, Image.Resampling.BILINEAR).to(self.device))

    @torch.no_grad()
    def transfer(self, face: Image.Image, shape: Image.Image, color: Image.Image) -> Image.Image:
        with stages("inversion"):
            w = self.invert(face)
        with stages("mapping"):
            out = self.mapper(w, hairstyle_image=self.hair_only(shape), color_image=self.hair_only(color))
            w_hat = hairclip.edit(w, out)
        with stages("rendering"):
            image = self.decoder.synthesis(w_hat, noise="buffers").rgb
        result = to_pil(image[0])
        return result if result.size == face.size else result.resize(face.size, Image.Resampling.LANCZOS)
