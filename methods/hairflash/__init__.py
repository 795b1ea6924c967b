"""HairFast / HairFlash (AIRI-Institute/HairFastGAN) method plugin: its mask and feature-mixing formulas
(:mod:`methods.hairflash.masks`); the method itself is registered by :mod:`methods.hairflash.plugin`."""
