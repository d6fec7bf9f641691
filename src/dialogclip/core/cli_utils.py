"""Helpers shared by the stage command modules (``dialogclip/<stage>/commands.py``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
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


def add_dialogue_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--dialogue GENERATOR SHARD...``, once per generator (read by
    :func:`dialogue_shards`)."""
    parser.add_argument(
        "--dialogue",
        nargs="+",
        action="append",
        default=[],
        metavar=("GENERATOR", "SHARD"),
        help="a generator's name, then its dialogue shards with the ingested shards' names;"
        " once per generator",
    )


def dialogue_shards(values: Sequence[Sequence[str]]) -> dict[str, list[Path]]:
    """{generator: its shards} from the ``--dialogue`` values; a generator named twice is a
    :class:`ConfigError`."""
    shards: dict[str, list[Path]] = {}
    for name, *paths in values:
        if name in shards:
            raise ConfigError(f"--dialogue names the generator {name!r} twice")
        shards[name] = [Path(path) for path in paths]
    return shards


__all__ = [
    "ConfigError",
    "add_dialogue_argument",
    "add_params_argument",
    "dialogue_shards",
    "parse_params",
]
