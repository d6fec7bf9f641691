"""Overhead of our ingestion command over bare img2dataset, on the same 2,000 loopback URLs.

    .venv/bin/python bench/bench_ingest.py [--rows 2000] [--repeats 5]

Both sides run as fresh processes with identical img2dataset settings (one process, 64
threads, keep_ratio 336, JPEG 95, sha256, no EXIF) against a threaded HTTP server on
127.0.0.1 serving 640x480 JPEGs (so every image is decoded, resized and re-encoded):

- ours: ``dialogclip ingest-shard`` on a CC3M-format TSV (no header), i.e. the TSV scan, the
  img2dataset call, RGB check, assembly of the keyed shard and its atomic write;
- baseline: ``img2dataset.download`` on the same rows as a headed TSV (img2dataset's format).

After one uncounted warm-up of each, runs alternate (baseline, ours) to spread machine noise;
the ratio of median wall times is written with the figures to bench/results/bench_ingest.json
(target <= 1.15).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "ingest"
RESULT = ROOT / "bench" / "results" / "bench_ingest.json"
VENV_BIN = Path(sys.executable).parent
TARGET_RATIO = 1.15
N_DISTINCT_IMAGES = 50
THREADS = 64
SETTINGS = {
    "image_size": 336,
    "resize_mode": "keep_ratio",
    "resize_only_if_bigger": True,
    "encode_quality": 95,
    "timeout": 10,
    "max_image_pixels": 178_956_970,
}

log = logging.getLogger("bench_ingest")

BARE_IMG2DATASET = """
import os, sys
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = "{max_pixels}"
from img2dataset import download

if __name__ == "__main__":
    download(
        url_list=sys.argv[1], input_format="tsv", url_col="url", caption_col="caption",
        output_format="parquet", output_folder=sys.argv[2], number_sample_per_shard={rows},
        processes_count=1, thread_count={threads}, image_size={image_size},
        resize_mode="{resize_mode}", resize_only_if_bigger={resize_only_if_bigger},
        encode_format="jpg", encode_quality={encode_quality}, timeout={timeout},
        max_image_area=float({max_pixels}), compute_hash="sha256", extract_exif=False,
        enable_wandb=False, incremental_mode="incremental", max_shard_retry=0,
    )
"""


def make_images(n: int) -> list[bytes]:
    """``n`` distinct 640x480 JPEGs (smooth gradients plus noise, ~40-60 kB like web photos)."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 640, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, 480, dtype=np.float32)[:, None, None]
    images = []
    for _ in range(n):
        colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        base = colours[0] * x + colours[1] * y * 0.5
        noisy = base + rng.normal(0, 12, (480, 640, 3)).astype(np.float32)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


def start_server(images: list[bytes]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            number = int(self.path.rsplit("/", 1)[1].split(".")[0])
            body = images[number % len(images)]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        # The default listen backlog (5) drops connections when 64 threads connect at once;
        # a dropped SYN is re-sent only after seconds, which shows up as download timeouts.
        request_queue_size = 1024
        daemon_threads = True

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def write_inputs(base_url: str, rows: int) -> tuple[Path, Path]:
    """The CC3M-format TSV (ours) and the same rows with a header (img2dataset's TSV)."""
    lines = [f"synthetic photo number {i}\t{base_url}/img/{i}.jpg\n" for i in range(rows)]
    cc3m = OUT / "bench.tsv"
    cc3m.write_text("".join(lines))
    headed = OUT / "bench_headed.tsv"
    headed.write_text("caption\turl\n" + "".join(lines))
    return cc3m, headed


def run_ours(tsv: Path, rows: int, run: int) -> tuple[float, int]:
    folder = OUT / f"ours-{run}"
    shutil.rmtree(folder, ignore_errors=True)
    command = [
        str(VENV_BIN / "dialogclip"),
        "ingest-shard",
        *("--tsv", str(tsv), "--shard", "00000", "--rows", f"0:{rows}"),
        *("--params", json.dumps(SETTINGS), "--download-threads", str(THREADS)),
        *("--output", str(folder / "shard.parquet"), "--stats", str(folder / "stats.json")),
    ]
    seconds = timed(command, folder / "log.txt")
    table = pq.read_table(folder / "shard.parquet", columns=["status"])
    return seconds, table["status"].to_pylist().count("success")


def run_bare(tsv: Path, rows: int, run: int) -> tuple[float, int]:
    folder = OUT / f"bare-{run}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    script = folder / "bare.py"
    script.write_text(
        BARE_IMG2DATASET.format(
            rows=rows,
            threads=THREADS,
            max_pixels=SETTINGS["max_image_pixels"],
            **{k: v for k, v in SETTINGS.items() if k != "max_image_pixels"},
        )
    )
    command = [sys.executable, str(script), str(tsv), str(folder / "out")]
    seconds = timed(command, folder / "log.txt")
    table = pq.read_table(folder / "out" / "00000.parquet", columns=["status"])
    return seconds, table["status"].to_pylist().count("success")


def timed(command: list[str], log_path: Path) -> float:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    with log_path.open("w") as handle:
        started = time.perf_counter()
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)

    httpd = start_server(make_images(N_DISTINCT_IMAGES))
    base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    cc3m_tsv, headed_tsv = write_inputs(base_url, args.rows)
    runs: dict[str, list[float]] = {"bare_img2dataset": [], "dialogclip_ingest_shard": []}
    successes: dict[str, list[int]] = {"bare_img2dataset": [], "dialogclip_ingest_shard": []}
    try:
        # Warm-up (not counted): page cache, Python bytecode, the server's first connections.
        run_bare(headed_tsv, args.rows, -1)
        run_ours(cc3m_tsv, args.rows, -1)
        for run in range(args.repeats):
            for name, function, tsv in (
                ("bare_img2dataset", run_bare, headed_tsv),
                ("dialogclip_ingest_shard", run_ours, cc3m_tsv),
            ):
                seconds, ok = function(tsv, args.rows, run)
                runs[name].append(round(seconds, 3))
                successes[name].append(ok)
                log.info(
                    "run %d %-24s %6.2f s  %5.1f img/s  (%d ok)",
                    run,
                    name,
                    seconds,
                    args.rows / seconds,
                    ok,
                )
    finally:
        httpd.shutdown()
        httpd.server_close()

    medians = {name: statistics.median(times) for name, times in runs.items()}
    ratio = medians["dialogclip_ingest_shard"] / medians["bare_img2dataset"]
    result = {
        "benchmark": "ingest: dialogclip ingest-shard vs bare img2dataset.download",
        "rows": args.rows,
        "repeats": args.repeats,
        "settings": {**SETTINGS, "thread_count": THREADS, "processes_count": 1},
        "served_image": f"640x480 JPEG, {N_DISTINCT_IMAGES} distinct, loopback HTTP",
        "wall_seconds": runs,
        "successes": successes,
        "median_seconds": {k: round(v, 3) for k, v in medians.items()},
        "images_per_second": {k: round(args.rows / v, 1) for k, v in medians.items()},
        "overhead_ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    log.info("overhead ratio %.3f (target <= %.2f) -> %s", ratio, TARGET_RATIO, RESULT)


if __name__ == "__main__":
    main()
