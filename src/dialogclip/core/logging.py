"""One logging format for every command, whether run by hand or by a Snakemake rule."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def setup_logging(level: str | int = "INFO") -> None:
    """Configure the root logger to write ``LOG_FORMAT`` lines to stderr.

    Rules redirect stderr into their ``log:`` file, so this one handler serves both.
    """
    logging.basicConfig(
        level=level, format=LOG_FORMAT, datefmt=DATE_FORMAT, stream=sys.stderr, force=True
    )
    # Third-party libraries log at INFO per request/batch; keep our own lines readable.
    for noisy in ("urllib3", "PIL", "filelock", "httpx", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
