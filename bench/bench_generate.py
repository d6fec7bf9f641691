"""CPU benchmark of the generate stage on the tiny models.

Measures, in one run on this machine:

1. ``throughput`` (warm engine): images/s of each backend (transformers ``generate``, vLLM
   in-process on CPU) for both generators, through the stage's own runner (decode pool, chunks,
   Parquet writing), the engine built once and reused; the transformers figure is the baseline
   the vLLM ratio is computed against;
2. ``chunked_overhead``: chunked resumable processing (``generate_shard``: input hash, chunk
   files written atomically then assembled, stats) against a single pass over the same images
   with the same warm engine (decode all, generate all, write the shard once); target <= 5 %;
3. ``job`` (cold): what a workflow job does, ``dialogclip generate-dialogue`` in a fresh process
   with the config's default engine settings: imports, engine start, the chunks, shutdown. The
   job's stats split its time (``timing.engine_start_s``, ``chunk_busy_s``, ...); the process
   wall time gives the job's real images/s. ``--job-variants vllm-mp-compiled`` adds vLLM's own
   CPU defaults (engine-core and worker processes, torch.compile) for comparison.

Every engine runs with ``--threads`` compute threads (the job's ``threads``). On a machine whose
cores other processes also use, more than one thread makes every OpenMP region of the CPU kernels
wait for a descheduled partner thread (per-chunk CPU time x30-40, wall time x100 measured here):
the figures then say more about the machine's load than about the code, hence the load averages
recorded beside them.

Repetitions are interleaved (single, chunked, single, ...) and medians reported, because other
processes share the machine. The tiny models are small, so fixed per-chunk costs weigh far more
here than beside a 7B model on a GPU: the overhead measured here is an upper bound.

Run: ``.venv/bin/python bench/bench_generate.py`` -> ``bench/results/bench_generate.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# vLLM on CPU, in-process and offline (docs/architecture.md, "vLLM on CPU"); set before vllm
# is imported.
for _name, _value in {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}.items():
    os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from dialogclip.core.io import read_json, write_json_atomic, write_parquet_atomic  # noqa: E402
from dialogclip.core.logging import setup_logging  # noqa: E402
from dialogclip.generate.backend import GenerationBackend  # noqa: E402
from dialogclip.generate.config import (  # noqa: E402
    GenerateConfig,
    MachineSettings,
    SamplingSettings,
    TransformersSettings,
    VllmSettings,
    generate_config_from_dict,
)
from dialogclip.generate.generators import generator_settings, make_generator  # noqa: E402
from dialogclip.generate.images import decode_image  # noqa: E402
from dialogclip.generate.provenance import output_metadata  # noqa: E402
from dialogclip.generate.runner import generate_shard  # noqa: E402
from dialogclip.generate.schema import RowContext, dialogue_row, error_row, rows_to_table  # noqa: E402
from dialogclip.generate.shard_plan import read_ingested_shard  # noqa: E402
from dialogclip.world.tiny_models import build_tiny_models  # noqa: E402

log = logging.getLogger("bench_generate")

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out" / "generate"
DECODE_WORKERS = 2
RESULT = ROOT / "results" / "bench_generate.json"


def make_shard(path: Path, n_images: int) -> Path:
    """An ingested shard of ``n_images`` 256x192 JPEGs (img2dataset's typical output size)."""
    rows = []
    for i in range(n_images):
        rng = np.random.default_rng(i)
        # Smooth-ish content so JPEG sizes resemble photos rather than pure noise.
        base = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((256, 192), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        rows.append(
            {
                "key": f"{i:09d}",
                "url": f"http://bench.invalid/{i}.jpg",
                "caption": "unused",
                "status": "success",
                "jpg": buffer.getvalue(),
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def single_pass(
    shard: Path, output: Path, generator: str, config: GenerateConfig, backend: GenerationBackend
) -> float:
    """The same work without resumability: decode all, generate all, write the shard once."""
    started = time.perf_counter()
    rows = read_ingested_shard(shard)
    with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
        decoded = list(pool.map(lambda data: decode_image(data, config.decode), rows.images))
    settings = generator_settings(generator, config)
    ctx = RowContext(generator, settings.model, settings.revision, backend.name)
    usable = [i for i, item in enumerate(decoded) if item.image is not None]
    dialogues = make_generator(generator, config).run(
        backend, [decoded[i].image for i in usable], [rows.keys[i] for i in usable]
    )
    by_position = dict(zip(usable, dialogues, strict=True))
    table = rows_to_table(
        [
            dialogue_row(rows.keys[i], rows.urls[i], by_position[i], ctx)
            if i in by_position
            else error_row(rows.keys[i], rows.urls[i], decoded[i].error or "", ctx)
            for i in range(len(decoded))
        ]
    )
    write_parquet_atomic(table, output, output_metadata(generator, backend.target, config))
    return time.perf_counter() - started


def chunked(
    shard: Path,
    out_dir: Path,
    generator: str,
    config: GenerateConfig,
    backend: GenerationBackend,
    chunk_size: int,
) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    stats = generate_shard(
        shard,
        out_dir / "shard.parquet",
        out_dir / "stats.json",
        out_dir / ".chunks",
        generator,
        config,
        backend=backend,
        machine=MachineSettings(chunk_size=chunk_size, decode_workers=DECODE_WORKERS),
    )
    return time.perf_counter() - started, stats


def make_backend(name: str, generator: str, model: str) -> tuple[GenerationBackend, float]:
    started = time.perf_counter()
    if name == "vllm":
        from dialogclip.generate.vllm_backend import VllmBackend

        # The job's CPU defaults (in-process, eager), a smaller KV cache, float32 by "auto".
        settings = VllmSettings(kv_cache_memory_bytes=256 << 20, max_num_seqs=32)
        backend: GenerationBackend = VllmBackend(model, None, settings, SamplingSettings())
    else:
        from dialogclip.generate.hf_backend import TransformersBackend

        settings_hf = TransformersSettings(batch_size=8, device="cpu")  # auto: float32
        backend = TransformersBackend(generator, model, None, settings_hf, SamplingSettings())
    return backend, time.perf_counter() - started


# Job variants: the machine flags of the job (the rules' resources; the rest keep their
# defaults, as in the workflow).
JOB_VARIANTS: dict[str, dict[str, str]] = {
    "transformers": {"backend": "transformers"},
    "vllm": {"backend": "vllm"},  # the CPU defaults of vllm_backend.py
    # vLLM's own CPU defaults: engine core and worker processes, torch.compile at every start.
    "vllm-mp-compiled": {"backend": "vllm", "vllm_executor": "mp", "vllm_enforce_eager": "0"},
}
# Variables a developer's shell or the test suite may set: a job must run on its own defaults.
JOB_ENV_DROPPED = ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS")


def run_job(
    variant: str, generator: str, shard: Path, params: dict[str, Any], machine: dict[str, Any]
) -> dict[str, Any]:
    """One cold ``dialogclip generate-dialogue`` job; its wall time and its stats' timings.

    ``params``: the generate section; ``machine``: flags (``threads`` and MACHINE_FLAGS names).
    """
    flags = {**machine, **JOB_VARIANTS[variant]}
    out = OUT / "job" / f"{variant}-{generator}"
    command = [
        sys.executable, "-m", "dialogclip.cli", "generate-dialogue",
        "--generator", generator, "--shard", str(shard),
        "--output", str(out / "shard.parquet"), "--stats", str(out / "stats.json"),
        "--work-dir", str(out / ".chunks"), "--params", json.dumps(params),
    ]  # fmt: skip
    for name, value in flags.items():
        command += ["--" + name.replace("_", "-"), str(value)]
    env = {key: value for key, value in os.environ.items() if key not in JOB_ENV_DROPPED}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"job {variant}/{generator} failed:\n{result.stderr[-3000:]}")
    stats = read_json(out / "stats.json")
    timing = stats["timing"]
    chunks = timing["engine_busy_s"] + timing["engine_wait_s"]
    images = timing["images_generated"]
    return {
        "variant": variant,
        "generator": generator,
        "images": images,
        "threads": flags["threads"],
        "job_wall_s": round(wall, 2),
        "job_images_per_s": round(images / wall, 3),
        "engine_start_s": timing["engine_start_s"],
        "chunks_s": round(chunks, 3),
        "chunk_busy_s": timing["chunk_busy_s"],
        "chunk_images_per_s": timing["images_per_s"],
        "engine_close_s": timing["engine_close_s"],
        # Interpreter start, imports (torch, vLLM), reading the shard, writing the outputs.
        "other_s": round(
            wall - timing["engine_start_s"] - chunks - (timing["engine_close_s"] or 0), 2
        ),
        "engine_start_fraction": round(timing["engine_start_s"] / wall, 3),
        "engine": stats["engine"],
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backends", nargs="+", default=["transformers", "vllm"])
    parser.add_argument("--threads", type=int, default=1, help="compute threads of each engine")
    parser.add_argument("--job-images", type=int, default=64, help="images of the cold jobs")
    parser.add_argument("--job-chunk-size", type=int, default=8, help="the demo's chunk size")
    parser.add_argument("--job-repeats", type=int, default=2)
    parser.add_argument(
        "--job-variants", nargs="*", default=["transformers", "vllm"], choices=list(JOB_VARIANTS)
    )
    parser.add_argument("--skip-warm", action="store_true", help="measure the cold jobs only")
    args = parser.parse_args()
    setup_logging("WARNING")
    log.setLevel("INFO")
    import torch

    torch.set_num_threads(args.threads)

    models = OUT / "tiny"
    if not (models / "llava" / "config.json").exists():
        build_tiny_models(models)
    shard = make_shard(OUT / "shard.parquet", args.images)
    base = {
        "blip2": {"model": str(models / "blip2"), "max_new_tokens": 16},
        "llava": {"model": str(models / "llava"), "max_new_tokens": 48},
    }
    throughput, overhead = [], []
    for backend_name in [] if args.skip_warm else args.backends:
        for generator in ("blip2", "llava"):
            config = generate_config_from_dict(base)
            backend, start_s = make_backend(backend_name, generator, base[generator]["model"])
            # Warm-up outside the timings: first calls pay allocations and, on CPU, one kernel
            # selection per new tensor shape (different for each batching pattern).
            for _ in range(2):
                single_pass(shard, OUT / "single.parquet", generator, config, backend)
                chunked(shard, OUT / "warmup", generator, config, backend, args.chunk_size)
            single_times, chunk_times, waits, rates = [], [], [], []
            for _ in range(args.repeats):
                single_times.append(
                    single_pass(shard, OUT / "single.parquet", generator, config, backend)
                )
                wall, stats = chunked(
                    shard, OUT / "chunked", generator, config, backend, args.chunk_size
                )
                chunk_times.append(wall)
                waits.append(stats["timing"]["engine_wait_fraction"])
                rates.append(stats["timing"]["images_per_s"])
            backend.close()
            single_s, chunked_s = statistics.median(single_times), statistics.median(chunk_times)
            throughput.append(
                {
                    "backend": backend_name,
                    "generator": generator,
                    "images": args.images,
                    "images_per_s": round(args.images / chunked_s, 2),
                    "engine_images_per_s": round(statistics.median(rates), 2),
                    "engine_start_s": round(start_s, 2),
                    "engine_wait_fraction": round(statistics.median(waits), 4),
                    "generated_tokens_per_image": stats["tokens"]["generated_per_image"],
                }
            )
            overhead.append(
                {
                    "backend": backend_name,
                    "generator": generator,
                    "single_pass_s": round(single_s, 3),
                    "chunked_s": round(chunked_s, 3),
                    "chunks": stats["chunks"]["total"],
                    "ratio": round(chunked_s / single_s, 4),
                    "overhead_pct": round(100 * (chunked_s / single_s - 1), 2),
                    "overhead_pct_of_minima": round(
                        100 * (min(chunk_times) / min(single_times) - 1), 2
                    ),
                    "runs_single_s": [round(t, 3) for t in single_times],
                    "runs_chunked_s": [round(t, 3) for t in chunk_times],
                }
            )
            log.info("%s", throughput[-1])
            log.info("%s", overhead[-1])

    # Cold jobs as the workflow runs them, the demo's LLaVA settings (structured output).
    job_shard = make_shard(OUT / "job-shard.parquet", args.job_images)
    job_machine = {"threads": args.threads, "chunk_size": args.job_chunk_size}
    job_base = {
        "blip2": {"model": str(models / "blip2"), "max_new_tokens": 12},
        "llava": {
            "model": str(models / "llava"),
            "max_new_tokens": 160,
            "structured_output": True,
            "structured_max_chars": 16,
        },
    }
    jobs = []
    for _ in range(args.job_repeats):
        for variant in args.job_variants:
            for generator in ("blip2", "llava"):
                jobs.append(run_job(variant, generator, job_shard, job_base, job_machine))
                log.info("%s", {k: v for k, v in jobs[-1].items() if k != "engine"})

    by_key = {(row["backend"], row["generator"]): row["images_per_s"] for row in throughput}
    ratios = {
        generator: round(by_key[("vllm", generator)] / by_key[("transformers", generator)], 3)
        for generator in ("blip2", "llava")
        if ("vllm", generator) in by_key and ("transformers", generator) in by_key
    }
    result = {
        "benchmark": "generate stage on the tiny models (CPU)",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "images": args.images,
            "chunk_size": args.chunk_size,
            "repeats": args.repeats,
            "threads": args.threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "max_new_tokens": {"blip2": 16, "llava": 48},
            "dtype": "auto (float32 on CPU)",
            "image_size": [256, 192],
            "job": {
                "images": args.job_images,
                "chunk_size": args.job_chunk_size,
                "repeats": args.job_repeats,
                "params": job_base,
                "machine": job_machine,
            },
        },
        "throughput": throughput,
        "vllm_over_transformers": ratios,
        "chunked_overhead": overhead,
        "chunked_overhead_target_pct": 5.0,
        "chunked_overhead_max_pct": max((row["overhead_pct"] for row in overhead), default=None),
        "job": jobs,
        "job_summary": summarize_jobs(jobs),
    }
    write_json_atomic(result, RESULT)
    log.info("written %s", RESULT)
    return 0


def summarize_jobs(jobs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Medians per (variant, generator) of the cold jobs' figures."""
    summary: dict[str, dict[str, float]] = {}
    for key in sorted({(job["variant"], job["generator"]) for job in jobs}):
        runs = [job for job in jobs if (job["variant"], job["generator"]) == key]
        summary["/".join(key)] = {
            name: round(statistics.median(job[name] for job in runs), 3)
            for name in (
                "job_wall_s",
                "job_images_per_s",
                "engine_start_s",
                "chunks_s",
                "chunk_images_per_s",
                "other_s",
            )
        }
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
