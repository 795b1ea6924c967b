"""The jinja2 environment of the report (templates in ``reports/templates/``, autoescape on)."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import jinja2
from markupsafe import Markup, escape

from harness.metrics.catalog import info


def _pretty(value: Any) -> str:
    """A parameter value as short text (JSON for containers)."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def _item_metric(value: float, name: str) -> str:
    """A per-item metric under a thumbnail: ``PSNR gt 23.41``."""
    from reports.tables import format_value

    m = info(name)
    return f"{m.label} {format_value(value, m.decimals)}"


_NOTE_TOKENS = re.compile(r"(?P<url>https?://[^\s;,)]*[^\s;,).])|(?P<code>--[a-z][a-z-]*(?: DIR)?|\$[A-Z_]+)")


def _note_html(text: str) -> Markup:
    """A footnote / skipped note as HTML: URLs in a breakable monospace span, options and variables as code."""
    out, last = [], 0
    for m in _NOTE_TOKENS.finditer(text):
        out.append(escape(text[last:m.start()]))
        cls = "url" if m.group("url") else "opt"
        out.append(Markup('<code class="{}">{}</code>').format(cls, m.group(0)))
        last = m.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pretty"] = _pretty
    env.filters["item_metric"] = _item_metric
    env.filters["note_html"] = _note_html
    return env
