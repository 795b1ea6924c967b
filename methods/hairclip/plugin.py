"""HairCLIP plugin for the harness: the ``hairclip`` method (:mod:`methods.hairclip.method`). Its networks (the
mapper, the UNet hair parser) live in :mod:`methods.nets` and are registered there."""

from __future__ import annotations

from harness.hookspecs import hookimpl


@hookimpl
def register_methods(register):
    from methods.hairclip.method import HairCLIP

    register(HairCLIP)
