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
from dialogclip.core.logging import setup_logging

COMMAND_MODULES = (
    "dialogclip.ingest.commands",
    "dialogclip.generate.commands",
    "dialogclip.evaluate.commands",
    "dialogclip.train.commands",
)

log = logging.getLogger("dialogclip")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every stage's subcommands registered."""
    parser = argparse.ArgumentParser(prog="dialogclip", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dialogclip {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError) as err:
        # Expected user errors: one clear line, no traceback.
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
