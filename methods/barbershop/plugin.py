"""Barbershop plugin for the harness: the ``barbershop`` method (:mod:`methods.barbershop.method`), the parity
adapters of its losses and helpers (fixture ``barbershop_ops``) and its optional PCA file."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from methods.barbershop.losses import PARITY


@hookimpl
def register_methods(register):
    from methods.barbershop.method import Barbershop

    register(Barbershop)


@hookimpl
def register_checkpoints(register):
    from methods.barbershop.method import PCA_CHECKPOINT

    register(PCA_CHECKPOINT)


@hookimpl
def register_parity(register):
    for name, adapter in PARITY.items():
        register(name, adapter)
