"""Prompt construction and the dialogue text handed to the text towers.

Both backends receive exactly these strings, so the prompts (and therefore the outputs under
greedy decoding) do not depend on the backend. The caption never enters a prompt: the dialogue
is a view of the image alone (METHOD.md section 3).
"""

from __future__ import annotations

from collections.abc import Sequence


def blip2_prompt(template: str, questions: Sequence[str], answers: Sequence[str]) -> str:
    """The BLIP-2 prompt for turn ``len(answers)``: earlier turns with their answers, then the
    next question.

    With the OPT form ``Question: {question} Answer:`` the second turn reads
    ``Question: {q1} Answer: {a1} Question: {q2} Answer:`` (METHOD.md section 3).
    """
    turn = len(answers)
    if turn >= len(questions):
        raise ValueError(f"turn {turn} asked but only {len(questions)} questions")
    parts = []
    for question, answer in zip(questions[:turn], answers, strict=True):
        parts.append(template.format(question=question))
        if answer:
            parts.append(answer)
    parts.append(template.format(question=questions[turn]))
    return " ".join(parts)


def llava_prompt(template: str, question: str) -> str:
    """The LLaVA-1.5 prompt, e.g. ``USER: <image>\\n{question} ASSISTANT:``."""
    return template.format(question=question)


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


def dialogue_pairs(
    questions: Sequence[str], answers: Sequence[str], pair_template: str
) -> list[str]:
    """One text per question/answer pair (DRAFT trains on each pair as its own sample)."""
    return [
        pair_template.format(question=question, answer=answer)
        for question, answer in zip(questions, answers, strict=True)
    ]


def dialogue_text(pairs: Sequence[str], separator: str) -> str:
    """All pairs concatenated (the third tower's input: "we concatenate all three pairs")."""
    return separator.join(pairs)
