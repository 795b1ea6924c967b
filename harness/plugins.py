"""The one module that owns the plugin manager.

Every plugin, built-in or external, is found through the ``harness`` entry-point group. A plugin that
fails to import is recorded in :data:`broken` and reported by ``harness methods``; it never stops the rest.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import pluggy

from harness import hookspecs

ENTRY_POINT_GROUP = "harness"
# The harness's own hook implementations (core parity adapters, metric checkpoints), registered first.
CORE_PLUGINS: tuple[str, ...] = ("harness.align", "harness.metrics")


@dataclass(frozen=True)
class BrokenPlugin:
    name: str
    target: str
    error: str


pm = pluggy.PluginManager("harness")
pm.add_hookspecs(hookspecs)
broken: list[BrokenPlugin] = []
_loaded = False
_lock = threading.Lock()


def load() -> pluggy.PluginManager:
    """Load entry-point plugins once (idempotent). Import errors are collected, not raised."""
    global _loaded
    with _lock:
        if _loaded:
            return pm
        _loaded = True
        for module_name in CORE_PLUGINS:
            if pm.get_plugin(module_name) is None:
                pm.register(importlib.import_module(module_name), name=module_name)
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin is reported, not fatal
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                broken.append(BrokenPlugin(ep.name, ep.value, detail))
    return pm


def _collect(hook_name: str) -> list[tuple]:
    load()
    items: list[tuple] = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        def register(*args, _plugin=impl.plugin_name):
            items.append((_plugin, *args))
        try:
            impl.function(register=register)
        except Exception as exc:
            broken.append(BrokenPlugin(impl.plugin_name, hook_name, f"{type(exc).__name__}: {exc}"))
    return items


def method_classes() -> dict[str, type]:
    """Method name -> class, from every plugin. Later registrations of a name are reported as broken."""
    out: dict[str, type] = {}
    for plugin, cls in _collect("register_methods"):
        if cls.name in out and out[cls.name] is not cls:
            broken.append(BrokenPlugin(plugin, cls.__module__, f"method name {cls.name!r} already registered"))
            continue
        cls.plugin = plugin
        out[cls.name] = cls
    return out


def extra_checkpoints() -> list:
    return [ckpt for _, ckpt in _collect("register_checkpoints")]


def parity_adapters() -> dict[str, Callable]:
    return {name: adapter for _, name, adapter in _collect("register_parity")}


def feature_extractors() -> dict[str, Callable]:
    return {name: factory for _, name, factory in _collect("register_feature_extractors")}


def trainers() -> dict[str, tuple[Callable, Callable]]:
    """Trainer name -> (add_arguments, run), for ``harness train``."""
    return {name: (add_arguments, run) for _, name, add_arguments, run in _collect("register_trainers")}
