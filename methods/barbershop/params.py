"""Parameters of the ``barbershop`` method: the report's fixed parameters (section 6.2) plus ours.

Every field is overridable from a protocol file (``[methods.barbershop]``) or ``--set barbershop.X=...`` and is
recorded in the run manifest. Facts about the official code (ZPdesu/Barbershop ``main.py`` and ``models/``):

* ``lr_schedule``: parsed but never used by the official code (a PULSE leftover); only ``"fixed"`` exists here.
* ``face_lambda`` / ``hair_lambda``: parsed, but the blending loss hard-codes both weights to 1
  (``BlendLossBuilder.parsed_loss``). Default: official behaviour; ``use_face_hair_lambdas=True`` applies them.
* ``l_F_lambda``: the FS-embedding stage calls its loss without F, so the ``l_F`` term is never added.
  Default: official behaviour; ``use_l_F=True`` adds ``l_F_lambda * mean((F - F_init)^2)``.
* ``mask_steps``: the two auto-inpainting optimisations of the target segmentation run a hard-coded 80 steps.
* ``align_more_region``: ``main.py`` passes ``False``.
* ``blend_mask_iterations``: the blending stage dilates/erodes its hair masks with the helpers' default of 5
  iterations, independent of ``smooth`` (which the alignment stage uses). Both count plus-shaped rounds as
  ``scipy.ndimage.binary_dilation/erosion(iterations=n)``; for n = 0 scipy would repeat until nothing changes,
  ours leaves the mask as is.
* ``opt_name`` chooses the optimiser of the embedding and alignment stages; blending always uses Adam inside the
  clamping optimiser.

Noise (``noise``): the official generator draws fresh noise maps at every call (``randomize_noise=True``), so two
runs never agree. Ours:

* ``"seeded"`` (default): one set of noise maps drawn once from ``torch.Generator().manual_seed(seed)`` and used
  by every generator call of every stage (like a fixed noise buffer; results depend on nothing but the inputs,
  the parameters and the weights).
* ``"buffers"``: the generator's stored noise buffers (``noises.noise_i`` of ``ffhq.pt``).
* ``"official"``: fresh noise at every generator call, as the official code does, drawn from one
  ``torch.Generator`` per image (per pair / triplet in the later stages) seeded from ``seed``, the stage and the
  item's content key: still deterministic, and independent of batching and of which work unit ran first.

``quick=True`` caps every step count at :data:`QUICK_STEPS` and the PCA sample count at
:data:`QUICK_PCA_SAMPLES`: a CI switch that exercises the real code path; its results are not Barbershop's
(the manifest records ``quick: true``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

QUICK_STEPS = 2
QUICK_PCA_SAMPLES = 20_000
OPTIMIZERS = ("sgd", "adam", "sgdm", "adamax")
STEP_FIELDS = ("W_steps", "FS_steps", "mask_steps", "align_steps1", "align_steps2", "blend_steps")


@dataclass(frozen=True)
class BarbershopParams:
    """The report's fixed parameters (defaults) and this implementation's switches (see the module docstring)."""

    # ---- report section 6.2 (official main.py defaults)
    sign: Literal["realistic", "fidelity"] = "realistic"
    smooth: int = 5
    size: int = 1024
    channel_multiplier: int = 2
    latent: int = 512
    n_mlp: int = 8
    opt_name: Literal["sgd", "adam", "sgdm", "adamax"] = "adam"
    learning_rate: float = 0.01
    lr_schedule: Literal["fixed"] = "fixed"
    percept_lambda: float = 1.0
    l2_lambda: float = 1.0
    p_norm_lambda: float = 0.001
    l_F_lambda: float = 0.1
    W_steps: int = 1100
    FS_steps: int = 250
    ce_lambda: float = 1.0
    style_lambda: float = 4e4
    align_steps1: int = 140
    align_steps2: int = 100
    face_lambda: float = 1.0
    hair_lambda: float = 1.0
    blend_steps: int = 400
    # ---- hard-coded in the official code, exposed here
    mask_steps: int = 80
    align_more_region: bool = False
    blend_mask_iterations: int = 5
    # ---- documented alternatives to official behaviour (off = official)
    use_l_F: bool = False
    use_face_hair_lambdas: bool = False
    # ---- ours
    noise: Literal["seeded", "buffers", "official"] = "seeded"
    seed: int = 0
    quick: bool = False
    batch_images: int = 0  # 0: auto (1 on CPU, where the generator runs sample by sample anyway; 4 elsewhere)
    pca_samples: int = 1_000_000
    cache: bool = True
    save_intermediates: bool = False
    intermediates_dir: str = ""

    def __post_init__(self):
        if self.size < 64 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 64 (F lives at 32x32), got {self.size}")
        for name in STEP_FIELDS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.smooth < 0 or self.blend_mask_iterations < 0:
            raise ValueError("smooth and blend_mask_iterations must be >= 0")
        if self.batch_images < 0:
            raise ValueError("batch_images must be >= 0 (0: automatic)")
        if self.pca_samples < 2:
            raise ValueError("pca_samples must be >= 2")

    def steps(self, name: str) -> int:
        """The step count that runs for ``name`` (capped at :data:`QUICK_STEPS` when ``quick``)."""
        value = int(getattr(self, name))
        return min(value, QUICK_STEPS) if self.quick else value

    @property
    def effective_pca_samples(self) -> int:
        return min(self.pca_samples, QUICK_PCA_SAMPLES) if self.quick else self.pca_samples

    @property
    def blend_weights(self) -> tuple[float, float]:
        """(face, hair) weights of the blending loss: (1, 1) as the official code, unless asked otherwise."""
        return (self.face_lambda, self.hair_lambda) if self.use_face_hair_lambdas else (1.0, 1.0)

    @property
    def parser_size(self) -> int:
        """Resolution of the face parser's input and of the target segmentation (official 512)."""
        return min(512, self.size)

    @property
    def low_size(self) -> int:
        """Resolution of the LPIPS / style losses and of the blending masks (official 256)."""
        return min(256, self.size)
