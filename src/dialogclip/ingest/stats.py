"""Per-shard statistics, their merge into the run summary, and its human-readable form."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from dialogclip.ingest import errors

MAX_LISTED_LINES = 20  # malformed line numbers shown in the printed summary (all are in JSON)


def shard_stats(
    table: pa.Table,
    *,
    shard: str,
    pass_name: str,
    rows: range,
    n_requested: int,
    download_seconds: float,
    seconds: float,
    retry: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Statistics of one finished shard table (the ``SHARD_SCHEMA`` columns)."""
    statuses = table["status"].to_pylist()
    kinds = table["error_kind"].to_pylist()
    status_counts = Counter(statuses)
    n_rows = len(statuses)
    n_success = status_counts[errors.SUCCESS]
    malformed = [
        {"line": int(key) + 1, "key": key, "reason": kind, "detail": detail}
        for key, status, kind, detail in zip(
            table["key"].to_pylist(),
            statuses,
            kinds,
            table["error_message"].to_pylist(),
            strict=True,
        )
        if status == errors.MALFORMED_ROW
    ]
    return {
        "shard": shard,
        "pass": pass_name,
        "rows": {"start": rows.start, "stop": rows.stop},
        "n_rows": n_rows,
        "n_success": n_success,
        "success_rate": n_success / n_rows if n_rows else 0.0,
        "status_counts": dict(sorted(status_counts.items())),
        "error_kind_counts": dict(sorted(Counter(k for k in kinds if k is not None).items())),
        "malformed_rows": malformed,
        "n_requested": n_requested,
        "download_seconds": round(download_seconds, 3),
        "images_per_second": round(n_requested / download_seconds, 2) if download_seconds else None,
        "seconds": round(seconds, 3),
        "retry": dict(retry) if retry is not None else None,
    }


def summarize(shard_stats_list: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge per-shard stats into the run summary (totals, rates, every malformed line)."""
    shards = sorted(shard_stats_list, key=lambda s: s["shard"])
    status_counts: Counter[str] = Counter()
    kind_counts: Counter[str] = Counter()
    malformed = []
    retried = recovered = 0
    for stats in shards:
        status_counts.update(stats["status_counts"])
        kind_counts.update(stats["error_kind_counts"])
        malformed.extend({"shard": stats["shard"], **row} for row in stats["malformed_rows"])
        if stats.get("retry"):
            retried += stats["retry"]["n_retried"]
            recovered += stats["retry"]["n_recovered"]
    n_rows = sum(s["n_rows"] for s in shards)
    n_success = status_counts[errors.SUCCESS]
    n_attempted = (
        n_rows - status_counts[errors.MALFORMED_ROW] - status_counts[errors.DISALLOWED_URL]
    )
    return {
        "n_shards": len(shards),
        "n_rows": n_rows,
        "n_success": n_success,
        "success_rate": n_success / n_rows if n_rows else 0.0,
        "download_success_rate": n_success / n_attempted if n_attempted else 0.0,
        "status_counts": dict(sorted(status_counts.items())),
        "error_kind_counts": dict(kind_counts.most_common()),
        "n_malformed": len(malformed),
        "malformed_rows": malformed,
        "retry_failed": (
            {"n_retried": retried, "n_recovered": recovered}
            if any(s.get("retry") for s in shards)
            else None
        ),
        "shards": {
            s["shard"]: {"n_rows": s["n_rows"], "n_success": s["n_success"], "pass": s["pass"]}
            for s in shards
        },
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a few aligned lines for the end of a run."""
    n_rows = summary["n_rows"]
    lines = [
        f"CC3M ingestion: {summary['n_success']} of {n_rows} rows usable "
        f"({summary['success_rate']:.1%}) in {summary['n_shards']} shard(s); "
        f"{summary['download_success_rate']:.1%} of the attempted downloads succeeded",
        "  rows by status:",
    ]
    for status, count in summary["status_counts"].items():
        lines.append(f"    {status:<20} {count:>10}  {count / n_rows:6.1%}")
    if summary["error_kind_counts"]:
        lines.append("  failures by kind:")
        for kind, count in summary["error_kind_counts"].items():
            lines.append(f"    {kind:<20} {count:>10}")
    if summary["n_malformed"]:
        shown = [str(row["line"]) for row in summary["malformed_rows"][:MAX_LISTED_LINES]]
        more = summary["n_malformed"] - len(shown)
        lines.append(
            f"  malformed TSV lines: {summary['n_malformed']} (line {', '.join(shown)}"
            + (f", and {more} more in summary.json" if more else "")
            + ")"
        )
    if summary["retry_failed"]:
        retry = summary["retry_failed"]
        lines.append(
            f"  retry_failed pass: {retry['n_retried']} rows re-tried, "
            f"{retry['n_recovered']} recovered"
        )
    return "\n".join(lines)
