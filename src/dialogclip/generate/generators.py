"""The two kinds of dialogue generator: a multi-turn ``dialogue`` (BLIP-2's) and ``qa_pairs``
in one reply (LLaVA-1.5's three pairs).

A generator is data (:class:`~dialogclip.generate.config.VlmSettings`: model, kind, questions,
prompt format); the thesis' two are entries of that form
(:func:`~dialogclip.generate.config.generator_entry`). It turns a list of images into
:class:`Dialogue` records through any :class:`~dialogclip.generate.backend.GenerationBackend`;
it owns the prompts, the turn logic and the parsing, so both backends produce the same records
from the same model outputs. A prompt in the ``chat_template`` format is rendered by the
backend's processor (:meth:`GenerationBackend.chat_prompt`), the same call on both backends.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from dialogclip.core.config import ConfigError
from dialogclip.core.prompts import (
    blip2_prompt,
    chat_messages,
    clean_blip2_answer,
    llava_prompt,
)
from dialogclip.generate.backend import (
    FINISH_LENGTH,
    Completion,
    GenerationBackend,
    GenerationRequest,
)
from dialogclip.generate.config import GenerateConfig, VlmSettings, generator_entry
from dialogclip.generate.parsing import (
    PARSE_EMPTY_ANSWER,
    PARSE_OK,
    parse_qa_pairs,
    qa_json_schema,
)


@dataclass
class Dialogue:
    """What one image produced: per-turn prompts and replies, and the parsed pairs."""

    prompts: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)  # raw decoded replies
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    generated_tokens: list[int] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    parse_status: str = PARSE_OK

    def add_turn(self, prompt: str, completion: Completion) -> None:
        self.prompts.append(prompt)
        self.responses.append(completion.text)
        self.finish_reasons.append(completion.finish_reason)
        self.prompt_tokens.append(completion.prompt_tokens)
        self.generated_tokens.append(len(completion.token_ids))


def request_seed(base_seed: int, key: str, turn: int) -> int:
    """A per-image, per-turn seed: sampled replies do not depend on batching or resume."""
    return (base_seed * 1_000_003 + zlib.crc32(f"{key}/{turn}".encode())) % (2**31)


def complete_replies(
    backend: GenerationBackend, requests: Sequence[GenerationRequest]
) -> list[Completion]:
    """``backend.generate(requests)``, refusing a reply the engine's context length cut short.

    A reply ends at a stop token or after its ``max_new_tokens``; one that ends earlier for
    length ran into the engine's context (vLLM's max_model_len, a machine setting). Such a cut
    must never shape a row, so the job stops and says which setting to raise.
    """
    completions = backend.generate(requests)
    for request, completion in zip(requests, completions, strict=True):
        n_new = len(completion.token_ids)
        if completion.finish_reason == FINISH_LENGTH and n_new < request.max_new_tokens:
            raise ConfigError(
                f"a reply stopped after {n_new} of its max_new_tokens {request.max_new_tokens} "
                f"tokens: its prompt ({completion.prompt_tokens} tokens) plus max_new_tokens "
                "exceed the engine's context length; raise the rule resource "
                "vllm_max_model_len (0 = the model's own) or lower max_new_tokens"
            )
    return completions


class DialogueGenerator:
    """kind ``dialogue`` (BLIP-2's): ask the questions in turn, each prompt holding the earlier
    questions and answers."""

    def __init__(self, name: str, settings: VlmSettings, base_seed: int = 0) -> None:
        self.name = name
        self.settings = settings
        self.base_seed = base_seed

    def prompt(self, backend: GenerationBackend, answers: Sequence[str]) -> str:
        """The prompt of turn ``len(answers)``, after the earlier turns' ``answers``."""
        questions = self.settings.questions
        if self.settings.prompt_format == "chat_template":
            return backend.chat_prompt(chat_messages(questions, answers))
        return blip2_prompt(
            self.settings.prompt_template, self.settings.context_template, questions, answers
        )

    def answer(self, reply: str) -> str:
        """The answer in a raw reply: a template-format model may run on into a turn of its own
        (BLIP-2 OPT does), a chat model's reply ends at its end-of-turn token."""
        if self.settings.prompt_format == "chat_template":
            return reply.strip()
        return clean_blip2_answer(reply, self.settings.prompt_template)

    def run(
        self, backend: GenerationBackend, images: Sequence[Image.Image], keys: Sequence[str]
    ) -> list[Dialogue]:
        """One :class:`Dialogue` per image; turn t of every image is one backend call."""
        dialogues = [Dialogue() for _ in images]
        for turn, question in enumerate(self.settings.questions):
            prompts = [self.prompt(backend, dialogue.answers) for dialogue in dialogues]
            requests = [
                GenerationRequest(
                    prompt=prompt,
                    image=image,
                    max_new_tokens=self.settings.max_new_tokens,
                    seed=request_seed(self.base_seed, key, turn),
                )
                for prompt, image, key in zip(prompts, images, keys, strict=True)
            ]
            for dialogue, prompt, completion in zip(
                dialogues, prompts, complete_replies(backend, requests), strict=True
            ):
                dialogue.add_turn(prompt, completion)
                dialogue.questions.append(question)
                dialogue.answers.append(self.answer(completion.text))
        for dialogue in dialogues:
            dialogue.parse_status = PARSE_OK if all(dialogue.answers) else PARSE_EMPTY_ANSWER
        return dialogues


class QaPairsGenerator:
    """kind ``qa_pairs`` (LLaVA-1.5's): one request per image for ``pairs`` question/answer
    pairs, parsed from the reply."""

    def __init__(self, name: str, settings: VlmSettings, base_seed: int = 0) -> None:
        self.name = name
        self.settings = settings
        self.base_seed = base_seed
        structured = settings.structured_output
        self.question = settings.structured_question if structured else settings.questions[0]
        self.schema = (
            qa_json_schema(settings.pairs, settings.structured_max_chars) if structured else None
        )

    def prompt(self, backend: GenerationBackend) -> str:
        """The one prompt every image is sent."""
        if self.settings.prompt_format == "chat_template":
            return backend.chat_prompt(chat_messages([self.question], []))
        return llava_prompt(self.settings.prompt_template, self.question)

    def run(
        self, backend: GenerationBackend, images: Sequence[Image.Image], keys: Sequence[str]
    ) -> list[Dialogue]:
        """One :class:`Dialogue` per image (one turn; questions/answers parsed from it)."""
        prompt = self.prompt(backend)
        requests = [
            GenerationRequest(
                prompt=prompt,
                image=image,
                max_new_tokens=self.settings.max_new_tokens,
                json_schema=self.schema,
                seed=request_seed(self.base_seed, key, 0),
            )
            for image, key in zip(images, keys, strict=True)
        ]
        dialogues = []
        for completion in complete_replies(backend, requests):
            dialogue = Dialogue()
            dialogue.add_turn(prompt, completion)
            parsed = parse_qa_pairs(completion.text, expected=self.settings.pairs)
            dialogue.questions, dialogue.answers = parsed.questions, parsed.answers
            dialogue.parse_status = parsed.status
            dialogues.append(dialogue)
        return dialogues


def make_generator(name: str, config: GenerateConfig) -> DialogueGenerator | QaPairsGenerator:
    """The generator called ``name`` (``blip2``, ``llava`` or an entry of ``generate.vlms``),
    of its configured kind."""
    settings = generator_entry(name, config)
    kind = DialogueGenerator if settings.kind == "dialogue" else QaPairsGenerator
    return kind(name, settings, config.sampling.seed)
