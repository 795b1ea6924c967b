"""Text references: the shape and/or colour role of a triplet given as a prompt instead of an image.

In a run a text role is stored as the id ``text:<prompt>`` in ``triplets.csv`` (columns ``shape`` / ``color``),
so every unit stays addressable as (method, task, triplet) and the triplet file records what each method was
given. Prompts are checked up front with CLIP's BPE tokenizer (from the ``open_clip_torch`` package): at most
:data:`MAX_TOKENS` tokens, the limit of CLIP's 77-token context (start and end tokens included).

Which task slot a prompt may fill: the shape prompt fills the Shape slot, the colour prompt the Color slot. A
task that would hand one role's reference to the other slot (``both`` gives the shape reference as the colour
reference) cannot use a text shape prompt: such units are skipped with the reason (:func:`slot_refusal`).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import Any

TEXT_PREFIX = "text:"
CONTEXT_LENGTH = 77
MAX_TOKENS = CONTEXT_LENGTH - 2
SLOTS = ("face", "shape", "color")  # the (Face, Shape, Color) slots of a transfer call


class PromptError(ValueError):
    """A text reference that cannot be used (empty, several lines, too long for CLIP)."""


def text_id(prompt: str) -> str:
    """The triplet-file id of a prompt: ``"purple hair"`` -> ``"text:purple hair"``."""
    return TEXT_PREFIX + prompt


def prompt_of(role_id: str) -> str | None:
    """The prompt of a ``text:`` id, ``None`` for an image id."""
    return role_id[len(TEXT_PREFIX):] if role_id.startswith(TEXT_PREFIX) else None


def is_text(role_id: str) -> bool:
    return role_id.startswith(TEXT_PREFIX)


@functools.cache
def bpe_tokenizer() -> Any:
    """open_clip's ``SimpleTokenizer`` (OpenAI CLIP's BPE vocabulary); imported lazily, it takes seconds."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def token_count(prompt: str) -> int:
    """CLIP BPE tokens of ``prompt`` (without the start and end tokens)."""
    return len(bpe_tokenizer().encode(prompt))


def check_prompt(prompt: str, role: str) -> str:
    """``prompt`` with surrounding whitespace removed; :class:`PromptError` if it is empty, spans several lines or
    has more than :data:`MAX_TOKENS` CLIP tokens."""
    text = prompt.strip()
    if not text:
        raise PromptError(f"the {role} text reference is empty")
    if "\n" in text or "\r" in text:
        raise PromptError(f"the {role} text reference {text!r} spans several lines")
    count = token_count(text)
    if count > MAX_TOKENS:
        raise PromptError(f"the {role} text reference {text[:40]!r}... is {count} CLIP tokens; at most {MAX_TOKENS}")
    return text


def slot_refusal(task_roles: Sequence[str], role_ids: Sequence[str], accepts_text: Collection[str],
                 method: str) -> str | None:
    """Why a method cannot run a unit whose (Face, Shape, Color) slots hold ``role_ids`` (taken from the triplet's
    ``task_roles``), or ``None`` when it can: a prompt in a slot of another role, or in a slot the method only
    takes images for."""
    for slot, source, role_id in zip(SLOTS, task_roles, role_ids, strict=True):
        prompt = prompt_of(role_id)
        if prompt is None:
            continue
        if slot != source:
            return (f"text reference: this task gives the {source} reference as the {slot} reference, and the "
                    f"{source} prompt {prompt!r} does not describe a {slot}")
        if slot not in accepts_text:
            return (f"{method} takes images only for the {slot} role (given the text {prompt!r}); "
                    f"methods with text input: `harness methods` (accepts_text)")
    return None
