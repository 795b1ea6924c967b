"""The ``clip-opt`` method: StyleCLIP-style optimisation of the e4e W+ code toward CLIP targets (seed 002)."""
