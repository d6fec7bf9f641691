"""Parsing LLaVA's reply into question/answer pairs, and the JSON schema for structured output.

A free-text reply comes in many shapes: ``Q1: ... A1: ...``, ``Question 1: ... Answer: ...``,
markdown bold labels, numbered lists with the answer after the question mark, one pair per two
lines, or JSON. :func:`parse_qa_pairs` tries the readings in a fixed order and keeps the first
that yields exactly the expected number of pairs; a reply that cannot be read that way keeps its
raw text and gets a status (``wrong_count`` or ``unparsed``), never silently dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PARSE_OK = "ok"
PARSE_WRONG_COUNT = "wrong_count"  # some pairs were read, but not the expected number
PARSE_UNPARSED = "unparsed"  # no pair could be read
PARSE_EMPTY_ANSWER = "empty_answer"  # BLIP-2: a turn produced no answer text

Pairs = list[tuple[str, str]]


@dataclass(frozen=True)
class ParsedPairs:
    """The pairs read from one reply, how they were read, and the parse status."""

    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    status: str = PARSE_UNPARSED
    method: str = "none"  # json | labels | numbered | lines | none


def qa_json_schema(n_pairs: int = 3, max_chars: int = 300) -> dict[str, Any]:
    """JSON schema of exactly ``n_pairs`` ``{question, answer}`` objects (structured output).

    ``maxLength`` bounds each string so that a constrained reply always fits the token budget.
    """
    text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    return {
        "type": "array",
        "minItems": n_pairs,
        "maxItems": n_pairs,
        "items": {
            "type": "object",
            "properties": {"question": text, "answer": text},
            "required": ["question", "answer"],
            "additionalProperties": False,
        },
    }


def parse_qa_pairs(text: str, expected: int = 3) -> ParsedPairs:
    """Read question/answer pairs from ``text``; status ``ok`` iff exactly ``expected`` pairs."""
    readers: list[tuple[str, Callable[[str], Pairs]]] = [
        ("json", _pairs_from_json),
        ("labels", _pairs_from_labels),
        ("numbered", _pairs_from_numbered_items),
        ("lines", _pairs_from_lines),
    ]
    best: tuple[str, Pairs] | None = None
    for method, reader in readers:
        pairs = [(q, a) for q, a in (map(_clean, pair) for pair in reader(text)) if q and a]
        if len(pairs) == expected:
            return _result(pairs, PARSE_OK, method)
        if pairs and (best is None or len(pairs) > len(best[1])):
            best = (method, pairs)
    if best is None:
        return ParsedPairs()
    return _result(best[1], PARSE_WRONG_COUNT, best[0])


def _result(pairs: Pairs, status: str, method: str) -> ParsedPairs:
    return ParsedPairs(
        questions=[q for q, _ in pairs], answers=[a for _, a in pairs], status=status, method=method
    )


def _clean(value: str) -> str:
    # Markdown emphasis, stray quotes and line breaks do not belong in the dialogue text.
    value = re.sub(r"[*_`#]+", " ", value)
    value = " ".join(value.split())
    return value.strip(" \"'-:")


# --- JSON ---------------------------------------------------------------------------------


def _pairs_from_json(text: str) -> Pairs:
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        pairs = _pairs_from_json_value(value)
        if pairs:
            return pairs
    return []


def _pairs_from_json_value(value: Any) -> Pairs:
    if isinstance(value, dict):
        pair = _pair_from_mapping(value)
        if pair:
            return [pair]
        # {"questions": [...]} or {"pairs": [...]}: the first list of pairs inside.
        for inner in value.values():
            pairs = _pairs_from_json_value(inner)
            if pairs:
                return pairs
        return []
    if isinstance(value, list):
        return [
            pair for item in value if isinstance(item, dict) and (pair := _pair_from_mapping(item))
        ]
    return []


def _pair_from_mapping(mapping: dict[str, Any]) -> tuple[str, str] | None:
    lowered = {str(key).strip().lower(): item for key, item in mapping.items()}
    question = next((lowered[k] for k in ("question", "q") if k in lowered), None)
    answer = next((lowered[k] for k in ("answer", "a") if k in lowered), None)
    if isinstance(question, str) and isinstance(answer, str):
        return question, answer
    return None


# --- labelled text: "Q1: ... A1: ...", "**Question 2:** ... **Answer:** ..." -----------------

_LABEL = re.compile(
    r"(?<![A-Za-z0-9])"
    r"(?:(?P<word>question|answer)(?:\s*(?P<word_number>\d+))?"
    # A one-letter label takes its number directly (Q2): "a 2-year-old" is prose.
    r"|(?P<letter>[qa])(?P<letter_number>\d+)?)"
    r"\s*(?P<sep>[:.)\-])",
    re.IGNORECASE,
)


def _labels(text: str) -> list[tuple[str, int, int]]:
    """(kind "q"/"a", start, end) of each label; a bare label needs a colon ("A." is prose)."""
    found = []
    for match in _LABEL.finditer(text):
        numbered = bool(match.group("word_number") or match.group("letter_number"))
        if not numbered and match.group("sep") != ":":
            continue
        kind = (match.group("word") or match.group("letter"))[0].lower()
        found.append((kind, match.start(), match.end()))
    return found


def _pairs_from_labels(text: str) -> Pairs:
    text = re.sub(r"[*_]{2,}", "", text)  # markdown bold around labels: **Q1:**
    labels = _labels(text)
    pairs: Pairs = []
    question: str | None = None
    for i, (kind, _, end) in enumerate(labels):
        stop = labels[i + 1][1] if i + 1 < len(labels) else len(text)
        segment = _strip_list_number(text[end:stop])
        if kind == "q":
            question = segment
        elif question is not None:
            pairs.append((question, segment))
            question = None
    return pairs


def _strip_list_number(segment: str) -> str:
    # The numbering of the next list item ("... answer.\n2. Q: ...") belongs to the next pair.
    return re.sub(r"(?:\s+\d+\s*[.)])?\s*$", "", segment)


# --- numbered list: "1. What is shown? A dog on a beach." ---------------------------------

_ITEM = re.compile(r"(?m)^\s*(?:\d+\s*[.)]|[-*\u2022])\s+")


def _pairs_from_numbered_items(text: str) -> Pairs:
    items = list(_ITEM.finditer(text))
    if not items:
        return []
    bounds = [match.start() for match in items[1:]]
    pairs = []
    for match, stop in zip(items, [*bounds, len(text)], strict=True):
        start = match.end()
        item = text[start:stop].strip()
        if "?" in item:
            question, answer = item.split("?", 1)
            pairs.append((question + "?", _drop_answer_label(answer)))
        elif "\n" in item:
            question, answer = item.split("\n", 1)
            pairs.append((question, _drop_answer_label(answer)))
    return pairs


def _drop_answer_label(answer: str) -> str:
    return re.sub(r"^\s*(?:answer|a)\s*\d*\s*[:.)\-]\s*", "", answer.strip(), flags=re.IGNORECASE)


# --- question line followed by answer line -------------------------------------------------


def _pairs_from_lines(text: str) -> Pairs:
    pairs = []
    question: str | None = None
    for line in (line.strip() for line in text.splitlines()):
        if not line:
            continue
        if "?" in line:
            head, tail = line.rsplit("?", 1)
            question = head + "?"
            if tail.strip():
                pairs.append((question, tail))
                question = None
        elif question is not None:
            pairs.append((question, line))
            question = None
    return pairs
