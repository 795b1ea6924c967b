"""``harness new-method NAME --out DIR``: an installable plugin package for a new method."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

_PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "harness-{dist}"
version = "0.1.0"
description = "The {name} hair-transfer method as a hair-harness plugin"
requires-python = ">=3.11"
dependencies = ["hair-harness"]

[project.optional-dependencies]
test = ["pytest"]

# This entry point is what makes `harness methods` and `harness run` find the method.
[project.entry-points.harness]
{name} = "{package}.plugin"

[tool.setuptools]
packages = ["{package}"]
'''

_PLUGIN = '''"""The {name} method for hair-harness."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

import harness
from harness import annotations


@dataclass(frozen=True)
class {cls}Params:
    """Fixed parameters; the defaults are what a protocol runs unless it overrides them
    (``[methods.{name}]`` in a protocol file, or ``--set {name}.alpha=0.5`` on the command line)."""

    alpha: float = 0.5  # how much of the shape image's hair region to paste


class {cls}(harness.Method):
    """Describe your method in one line here."""

    name = "{name}"
    Params = {cls}Params
    # Declare weight files here (harness.Checkpoint) in checkpoints(); `harness run` refuses to start without them.

    def setup(self, device, weights) -> None:
        """Load networks onto ``device`` (``weights.path(checkpoint)`` gives a declared file)."""
        self.device = device

    def transfer(self, face: Image.Image, shape: Image.Image, color: Image.Image) -> Image.Image:
        """Return an RGB image of face's size: face with shape's hairstyle and color's hair colour.

        This template pastes shape's hair region over face where label maps are known; replace it.
        """
        with harness.stages("paste"):
            hair = annotations.of(shape).hair_mask
            if hair is None:
                return face.copy()
            mask = Image.fromarray((hair * 255 * self.params.alpha).astype("uint8"), "L").resize(face.size)
            return Image.composite(shape.resize(face.size), face, mask)


@harness.hookimpl
def register_methods(register):
    register({cls})
'''

_TEST = '''"""Tests of the {name} plugin: registered in-process, run on synthetic portraits."""

import numpy as np
from PIL import Image

from harness import annotations, plugins, synthetic
from {package}.plugin import {cls}


def _portrait(seed: int, size: int = 64) -> Image.Image:
    spec = synthetic.sample_spec(np.random.default_rng(seed))
    image, labels = synthetic.render(spec, size)
    return annotations.attach(image, annotations.Annotations(str(seed), labels, None, spec.to_json()))


def test_registered_through_entry_point_or_in_process():
    import {package}.plugin as module

    if plugins.pm.get_plugin("{name}") is None and module not in plugins.pm.get_plugins():
        plugins.pm.register(module, name="{name}-test")
    assert plugins.method_classes()["{name}"] is {cls}


def test_transfer_returns_face_sized_rgb():
    method = {cls}()
    method.setup("cpu", None)
    face, shape, color = (_portrait(s) for s in (1, 2, 3))
    out = method.transfer(face, shape, color)
    assert out.mode == "RGB" and out.size == face.size
    assert np.abs(np.asarray(out, float) - np.asarray(face, float)).mean() > 0  # it changed something
'''

_README = '''# harness-{dist}

The `{name}` hair-transfer method as a [hair-harness](https://github.com/) plugin.

    pip install -e .          # registers the `harness` entry point
    harness methods           # {name} is listed
    harness run --methods {name},identity --protocol smoke --out runs/{name}
    pytest tests
'''


def write_plugin(name: str, out: Path) -> list[Path]:
    """Write the plugin package for method ``name`` into ``out``; returns the files written."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ValueError(f"method name {name!r}: use lower-case letters, digits and underscores, "
                         "starting with a letter")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty")
    package = f"harness_{name}"
    values = {"name": name, "package": package, "dist": name.replace("_", "-"),
              "cls": "".join(part.capitalize() for part in name.split("_")) + "Method"}
    files = {
        out / "pyproject.toml": _PYPROJECT,
        out / "README.md": _README,
        out / package / "__init__.py": '"""{name} plugin package."""\n',
        out / package / "plugin.py": _PLUGIN,
        out / "tests" / f"test_{name}.py": _TEST,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    return list(files)
