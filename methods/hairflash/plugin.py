"""HairFast (HairFlash) plugin for the harness: the ``hairflash`` method and its variants
(:mod:`methods.hairflash.method`) and the parity adapters of its networks and non-network operations."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from methods.hairflash import encoders, sean, shape_adaptor
from methods.hairflash.masks import PARITY
from methods.nets import iresnet


@hookimpl
def register_methods(register):
    from methods.hairflash.method import HairFlash

    register(HairFlash)


@hookimpl
def register_parity(register):
    for name, adapter in {**PARITY, **iresnet.PARITY, **encoders.PARITY, **shape_adaptor.PARITY,
                          **sean.PARITY}.items():
        register(name, adapter)


@hookimpl
def register_trainers(register):
    from methods.hairflash import train

    register(train.TRAINER_NAME, train.add_arguments, train.run)
