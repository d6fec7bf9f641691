"""The workflow refuses a bad config or missing evaluation data when the DAG is built (not hours
later inside a job), naming the key or the file; profiles load where Snakemake looks for them."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from demo_blends import BLENDS
from workflow_helpers import (
    CPU_DEFAULT_RESOURCES,
    REPO_ROOT,
    VENV_BIN,
    copy_demo,
    planned,
    pretend_generators_fetched,
    snakemake,
)

pytestmark = pytest.mark.dag


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the demo's inputs (nothing run: dry runs only)."""
    return copy_demo(tmp_path_factory.mktemp("config") / "demo")


def _dry_run_with(demo: Path, tmp_path: Path, edit) -> subprocess.CompletedProcess[str]:
    """Dry-run a copy of the demo whose config.yaml is edited (not a --configfile: Snakemake
    merges that into config.yaml, so a removed key would stay)."""
    workdir = copy_demo(tmp_path / "demo", source=demo)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    edit(config)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return snakemake(workdir, "--dry-run", timeout=300)


def _entry(config: dict, name: str) -> dict:
    return next(entry for entry in config["evaluate"]["models"] if entry["name"] == name)


def _blend(config: dict, variant: str, missing: str) -> None:
    """Add the blend entry of ``variant`` that the report tests add (``tiny-<variant>``,
    tests/demo_blends.py), less the key ``missing``."""
    entry = copy.deepcopy(next(blend for blend in BLENDS if blend["text_variant"] == variant))
    entry.pop(missing)
    config["evaluate"]["models"].append(entry)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: _blend(c, "embedding_blend", missing="beta"),
            "evaluate.models (tiny-embedding-blend): text_variant embedding_blend needs an "
            "explicit `beta`",
        ),
        (
            lambda c: _blend(c, "weight_blend", missing="other"),
            "evaluate.models (tiny-weight-blend): text_variant weight_blend needs an explicit "
            "`other`",
        ),
        (
            lambda c: _entry(c, "tiny").update(beta=0.5),
            "evaluate.models (tiny): `beta` is only used by the blend variants",
        ),
        (
            lambda c: c["evaluate"]["vqa_real"].pop("questions"),
            "evaluate.vqa_real: missing required key(s) ['questions']",
        ),
        (
            lambda c: c["evaluate"]["models"].append(dict(_entry(c, "tiny"))),
            "evaluate.models: duplicated name(s) ['tiny']",
        ),
        (
            lambda c: c["text"].update(qa_template="{answer} only"),
            "text.qa_template must contain {question} and {answer}",
        ),
    ],
    ids=[
        "blend-without-beta",
        "blend-without-other",
        "plain-with-beta",
        "vqa-without-questions",
        "duplicate-name",
        "bad-text-form",
    ],
)
def test_cross_field_rules_fail_at_dag_build(demo: Path, tmp_path: Path, edit, message) -> None:
    def add_text(config: dict) -> None:
        config.setdefault("text", {})
        edit(config)

    result = _dry_run_with(demo, tmp_path, add_text)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_a_missing_evaluation_file_stops_the_dag_naming_it(demo: Path, tmp_path: Path) -> None:
    result = _dry_run_with(
        demo, tmp_path, lambda c: c["evaluate"]["coco"].update(annotations="eval/gone.json")
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "evaluation file not found: eval/gone.json (evaluate.coco.annotations)" in output
    assert "published at" in output and "dataset_coco.json" in output


def test_default_config_with_only_the_tsv_names_the_first_missing_evaluation_file(
    tmp_path: Path,
) -> None:
    """The thesis config on a machine that has the CC3M TSV but no COCO/VQA files yet."""
    (tmp_path / "resources" / "cc3m").mkdir(parents=True)
    (tmp_path / "resources" / "cc3m" / "Train_GCC-training.tsv").write_text("a dog\thttp://x/1\n")
    pretend_generators_fetched(tmp_path)
    result = snakemake(
        tmp_path, "--dry-run", "--configfile", str(REPO_ROOT / "config.yaml"), timeout=300
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "resources/coco/dataset_coco.json (evaluate.coco.annotations)" in output
    # no job was planned (the rule's name is in the echoed command: its --set-threads)
    assert "rule embed_eval_images:" not in output.split("WorkflowError")[0]


def test_evaluation_switched_off_needs_no_evaluation_files(tmp_path: Path) -> None:
    (tmp_path / "resources" / "cc3m").mkdir(parents=True)
    (tmp_path / "resources" / "cc3m" / "Train_GCC-training.tsv").write_text("a dog\thttp://x/1\n")
    config = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    config["evaluate"]["activate"] = False
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    pretend_generators_fetched(tmp_path)
    result = snakemake(tmp_path, "--dry-run", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "rule download_shard:" in output and "rule embed_eval_images:" not in output


def test_an_unknown_dataset_name_matches_no_rule(demo: Path) -> None:
    result = snakemake(demo, "--dry-run", "results/eval/retrieval/tiny/vqa_real.json")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "MissingRuleException" in output
    assert "No rule to produce results/eval/retrieval/tiny/vqa_real.json" in output


def _llava_only(config: dict) -> None:
    config["generate"]["generators"] = ["llava"]
    config["train"]["activate"] = False  # the demo's third-tower run reads BLIP-2 dialogue


@pytest.mark.parametrize(
    ("edit", "target"),
    [
        (lambda config: None, "results/dialogue/minigpt4/00000.parquet"),
        (_llava_only, "results/dialogue/blip2/00000.parquet"),
        (_llava_only, "results/dialogue/blip2/summary.json"),
    ],
    ids=["unknown-generator", "switched-off-shard", "switched-off-summary"],
)
def test_a_generator_not_switched_on_matches_no_rule(
    demo: Path, tmp_path: Path, edit, target: str
) -> None:
    """The {generator} wildcard admits only the generators generate.generators switches on."""
    workdir = copy_demo(tmp_path / "demo", source=demo)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    edit(config)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--dry-run", target, timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "MissingRuleException" in output
    assert f"No rule to produce {target}" in output
    switched_on = "results/dialogue/llava/00000.parquet"
    assert planned(workdir, switched_on).by("generate", "generator") == {"llava": 1}


def _plain_snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """snakemake as a user types it, from ``cwd``, profiles left to Snakemake."""
    return subprocess.run(
        [str(VENV_BIN / "snakemake"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
    )


def test_a_plain_run_loads_the_default_profile(demo: Path) -> None:
    result = _plain_snakemake(REPO_ROOT, "--dry-run", "--directory", str(demo))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "Using workflow specific profile profiles/default for setting default command line "
        "arguments." in result.stderr
    )
    # Its settings apply: printshellcmds shows the commands in the dry run.
    assert "dialogclip ingest-shard" in result.stdout
    without = _plain_snakemake(
        REPO_ROOT,
        *("--dry-run", "--directory", str(demo), "--workflow-profile", "none"),
        *CPU_DEFAULT_RESOURCES,
    )
    assert without.returncode == 0, without.stderr[-3000:]
    assert "dialogclip ingest-shard" not in without.stdout


def test_the_demo_profile_replaces_the_default_one(demo: Path) -> None:
    # --directory on the command line overrides the profile's (resources/demo itself).
    result = _plain_snakemake(
        REPO_ROOT,
        "--dry-run",
        "--workflow-profile",
        "workflow/profiles/demo",
        "--directory",
        str(demo),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "Using workflow specific profile workflow/profiles/demo for setting default command "
        "line arguments." in result.stderr
    )
    assert "profiles/default" not in result.stderr
    # Its set-resources reach the rules: the image embeddings' batch size, not the rule's own.
    profile = yaml.safe_load((REPO_ROOT / "workflow/profiles/demo/config.yaml").read_text())
    batch_size = str(profile["set-resources"]["embed_eval_images"]["batch_size"])
    rule_default = {job.resources["batch_size"] for job in planned(demo).of("embed_eval_images")}
    assert rule_default and batch_size not in rule_default
    commands = [line for line in result.stdout.splitlines() if " embed-images " in line]
    assert commands and all(f" --batch-size {batch_size} " in line for line in commands)
