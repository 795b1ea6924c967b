"""The CycleGAN hair-domain baseline: domain classifier, trained pairs on disk, trainer, method."""
