"""Configuration: JSON-schema validation with messages that name the key, and typed sections.

The workflow validates the whole ``config.yaml`` against ``workflow/schemas/config.schema.yaml``
when it loads (``workflow/rules/common.smk``). Each rule then hands its section to a CLI
command as JSON (``--params``), and the command turns it into a frozen dataclass with
:func:`section_from_dict`, so library code works with typed, documented fields.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names it."""


# libyaml's safe loader where PyYAML was built with it: the same documents, about ten times
# faster than the pure-Python one (the workflow parses its schema and numbers.yaml each time it
# plans).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file; a syntax error names the file and line."""
    try:
        return yaml.load(Path(path).read_text(), Loader=_SAFE_LOADER)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err


def _key_path(path: typing.Iterable[Any]) -> str:
    return ".".join(str(part) for part in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"{where}: unknown key(s) {extra}; allowed keys: {allowed}"
    if error.validator == "required":
        missing = [key for key in error.validator_value if key not in error.instance]
        return f"{where}: missing required key(s) {missing}"
    return f"{where}: {error.message}"


def fill_defaults(
    config: dict[str, Any], schema: Mapping[str, Any], root: Mapping[str, Any] | None = None
) -> None:
    """Insert the schema's ``default`` values for absent keys, recursively, in place.

    Local references (``$ref: "#/$defs/name"``, also inside ``allOf``) are followed, so a
    section described by a shared definition gets that definition's defaults.
    """
    root = schema if root is None else root
    for key, subschema in _properties(schema, root).items():
        if key not in config and "default" in subschema:
            config[key] = copy.deepcopy(subschema["default"])
        value = config.get(key)
        if isinstance(value, dict):
            fill_defaults(value, subschema, root)
            # A map of named entries (e.g. generate.vlms): each entry gets its schema's defaults.
            entry_schema = subschema.get("additionalProperties")
            if isinstance(entry_schema, dict):
                declared = _properties(subschema, root)
                for name, entry in value.items():
                    if name not in declared and isinstance(entry, dict):
                        fill_defaults(entry, entry_schema, root)
        elif isinstance(value, list) and isinstance(subschema.get("items"), dict):
            for item in value:
                if isinstance(item, dict):
                    fill_defaults(item, subschema["items"], root)


def _properties(schema: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """The ``properties`` of ``schema``, merged with those of the definitions it refers to."""
    merged: dict[str, Any] = {}
    parts = [resolve_ref(schema["$ref"], root)] if "$ref" in schema else []
    parts += [resolve_ref(part["$ref"], root) for part in schema.get("allOf", []) if "$ref" in part]
    for part in parts:
        merged.update(_properties(part, root))
    merged.update(schema.get("properties", {}))
    return merged


def resolve_ref(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    """The subschema a local ``$ref`` (``#/$defs/name``) points at."""
    if not ref.startswith("#/"):
        raise ConfigError(f"only local schema references are supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def validate_config(
    config: dict[str, Any], schema_path: str | os.PathLike[str], source: str = "config"
) -> dict[str, Any]:
    """Validate ``config`` against the schema at ``schema_path`` and fill in defaults.

    Raises :class:`ConfigError` listing every problem, each prefixed with the dotted key path
    (``cc3m.shard_size: 'ten' is not of type 'integer'``).
    """
    schema = load_yaml(schema_path)
    fill_defaults(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {_describe(err)}" for err in errors)
        raise ConfigError(f"invalid {source} ({len(errors)} problem(s)):\n{lines}")
    return config


def section_from_dict(cls: type[T], data: Mapping[str, Any], section: str) -> T:
    """Build the dataclass ``cls`` from ``data``; unknown keys raise naming ``section.key``.

    Missing keys take the dataclass defaults; nested dataclass fields are built recursively.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; allowed keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        nested = _dataclass_in(hints[name])
        if nested is not None and isinstance(value, Mapping):
            value = section_from_dict(nested, value, f"{section}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{section}: {err}") from err


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass in ``hint`` (``X`` or ``X | None``), if any."""
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None
