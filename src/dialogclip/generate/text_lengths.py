"""How long the dialogue texts are for each CLIP text tower: the dialogue_summary's text figures.

A dialogue shard stores the raw pairs; the concatenated dialogue a text tower reads is made with
the ``text`` section (:class:`~dialogclip.core.text_forms.TextForms`). A CLIP tokenizer keeps at
most ``context_length`` tokens (77, start and end tokens included) and cuts the rest, so a long
dialogue (the three LLaVA pairs often are) loses its end. For each configured architecture this
module counts how many dialogues exceed the context, and how many would lose whole pairs under
``text.long_texts: drop_pairs``.

Architectures with the same tokenizer (every OpenCLIP ViT-* model uses the same CLIP BPE) are
tokenized once. Tokenizers come from open_clip (bundled with it, no download); the project's own
model configs (``tiny-clip``) are registered first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from dialogclip.core.config import ConfigError
from dialogclip.core.text_forms import TextForms
from dialogclip.core.token_lengths import DialogueLength, length_stats, measure_dialogue

log = logging.getLogger(__name__)

STATUS_SUCCESS = "success"  # the dialogue shards' status of an image the generator ran on


@dataclass(frozen=True)
class TokenCounter:
    """The tokenizer of one architecture, counting tokens without truncation."""

    architecture: str
    tokenizer: str  # the open_clip tokenizer class
    context_length: int  # tokens the text tower reads, start and end tokens included
    key: str  # identical keys tokenize identically (shared counts)
    count: Callable[[str], int]  # tokens of a text, start and end tokens included


def architecture_token_counter(architecture: str) -> TokenCounter:
    """The open_clip tokenizer of ``architecture`` (e.g. ``ViT-B-32``, ``tiny-clip``)."""
    import open_clip

    from dialogclip.models.openclip import register_model_configs, token_count_function

    register_model_configs()
    model_config = open_clip.get_model_config(architecture)
    if model_config is None:
        raise ConfigError(
            f"unknown model architecture {architecture!r} (not an open_clip model config); "
            "see open_clip.list_models()"
        )
    tokenizer = open_clip.get_tokenizer(architecture)
    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
        raise ConfigError(
            f"architecture {architecture!r} uses a {type(tokenizer).__name__}; counting its "
            "tokens is implemented for open_clip's SimpleTokenizer (CLIP BPE) only"
        )
    text_cfg = model_config.get("text_cfg", {})
    # What get_tokenizer builds a SimpleTokenizer from, besides the context length.
    key = json.dumps(
        ["SimpleTokenizer", text_cfg.get("tokenizer_kwargs", {})], sort_keys=True, default=str
    )

    return TokenCounter(
        architecture=architecture,
        tokenizer=type(tokenizer).__name__,
        context_length=int(tokenizer.context_length),
        key=key,
        count=token_count_function(tokenizer),
    )


def read_pairs(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[list[str], list[str]]]:
    """(questions, answers) of every dialogue with at least one pair, over the shards in order
    (images the generator ran on; an unparsed LLaVA reply has no pair and no text)."""
    pairs = []
    for path in paths:
        table = pq.read_table(path, columns=["status", "questions", "answers"])
        table = table.filter(pc.equal(table["status"], STATUS_SUCCESS))
        for questions, answers in zip(
            table["questions"].to_pylist(), table["answers"].to_pylist(), strict=True
        ):
            if questions:
                pairs.append((questions, answers))
    return pairs


def text_length_summary(
    pairs: Sequence[tuple[Sequence[str], Sequence[str]]],
    forms: TextForms,
    counters: Sequence[TokenCounter],
) -> dict[str, Any]:
    """Per architecture: dialogue texts (``forms``' concatenated form) over the context length,
    token statistics, and what ``long_texts: drop_pairs`` would drop.

    ``pairs``: (questions, answers) per dialogue. Returns ``{"n_texts", "architectures":
    {architecture: {...}}}``.
    """
    dropping = dataclasses.replace(forms, long_texts="drop_pairs")
    measured: dict[tuple[str, int], list[DialogueLength]] = {}
    result: dict[str, Any] = {}
    for counter in counters:
        limit = counter.context_length
        if (counter.key, limit) not in measured:  # same tokenizer and context: same figures
            measured[counter.key, limit] = [
                measure_dialogue(dropping, questions, answers, counter.count, limit)
                for questions, answers in pairs
            ]
        dialogues = measured[counter.key, limit]
        lengths = length_stats([dialogue.tokens for dialogue in dialogues], limit)
        too_long = [dialogue for dialogue in dialogues if dialogue.tokens > limit]
        share = lengths["share_beyond_context"]
        mean = lengths["mean"]
        result[counter.architecture] = {
            "tokenizer": counter.tokenizer,
            "context_length": limit,
            "n_too_long": lengths["beyond_context"],
            "fraction_too_long": None if share is None else round(share, 6),
            "tokens_max": lengths["max"],
            "tokens_mean": None if mean is None else round(mean, 2),
            "drop_pairs": {
                "n_losing_pairs": sum(dialogue.dropped_pairs > 0 for dialogue in too_long),
                "pairs_dropped": sum(dialogue.dropped_pairs for dialogue in too_long),
                # Even the first pair is too long: the tokenizer cuts it.
                "n_first_pair_truncated": sum(
                    counter.count(dialogue.fitted) > limit for dialogue in too_long
                ),
            },
        }
    return {"n_texts": len(pairs), "architectures": result}
