"""Registers the shared networks' parity adapters, checkpoints and feature extractors with the harness.

Each network module may define ``PARITY`` (fixture name -> adapter), ``CHECKPOINTS`` (list of
``harness.Checkpoint``) and ``FEATURE_EXTRACTORS`` (name -> ``factory(device, weights)``).
"""

from __future__ import annotations

import importlib

from harness.hookspecs import hookimpl

MODULES = ("stylegan2", "bisenet", "lpips", "clip", "e4e", "hairclip", "unet_parser", "cyclegan", "hairmapper")


def _modules():
    for name in MODULES:
        yield importlib.import_module(f"methods.nets.{name}")


@hookimpl
def register_parity(register):
    for module in _modules():
        for name, adapter in getattr(module, "PARITY", {}).items():
            register(name, adapter)


@hookimpl
def register_checkpoints(register):
    for module in _modules():
        for ckpt in getattr(module, "CHECKPOINTS", ()):
            register(ckpt)


@hookimpl
def register_feature_extractors(register):
    for module in _modules():
        for name, factory in getattr(module, "FEATURE_EXTRACTORS", {}).items():
            register(name, factory)
