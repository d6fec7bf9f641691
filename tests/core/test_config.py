"""Config validation: every problem is reported with the dotted path of the key at fault."""

import copy
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from dialogclip.core.config import ConfigError, section_from_dict, validate_config

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture
def thesis_config(repo_root: Path) -> dict:
    return yaml.safe_load((repo_root / "config.yaml").read_text())


def test_shipped_configs_are_valid(repo_root: Path, thesis_config: dict) -> None:
    validate_config(thesis_config, SCHEMA)
    demo = yaml.safe_load((repo_root / "resources" / "demo" / "config.yaml").read_text())
    validate_config(demo, SCHEMA)


def test_defaults_are_filled(thesis_config: dict) -> None:
    config = copy.deepcopy(thesis_config)
    del config["cc3m"]["shard_size"]
    validate_config(config, SCHEMA)
    assert config["cc3m"]["shard_size"] == 10_000


def test_defaults_are_filled_inside_list_items(thesis_config: dict) -> None:
    validate_config(thesis_config, SCHEMA)
    assert all(model["text_variant"] == "plain" for model in thesis_config["evaluate"]["models"])


def test_wrong_type_names_the_key(thesis_config: dict) -> None:
    thesis_config["cc3m"]["shard_size"] = "ten thousand"
    with pytest.raises(ConfigError, match=r"cc3m\.shard_size: 'ten thousand' is not of type"):
        validate_config(thesis_config, SCHEMA)


def test_missing_required_key_is_named(thesis_config: dict) -> None:
    del thesis_config["cc3m"]["tsv"]
    with pytest.raises(ConfigError, match=r"cc3m: missing required key\(s\) \['tsv'\]"):
        validate_config(thesis_config, SCHEMA)


def test_unknown_key_is_named(thesis_config: dict) -> None:
    thesis_config["cc3m"]["shardsize"] = 5
    with pytest.raises(ConfigError, match=r"cc3m: unknown key\(s\) \['shardsize'\]"):
        validate_config(thesis_config, SCHEMA)


def test_all_problems_are_listed_at_once(thesis_config: dict) -> None:
    thesis_config["cc3m"]["limit"] = -3
    thesis_config["typo_section"] = {}
    with pytest.raises(ConfigError, match=r"2 problem") as info:
        validate_config(thesis_config, SCHEMA)
    assert "cc3m.limit" in str(info.value) and "typo_section" in str(info.value)


@dataclass(frozen=True)
class _Inner:
    size: int = 1


@dataclass(frozen=True)
class _Outer:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner)


def test_section_from_dict_builds_nested_dataclasses() -> None:
    built = section_from_dict(_Outer, {"name": "y", "inner": {"size": 3}}, "outer")
    assert built == _Outer(name="y", inner=_Inner(size=3))
    with pytest.raises(ConfigError, match=r"outer\.inner: unknown key\(s\) \['sise'\]"):
        section_from_dict(_Outer, {"inner": {"sise": 3}}, "outer")


@pytest.mark.dag
def test_workflow_refuses_a_bad_config_naming_the_key(tmp_path: Path, repo_root: Path) -> None:
    config = yaml.safe_load((repo_root / "config.yaml").read_text())
    config["cc3m"]["shard_size"] = "many"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        ["snakemake", "-n", "--snakefile", str(repo_root / "Snakefile"), "--configfile", str(bad)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{repo_root / '.venv' / 'bin'}:{os.environ['PATH']}"},
    )
    assert result.returncode != 0
    assert "cc3m.shard_size: 'many' is not of type 'integer'" in result.stderr + result.stdout
