"""The prompt strings of the generators and the cleaning of a BLIP-2 reply, in one place.

The generation stage sends exactly these strings to either backend, so the prompts (and
therefore the outputs under greedy decoding) do not depend on the backend; the world's models
(:mod:`dialogclip.world.vlms`) are trained on exactly these strings, so a trained world model
answers what the configured generators ask. The templates themselves are science in the
workflow's ``generate`` section. The caption never enters a prompt: the dialogue is a view of
the image alone (METHOD.md section 3). The text a CLIP tower later reads is not built here: the
shards keep the raw pairs and ``dialogclip.core.text_forms`` (the ``text`` section) turns them
into text where they are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def blip2_prompt(
    prompt_template: str, context_template: str, questions: Sequence[str], answers: Sequence[str]
) -> str:
    """The BLIP-2 prompt for turn ``len(answers)``: the earlier turns with their answers, each
    through ``context_template``, then the next question through ``prompt_template``, joined by
    single spaces (BLIP-2's own multi-turn form, salesforce/LAVIS projects/blip2/README.md at
    2e96b27).

    With the defaults the second turn reads
    ``Question: {q1} Answer: {a1}. Question: {q2} Answer:`` (METHOD.md section 3).
    """
    turn = len(answers)
    if turn >= len(questions):
        raise ValueError(f"turn {turn} asked but only {len(questions)} questions")
    context = [
        context_template.format(question=question, answer=answer)
        for question, answer in zip(questions[:turn], answers, strict=True)
    ]
    return " ".join([*context, prompt_template.format(question=questions[turn])])


def llava_prompt(template: str, question: str) -> str:
    """The LLaVA-1.5 prompt, e.g. ``USER: <image>\\n{question} ASSISTANT:``."""
    return template.format(question=question)


def chat_messages(questions: Sequence[str], answers: Sequence[str]) -> list[dict[str, Any]]:
    """The chat of turn ``len(answers)`` for a processor's ``apply_chat_template``: the image
    and the first question in the first user message, each earlier answer as an assistant
    message, each later question as a user message, ending on the question now asked."""
    turn = len(answers)
    if turn >= len(questions):
        raise ValueError(f"turn {turn} asked but only {len(questions)} questions")
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": questions[0]}],
        }
    ]
    for answer, question in zip(answers, questions[1 : turn + 1], strict=True):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        messages.append({"role": "user", "content": [{"type": "text", "text": question}]})
    return messages


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
