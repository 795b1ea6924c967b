"""clip-opt plugin for the harness: the ``clip-opt`` method (:mod:`methods.clipopt.method`). Its ArcFace network
lives in :mod:`methods.nets.arcface`."""

from __future__ import annotations

from harness.hookspecs import hookimpl


@hookimpl
def register_methods(register):
    from methods.clipopt.method import ClipOpt

    register(ClipOpt)
