"""Helpers shared by the stage command modules (``dialogclip/<stage>/commands.py``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dialogclip.core.config import ConfigError


def add_params_argument(parser: argparse.ArgumentParser, section: str) -> None:
    """Add ``--params JSON``: the ``section`` of the workflow config, as the rule passes it.

    A value that is not a JSON object raises :class:`ConfigError` out of ``parse_args`` (an
    action, not a ``type``: argparse would turn a type error into a usage message), which
    ``dialogclip.cli.main`` reports as one line.
    """
    parser.add_argument(
        "--params",
        action=_ParamsAction,
        default={},
        help=f"JSON object with the '{section}' section of the workflow config "
        "(keys missing here take their documented defaults)",
    )


class _ParamsAction(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, parse_params(values))


def parse_params(text: str) -> dict[str, Any]:
    """Parse a ``--params`` JSON object; anything else fails with a message quoting it."""
    shown = text if len(text) <= 200 else text[:197] + "..."
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--params is not valid JSON ({err}): {shown!r}") from err
    if not isinstance(value, dict):
        raise ConfigError(f"--params must be a JSON object, got: {shown!r}")
    return value


__all__ = ["ConfigError", "add_params_argument", "parse_params"]
