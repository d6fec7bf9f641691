"""One ingestion job: the rows of one shard in, one complete Parquet shard (+ stats) out.

Every TSV row of the shard becomes exactly one output row, keyed by its TSV position, whatever
happened to it: malformed lines and disallowed URLs are decided here, everything else goes
through img2dataset (``dialogclip.ingest.download``). The shard file appears only once
complete (``core.io.write_parquet_atomic``), so a killed job leaves nothing that looks done and
Snakemake simply reruns it; its scratch folder is wiped at the start of the next attempt.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from dialogclip.core.io import read_parquet, write_json_atomic, write_parquet_atomic
from dialogclip.core.shards import make_key
from dialogclip.core.versions import package_versions
from dialogclip.ingest import errors
from dialogclip.ingest.download import DownloadRequest, run_img2dataset
from dialogclip.ingest.settings import IngestSettings
from dialogclip.ingest.stats import shard_stats
from dialogclip.ingest.tsv import TsvRow, read_rows
from dialogclip.ingest.urls import DisallowedUrl, fetchable_url

log = logging.getLogger(__name__)

# The contract with the stages downstream (documented in docs/architecture.md).
SHARD_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_kind", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("sha256", pa.string()),
        pa.field("jpg", pa.binary()),
        pa.field("attempts", pa.int32(), nullable=False),
    ]
)
_IMAGE_FIELDS = ("width", "height", "original_width", "original_height", "sha256", "jpg")

PASS_DOWNLOAD = "download"
PASS_RETRY = "retry_failed"


@dataclass(frozen=True)
class ShardJob:
    """Where one job reads and writes, and with how many download threads."""

    shard: str  # shard name, e.g. "00003"
    tsv: Path  # the CC3M TSV (also the base folder of relative file: URLs)
    output: Path  # final shard Parquet
    stats: Path  # per-shard stats JSON
    thread_count: int  # img2dataset download threads

    @property
    def workdir(self) -> Path:
        """Scratch folder beside the output; removed when the job ends, wiped when it restarts."""
        return self.output.parent / f".tmp-{self.output.stem}.work"


def ingest_shard(job: ShardJob, rows: range, settings: IngestSettings) -> dict[str, Any]:
    """Download the TSV rows ``rows`` into ``job.output`` and ``job.stats``; returns the stats."""
    started = time.perf_counter()
    _clean_workdir(job)
    tsv_rows = list(read_rows(job.tsv, rows.start, rows.stop))
    records: dict[int, dict[str, Any]] = {}
    requests: list[DownloadRequest] = []
    for row in tsv_rows:
        if row.problem is not None:
            records[row.index] = _failure_record(row.index, row.url, row.caption, row)
            continue
        try:
            url = fetchable_url(
                row.url, allow_file_urls=settings.allow_file_urls, base_dir=job.tsv.parent
            )
        except DisallowedUrl as err:
            records[row.index] = _disallowed_record(row.index, row.url, row.caption, err)
            continue
        requests.append(DownloadRequest(row=row.index, url=url, caption=row.caption))
    log.info(
        "shard %s: rows %d-%d, %d to download, %d malformed or disallowed",
        job.shard,
        rows.start,
        rows.stop - 1,
        len(requests),
        len(records),
    )
    originals = {row.index: row for row in tsv_rows}
    first_try = dict.fromkeys(originals, 1)
    download_seconds = _download_into(records, requests, originals, job, settings, first_try)
    table = _to_table(records)
    stats = shard_stats(
        table,
        shard=job.shard,
        pass_name=PASS_DOWNLOAD,
        rows=rows,
        n_requested=len(requests),
        download_seconds=download_seconds,
        seconds=time.perf_counter() - started,
    )
    _write(job, table, stats, rows, settings, PASS_DOWNLOAD)
    return stats


def retry_failed(
    job: ShardJob, first_pass: Path, settings: IngestSettings, error_kinds: Sequence[str] | None
) -> dict[str, Any]:
    """Re-try the failed downloads of the shard ``first_pass``; write the merged shard.

    Rows with status ``failed_to_download`` (and, unless ``error_kinds`` is None, one of those
    kinds) are downloaded again; every other row is copied unchanged.
    """
    started = time.perf_counter()
    _clean_workdir(job)
    table = read_parquet(first_pass)
    records = {int(record["key"]): record for record in table.to_pylist()}
    requests: list[DownloadRequest] = []
    originals: dict[int, TsvRow] = {}
    attempts: dict[int, int] = {}
    for index, record in records.items():
        if record["status"] != errors.FAILED_TO_DOWNLOAD:
            continue
        if error_kinds is not None and record["error_kind"] not in error_kinds:
            continue
        try:
            url = fetchable_url(
                record["url"], allow_file_urls=settings.allow_file_urls, base_dir=job.tsv.parent
            )
        except DisallowedUrl as err:  # the config changed since the first pass
            refused = _disallowed_record(index, record["url"], record["caption"], err)
            records[index] = {**refused, "attempts": record["attempts"]}
            continue
        originals[index] = TsvRow(index, record["caption"], record["url"])
        attempts[index] = record["attempts"] + 1
        requests.append(DownloadRequest(row=index, url=url, caption=record["caption"]))
    log.info("shard %s: re-trying %d failed downloads", job.shard, len(requests))
    download_seconds = _download_into(records, requests, originals, job, settings, attempts)
    merged = _to_table(records)
    recovered = sum(records[r.row]["status"] == errors.SUCCESS for r in requests)
    rows = range(int(table["key"][0].as_py()), int(table["key"][-1].as_py()) + 1)
    stats = shard_stats(
        merged,
        shard=job.shard,
        pass_name=PASS_RETRY,
        rows=rows,
        n_requested=len(requests),
        download_seconds=download_seconds,
        seconds=time.perf_counter() - started,
        retry={"n_retried": len(requests), "n_recovered": recovered},
    )
    _write(job, merged, stats, rows, settings, PASS_RETRY)
    return stats


def _download_into(
    records: dict[int, dict[str, Any]],
    requests: Sequence[DownloadRequest],
    originals: dict[int, TsvRow],
    job: ShardJob,
    settings: IngestSettings,
    attempts: Mapping[int, int],
) -> float:
    """Run img2dataset on ``requests`` and store one record per request in ``records``.

    ``originals`` gives each request's TSV url and caption; ``attempts`` its attempt number.
    """
    if not requests:
        return 0.0  # nothing to fetch: skip the seconds img2dataset takes to start
    try:
        result = run_img2dataset(requests, settings, job.workdir, job.thread_count)
        returned = {row["row"]: row for row in result.table.to_pylist() if row["row"] in originals}
    finally:
        shutil.rmtree(job.workdir, ignore_errors=True)
    for request in requests:
        source = originals[request.row]
        found = returned.get(request.row)
        if found is None:
            records[request.row] = _missing_record(source, attempts[request.row])
        else:
            records[request.row] = _download_record(source, found, attempts[request.row], settings)
    return result.seconds


def _base_record(index: int, url: str | None, caption: str | None, attempts: int) -> dict:
    record: dict[str, Any] = {"key": make_key(index), "url": url, "caption": caption}
    record.update(dict.fromkeys(_IMAGE_FIELDS))
    record["attempts"] = attempts
    return record


def _failure_record(index: int, url: str | None, caption: str | None, row: TsvRow) -> dict:
    record = _base_record(index, url, caption, attempts=0)
    record.update(status=errors.MALFORMED_ROW, error_kind=row.problem, error_message=row.detail)
    return record


def _disallowed_record(index: int, url: str | None, caption: str | None, err: Exception) -> dict:
    record = _base_record(index, url, caption, attempts=0)
    record.update(
        status=errors.DISALLOWED_URL,
        error_kind=errors.DISALLOWED_SCHEME,
        error_message=str(err),
    )
    return record


def _missing_record(source: TsvRow, attempts: int) -> dict:
    record = _base_record(source.index, source.url, source.caption, attempts)
    record.update(
        status=errors.FAILED_TO_DOWNLOAD,
        error_kind=errors.MISSING_RESULT,
        error_message="img2dataset returned no row for this URL (see the job log)",
    )
    return record


def _download_record(
    source: TsvRow, found: dict[str, Any], attempts: int, settings: IngestSettings
) -> dict:
    """Our record for img2dataset's row ``found``; the TSV's url and caption are kept as given."""
    record = _base_record(source.index, source.url, source.caption, attempts)
    status, message = found["status"], found["error_message"]
    if status == errors.SUCCESS:
        try:
            image = ensure_rgb_jpeg(found["jpg"], settings.encode_quality)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            status = errors.FAILED_TO_RESIZE
            message = f"image decoding error: Pillow cannot read the re-encoded image: {err}"
        else:
            record.update({name: found[name] for name in _IMAGE_FIELDS})
            record["jpg"] = image
    record.update(
        status=status, error_kind=errors.classify_error(status, message), error_message=message
    )
    return record


def ensure_rgb_jpeg(data: bytes, quality: int) -> bytes:
    """``data`` if it is an RGB JPEG, else the image converted to RGB and re-encoded as JPEG.

    img2dataset keeps grayscale (and 16-bit grayscale) images single-channel; every consumer
    downstream expects 3-channel RGB. Only the header is parsed for RGB images, so this costs
    microseconds per row.
    """
    with Image.open(io.BytesIO(data)) as image:
        if image.mode == "RGB" and image.format == "JPEG":
            return data
        image.load()
        converted = image.convert("RGB")
    buffer = io.BytesIO()
    converted.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _to_table(records: dict[int, dict[str, Any]]) -> pa.Table:
    """The shard table, sorted by key (= TSV position)."""
    return pa.Table.from_pylist([records[index] for index in sorted(records)], SHARD_SCHEMA)


def _write(
    job: ShardJob,
    table: pa.Table,
    stats: dict[str, Any],
    rows: range,
    settings: IngestSettings,
    pass_name: str,
) -> None:
    metadata = {
        "ingest": {
            "shard": job.shard,
            "pass": pass_name,
            "tsv": os.fspath(job.tsv),
            "rows": [rows.start, rows.stop],
            "settings": asdict(settings),
            "img2dataset_version": package_versions(["img2dataset"])["img2dataset"],
        }
    }
    write_json_atomic(stats, job.stats)
    write_parquet_atomic(table, job.output, metadata)
    log.info(
        "shard %s (%s): %d/%d rows usable -> %s",
        job.shard,
        pass_name,
        stats["n_success"],
        stats["n_rows"],
        job.output,
    )


def _clean_workdir(job: ShardJob) -> None:
    """Remove the scratch folder a killed earlier attempt of this job may have left."""
    if job.workdir.exists():
        log.info("removing the scratch folder of an interrupted attempt: %s", job.workdir)
        shutil.rmtree(job.workdir)
