"""Settings of a generation job, split by what they change: science vs machine.

- :class:`GenerateConfig`, the science: the ``generate`` section of the workflow config
  (``workflow/schemas/config.schema.yaml`` describes the same keys with the same defaults). It
  decides the rows: models, prompts, sampling, token budgets, dtype, image preprocessing. The
  rule passes it as ``--params JSON`` (a Snakemake param, so editing it reruns the jobs that
  read it) and :func:`generate_config_from_dict` types it.
- :class:`MachineSettings`, the machine: how a job runs on the node it got (backend, chunking,
  batch sizes, KV-cache memory, parallelism, decode workers). These are rule ``resources:`` and
  ``threads:`` with defaults in ``workflow/rules/generate.smk``, overridable in a profile with
  ``set-resources`` / ``set-threads``, and handed to ``dialogclip generate-dialogue`` as
  command-line flags (:data:`MACHINE_FLAGS`). Snakemake never reruns a job for a resource, so
  tuning them never redoes a finished shard. None of them changes a row beyond floating-point
  rounding: the two backends and any batch size give identical greedy token ids at float32
  (tests/generate/test_generate_parity.py); the dtype, which does change them, is science.

The runner stores the science in every dialogue shard's Parquet metadata and the machine
settings in the shard's stats JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dialogclip.core.config import ConfigError, section_from_dict

# The thesis' two generators, each with its own config section (generate.blip2, generate.llava);
# any other generator is an entry of generate.vlms (:class:`VlmSettings`).
BUILTIN_GENERATORS = ("blip2", "llava")
GENERATORS = BUILTIN_GENERATORS  # the default of generate.generators
KINDS = ("dialogue", "qa_pairs")
PROMPT_FORMATS = ("chat_template", "template")
BACKENDS = ("auto", "vllm", "transformers")
DTYPES = ("auto", "float32", "bfloat16", "float16")

# METHOD.md section 3: the thesis' BLIP-2 questions, asked in sequence.
BLIP2_QUESTIONS = ("What do you see in this image?", "What makes this image unique?")
# An earlier BLIP-2 turn inside a later prompt, as BLIP-2's own multi-turn example writes it
# (salesforce/LAVIS projects/blip2/README.md at 2e96b27: template "Question: {} Answer: {}.",
# turns joined by a space): turn 2 reads "Question: q1 Answer: a1. Question: q2 Answer:".
BLIP2_CONTEXT_TEMPLATE = "Question: {question} Answer: {answer}."

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


# --- science: the `generate` section (rule params) ---------------------------------------------


@dataclass(frozen=True)
class Blip2Settings:
    """BLIP-2: a dialogue of len(questions) turns, each turn seeing the earlier ones."""

    model: str = "Salesforce/blip2-opt-2.7b"  # hub id or local directory
    revision: str | None = None  # hub commit a hub model is pinned to (None: a local checkpoint)
    questions: list[str] = field(default_factory=lambda: list(BLIP2_QUESTIONS))
    prompt_template: str = "Question: {question} Answer:"  # BLIP-2 OPT prompt form
    # An earlier turn (question + its answer) in the prompt of a later turn; turns are joined
    # by a space, the current question follows in prompt_template.
    context_template: str = BLIP2_CONTEXT_TEMPLATE
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


LLAVA_PAIRS = 3  # "three fundamental questions" (METHOD.md section 3)


@dataclass(frozen=True)
class VlmSettings:
    """A generator configured by data (an entry of ``generate.vlms``, or the thesis' two as
    :func:`generator_entry` reads them): the model, what kind of exchange it holds, the
    questions it is asked and how a prompt is written around them.

    kind ``dialogue``: one turn per question, each turn's prompt holding the earlier questions
    and answers (BLIP-2's form); ``qa_pairs``: one request per image whose reply holds ``pairs``
    question/answer pairs (LLaVA's form), parsed by :mod:`dialogclip.generate.parsing`.
    prompt_format ``chat_template``: the model's own chat template (its processor's
    ``apply_chat_template``: image and question in a user message, earlier turns as user and
    assistant messages); ``template``: ``prompt_template`` around the current question and, in
    a dialogue, ``context_template`` for each earlier turn, joined by spaces (the defaults are
    BLIP-2's LAVIS form, "Question: q1 Answer: a1. Question: q2 Answer:").
    """

    model: str  # hub id or local directory
    kind: str  # dialogue | qa_pairs
    questions: list[str]  # dialogue: asked in turn; qa_pairs: the one request
    revision: str | None = None  # hub commit a hub model is pinned to (None: a local checkpoint)
    prompt_format: str = "chat_template"  # chat_template | template
    prompt_template: str = "Question: {question} Answer:"  # template format only
    context_template: str = BLIP2_CONTEXT_TEMPLATE  # template format, dialogue kind only
    max_new_tokens: int = 256  # per reply
    pairs: int = LLAVA_PAIRS  # qa_pairs: the pairs a reply must hold
    # qa_pairs: constrain decoding to a JSON list of exactly `pairs` {question, answer} objects,
    # asking structured_question instead of the question.
    structured_output: bool = False
    structured_question: str = LLAVA_STRUCTURED_QUESTION
    structured_max_chars: int = 300  # maxLength of each question/answer string in the schema

    def problems(self, where: str) -> list[str]:
        """What is wrong with this entry, each naming ``where`` (its config key)."""
        problems = []
        if self.kind not in KINDS:
            problems.append(f"{where}.kind must be one of {KINDS}, got {self.kind!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            problems.append(
                f"{where}.prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}"
            )
        if not self.questions:
            problems.append(f"{where}.questions must not be empty")
        if self.kind == "qa_pairs" and len(self.questions) != 1:
            problems.append(f"{where}.questions: a qa_pairs generator asks exactly one question")
        if self.kind == "dialogue" and self.structured_output:
            problems.append(f"{where}.structured_output needs kind qa_pairs")
        if self.prompt_format == "template" and "{question}" not in self.prompt_template:
            problems.append(f"{where}.prompt_template must contain '{{question}}'")
        context = self.context_template
        if (
            self.prompt_format == "template"
            and self.kind == "dialogue"
            and ("{question}" not in context or "{answer}" not in context)
        ):
            problems.append(
                f"{where}.context_template must contain '{{question}}' and '{{answer}}'"
            )
        if self.max_new_tokens < 1 or self.pairs < 1:
            problems.append(f"{where}.max_new_tokens and {where}.pairs must be >= 1")
        return problems


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding, shared by both generators and both backends."""

    temperature: float = 0.0  # 0 = greedy (deterministic; what resume equality relies on)
    top_p: float = 1.0
    seed: int = 0  # engine seed; sampled requests also get a per-image seed derived from it


@dataclass(frozen=True)
class DecodeSettings:
    """Image preprocessing before the model's own processor (what the model is shown)."""

    shortest_side: int | None = 512  # downscale larger images to this shorter side (None: never)
    min_side: int = 10  # images with a smaller side are recorded as errors
    max_pixels: int = 64_000_000  # larger images are recorded as errors (decompression bombs)


@dataclass(frozen=True)
class GenerateConfig:
    """The ``generate`` section: everything that decides a dialogue shard's rows."""

    generators: list[str] = field(default_factory=lambda: list(GENERATORS))  # which to run
    # Weights/activations of both backends; auto = bfloat16 on CUDA, float32 on CPU.
    dtype: str = "auto"
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    blip2: Blip2Settings = field(default_factory=Blip2Settings)
    llava: LlavaSettings = field(default_factory=LlavaSettings)
    # Further generators configured by data, by name (README, "Bring your own VLM").
    vlms: dict[str, VlmSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = (*BUILTIN_GENERATORS, *self.vlms)
        unknown = [name for name in self.generators if name not in known]
        _check(
            not unknown,
            f"generators {unknown} are neither blip2, llava nor an entry of generate.vlms "
            f"(entries: {sorted(self.vlms)}); add one under generate.vlms or remove the name",
        )
        clash = sorted(set(self.vlms) & set(BUILTIN_GENERATORS))
        _check(not clash, f"vlms: {clash} name the built-in generators; choose another name")
        for name, entry in self.vlms.items():
            problems = entry.problems(f"vlms.{name}")
            _check(not problems, "; ".join(problems))
        _check(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        _check(len(self.blip2.questions) >= 1, "blip2.questions must not be empty")
        _check(self.sampling.temperature >= 0, "sampling.temperature must be >= 0")
        for name, template in (
            ("blip2.prompt_template", self.blip2.prompt_template),
            ("llava.prompt_template", self.llava.prompt_template),
        ):
            _check("{question}" in template, f"{name} must contain '{{question}}'")
        _check(
            "{question}" in self.blip2.context_template
            and "{answer}" in self.blip2.context_template,
            "blip2.context_template must contain '{question}' and '{answer}'",
        )


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(f"generate: {message}")


def generate_config_from_dict(data: Mapping[str, Any]) -> GenerateConfig:
    """Build a :class:`GenerateConfig` from the config section (unknown keys raise)."""
    vlms = data.get("vlms") or {}
    if not isinstance(vlms, Mapping):
        raise ConfigError("generate.vlms must map generator names to their settings")
    typed = {
        name: section_from_dict(VlmSettings, entry, f"generate.vlms.{name}")
        for name, entry in vlms.items()
    }
    return section_from_dict(GenerateConfig, {**data, "vlms": typed}, "generate")


def generator_entry(name: str, config: GenerateConfig) -> VlmSettings:
    """Generator ``name`` as a :class:`VlmSettings` entry: an entry of ``generate.vlms``, or one
    of the thesis' two in that form (BLIP-2: a ``dialogue`` in the LAVIS template; LLaVA-1.5:
    ``qa_pairs`` in its ``USER: <image>...`` template), with exactly their prompts."""
    if name == "blip2":
        blip2 = config.blip2
        return VlmSettings(
            model=blip2.model,
            revision=blip2.revision,
            kind="dialogue",
            questions=list(blip2.questions),
            prompt_format="template",
            prompt_template=blip2.prompt_template,
            context_template=blip2.context_template,
            max_new_tokens=blip2.max_new_tokens,
        )
    if name == "llava":
        llava = config.llava
        return VlmSettings(
            model=llava.model,
            revision=llava.revision,
            kind="qa_pairs",
            questions=[llava.question],
            prompt_format="template",
            prompt_template=llava.prompt_template,
            max_new_tokens=llava.max_new_tokens,
            pairs=LLAVA_PAIRS,
            structured_output=llava.structured_output,
            structured_question=llava.structured_question,
            structured_max_chars=llava.structured_max_chars,
        )
    if name in config.vlms:
        return config.vlms[name]
    raise ConfigError(
        f"generator {name!r} is neither blip2, llava nor an entry of generate.vlms "
        f"(entries: {sorted(config.vlms)})"
    )


def generator_settings(
    name: str, config: GenerateConfig
) -> Blip2Settings | LlavaSettings | VlmSettings:
    """The config section of generator ``name`` as written (``generate.blip2``,
    ``generate.llava`` or ``generate.vlms.<name>``): what a shard's metadata records."""
    if name == "blip2":
        return config.blip2
    if name == "llava":
        return config.llava
    return generator_entry(name, config)


# --- machine: rule resources/threads (command-line flags) --------------------------------------


@dataclass(frozen=True)
class VllmSettings:
    """Memory and parallelism of the offline ``vllm.LLM`` engine (one engine per job)."""

    gpu_memory_utilization: float = 0.9  # fraction of GPU memory for weights + KV cache
    # KV cache size; None = from the fraction above on GPU, 1 GiB on CPU (vllm_backend.py)
    kv_cache_memory_bytes: int | None = None
    max_model_len: int | None = None  # context length; None = the model's own
    max_num_seqs: int = 256  # sequences decoded together at most
    tensor_parallel_size: int = 1  # GPUs one engine spans
    # No torch.compile / CUDA graphs. None: eager on CPU (compiling there costs every job
    # 6-40 s and gained nothing measurable), compiled with CUDA graphs on GPU.
    enforce_eager: bool | None = None
    # None: vLLM's choice on GPU; on CPU "uni", the engine in the job's own process.
    distributed_executor_backend: str | None = None


@dataclass(frozen=True)
class TransformersSettings:
    """The transformers ``generate`` backend (the CPU path)."""

    batch_size: int = 8  # images per generate call
    device: str = "auto"  # auto = cuda when available, else cpu


@dataclass(frozen=True)
class MachineSettings:
    """How one job runs on its node; never part of what the rows are."""

    backend: str = "auto"  # auto = vllm when CUDA and vLLM are present, else transformers
    chunk_size: int = 512  # images per persisted chunk (the unit of resume)
    threads: int | None = None  # CPU threads of the job (torch, decode pool); None = all
    decode_workers: int | None = None  # image-decode threads; None = threads
    prefetch_chunks: int = 1  # chunks decoded ahead of the one being generated
    vllm: VllmSettings = field(default_factory=VllmSettings)
    transformers: TransformersSettings = field(default_factory=TransformersSettings)

    def __post_init__(self) -> None:
        checks = (
            (self.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {self.backend!r}"),
            (self.chunk_size >= 1, "chunk_size must be >= 1"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1"),
            (
                self.decode_workers is None or self.decode_workers >= 1,
                "decode_workers must be >= 1",
            ),
            (self.prefetch_chunks >= 0, "prefetch_chunks must be >= 0"),
            (self.transformers.batch_size >= 1, "transformers_batch_size must be >= 1"),
            (
                0 < self.vllm.gpu_memory_utilization <= 1,
                "vllm_gpu_memory_percent must be in 1..100",
            ),
            (self.vllm.max_num_seqs >= 1, "vllm_max_num_seqs must be >= 1"),
            (self.vllm.tensor_parallel_size >= 1, "vllm_tensor_parallel_size must be >= 1"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"generation machine setting: {message}")


@dataclass(frozen=True)
class MachineFlag:
    """One machine setting: the rule resource of that name, the command-line flag
    ``--<name with dashes>``, its default (also the rule's) and what it means."""

    name: str
    default: int | str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# Snakemake resources hold ints and strings (a float is rounded to an int), so a memory fraction
# is a percent and "unset" is 0 or "auto". The rule generate (both generators) declares every one
# of these with this default and passes it on the shell line.
MACHINE_FLAGS = (
    MachineFlag("backend", "auto", "vllm, transformers, or auto (vllm when CUDA and vLLM exist)"),
    MachineFlag("chunk_size", 512, "images per persisted chunk, the unit of resume"),
    MachineFlag("decode_workers", 0, "image-decode threads (0 = the job's threads)"),
    MachineFlag("prefetch_chunks", 1, "chunks decoded ahead of the one being generated"),
    MachineFlag("transformers_batch_size", 8, "transformers backend: images per generate call"),
    MachineFlag("transformers_device", "auto", "transformers backend: cuda, cpu, or auto"),
    MachineFlag("vllm_gpu_memory_percent", 90, "vLLM: percent of GPU memory it may use"),
    MachineFlag(
        "vllm_kv_cache_mib", 0, "vLLM: KV cache size in MiB (0 = from the percent; CPU: 1024)"
    ),
    MachineFlag("vllm_max_model_len", 0, "vLLM: context length (0 = the model's own)"),
    MachineFlag("vllm_max_num_seqs", 256, "vLLM: sequences decoded together at most"),
    MachineFlag("vllm_tensor_parallel_size", 1, "vLLM: GPUs one engine spans"),
    MachineFlag(
        "vllm_enforce_eager",
        "auto",
        "vLLM: 1 = eager (no torch.compile, no CUDA graphs), 0 = compiled, auto = eager on CPU",
    ),
    MachineFlag(
        "vllm_executor", "auto", "vLLM: executor (uni, mp, ray; auto = uni on CPU, vLLM's on GPU)"
    ),
)


def machine_settings(threads: int | None = None, **values: Any) -> MachineSettings:
    """:class:`MachineSettings` from the flag values of :data:`MACHINE_FLAGS` (missing ones take
    their defaults); unknown names raise naming them."""
    known = {flag.name: flag.default for flag in MACHINE_FLAGS}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown generation machine setting(s) {unknown}; known: {sorted(known)}"
        )
    v = {**known, **values}
    executor = str(v["vllm_executor"])
    eager = str(v["vllm_enforce_eager"])
    if eager not in ("auto", "0", "1"):
        raise ConfigError(f"vllm_enforce_eager must be auto, 0 or 1, got {eager!r}")
    return MachineSettings(
        backend=str(v["backend"]),
        chunk_size=int(v["chunk_size"]),
        threads=threads or None,
        decode_workers=int(v["decode_workers"]) or None,
        prefetch_chunks=int(v["prefetch_chunks"]),
        vllm=VllmSettings(
            gpu_memory_utilization=int(v["vllm_gpu_memory_percent"]) / 100,
            kv_cache_memory_bytes=int(v["vllm_kv_cache_mib"]) * 2**20 or None,
            max_model_len=int(v["vllm_max_model_len"]) or None,
            max_num_seqs=int(v["vllm_max_num_seqs"]),
            tensor_parallel_size=int(v["vllm_tensor_parallel_size"]),
            enforce_eager=None if eager == "auto" else eager == "1",
            distributed_executor_backend=None if executor == "auto" else executor,
        ),
        transformers=TransformersSettings(
            batch_size=int(v["transformers_batch_size"]),
            device=str(v["transformers_device"]),
        ),
    )
