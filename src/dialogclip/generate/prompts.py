"""Prompt construction: the exact strings both backends receive.

Both backends receive exactly these strings, so the prompts (and therefore the outputs under
greedy decoding) do not depend on the backend. The caption never enters a prompt: the dialogue
is a view of the image alone (METHOD.md section 3). The text a CLIP tower later reads is not
built here: the shards keep the raw pairs and ``dialogclip.core.text_forms`` (the ``text``
section) turns them into text where they are read.
"""

from __future__ import annotations

from dialogclip.core.prompts import blip2_prompt, llava_prompt

__all__ = ["blip2_prompt", "clean_blip2_answer", "llava_prompt"]


def clean_blip2_answer(response: str, template: str) -> str:
    """The answer in a raw BLIP-2 response: its first line, cut before any invented next turn.

    BLIP-2 OPT tends to continue a dialogue on its own (``... Question: ...``); the text of the
    template before ``{question}`` marks where such an invented turn starts.
    """
    answer = response.strip().split("\n", 1)[0]
    marker = template.split("{question}", 1)[0].strip()
    if marker and marker in answer:
        answer = answer.split(marker, 1)[0]
    return answer.strip()
