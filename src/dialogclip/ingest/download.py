"""Run img2dataset's Python API on a list of URLs and return its rows as one Arrow table.

We hand img2dataset exactly one of its shards (all our rows), in its own fresh folder, and let
it do what it is good at: concurrent fetching, decoding, resizing, re-encoding, hashing, and
turning every failure into a row. Resumption is ours (a whole shard is the unit, see
``dialogclip.ingest.shard``), so its own incremental mode is never relied on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dialogclip.ingest.settings import IngestSettings

log = logging.getLogger(__name__)

ROW_COLUMN = "row"  # our TSV row index, carried through img2dataset as an additional column
RESULT_COLUMNS = (
    ROW_COLUMN,
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
    "jpg",
)


@dataclass(frozen=True)
class DownloadRequest:
    """One image to fetch: its TSV row index, the URL to open, and the caption."""

    row: int
    url: str
    caption: str


@dataclass(frozen=True)
class DownloadResult:
    """img2dataset's rows (columns ``RESULT_COLUMNS``) and how long the call took."""

    table: pa.Table
    seconds: float


def run_img2dataset(
    requests: Sequence[DownloadRequest],
    settings: IngestSettings,
    workdir: Path,
    thread_count: int,
) -> DownloadResult:
    """Download ``requests`` with img2dataset inside ``workdir`` (created empty, left in place).

    Returns one row per request that img2dataset reported (normally all of them).
    Raises RuntimeError if img2dataset wrote no output (its shard crashed).
    """
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    url_list = workdir / "urls.parquet"
    output_folder = workdir / "img2dataset"
    pq.write_table(
        pa.table(
            {
                "url": [r.url for r in requests],
                "caption": [r.caption for r in requests],
                ROW_COLUMN: pa.array([r.row for r in requests], pa.int64()),
            }
        ),
        url_list,
    )
    _prepare_environment(settings)
    # Imported here: img2dataset pulls in OpenCV, albumentations and wandb (seconds of import).
    from img2dataset import download

    started = time.perf_counter()
    with _stdout_to_stderr(), _interrupts_raise():
        download(
            url_list=str(url_list),
            input_format="parquet",
            url_col="url",
            caption_col="caption",
            save_additional_columns=[ROW_COLUMN],
            output_format="parquet",
            output_folder=str(output_folder),
            # One img2dataset shard holding all our rows; one worker process, many threads.
            number_sample_per_shard=max(len(requests), 1),
            processes_count=1,
            thread_count=thread_count,
            image_size=settings.image_size,
            resize_mode=settings.resize_mode,
            resize_only_if_bigger=settings.resize_only_if_bigger,
            encode_format="jpg",
            encode_quality=settings.encode_quality,
            timeout=settings.timeout,
            retries=settings.download_retries,
            max_image_area=float(settings.max_image_pixels),
            user_agent_token=settings.user_agent_token,
            compute_hash="sha256",
            extract_exif=False,
            enable_wandb=False,
            # "overwrite" deletes the folder's _tmp dir it has just created (img2dataset 1.47),
            # so we keep "incremental" and always start from an empty folder: nothing to resume.
            incremental_mode="incremental",
            # A crashed shard is retried by Snakemake (rule retries), not inside the job.
            max_shard_retry=0,
        )
    seconds = time.perf_counter() - started
    produced = output_folder / "00000.parquet"
    if not produced.is_file():
        raise RuntimeError(
            f"img2dataset wrote no output for this shard ({produced} is missing); "
            "its traceback is in this log above"
        )
    table = pq.read_table(produced, columns=list(RESULT_COLUMNS))
    log.info(
        "img2dataset: %d rows in %.1f s (%.1f rows/s)",
        table.num_rows,
        seconds,
        table.num_rows / seconds if seconds else 0.0,
    )
    return DownloadResult(table=table, seconds=seconds)


def _prepare_environment(settings: IngestSettings) -> None:
    # albumentations (imported by img2dataset) checks PyPI for updates unless told not to.
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    # OpenCV refuses to decode images above this many pixels *before* allocating them; the
    # worker process img2dataset spawns reads it from the environment it inherits.
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(settings.max_image_pixels)


@contextlib.contextmanager
def _interrupts_raise() -> Iterator[None]:
    """Keep Ctrl-C an error while img2dataset runs, and restore our handler afterwards.

    img2dataset installs a SIGINT handler that cleans its temporary folder and calls
    ``sys.exit(0)``: an interrupted shard would otherwise look like a successful command.
    """
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit as exit_:
        raise KeyboardInterrupt("img2dataset was interrupted") from exit_
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr (the job's log) while img2dataset runs.

    img2dataset reports progress with print() and tqdm, in this process and in the worker it
    spawns (which inherits our descriptors); our stdout is kept for command output.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
