"""One config truth: the schema is a valid JSON schema, and every section's schema defaults are
the defaults of the typed settings the commands build from it."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dialogclip.core.config import _dataclass_in, load_yaml, resolve_ref
from dialogclip.core.text_forms import TextForms
from dialogclip.evaluate.settings import DatasetFiles
from dialogclip.export.settings import DatasetExport, ModelsExport
from dialogclip.generate.config import GenerateConfig, VlmSettings
from dialogclip.ingest.settings import IngestSettings
from dialogclip.models.eval_entry import EvalEntry
from dialogclip.report.settings import DialogueQualitySettings, GallerySettings, ReportClip
from dialogclip.train.loss_settings import (
    DIRECTIONS,
    MMD_FORMS,
    MMD_SAMPLES,
    TEMPERATURES,
    DraftLoss,
    ThirdTowerLoss,
)
from dialogclip.train.settings import RunEvaluation, TrainRun

SCHEMA = load_yaml(Path(__file__).resolve().parents[2] / "workflow/schemas/config.schema.yaml")
# Keys that steer the workflow (which jobs exist) and never reach a command's settings.
WORKFLOW_ONLY = {"activate", "generators", "models"}
SECTIONS = {
    "ingest": ("#/properties/ingest", IngestSettings),
    "text": ("#/properties/text", TextForms),
    "generate": ("#/properties/generate", GenerateConfig),
    "generate.vlms.<name>": (
        "#/properties/generate/properties/vlms/additionalProperties",
        VlmSettings,
    ),
    # The one evaluation entry type (evaluate, report, workflow, the runs' entries).
    "evaluate.models[]": ("#/properties/evaluate/properties/models/items", EvalEntry),
    "evaluate.<dataset>": ("#/$defs/dataset_files", DatasetFiles),
    "train.runs[]": ("#/properties/train/properties/runs/items", TrainRun),
    "train.runs[].evaluate": (
        "#/properties/train/properties/runs/items/properties/evaluate",
        RunEvaluation,
    ),
    "report.clip": ("#/properties/report/properties/clip", ReportClip),
    "report.gallery": ("#/properties/report/properties/gallery", GallerySettings),
    "report.dialogue_quality": (
        "#/properties/report/properties/dialogue_quality",
        DialogueQualitySettings,
    ),
    "export.dataset": ("#/properties/export/properties/dataset", DatasetExport),
    "export.models": ("#/properties/export/properties/models", ModelsExport),
}


def test_schema_passes_its_metaschema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def _properties(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return {**_properties(resolve_ref(node["$ref"], SCHEMA)), **node.get("properties", {})}
    return node.get("properties", {})


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _mismatches(cls: type, schema: dict[str, Any], where: str) -> list[str]:
    """Every difference between the dataclass ``cls`` and the schema object ``schema``."""
    problems = []
    properties = _properties(schema)
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for name, field in fields.items():
        if name not in properties:
            problems.append(f"{where}.{name}: in {cls.__name__} but not in the schema")
            continue
        nested = _dataclass_in(hints[name])
        if nested is not None:
            problems += _mismatches(nested, properties[name], f"{where}.{name}")
            continue
        default = _default_of(field)
        schema_default = properties[name].get("default", dataclasses.MISSING)
        if default is dataclasses.MISSING:
            if schema_default is not dataclasses.MISSING:
                problems.append(f"{where}.{name}: schema default but no dataclass default")
        elif schema_default is dataclasses.MISSING and default is None:
            continue  # optional with no value: absent in the config, None in the settings
        elif schema_default != default:
            problems.append(
                f"{where}.{name}: schema {properties[name].get('default', '<none>')!r} "
                f"!= {cls.__name__} {default!r}"
            )
    for name in sorted(set(properties) - set(fields) - WORKFLOW_ONLY):
        problems.append(f"{where}.{name}: in the schema but not in {cls.__name__}")
    return problems


@pytest.mark.parametrize("section", list(SECTIONS))
def test_schema_defaults_equal_typed_defaults(section: str) -> None:
    pointer, cls = SECTIONS[section]
    assert _mismatches(cls, dict(resolve_ref(pointer, SCHEMA)), section) == []


def test_the_comparison_notices_a_drifted_default() -> None:
    """The check above is not vacuous: a changed default is reported, naming the key."""

    @dataclasses.dataclass(frozen=True)
    class Drifted:
        qa_template: str = "Q: {question} A: {answer}"
        pair_separator: str = " "
        long_texts: str = "truncate"

    assert _mismatches(Drifted, dict(resolve_ref("#/properties/text", SCHEMA)), "text") == [
        "text.qa_template: schema '{question} {answer}' != Drifted 'Q: {question} A: {answer}'"
    ]


LOSS_SCHEMA = "#/properties/train/properties/runs/items/properties/loss"
OPTIM_SCHEMA = "#/properties/train/properties/runs/items/properties/optim"


def test_loss_settings_match_the_schema() -> None:
    """train.runs[].loss: every schema key is a field of one method's loss settings and every
    field a schema key; the enums are the settings' allowed values (the defaults live in the
    dataclasses, the schema describes them)."""
    properties = _properties(resolve_ref(LOSS_SCHEMA, SCHEMA))
    fields = {
        field.name: field
        for cls in (ThirdTowerLoss, DraftLoss)
        for field in dataclasses.fields(cls)
    }
    assert set(properties) == set(fields)
    allowed = {
        "direction": DIRECTIONS,
        "mmd_samples": MMD_SAMPLES,
        "mmd_form": MMD_FORMS,
        "temperature": TEMPERATURES,
    }
    assert {name: tuple(properties[name]["enum"]) for name in allowed} == allowed
    assert all(_default_of(fields[name]) == values[0] for name, values in allowed.items())


def test_optim_settings_match_the_schema() -> None:
    """train.runs[].optim: the schema's defaults are OptimSettings' where it has one."""
    from dialogclip.train.trainer import OptimSettings

    properties = _properties(resolve_ref(OPTIM_SCHEMA, SCHEMA))
    fields = {field.name: field for field in dataclasses.fields(OptimSettings)}
    assert set(properties) <= set(fields)
    for name, node in properties.items():
        default = _default_of(fields[name])
        if default is not dataclasses.MISSING:
            assert node["default"] == default, name
