"""Why a metric has no number, shortened for the report's notes.

``metrics.csv`` holds a reason on one line: :func:`harness.metrics.table.one_line` joins the lines of a message
with ``"; "``, so the multi-line message of :func:`harness.weights.describe_missing` arrives as::

    skipped: the 'clip_vitb32' network needs weights: missing weight files:; - ViT-B-32.pt (PURPOSE);
    official source: URL; searched: DIRS; put them in one of these directories, pass --weights-dir DIR or set
    $HARNESS_WEIGHTS

and the Inception message of :mod:`harness.metrics.fid` as
``skipped: needs FILE (from URL) in --weights-dir or $HARNESS_WEIGHTS (searched: DIRS)``. :func:`readable_reason`
turns both into one form::

    skipped: missing weight file ViT-B-32.pt (OpenAI CLIP ViT-B/32, for clip_vitb32) from URL;
    pass --weights-dir DIR or set $HARNESS_WEIGHTS (searched: DIRS)

Any other reason only loses the list artefacts (``":;"``, ``"; - "``) and repeated blanks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WEIGHTS_HINT = "pass --weights-dir DIR or set $HARNESS_WEIGHTS"

_STATUS = re.compile(r"^(?P<status>skipped|failed|error)\s*:\s*", re.IGNORECASE)
_NETWORK = re.compile(r"^the '(?P<network>[^']+)' network needs weights:\s*")
# one entry of describe_missing: "- FILE (PURPOSE[, SIZE bytes]); official source: SOURCE"
_ENTRY = re.compile(r"-\s*(?P<file>[^\s(;]+)\s*\((?P<purpose>.*?)\);\s*official source:\s*(?P<source>[^;]*)")
_SEARCHED = re.compile(r"searched:\s*(?P<dirs>[^;]*)")
# harness.metrics.fid.inception_missing_message
_NEEDS = re.compile(r"^needs (?P<file>\S+) \(from (?P<source>[^)]*)\) in --weights-dir or \$HARNESS_WEIGHTS"
                    r"(?: \(searched: (?P<dirs>[^)]*)\))?")
_URL = re.compile(r"https?://[^\s;,)]*[^\s;,).]")


@dataclass(frozen=True)
class MissingFile:
    """A weight file a metric needs."""

    file: str
    purpose: str = ""  # short: "OpenAI CLIP ViT-B/32"
    source: str = ""  # the official URL (or the source text when it has none)


def _short_purpose(purpose: str) -> str:
    """The purpose up to its first parenthesis or comma: "VGG16 ImageNet trunk of LPIPS"."""
    return re.split(r"\s*[(,;]", purpose, maxsplit=1)[0].strip()


def _source(text: str) -> str:
    match = _URL.search(text)
    return match.group(0) if match else text.strip()


def _missing_text(files: list[MissingFile], network: str, searched: str) -> str:
    parts = []
    for f in files:
        about = ", ".join(x for x in (f.purpose, f"for {network}" if network else "") if x)
        parts.append(f.file + (f" ({about})" if about else "") + (f" from {f.source}" if f.source else ""))
    noun = "file" if len(files) == 1 else "files"
    text = f"missing weight {noun} {', '.join(parts)}; {WEIGHTS_HINT}"
    return text + (f" (searched: {searched})" if searched else "")


def _clean(text: str) -> str:
    text = re.sub(r";\s*-\s+", "; ", text)
    text = re.sub(r":\s*;\s*", ": ", text)
    return re.sub(r"\s+", " ", text).strip()


def readable_reason(reason: str) -> str:
    """A skip / failure reason from ``metrics.csv`` as a short note (see the module docstring)."""
    text = re.sub(r"\s+", " ", reason).strip()
    status = _STATUS.match(text)
    prefix = status.group("status").lower() + ": " if status else ""
    body = text[status.end():] if status else text

    network_match = _NETWORK.match(body)
    network = network_match.group("network") if network_match else ""
    rest = body[network_match.end():] if network_match else body
    if rest.startswith("missing weight files"):
        files = [MissingFile(m.group("file"), _short_purpose(m.group("purpose")), _source(m.group("source")))
                 for m in _ENTRY.finditer(rest)]
        searched = _SEARCHED.search(rest)
        if files:
            return prefix + _missing_text(files, network, searched.group("dirs").strip() if searched else "")
    needs = _NEEDS.match(rest)
    if needs:
        files = [MissingFile(needs.group("file"), source=_source(needs.group("source")))]
        return prefix + _missing_text(files, network, (needs.group("dirs") or "").strip())
    return prefix + _clean(body)
