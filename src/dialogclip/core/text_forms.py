"""How question/answer pairs become the texts a CLIP text tower reads: one setting for every stage.

The dialogue shards store the raw pairs (``questions``, ``answers``); the text form is applied
by whoever reads them (training, the dialogue statistics) and by the VQA evaluation, which
builds its candidates with the same template. Training and evaluation therefore always see the
same form, and editing the form never reruns generation.

- ``qa_template``: one pair, e.g. ``"{question} {answer}"`` (the thesis' "question followed by
  answer"). A DRAFT sample and a VQA candidate text are exactly this.
- ``pair_separator``: joins the pairs of one image into the concatenated dialogue (the third
  tower's input; BLIP-2's two turns, LLaVA's three pairs).
- ``long_texts``: what happens to a dialogue longer than the text tower's context
  (77 tokens for CLIP): ``truncate`` keeps the text and lets the tokenizer cut its end (as
  open_clip's tokenizer does); ``drop_pairs`` drops whole pairs from the end until the rest fits
  (always keeping the first pair, itself truncated if needed), so no pair is cut mid-way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dialogclip.core.config import ConfigError

LONG_TEXT_POLICIES = ("truncate", "drop_pairs")


@dataclass(frozen=True)
class TextForms:
    """The ``text`` section of the config (see the module docstring)."""

    qa_template: str = "{question} {answer}"  # one pair; needs {question} and {answer}
    pair_separator: str = " "  # between the pairs of the concatenated dialogue
    long_texts: str = "truncate"  # "truncate" or "drop_pairs"

    def __post_init__(self) -> None:
        if "{question}" not in self.qa_template or "{answer}" not in self.qa_template:
            raise ConfigError(
                f"text.qa_template must contain {{question}} and {{answer}}: {self.qa_template!r}"
            )
        if self.long_texts not in LONG_TEXT_POLICIES:
            raise ConfigError(
                f"text.long_texts must be one of {LONG_TEXT_POLICIES}, got {self.long_texts!r}"
            )

    def pair(self, question: str, answer: str) -> str:
        """One question/answer pair as text."""
        return self.qa_template.format(question=question, answer=answer)

    def pairs(self, questions: Sequence[str], answers: Sequence[str]) -> list[str]:
        """Every pair of one image as text, in order (``questions`` and ``answers`` align)."""
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        return [self.pair(q, a) for q, a in zip(questions, answers, strict=True)]

    def dialogue(self, questions: Sequence[str], answers: Sequence[str]) -> str:
        """The concatenated dialogue of one image (the third tower's text)."""
        return self.pair_separator.join(self.pairs(questions, answers))

    def fitted_dialogue(
        self,
        questions: Sequence[str],
        answers: Sequence[str],
        n_tokens: Callable[[str], int],
        context_length: int,
    ) -> tuple[str, int]:
        """The concatenated dialogue under ``long_texts``, and how many pairs were dropped.

        ``n_tokens(text)`` counts the tokens the text tower's tokenizer makes of ``text``,
        start/end tokens included; ``context_length`` is the tower's limit (77 for CLIP).
        """
        pairs = self.pairs(questions, answers)
        if self.long_texts == "truncate":
            return self.pair_separator.join(pairs), 0
        kept = len(pairs)
        while kept > 1 and n_tokens(self.pair_separator.join(pairs[:kept])) > context_length:
            kept -= 1
        return self.pair_separator.join(pairs[:kept]), len(pairs) - kept
