"""Ingested and dialogue shards in the pipeline's schemas, for the tests of what joins them
(the dataset export, the report's gallery)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from dialogclip.core.io import write_parquet_atomic
from dialogclip.generate.schema import DIALOGUE_SCHEMA
from dialogclip.ingest.shard import SHARD_SCHEMA

SCIENCE = {
    "blip2": {
        "model": "Salesforce/blip2-opt-6.7b",
        "revision": "a" * 40,
        "dtype": "bfloat16",
        "generator_settings": {"questions": ["What do you see in this image?"]},
        "sampling": {"temperature": 0.0},
        "decode": {"shortest_side": 224},
    },
    "llava": {
        "model": "llava-hf/llava-1.5-7b-hf",
        "revision": "b" * 40,
        "dtype": "bfloat16",
        "generator_settings": {"question": "Write three questions and answers."},
        "sampling": {"temperature": 0.0},
        "decode": {"shortest_side": 336},
    },
}


def ingested_shard(path: Path, keys: list[str], failed: set[str]) -> None:
    rows = [
        {
            "key": key,
            "url": f"https://example.org/{key}.jpg",
            "caption": f"caption of {key}",
            "status": "failed_to_download" if key in failed else "success",
            "sha256": None if key in failed else f"{int(key):064x}",
            "jpg": None if key in failed else b"\xff\xd8 image " + key.encode(),  # never decoded
            "attempts": 1,
        }
        for key in keys
    ]
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), path)


def dialogue_shard(path: Path, generator: str, keys: list[str], science: dict[str, Any]) -> None:
    rows = []
    for key in keys:
        broken = key.endswith("3")  # an image the generator could not decode
        rows.append(
            {
                "key": key,
                "url": f"https://example.org/{key}.jpg",
                "generator": generator,
                "model": science["model"],
                "revision": science["revision"],
                "backend": "vllm",
                "status": "image_error" if broken else "success",
                "error_message": "truncated" if broken else None,
                "prompts": None if broken else [f"prompt {key}"],
                "responses": None if broken else [f"reply {key}"],
                "questions": None if broken else [f"{generator} question {key}"],
                "answers": None if broken else [f"{generator} answer {key}"],
                "parse_status": None if broken else "ok",
                "finish_reasons": None if broken else ["stop"],
                "prompt_tokens": None if broken else [5],
                "generated_tokens": None if broken else [3],
            }
        )
    metadata = {**science, "generator": generator, "backend": "vllm", "versions": {"vllm": "1"}}
    table = pa.Table.from_pylist(rows, schema=DIALOGUE_SCHEMA)
    write_parquet_atomic(table, path, metadata=metadata)


def enriched_world(root: Path) -> tuple[list[Path], dict[str, list[Path]]]:
    """Two shards: keys 0-4 (key 1 failed to download) and 5-8; every key ending in 3 is an
    image the generators could not decode."""
    shards = {"00000": [f"{i:09d}" for i in range(5)], "00001": [f"{i:09d}" for i in range(5, 9)]}
    failed = {"000000001"}
    ingested, dialogue = [], {"blip2": [], "llava": []}
    for name, keys in shards.items():
        ingested.append(root / "ingest" / f"{name}.parquet")
        ingested_shard(ingested[-1], keys, failed)
        downloaded = [key for key in keys if key not in failed]
        for generator in dialogue:
            dialogue[generator].append(root / generator / f"{name}.parquet")
            dialogue_shard(dialogue[generator][-1], generator, downloaded, SCIENCE[generator])
    return ingested, dialogue
