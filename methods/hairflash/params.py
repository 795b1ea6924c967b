"""Parameters of the ``hairflash`` method: the report's fixed parameters (section 6.2) plus ours.

Every field can be set from a protocol file (``[methods.hairflash]``, ``[methods."hairflash:final"]``) or the CLI
(``--set hairflash.noise=buffers``) and is recorded in the run manifest.

Noise (``noise``). The official code draws fresh StyleGAN noise at every generator call from the global RNG,
seeded with 3407 once per swap, so an image's numbers depend on everything computed before it in that swap.
Ours:

* ``"seeded"`` (default): fresh noise for every generator call, drawn from one ``torch.Generator`` per work item
  seeded from ``seed``, the stage and the item's content keys (per image in the embedding stage, per
  (face, other) pair in the alignment stage, per triplet in blending and post-processing). Results depend only on
  the inputs, the parameters and the weights -- not on batching, caching or the order of work -- which is what
  lets per-image and per-pair results be cached and reused. SEAN's ACE noise comes from the pair's generator too.
* ``"buffers"``: the generator's stored noise buffers (the official ``randomize_noise=False``) and no SEAN noise:
  fully deterministic; the mode to compare with a (patched) official run.

``size`` < 1024 builds every network for that StyleGAN resolution (fewer W+/S rows); it only works with filled
weights and exists to make tests fast. ``latent`` must be 512 (every HairFast encoder is built for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SIZES = (256, 512, 1024)


@dataclass(frozen=True)
class HairFlashParams:
    """The report's fixed parameters (defaults) and this implementation's switches (see the module docstring)."""

    # ---- report section 6.2 (official hair_swap.py defaults)
    mixing: float = 0.95
    smooth: int = 5
    size: int = 1024
    channel_multiplier: int = 2
    latent: int = 512
    n_mlp: int = 8
    batch_size: int = 3  # distinct images embedded per batch
    # ---- ours
    noise: Literal["seeded", "buffers"] = "seeded"
    seed: int = 3407
    cache: bool = True  # per-image embeddings and per-pair alignment results, in memory and on disk
    # in-memory LRU capacity per result kind (entries up to ~24 MB, the face's post-processing work: at most
    # ~2.2 GB over all kinds at 64, on the device)
    cache_entries: int = 64
    triplet_batch: int = 1  # triplets handed to one transfer_batch call by the runner
    clip_precision: Literal["fp16_weights", "fp16", "fp32"] = "fp16_weights"
    save_intermediates: bool = False
    intermediates_dir: str = ""
    # ---- the balding variant (HairMapper): hand its hair parser the BGR array as RGB, as the official
    # main_mapper.py does (False: the parser sees RGB)
    balding_parser_bgr: bool = True

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size}")
        if self.latent != 512:
            raise ValueError("latent must be 512 (HairFast's encoders are built for 512-d codes)")
        if not 0.0 <= self.mixing <= 1.0:
            raise ValueError(f"mixing must lie in [0, 1], got {self.mixing}")
        if self.smooth < 0:
            raise ValueError("smooth must be >= 0")
        for name in ("batch_size", "cache_entries", "triplet_batch", "channel_multiplier", "n_mlp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def n_latent(self) -> int:
        """Rows of W+ / S for this StyleGAN size (18 at 1024)."""
        return 2 * (self.size.bit_length() - 1) - 2
