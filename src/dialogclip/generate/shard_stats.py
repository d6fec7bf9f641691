"""The per-shard stats of a generation job: counts of the dialogue shard and where the engine's
time went."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from dialogclip.generate.schema import STATUS_SUCCESS
from dialogclip.generate.shard_plan import ShardRows

log = logging.getLogger(__name__)


@dataclass
class EngineClock:
    """Where the job's time went: engine working vs engine waiting for decoded images."""

    busy_s: float = 0.0
    wait_s: float = 0.0
    first_wait_s: float = 0.0  # filling the pipeline before the first chunk
    images: int = 0
    engine_start_s: float | None = None  # building the engine (None: given by the caller)
    engine_close_s: float | None = None
    chunk_busy_s: list[float] = field(default_factory=list)  # per computed chunk

    def as_dict(self) -> dict[str, Any]:
        total = self.busy_s + self.wait_s
        steady_wait = self.wait_s - self.first_wait_s
        steady_total = total - self.first_wait_s
        return {
            "engine_start_s": _round(self.engine_start_s),
            "engine_close_s": _round(self.engine_close_s),
            "chunk_busy_s": [round(t, 4) for t in self.chunk_busy_s],
            "engine_busy_s": round(self.busy_s, 4),
            "engine_wait_s": round(self.wait_s, 4),
            "engine_wait_fraction": round(self.wait_s / total, 4) if total else None,
            "engine_wait_fraction_after_first_chunk": (
                round(steady_wait / steady_total, 4) if steady_total > 0 else None
            ),
            "images_generated": self.images,
            "images_per_s": round(self.images / total, 3) if total else None,
        }


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def shard_stats(
    table: pa.Table, rows: ShardRows, generator: str, backend: str, model: str
) -> dict[str, Any]:
    """Counts of one dialogue shard: rows, parse statuses and rate, finish reasons, tokens."""
    statuses = table["status"].to_pylist()
    generated = [i for i, status in enumerate(statuses) if status == STATUS_SUCCESS]
    parse = Counter(table["parse_status"].to_pylist()[i] for i in generated)
    finish = Counter(
        reason for reasons in table["finish_reasons"].to_pylist() if reasons for reason in reasons
    )
    prompt_tokens = sum(sum(t) for t in table["prompt_tokens"].to_pylist() if t)
    new_tokens = sum(sum(t) for t in table["generated_tokens"].to_pylist() if t)
    return {
        "generator": generator,
        "backend": backend,
        "model": model,
        "rows": {
            "input": rows.n_input_rows,
            "downloaded": len(rows.keys),
            "image_errors": len(statuses) - len(generated),
            "generated": len(generated),
        },
        "parse": dict(sorted(parse.items())),
        "parse_rate": round(parse.get("ok", 0) / len(generated), 6) if generated else None,
        "finish_reasons": dict(sorted(finish.items())),
        "tokens": {
            "prompt": prompt_tokens,
            "generated": new_tokens,
            "generated_per_image": round(new_tokens / len(generated), 2) if generated else None,
        },
    }


def log_shard_summary(stats: dict[str, Any]) -> None:
    timing = stats["timing"]
    log.info(
        "done: %d generated, %d image errors, parse rate %s, engine waited %s of its time "
        "for input (%s after the first chunk), %s img/s",
        stats["rows"]["generated"],
        stats["rows"]["image_errors"],
        stats["parse_rate"],
        timing["engine_wait_fraction"],
        timing["engine_wait_fraction_after_first_chunk"],
        timing["images_per_s"],
    )
