"""The plugin hooks. A plugin is a module (or object) with functions marked ``@harness.hookimpl``.

Register it under the ``harness`` entry-point group::

    [project.entry-points.harness]
    mymethod = "mymethod_package.plugin"
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")


@hookspec
def register_methods(register):
    """Call ``register(MethodClass)`` for each hair-transfer method this plugin provides."""


@hookspec
def register_checkpoints(register):
    """Call ``register(Checkpoint)`` for weight files used outside a method (metrics, shared networks)."""


@hookspec
def register_parity(register):
    """Call ``register(fixture_name, adapter)``: ``adapter(fixture)`` builds the module and returns
    ``run(case) -> {output name: array}`` (see ``harness.parity``)."""


@hookspec
def register_feature_extractors(register):
    """Call ``register(name, factory)``; ``factory(device, weights)`` returns an image feature extractor
    (``harness.metrics`` asks for ``"clip_vitb32"`` to compute FID_CLIP)."""


@hookspec
def register_trainers(register):
    """Call ``register(name, add_arguments, run)`` for ``harness train NAME``: ``add_arguments(parser)`` adds the
    trainer's options to an argparse parser, ``run(args) -> int`` trains and returns an exit code."""
