"""Misbehaving methods for runner tests, registered in-process (never installed)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

import harness


@dataclass(frozen=True)
class FaultyParams:
    delay_s: float = 0.0


class Faulty(harness.Method):
    """Fails in the way its variant says; 'ok' returns the face."""

    name = "faulty"
    Params = FaultyParams
    variants = ("ok", "raise", "nan", "wrongsize", "mode", "sleep", "none", "flaky")
    default_variant = "ok"

    def transfer(self, face, shape, color):
        v = self.variant
        if v == "raise":
            raise RuntimeError("boom <script>alert(1)</script>")
        if v == "nan":
            return np.full((face.size[1], face.size[0], 3), np.nan, dtype=np.float32)
        if v == "wrongsize":
            return face.resize((face.size[0] // 2, face.size[1] // 2))
        if v == "mode":
            return face.convert("L")
        if v == "sleep":
            time.sleep(self.params.delay_s)
        if v == "none":
            return None
        if v == "flaky" and harness.annotations.of(face).image_id == os.environ.get("FAULTY_FAIL_ON"):
            raise ValueError("flaky failure")
        return face.copy()


class Noisy(harness.Method):
    """Adds seeded noise from the global RNGs (checks per-unit seeding); crashes the process after
    $NOISY_CRASH_AFTER calls when that variable is set (checks --resume)."""

    name = "noisy"
    calls = 0

    def transfer(self, face, shape, color):
        import torch

        Noisy.calls += 1
        limit = os.environ.get("NOISY_CRASH_AFTER")
        if limit and Noisy.calls > int(limit):
            os._exit(137)
        noise = torch.randn(face.size[1], face.size[0], 3).numpy() * 20 + np.random.randn() * 5
        arr = np.clip(np.asarray(face, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "RGB")


class NeedsWeights(harness.Method):
    """Declares a checkpoint nobody has."""

    name = "needs_weights"

    def checkpoints(self):
        return [harness.Checkpoint("fake_ckpt", "fake_model.pt", "https://example.org/fake_model.pt",
                                   "a network that is not here", size=1234)]

    def transfer(self, face, shape, color):
        return face.copy()


class Batched(harness.Method):
    """Returns face via transfer_batch (batch of 3)."""

    name = "batched"
    batch_size = 3
    batches = 0

    def transfer(self, face, shape, color):
        return face.copy()

    def transfer_batch(self, triplets):
        Batched.batches += 1
        return [t[0].copy() for t in triplets]


class Noting(harness.Method):
    """Uses the unit context: notes facts for its record, writes an intermediate file beside its output."""

    name = "noting"
    warmup_calls = 2

    def transfer(self, face, shape, color):
        from harness import unit

        ctx = unit.current()
        if ctx.warmup:
            Noting.warmups = getattr(Noting, "warmups", 0) + 1
            return face.copy()
        unit.note(steps=7, triplet=ctx.triplets[0], warmups_before=Noting.warmups)
        ctx.outputs[0].parent.mkdir(parents=True, exist_ok=True)
        ctx.outputs[0].with_suffix(".txt").write_text(f"{ctx.method} {ctx.task}")
        return face.copy()


@harness.hookimpl
def register_methods(register):
    for cls in (Faulty, Noisy, NeedsWeights, Batched, Noting):
        register(cls)
