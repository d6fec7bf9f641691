"""Helpers shared by the stage command modules (``dialogclip/<stage>/commands.py``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dialogclip.core.config import ConfigError


def add_params_argument(parser: argparse.ArgumentParser, section: str) -> None:
    """Add ``--params JSON``: the ``section`` of the workflow config, as the rule passes it."""
    parser.add_argument(
        "--params",
        type=parse_params,
        default={},
        help=f"JSON object with the '{section}' section of the workflow config "
        "(keys missing here take their documented defaults)",
    )


def parse_params(text: str) -> dict[str, Any]:
    """Parse a ``--params`` JSON object; anything else fails with a message quoting it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--params is not valid JSON ({err}): {text!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--params must be a JSON object, got: {text!r}")
    return value


__all__ = ["ConfigError", "add_params_argument", "parse_params"]
