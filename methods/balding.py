"""HairMapper's hair removal ("balding"), the whole inference pipeline of the official ``main_mapper.py``
(oneThousand1000/HairMapper, CVPR 2022), on this project's networks.

Per image (facts from the ``hairmapper`` parity fixture's ``pipeline``; kernel sizes are the official ones at 1024
and scale with the image size):

1. e4e inversion: PIL bilinear resize to 256, [-1, 1], ``W = e4e(x) + latent_avg`` [1,18,512].
2. Edit: rows 0-7 ``+= alpha * LevelMapper(W)``, ``alpha = ckpt['alpha'] * 1.2``; the script's style mixing is a
   no-op (:func:`methods.nets.hairmapper.render_latent`).
3. Render with HairMapper's StyleGAN2-ADA generator (an NVlabs-layout file, loaded onto the shared StyleGAN2 by
   :func:`methods.nets.stylegan2.load_generator`): stored noise, no truncation, ``uint8(clip((x+1)*127.5+0.5))``.
4. Hair mask of the ORIGINAL image: BiSeNet-19 at 512 (PIL bilinear, ImageNet mean/std), labels hair 17 + hat 18 +
   ears 7/8, ``{0,255}`` -> ``cv2.dilate(ones(10,10))`` -> ``cv2.resize`` (linear) to the image size. The official
   code hands the parser the cv2 BGR array as if it were RGB; ``parser_bgr=True`` (default) does the same.
5. Blend mask: ``d = dilate(hair, ones(50,50))``, ``b = cv2.blur(d, (30,30))``, ``m = uint8(hair + (255-hair)/255*b)``,
   ``face = 255 - m``; ``center`` = middle of the bounding box of ``face > 0``.
6. ``cv2.seamlessClone(original, render, face[..., 0], center, NORMAL_CLONE)``: the original's non-hair region is
   Poisson-blended into the bald render.

Not implemented: the optional ``--diffuse`` refinement (150 W+ optimisation steps with a VGG16 loss), off by
default in the official script.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from harness.method import Checkpoint
from methods.nets import hairmapper, stylegan2
from methods.nets.bisenet import BiSeNet, imagenet_normalize
from methods.nets.e4e import Encoder4Editing
from methods.nets.stylegan2 import Generator
from methods.ops import signed_tensor

E4E_SIZE = 256
PARSER_SIZE = 512
OFFICIAL_SIZE = 1024  # the kernel sizes below are the official ones for 1024 images
REMOVED_LABELS = (17, 18, 7, 8)  # BiSeNet-19 hair, hat, l_ear, r_ear (include_hat, include_ear)
HAIR_DILATE = 10  # get_hair_mask(dilate_kernel=10), at the parser's 512
BLEND_DILATE = 50  # --dilate_kernel_size
BLEND_BLUR = 30  # --blur_kernel_size


@dataclass(frozen=True)
class BaldingNets:
    """What the pipeline runs on: e4e (with its ``latent_avg``), the mapper and its inference ``alpha``, HairMapper's
    generator (its size is the working size) and the BiSeNet-19 parser, all on one device."""

    e4e: Encoder4Editing
    mapper: hairmapper.LevelMapper
    alpha: float
    generator: Generator
    parser: BiSeNet

    @property
    def size(self) -> int:
        return self.generator.size

    @property
    def device(self) -> torch.device:
        return self.generator.input.input.device


CHECKPOINTS: tuple[Checkpoint, ...] = (hairmapper.CHECKPOINT, hairmapper.GENERATOR_CHECKPOINT)


def load_balding_nets(weights, device, e4e: Encoder4Editing, parser: BiSeNet, size: int = OFFICIAL_SIZE
                      ) -> BaldingNets:
    """The mapper (``best_model.pt``) and HairMapper's generator (``StyleGAN2-ada-Generator.pth``) from ``weights``,
    with the caller's e4e and BiSeNet-19 (HairMapper uses the same official files as HairFast)."""
    mapper, ckpt_alpha = hairmapper.load_mapper(weights, device)
    generator, _ = stylegan2.load_generator(weights, device, size=size, checkpoint=hairmapper.GENERATOR_CHECKPOINT)
    return BaldingNets(e4e, mapper, hairmapper.inference_alpha(ckpt_alpha), generator, parser)


def scaled(kernel: int, size: int) -> int:
    """An official kernel size (for 1024 images) at ``size``."""
    return max(1, round(kernel * size / OFFICIAL_SIZE))


def _to_tensor(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``[H,W,3]`` -> ``[1,3,H,W]`` in [0, 1] (``ToTensor``)."""
    return torch.from_numpy(np.array(pixels)).to(device).permute(2, 0, 1)[None].float().div(255)


@torch.no_grad()
def bald_latent(nets: BaldingNets, rgb: np.ndarray) -> torch.Tensor:
    """Steps 1-2: the edited W+ [1,18,512] of an RGB uint8 image."""
    small = np.asarray(Image.fromarray(rgb).resize((E4E_SIZE, E4E_SIZE), Image.Resampling.BILINEAR))
    w = nets.e4e.encode(signed_tensor(small).to(nets.device))
    return hairmapper.render_latent(hairmapper.w_edit(w, nets.mapper(w), nets.alpha))


@torch.no_grad()
def render(nets: BaldingNets, w: torch.Tensor) -> np.ndarray:
    """Step 3: ``G(w)`` with stored noise as RGB uint8 ``[size,size,3]``."""
    x = nets.generator.synthesis(w, noise="buffers").rgb[0]
    return (x.add(1).mul(127.5).add(0.5)).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def removal_mask(parser: BiSeNet, rgb: np.ndarray, parser_bgr: bool = True) -> np.ndarray:
    """Step 4: uint8 ``[H,W,3]`` mask of hair, hat and ears (0..255, soft edges from the resize)."""
    shown = rgb[..., ::-1] if parser_bgr else rgb
    x = np.asarray(Image.fromarray(np.ascontiguousarray(shown)).resize((PARSER_SIZE, PARSER_SIZE),
                                                                       Image.Resampling.BILINEAR))
    device = next(parser.parameters()).device
    labels = parser(imagenet_normalize(_to_tensor(x, device)))[0].argmax(1)[0].cpu().numpy()
    mask = np.isin(labels, REMOVED_LABELS).astype(np.uint8) * 255
    mask = np.repeat(mask[..., None], 3, axis=2)
    kernel = scaled(HAIR_DILATE, rgb.shape[0])
    mask = cv2.dilate(mask, np.ones((kernel, kernel), np.uint8))
    return cv2.resize(mask, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)


def face_mask(hair: np.ndarray) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Step 5: the uint8 region kept from the original (255 - softened hair mask) and its bounding-box centre
    ``(x, y)`` (``None`` when nothing is kept)."""
    size = hair.shape[0]
    dilate, blur = scaled(BLEND_DILATE, size), scaled(BLEND_BLUR, size)
    dilated = cv2.dilate(hair, np.ones((dilate, dilate), np.uint8))
    blurred = cv2.blur(dilated, (blur, blur))
    soft = (hair + (255 - hair) / 255 * blurred).astype(np.uint8)
    keep = 255 - soft
    rows, cols = np.nonzero(keep[..., 0] > 0)
    if rows.size == 0:
        return keep, None
    return keep, ((int(cols.min()) + int(cols.max())) // 2, (int(rows.min()) + int(rows.max())) // 2)


def poisson_blend(original: np.ndarray, bald: np.ndarray, keep: np.ndarray, center: tuple[int, int] | None
                  ) -> np.ndarray:
    """Step 6 on RGB arrays (OpenCV works in BGR: the channels are swapped around the call)."""
    if center is None:
        return bald
    out = cv2.seamlessClone(np.ascontiguousarray(original[..., ::-1]), np.ascontiguousarray(bald[..., ::-1]),
                            np.ascontiguousarray(keep[..., 0]), center, cv2.NORMAL_CLONE)
    return out[..., ::-1].copy()


def remove_hair(nets: BaldingNets, image: Image.Image, parser_bgr: bool = True) -> Image.Image:
    """The bald version of ``image`` (RGB; resized to the generator's size with LANCZOS if needed), at that size."""
    rgb = image.convert("RGB")
    if rgb.size != (nets.size, nets.size):
        rgb = rgb.resize((nets.size, nets.size), Image.Resampling.LANCZOS)
    original = np.asarray(rgb)
    bald = render(nets, bald_latent(nets, original))
    keep, center = face_mask(removal_mask(nets.parser, original, parser_bgr))
    return Image.fromarray(poisson_blend(original, bald, keep, center))
