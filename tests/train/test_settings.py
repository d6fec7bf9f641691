"""The `train` config section: schema, typed runs, and the files a run reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from dialogclip.core.config import ConfigError, load_yaml, validate_config
from dialogclip.models.naming import image_model_key
from dialogclip.train.settings import TrainRun, train_settings_from_dict

RUN = {
    "name": "draft-b32",
    "method": "draft",
    "architecture": "ViT-B-32",
    "pretrained": "laion400m_e32",
    "generator": "llava",
}


def _config(repo_root: Path, train: dict) -> dict:
    config = load_yaml(repo_root / "config.yaml")
    config["train"] = train
    return config


def test_schema_fills_the_defaults(repo_root: Path) -> None:
    config = validate_config(
        _config(repo_root, {"runs": [dict(RUN)]}), repo_root / "workflow/schemas/config.schema.yaml"
    )
    assert config["train"] == {
        "activate": False,
        "runs": [
            {
                **RUN,
                "quickgelu": "auto",
                "sample_form": None,
                "include_truncated": False,
                "trainable_blocks": None,
                # The thesis' ViT-B-32 settings (batch 1024, lr 1e-5, wd 0.1, 2 epochs).
                "optim": {
                    "lr": 1.0e-5,
                    "weight_decay": 0.1,
                    "decay_embeddings": False,
                    "batch_size": 1024,
                    "epochs": 2,
                    "warmup_steps": 500,
                    "grad_clip": None,
                    "seed": 0,
                    "precision": "auto",
                },
                "loss": {},
                "evaluate": {"variants": ["embedding_blend"], "thesis_rows": {}},
            }
        ],
    }


def test_schema_names_a_bad_key(repo_root: Path) -> None:
    bad = {"runs": [{**RUN, "method": "lora", "batch": 3}]}
    with pytest.raises(ConfigError) as err:
        validate_config(_config(repo_root, bad), repo_root / "workflow/schemas/config.schema.yaml")
    assert "train.runs.0: unknown key(s) ['batch']" in str(err.value)
    assert "train.runs.0.method: 'lora' is not one of ['third_tower', 'draft']" in str(err.value)


def test_runs_share_the_image_cache_and_pick_their_form() -> None:
    settings = train_settings_from_dict(
        {"activate": True, "runs": [RUN, {**RUN, "name": "c3m", "method": "third_tower"}]}
    )
    draft, third = settings.runs
    assert (draft.form, third.form) == ("pairs", "concatenated")
    assert (
        draft.image_cache("00003")
        == third.image_cache("00003")
        == (f"results/train/emb/image/{image_model_key('ViT-B-32', 'laion400m_e32')}/00003.arrow")
    )
    assert (draft.uses_caption_cache, third.uses_caption_cache) == (False, True)
    assert draft.rows_file("00003") == "results/train/rows/llava/ViT-B-32/pairs/00003.arrow"
    truncated = TrainRun(**{**RUN, "include_truncated": True, "sample_form": "concatenated"})
    assert truncated.rows_stats("00003") == (
        "results/train/rows/llava/ViT-B-32/concatenated-with_truncated/stats/00003.json"
    )


def test_rows_params_hold_only_the_text_settings_used() -> None:
    text = {"qa_template": "{question} {answer}", "pair_separator": " ", "long_texts": "truncate"}
    pairs = TrainRun(**RUN).rows_params(text)
    assert pairs == {
        "architecture": "ViT-B-32",
        "sample_form": "pairs",
        "include_truncated": False,
        "text": {"qa_template": "{question} {answer}"},
    }
    concatenated = TrainRun(**{**RUN, "sample_form": "concatenated"}).rows_params(text)
    assert concatenated["text"] == text
    assert TrainRun(**RUN).tower_params() == {
        "architecture": "ViT-B-32",
        "pretrained": "laion400m_e32",
        "quickgelu": "auto",
    }


def test_bad_runs_are_named() -> None:
    with pytest.raises(ConfigError, match=r"train.runs: duplicated name\(s\) \['draft-b32'\]"):
        train_settings_from_dict({"runs": [RUN, RUN]})
    with pytest.raises(ConfigError, match=r"train.runs\[x\].method must be one of"):
        TrainRun(**{**RUN, "name": "x", "method": "lora"})
    with pytest.raises(
        ConfigError, match=r"train.runs\[0\]: missing required key\(s\) \['generator'\]"
    ):
        train_settings_from_dict({"runs": [{k: v for k, v in RUN.items() if k != "generator"}]})


def _entries(run: dict) -> list[tuple]:
    """(name, text_variant, beta, thesis_row) of each evaluation entry the run adds."""
    (train_run,) = train_settings_from_dict({"runs": [run]}).runs
    return [(e.name, e.text_variant, e.beta, e.thesis_row) for e in train_run.eval_entries()]


def test_a_third_tower_is_evaluated_over_the_thesis_beta_sweep_by_default() -> None:
    assert _entries({**RUN, "name": "c3m", "method": "third_tower"}) == [
        ("c3m-beta1", "embedding_blend", 1.0, None),
        ("c3m-beta0.95", "embedding_blend", 0.95, None),
        ("c3m-beta0.9", "embedding_blend", 0.9, None),
        ("c3m-beta0.8", "embedding_blend", 0.8, None),
        ("c3m-beta0.6", "embedding_blend", 0.6, None),
        ("c3m-beta0", "embedding_blend", 0.0, None),  # "only 3rd"
    ]


def test_draft_blends_by_weights_only_strictly_between_0_and_1() -> None:
    evaluate = {"variants": ["embedding_blend", "weight_blend"], "betas": [1, 0.9, 0]}
    assert _entries({**RUN, "evaluate": evaluate}) == [
        ("draft-b32-beta1", "embedding_blend", 1.0, None),
        ("draft-b32-beta0.9", "embedding_blend", 0.9, None),
        ("draft-b32-beta0", "embedding_blend", 0.0, None),
        ("draft-b32-wblend-beta0.9", "weight_blend", 0.9, None),  # at 0 and 1: the same model
    ]
    assert [name for name, *_ in _entries(RUN)] == ["draft-b32-beta0.9", "draft-b32-beta0"]


def test_thesis_rows_link_the_embedding_blends_by_beta() -> None:
    """Keys as YAML reads them (int 0, float 0.9); a beta without a row links none."""
    evaluate = {
        "variants": ["embedding_blend", "weight_blend"],
        "betas": [0.9, 0.5, 0],
        "thesis_rows": {0.9: "draft-blend", 0: ["draft-alone", "draft-alone-vqa"]},
    }
    assert _entries({**RUN, "evaluate": evaluate}) == [
        ("draft-b32-beta0.9", "embedding_blend", 0.9, "draft-blend"),
        ("draft-b32-beta0.5", "embedding_blend", 0.5, None),
        ("draft-b32-beta0", "embedding_blend", 0.0, ["draft-alone", "draft-alone-vqa"]),
        ("draft-b32-wblend-beta0.9", "weight_blend", 0.9, None),
        ("draft-b32-wblend-beta0.5", "weight_blend", 0.5, None),
    ]


def test_an_evaluation_entry_blends_the_trained_tower_into_the_runs_model() -> None:
    (train_run,) = train_settings_from_dict(
        {"runs": [{**RUN, "quickgelu": True, "evaluate": {"datasets": ["vqa_real"]}}]}
    ).runs
    entry = train_run.eval_entries()[0]
    assert entry.as_dict() == {
        "name": "draft-b32-beta0.9",
        "architecture": "ViT-B-32",
        "pretrained": "laion400m_e32",
        "quickgelu": True,
        "text_variant": "embedding_blend",
        "other": "results/train/runs/draft-b32/final.safetensors",
        "beta": 0.9,
        "datasets": ["vqa_real"],
        "thesis_row": None,
    }
    # The baseline's image tower, hence its image-embedding cache.
    assert entry.image_model == image_model_key("ViT-B-32", "laion400m_e32", True)


def test_a_bad_evaluate_section_is_named() -> None:
    with pytest.raises(ConfigError, match=r"train.runs\[0\].evaluate: unknown key\(s\) \['beta'\]"):
        train_settings_from_dict({"runs": [{**RUN, "evaluate": {"beta": 0.9}}]})
    with pytest.raises(
        ConfigError, match=r"train.runs\[draft-b32\].evaluate.variants: 'plain' is not a blend"
    ):
        train_settings_from_dict({"runs": [{**RUN, "evaluate": {"variants": ["plain"]}}]})
