"""Token lengths in one place: one dialogue's length and fitting, statistics over lengths."""

from __future__ import annotations

import numpy as np
import pytest

from dialogclip.core.text_forms import TextForms
from dialogclip.core.token_lengths import describe, length_stats, measure_dialogue


def _words(text: str) -> int:
    """A stand-in tokenizer: one token per word plus start and end."""
    return len(text.split()) + 2


QUESTIONS = ["what is it", "which colour is the small round thing"]
ANSWERS = ["a red ball", "it is blue"]


def test_a_dialogue_that_fits_is_kept_whole() -> None:
    forms = TextForms(long_texts="drop_pairs")
    measured = measure_dialogue(forms, QUESTIONS, ANSWERS, _words, context_length=77)
    assert measured.fitted == forms.dialogue(QUESTIONS, ANSWERS)
    assert measured.tokens == _words(measured.fitted) and measured.dropped_pairs == 0


@pytest.mark.parametrize("long_texts", ["drop_pairs", "truncate"])
def test_a_long_dialogue_is_fitted_under_long_texts(long_texts: str) -> None:
    forms = TextForms(long_texts=long_texts)
    full = forms.dialogue(QUESTIONS, ANSWERS)
    first = forms.dialogue(QUESTIONS[:1], ANSWERS[:1])
    limit = _words(first)  # room for the first pair only
    measured = measure_dialogue(forms, QUESTIONS, ANSWERS, _words, limit)
    assert measured.tokens == _words(full) > limit
    if long_texts == "drop_pairs":
        assert (measured.fitted, measured.dropped_pairs) == (first, 1)
    else:  # the tokenizer cuts the full text
        assert (measured.fitted, measured.dropped_pairs) == (full, 0)


def test_describe_matches_numpy() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    stats = describe(values)
    assert stats["n"] == 8 and stats["min"] == 1.0 and stats["max"] == 9.0
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values))
    assert stats["median"] == pytest.approx(np.median(values))
    assert stats["p95"] == pytest.approx(np.percentile(values, 95))
    assert describe([])["mean"] is None


def test_length_stats_count_texts_beyond_the_context() -> None:
    stats = length_stats([10, 77, 78, 80, 10], context_length=77)
    assert stats["beyond_context"] == 2 and stats["share_beyond_context"] == 0.4
    assert stats["histogram"] == {"10": 2, "77": 1, "78": 1, "80": 1}
