"""The one command-line entry point: ``dialogclip <command> ...``.

Every Snakemake rule calls one of these commands. Each stage keeps its commands in
``dialogclip/<stage>/commands.py`` with a ``register(subparsers)`` function; heavy imports
(torch, vLLM, img2dataset) happen inside the command handlers so that ``dialogclip --help``
and the cheap aggregation commands start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from dialogclip import __version__
from dialogclip.core.config import ConfigError
from dialogclip.core.devices import claim_gpus, require_cuda
from dialogclip.core.io import InputFileError
from dialogclip.core.logging import setup_logging

COMMAND_MODULES = (
    "dialogclip.ingest.commands",
    "dialogclip.generate.commands",
    "dialogclip.evaluate.commands",
    "dialogclip.report.commands",
    "dialogclip.train.commands",
    "dialogclip.export.commands",
    "dialogclip.world.commands",
)

log = logging.getLogger("dialogclip")

# Expected user errors, each naming the file or key and what to do: reported as one line (exit
# status 2), never as a traceback. InputFileError covers corrupt JSON/Parquet/safetensors
# inputs (CorruptFileError) and unusable ones (an empty TSV); ConfigError a bad --params.
USER_ERRORS = (ConfigError, FileNotFoundError, InputFileError)
USER_ERROR_STATUS = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every stage's subcommands registered."""
    parser = argparse.ArgumentParser(prog="dialogclip", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dialogclip {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=0,
        metavar="N",
        help="take N free GPUs of this node before the command runs (sets CUDA_VISIBLE_DEVICES;"
        " see dialogclip.core.devices); rules pass --gpus {resources.gpu}",
    )
    parser.add_argument(
        "--allow-cpu",
        type=int,
        choices=(0, 1),
        default=0,
        metavar="0|1",
        help="1: a job given GPUs may run on the CPU when torch sees none (default 0: it stops"
        " at once, naming torch's build and the driver); rules pass the profile's resource"
        " --allow-cpu {resources.allow_cpu}",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status (2 for a user error)."""
    # Logging is set up before parsing: a bad --params is reported while parsing (see
    # core.cli_utils.add_params_argument) in the same one-line format.
    setup_logging()
    try:
        args = build_parser().parse_args(argv)
        setup_logging(args.log_level)
        # Before the command's handler imports torch: CUDA reads CUDA_VISIBLE_DEVICES once.
        claim_gpus(args.gpus)
        require_cuda(args.gpus, bool(args.allow_cpu))
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        log.error("%s", err)
        return USER_ERROR_STATUS


if __name__ == "__main__":
    sys.exit(main())
