"""The ``generate`` section of the workflow config as typed, documented dataclasses.

The JSON schema (``workflow/schemas/config.schema.yaml``, section ``generate``) describes the
same keys with the same defaults; the rule passes the section to ``dialogclip generate-dialogue``
as ``--params JSON`` and :func:`generate_config_from_dict` turns it into a :class:`GenerateConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dialogclip.core.config import ConfigError, section_from_dict

GENERATORS = ("blip2", "llava")
BACKENDS = ("auto", "vllm", "transformers")

# METHOD.md section 3: the thesis' BLIP-2 questions, asked in sequence.
BLIP2_QUESTIONS = ("What do you see in this image?", "What makes this image unique?")

# The thesis asks LLaVA for "three fundamental questions" without giving the wording (choice).
LLAVA_QUESTION = (
    "Ask three fundamental questions about the content of this image and answer each of them. "
    "Use exactly this format:\nQ1: <question>\nA1: <answer>\nQ2: <question>\nA2: <answer>\n"
    "Q3: <question>\nA3: <answer>"
)
LLAVA_STRUCTURED_QUESTION = (
    "Ask three fundamental questions about the content of this image and answer each of them. "
    'Reply with a JSON list of three objects with the keys "question" and "answer".'
)


@dataclass(frozen=True)
class Blip2Settings:
    """BLIP-2: a dialogue of len(questions) turns, each turn seeing the earlier ones."""

    model: str = "Salesforce/blip2-opt-2.7b"  # hub id or local directory
    revision: str | None = None  # hub branch/tag/commit; None = the default branch
    questions: list[str] = field(default_factory=lambda: list(BLIP2_QUESTIONS))
    prompt_template: str = "Question: {question} Answer:"  # BLIP-2 OPT prompt form
    max_new_tokens: int = 40  # per turn


@dataclass(frozen=True)
class LlavaSettings:
    """LLaVA-1.5: one request per image for three question/answer pairs."""

    model: str = "llava-hf/llava-1.5-7b-hf"
    revision: str | None = None
    question: str = LLAVA_QUESTION
    prompt_template: str = "USER: <image>\n{question} ASSISTANT:"  # llava-1.5 chat form
    max_new_tokens: int = 256
    # Constrain decoding to a JSON list of exactly three {question, answer} objects.
    structured_output: bool = False
    structured_question: str = LLAVA_STRUCTURED_QUESTION  # asked instead when structured
    structured_max_chars: int = 300  # maxLength of each question/answer string in the schema


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding, shared by both generators and both backends."""

    temperature: float = 0.0  # 0 = greedy (deterministic; what resume equality relies on)
    top_p: float = 1.0
    seed: int = 0  # engine seed; sampled requests also get a per-image seed derived from it


@dataclass(frozen=True)
class DialogueTextSettings:
    """How parsed pairs become the text fed to the text towers."""

    pair_template: str = "Question: {question} Answer: {answer}"
    separator: str = " "  # between pairs in the concatenated form


@dataclass(frozen=True)
class VllmSettings:
    """Arguments of the offline ``vllm.LLM`` engine (one engine per job)."""

    dtype: str = "auto"
    max_model_len: int | None = None  # None = the model's own limit
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    max_num_seqs: int = 256
    # None: eager on CPU (torch.compile there costs every job 6-40 s and gains nothing
    # measurable), compiled with CUDA graphs on GPU.
    enforce_eager: bool | None = None
    # Overrides gpu_memory_utilization when set; None on CPU = 1 GiB (vllm_backend.py).
    kv_cache_memory_bytes: int | None = None
    # None: vLLM's choice on GPU; on CPU "uni", the engine in the job's own process.
    distributed_executor_backend: str | None = None


@dataclass(frozen=True)
class TransformersSettings:
    """The transformers ``generate`` backend (the CPU path)."""

    dtype: str = "auto"  # auto = bfloat16 on CUDA, float32 on CPU
    batch_size: int = 8
    device: str = "auto"  # auto = cuda when available, else cpu


@dataclass(frozen=True)
class DecodeSettings:
    """Image decoding in the background pool."""

    workers: int | None = None  # decode threads; None = the job's threads
    prefetch_chunks: int = 1  # chunks decoded ahead of the one being generated
    shortest_side: int | None = 512  # downscale larger images to this shorter side (None: never)
    min_side: int = 10  # images with a smaller side are recorded as errors
    max_pixels: int = 64_000_000  # larger images are recorded as errors (decompression bombs)


@dataclass(frozen=True)
class GenerateConfig:
    """The whole ``generate`` section."""

    generators: list[str] = field(default_factory=lambda: list(GENERATORS))
    backend: str = "auto"
    chunk_size: int = 512  # images per persisted chunk (the unit of resume)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    dialogue: DialogueTextSettings = field(default_factory=DialogueTextSettings)
    blip2: Blip2Settings = field(default_factory=Blip2Settings)
    llava: LlavaSettings = field(default_factory=LlavaSettings)
    vllm: VllmSettings = field(default_factory=VllmSettings)
    transformers: TransformersSettings = field(default_factory=TransformersSettings)
    decode: DecodeSettings = field(default_factory=DecodeSettings)

    def __post_init__(self) -> None:
        _check(set(self.generators) <= set(GENERATORS), f"generators must be among {GENERATORS}")
        _check(self.backend in BACKENDS, f"backend must be one of {BACKENDS}")
        _check(self.chunk_size >= 1, "chunk_size must be >= 1")
        _check(len(self.blip2.questions) >= 1, "blip2.questions must not be empty")
        _check(self.transformers.batch_size >= 1, "transformers.batch_size must be >= 1")
        _check(self.sampling.temperature >= 0, "sampling.temperature must be >= 0")
        for name, template in (
            ("blip2.prompt_template", self.blip2.prompt_template),
            ("llava.prompt_template", self.llava.prompt_template),
        ):
            _check("{question}" in template, f"{name} must contain '{{question}}'")
        _check(
            "{question}" in self.dialogue.pair_template
            and "{answer}" in self.dialogue.pair_template,
            "dialogue.pair_template must contain '{question}' and '{answer}'",
        )


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(f"generate: {message}")


def generate_config_from_dict(data: Mapping[str, Any]) -> GenerateConfig:
    """Build a :class:`GenerateConfig` from the config section (unknown keys raise)."""
    return section_from_dict(GenerateConfig, data, "generate")
