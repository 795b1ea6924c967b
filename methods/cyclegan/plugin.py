"""CycleGAN plugin for the harness: the ``cyclegan`` method (:mod:`methods.cyclegan.method`) and its trainer
(``harness train cyclegan``, :mod:`methods.cyclegan.train`). The generator network lives in
:mod:`methods.nets.cyclegan` and its parity adapter is registered there."""

from __future__ import annotations

from harness.hookspecs import hookimpl


@hookimpl
def register_methods(register):
    from methods.cyclegan.method import CycleGAN

    register(CycleGAN)


@hookimpl
def register_trainers(register):
    from methods.cyclegan import train

    register(train.TRAINER_NAME, train.add_arguments, train.run)
