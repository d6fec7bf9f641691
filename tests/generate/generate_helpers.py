"""Helpers of the generate tests: synthetic images and ingested shards, shared settings."""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dialogclip.generate.backend import (
    Completion,
    EngineTarget,
    GenerationBackend,
    GenerationRequest,
)
from dialogclip.ingest.errors import classify_error
from dialogclip.ingest.shard import SHARD_SCHEMA

CAPTION_MARKER = "zebracaption"  # must never reach a prompt

# Tiny-model settings shared by the tests (the generate section): short replies keep the CPU
# runs quick.
TINY_PARAMS: dict[str, Any] = {
    "dtype": "float32",
    "blip2": {"max_new_tokens": 6},
    "llava": {"max_new_tokens": 24, "structured_max_chars": 12},
}

# The trained world models the demo generates with (docs/world.md), committed.
WORLD_MODELS = Path(__file__).resolve().parents[2] / "resources" / "demo" / "world_models"

# Machine settings of the tests (in the workflow: rule resources passed as command-line flags).
TINY_MACHINE: dict[str, Any] = {
    "backend": "transformers",
    "chunk_size": 3,
    "decode_workers": 2,
    "transformers_batch_size": 4,
}

# dtype stays "auto": float32 on CPU, as in the transformers backend.
VLLM_CPU_ENGINE: dict[str, Any] = {
    "enforce_eager": True,
    "kv_cache_memory_bytes": 64 << 20,
    "distributed_executor_backend": "uni",
    "max_num_seqs": 8,
}


# --- synthetic images ----------------------------------------------------------------------


def noise_image(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    """Seeded random pixels (width, height) in ``mode``."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2, "CMYK": 4}[mode]
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode=mode)


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def jpeg_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    return encode(noise_image(seed, size), "JPEG", quality=90)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data): a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def bad_images() -> dict[str, bytes]:
    """One encoded image per awkward case the decoder must survive."""
    sixteen_bit = Image.fromarray(
        (np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16)
    )
    palette = noise_image(5).convert("P")
    palette.info["transparency"] = 0
    return {
        "truncated": jpeg_bytes(1)[:300],
        "truncated_late": jpeg_bytes(8, size=(64, 64))[:-400],
        "cmyk": encode(noise_image(2, mode="CMYK"), "JPEG"),
        "rgba": encode(noise_image(3, mode="RGBA"), "PNG"),
        "grayscale": encode(noise_image(4, mode="L"), "PNG"),
        "palette_transparent": encode(palette, "PNG", transparency=0),
        "one_pixel": encode(noise_image(6, size=(1, 1)), "PNG"),
        "huge_header": png_header_only(20000, 20000),
        "large": encode(noise_image(7, size=(2400, 1800)), "JPEG", quality=70),
        "sixteen_bit": encode(sixteen_bit, "PNG"),
        "not_an_image": b"<html>404 not found</html>",
        "empty": b"",
    }


# --- ingested shards -----------------------------------------------------------------------


def ingest_row(index: int, jpg: bytes | None, status: str = "success") -> dict[str, Any]:
    """A row of an ingested shard as the ingestion stage writes it (its ``SHARD_SCHEMA``)."""
    message = None if status == "success" else "HTTP Error 404: Not Found"
    return {
        "key": f"{index:09d}",
        "url": f"http://example.invalid/{index}.jpg",
        "caption": f"{CAPTION_MARKER} number {index}",
        "status": status,
        "error_kind": classify_error(status, message),
        "error_message": message,
        "width": 48,
        "height": 40,
        "original_width": 48,
        "original_height": 40,
        "sha256": None,
        "jpg": jpg if status == "success" else None,
        "attempts": 1,
    }


def write_shard(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), path)
    return path


def mixed_rows(n_good: int = 7) -> list[dict[str, Any]]:
    """Good images, failed downloads and every bad-image case, interleaved."""
    rows = []
    index = 0
    for i in range(n_good):
        rows.append(ingest_row(index, jpeg_bytes(100 + i)))
        index += 1
        if i % 3 == 1:
            rows.append(ingest_row(index, None, status="failed_to_download"))
            index += 1
    for data in bad_images().values():
        rows.append(ingest_row(index, data))
        index += 1
    return rows


# --- the job's command line ----------------------------------------------------------------


def blip2_command(shard: Path, out: Path, params: dict, *flags: str) -> list[str]:
    """``dialogclip generate-dialogue`` as the rule runs it, for BLIP-2 on ``shard`` into
    ``out`` (``out/<shard name>.parquet``, stats under ``out/stats``, chunks under
    ``out/.chunks``): transformers backend, chunks of 2 images, 1 thread (the same float
    reductions in every run), then ``flags`` (a later flag wins)."""
    name = shard.stem
    return [
        sys.executable,
        "-m",
        "dialogclip.cli",
        "generate-dialogue",
        "--generator",
        "blip2",
        "--shard",
        str(shard),
        "--output",
        str(out / f"{name}.parquet"),
        "--stats",
        str(out / "stats" / f"{name}.json"),
        "--work-dir",
        str(out / ".chunks" / name),
        "--threads",
        "1",
        "--params",
        json.dumps(params),
        "--backend",
        "transformers",
        "--chunk-size",
        "2",
        "--transformers-batch-size",
        "4",
        *flags,
    ]


# --- backend parity (test_generate_parity.py, test_generate_qwen2vl.py) ------------------------

PARITY_IMAGES = [noise_image(seed, size=(40 + 4 * seed, 36)) for seed in range(8)]
PARITY_KEYS = [f"{i:09d}" for i in range(len(PARITY_IMAGES))]


class Recording(GenerationBackend):
    """Passes requests to a real backend and keeps every request/completion pair."""

    def __init__(self, inner: GenerationBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[GenerationRequest, Completion]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        completions = self.inner.generate(requests)
        self.calls.extend(zip(requests, completions, strict=True))
        return completions

    def chat_prompt(self, messages: Any) -> str:
        return self.inner.chat_prompt(messages)

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()

    @property
    def target(self) -> EngineTarget:
        return self.inner.target


def run_both(
    name: str,
    config: Any,
    hf: GenerationBackend,
    vllm: GenerationBackend,
    images: Sequence[Any] = PARITY_IMAGES,
    keys: Sequence[str] = PARITY_KEYS,
):
    """Generator ``name`` of ``config`` on ``images`` through each backend: per backend, the
    (request, completion) calls and the dialogues (transformers first, vLLM second)."""
    from dialogclip.generate.generators import make_generator

    runs = {}
    for backend in (hf, vllm):
        recording = Recording(backend)
        dialogues = make_generator(name, config).run(recording, images, keys)
        runs[backend.name] = (recording.calls, dialogues)
    return runs["transformers"], runs["vllm"]


def assert_identical(hf_calls, vllm_calls) -> None:
    """The same prompts, token ids, texts, finish reasons and prompt lengths, call by call."""
    assert len(hf_calls) == len(vllm_calls)
    for (hf_request, hf_out), (vllm_request, vllm_out) in zip(hf_calls, vllm_calls, strict=True):
        assert hf_request.prompt == vllm_request.prompt
        assert hf_out.token_ids == vllm_out.token_ids, hf_request.prompt
        assert hf_out.text == vllm_out.text
        assert hf_out.finish_reason == vllm_out.finish_reason
        assert hf_out.prompt_tokens == vllm_out.prompt_tokens


# --- a generator added to a finished demo by config alone --------------------------------------


def add_generator(demo: Path, tmp_path: Path, name: str, entry: dict[str, Any]) -> str:
    """A config file (for --configfile) adding ``entry`` as the generate.vlms generator
    ``name`` to ``demo``'s config and switching it on."""
    import yaml

    config = yaml.safe_load((demo / "config.yaml").read_text())["generate"]
    edit = {"generate": {"generators": [*config["generators"], name], "vlms": {name: entry}}}
    path = tmp_path / "add_generator.yaml"
    path.write_text(yaml.safe_dump(edit))
    return str(path)


def n_shards_of(demo: Path) -> int:
    """How many dialogue shards each generator of the finished ``demo`` wrote."""
    return len(list((demo / "results/dialogue/llava").glob("[0-9]*.parquet")))
