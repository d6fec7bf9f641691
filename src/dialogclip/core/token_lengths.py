"""Token lengths of texts for a CLIP text tower, in one place: one dialogue's length and how
``text.long_texts`` fits it (:func:`measure_dialogue`), and the statistics over many lengths
(:func:`length_stats`). The generate stage's dialogue summary and the report's dialogue quality
both use them, so the two agree on what a dialogue's length is."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dialogclip.core.text_forms import TextForms


@dataclass(frozen=True)
class DialogueLength:
    """One dialogue as a text tower reads it."""

    tokens: int  # of the full concatenated dialogue, start and end tokens included
    fitted: str  # the dialogue under ``long_texts`` (the full one when it fits)
    dropped_pairs: int  # pairs ``long_texts: drop_pairs`` left out to fit


def measure_dialogue(
    forms: TextForms,
    questions: Sequence[str],
    answers: Sequence[str],
    count: Callable[[str], int],
    context_length: int,
) -> DialogueLength:
    """The token length of one dialogue (``forms``' concatenated form) and the text fitted under
    ``forms.long_texts`` into ``context_length`` tokens; ``count(text)`` counts the tokens the
    tower's tokenizer makes of a text, start and end tokens included."""
    text = forms.dialogue(questions, answers)
    tokens = count(text)
    if tokens <= context_length:  # fits: nothing to drop or cut
        return DialogueLength(tokens, text, 0)
    fitted, dropped = forms.fitted_dialogue(questions, answers, count, context_length)
    return DialogueLength(tokens, fitted, dropped)


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, std (population), min, median, p95, max of ``values`` (None when empty)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "median": None, "p95": None,
                "max": None}  # fmt: skip
    ordered = sorted(values)
    mean = sum(ordered) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in ordered) / n)

    def quantile(q: float) -> float:
        # Linear interpolation between the closest ranks (numpy's default).
        position = q * (n - 1)
        low = math.floor(position)
        high = min(low + 1, n - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {
        "n": n,
        "mean": mean,
        "std": std,
        "min": ordered[0],
        "median": quantile(0.5),
        "p95": quantile(0.95),
        "max": ordered[-1],
    }


def length_stats(lengths: Sequence[int], context_length: int) -> dict[str, Any]:
    """Token-length statistics (:func:`describe`), the histogram {length: count} and how many
    lengths are beyond ``context_length`` (count and share; None when there are none)."""
    beyond = sum(1 for n in lengths if n > context_length)
    return {
        **describe(lengths),
        "beyond_context": beyond,
        "share_beyond_context": beyond / len(lengths) if lengths else None,
        "histogram": {str(k): v for k, v in sorted(Counter(lengths).items())},
    }
