"""The one evaluation entry type (``dialogclip.models.eval_entry``): what it accepts, the names
it gives, and the dicts the workflow hands to the evaluation jobs and the report."""

from __future__ import annotations

import pytest

from dialogclip.core.config import ConfigError, section_from_dict
from dialogclip.models.eval_entry import EvalEntry
from dialogclip.models.naming import image_model_key
from dialogclip.models.openclip import ClipSpec

PLAIN = {"name": "b32", "architecture": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
BLEND = {**PLAIN, "name": "b32-g", "text_variant": "embedding_blend", "other": "g.safetensors"}


def test_a_plain_entry_has_no_beta_and_reads_as_the_original_tower() -> None:
    entry = EvalEntry(**PLAIN)
    assert (entry.beta, entry.blend_weight, entry.other) == (None, 1.0, None)
    assert entry.describe() == "ViT-B-32 (laion2b_s34b_b79k)"
    assert entry.fields()["beta"] is None  # an include filter on beta never matches it


def test_a_blend_describes_its_beta() -> None:
    entry = EvalEntry(**BLEND, beta=0.0)
    assert entry.blend_weight == 0.0  # not the plain entry's 1: beta 0 is G alone
    assert entry.describe() == "ViT-B-32 (laion2b_s34b_b79k), embedding_blend beta 0"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (BLEND, "evaluate.models (b32-g): text_variant embedding_blend needs an explicit `beta`"),
        ({**PLAIN, "beta": 0.9}, "evaluate.models (b32): `beta` is only used by the blend"),
        ({**BLEND, "beta": 1.5}, "evaluate.models (b32-g): beta must be in [0, 1], got 1.5"),
        ({**PLAIN, "text_variant": "mix"}, "evaluate.models (b32): text_variant must be one of"),
        ({**PLAIN, "datasets": ["flickr"]}, "evaluate.models (b32): unknown datasets ['flickr']"),
    ],
)
def test_a_bad_entry_is_named(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        EvalEntry(**fields)
    assert str(err.value).startswith(message)


def test_thesis_rows_are_none_one_or_several() -> None:
    assert EvalEntry(**PLAIN).thesis_rows == ()
    assert EvalEntry(**PLAIN, thesis_row="clip-b32").thesis_rows == ("clip-b32",)
    assert EvalEntry(**PLAIN, thesis_row=["a", "b"]).thesis_rows == ("a", "b")


def test_the_jobs_get_every_field_but_the_thesis_row() -> None:
    """Linking an entry to the thesis must not change an evaluation job's params."""
    config = {**BLEND, "beta": 0.9, "thesis_row": "c3m", "datasets": ["coco"]}
    entry = section_from_dict(EvalEntry, config, "evaluate.models[0]")
    assert entry.as_dict() == {**config, "quickgelu": "auto"}
    job = {key: value for key, value in config.items() if key != "thesis_row"}
    assert entry.job_dict() == {**job, "quickgelu": "auto"}


def test_the_image_tower_names_its_cache() -> None:
    entry = EvalEntry(**BLEND, beta=0.9, quickgelu=True)
    tower = entry.image_tower()
    assert tower == {
        "architecture": "ViT-B-32",
        "pretrained": "laion2b_s34b_b79k",
        "quickgelu": True,
    }
    assert entry.image_model == image_model_key(**tower)
    assert entry.spec == ClipSpec("ViT-B-32", "laion2b_s34b_b79k", True)
