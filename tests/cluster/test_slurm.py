"""The cluster hand-off: the demo DAG through `snakemake --executor slurm` (workflow/profiles/slurm,
run by scripts/run.sh from the controller environment .venv-controller) against a real one-node
Slurm on loopback (scripts/slurm_local.sh: munge, slurmctld, slurmd from Debian's packages).

Marker `slurm`, excluded from the default run. Needs root and the packages:
    bash scripts/slurm_local.sh install && pytest -m slurm tests/cluster
The controller environment is made here when missing (scripts/setup_controller.sh, ~1-3 min).
The test cluster declares two placeholder GPUs, so the demo's tiny GPU rules run on its CPUs
while the GPU request each job carries is read back from Slurm (`scontrol show job`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from workflow_helpers import REPO_ROOT, VENV_BIN, copy_demo, planned_jobs, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.dag]

CONTROLLER = REPO_ROOT / ".venv-controller" / "bin" / "python"
PROFILE = REPO_ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
SITE_ACCOUNT = "dialogclip-test"  # what a user writes over the profile's placeholder
NO_PROFILE = ("--workflow-profile", "none", "--default-resources", "allow_cpu=0")
# One ingest shard (download + retry pass), the tiny generator models and BLIP-2 on that shard
# (rule generate, generator=blip2),
# the tiny CLIP, its image embeddings and one evaluation: every kind of rule, 7 jobs.
TARGETS = ("results/dialogue/blip2/00000.parquet", "results/eval/retrieval/tiny/coco.json")
# Outputs a Slurm run must reproduce exactly (every job is deterministic on CPU).
COMPARED_SHARDS = (
    "results/ingest/shards/00000.parquet",
    "results/ingest/retried/shards/00000.parquet",
    "results/dialogue/blip2/00000.parquet",
)
COMPARED_JSON = ("results/eval/retrieval/tiny/coco.json",)


def _site_profile(
    folder: Path, allow_cpu: int = 1, gres_rules: tuple[str, ...] = ()
) -> tuple[Path, dict]:
    """The Slurm profile as a user edits it for this cluster, in ``folder``/slurm/config.yaml
    (scripts/run.sh picks the controller for a profile folder named slurm): the account over
    the placeholder; ``allow_cpu`` (1: the placeholder GPUs run the tiny models on the CPU);
    for ``gres_rules``, the documented gres alternative in place of ``gpu: 1``."""
    text = PROFILE.read_text().replace(
        "slurm_account: your-account", f"slurm_account: {SITE_ACCOUNT}"
    )
    assert "allow_cpu: 0" in text
    text = text.replace("allow_cpu: 0", f"allow_cpu: {allow_cpu}")
    profile = yaml.safe_load(text)
    for rule in gres_rules:
        profile["set-resources"][rule].update(gpu=0, gres="gpu:1")
        text = yaml.safe_dump(profile, sort_keys=False)
    target = folder / "slurm" / "config.yaml"
    target.parent.mkdir(parents=True)
    target.write_text(text)
    return target.parent, profile


def _env_without_venv() -> dict[str, str]:
    """The environment minus the project's .venv on PATH: the jobs must find its `dialogclip`
    through workflow/rules/common.smk, as on a cluster where nothing is activated."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != VENV_BIN]
    return {**os.environ, "PATH": os.pathsep.join(path)}


@pytest.fixture(scope="module")
def controller() -> Path:
    """.venv-controller: Snakemake + the Slurm plugin, without torch or the dialogclip command."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "setup_controller.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check = subprocess.run(
        [str(CONTROLLER), "-m", "pip", "check"], capture_output=True, text=True, timeout=300
    )
    assert check.returncode == 0 and "No broken requirements found." in check.stdout, check
    probe = subprocess.run(
        [str(CONTROLLER), "-c", "import torch"], capture_output=True, text=True, timeout=120
    )
    assert "No module named 'torch'" in probe.stderr
    assert not (CONTROLLER.parent / "dialogclip").exists()
    return CONTROLLER


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A one-node Slurm on 127.0.0.1 (partitions cpu and gpu, 2 placeholder GPUs), stopped after
    the module by its pid files."""
    script = REPO_ROOT / "scripts" / "slurm_local.sh"
    state = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(
        ["bash", str(script), "start", str(state)], capture_output=True, text=True, timeout=120
    )
    try:
        assert start.returncode == 0, (
            f"{start.stderr[-3000:]}\n(Slurm missing? run: bash scripts/slurm_local.sh install)"
        )
        yield state
    finally:
        subprocess.run(["bash", str(script), "stop", str(state)], timeout=120, check=False)


def _job_resources(output: str) -> dict[str, dict[str, dict[str, str]]]:
    """{rule: {its job's wildcards as printed: the job's `resources:`}} from a dry run's job
    listing (a job without wildcards under "")."""
    jobs: dict[str, dict[str, dict[str, str]]] = {}
    rule = None
    wildcards = ""
    for line in output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule, wildcards = match[1], ""
        elif rule and (match := re.match(r"^\s+wildcards: (.*)$", line)):
            wildcards = match[1]
        elif rule and (match := re.match(r"^\s+resources: (.*)$", line)):
            pairs = (item.split("=", 1) for item in match[1].split(", "))
            jobs.setdefault(rule, {})[wildcards] = dict(pairs)
            rule = None
    return jobs


def _snakemake_command(python: Path, workdir: Path) -> list[str]:
    snakefile = str(REPO_ROOT / "Snakefile")
    return [str(python), "-m", "snakemake", "--snakefile", snakefile, "--directory", str(workdir)]


def _dry_run(python: Path, workdir: Path, *args: str, ok: bool = True) -> str:
    result = subprocess.run(
        [*_snakemake_command(python, workdir), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert (result.returncode == 0) == ok, result.stdout[-3000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def test_profile_places_every_gpu_rule(controller: Path, tmp_path: Path) -> None:
    """On the whole demo DAG: every rule that declares a GPU goes to the profile's GPU partition
    with the profile's GPUs, memory and wall time, or the rule's own where the profile leaves
    one out (generate: per generator); every other rule to the CPU partition; and every rule the
    profile names exists (a typo would be silently ignored by Snakemake)."""
    workdir = copy_demo(tmp_path / "demo")
    # As shipped, the profile's account is a placeholder: the run refuses it.
    refused = _dry_run(controller, workdir, "--workflow-profile", str(PROFILE.parent), ok=False)
    assert "default-resources slurm_account is still the placeholder 'your-account'" in refused
    site, profile = _site_profile(tmp_path)
    declared = _job_resources(_dry_run(VENV_BIN / "python", workdir, *NO_PROFILE, "--cores", "2"))
    placed = _job_resources(_dry_run(controller, workdir, "--workflow-profile", str(site)))
    assert placed.keys() == declared.keys()

    assert {rule: jobs.keys() for rule, jobs in placed.items()} == {
        rule: jobs.keys() for rule, jobs in declared.items()
    }

    gpu_rules = {
        rule for rule, jobs in declared.items() if any(int(j.get("gpu", 0)) for j in jobs.values())
    }
    assert {"generate", "embed_eval_images"} <= gpu_rules
    cpu_partition = profile["default-resources"]["slurm_partition"]
    for rule, jobs in placed.items():
        for wildcards, resources in jobs.items():
            if rule in gpu_rules:
                wanted = profile["set-resources"].get(rule, {})
                assert "gpu" in wanted, f"{rule} declares a GPU; the profile does not place it"
                assert wanted["slurm_partition"] != cpu_partition, rule
                for key in ("slurm_partition", "gpu"):
                    assert resources[key] == str(wanted[key]), (rule, key)
                for key in ("mem_mb", "runtime"):
                    own = declared[rule][wildcards][key]
                    assert resources[key] == str(wanted.get(key, own)), (rule, wildcards, key)
            else:
                assert resources["slurm_partition"] == cpu_partition, rule
                assert "gpu" not in resources and "gres" not in resources, rule
    # Generation's memory and wall time differ per generator, on Slurm too.
    hosts: dict[str, set[tuple[str, str]]] = {}
    for wildcards, resources in placed["generate"].items():
        generator = dict(item.split("=", 1) for item in wildcards.split(", "))["generator"]
        hosts.setdefault(generator, set()).add((resources["mem_mb"], resources["runtime"]))
    assert hosts.keys() == {"blip2", "llava"} and all(len(h) == 1 for h in hosts.values())
    assert hosts["blip2"] != hosts["llava"]

    listed = subprocess.run(
        [*_snakemake_command(controller, workdir), "--list-rules", *NO_PROFILE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    rules = set(listed.stdout.split())
    named = set(profile["set-resources"]) | set(profile["set-threads"])
    assert named <= rules, f"profile names unknown rules: {sorted(named - rules)}"


def _slurm_jobs() -> list[dict[str, str]]:
    """Every job the test cluster knows (finished ones stay listed for MinJobAge=300 s)."""
    output = subprocess.run(
        ["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    jobs = []
    for line in output.splitlines():
        fields = dict(item.partition("=")[::2] for item in line.split(" ") if "=" in item)
        if fields.get("Comment", "").startswith("rule_"):
            jobs.append(fields)
    return jobs


def _rule_of(job: dict[str, str]) -> str:
    # The plugin's comment: rule_<rule>[_wildcards_<values>].
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def _time_limit(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def _shard_rows(path: Path, workdir: Path) -> list[dict]:
    # Download errors name the absolute path of the missing demo image: compare it relatively.
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        if row.get("error_message"):
            row["error_message"] = row["error_message"].replace(str(workdir), "<demo>")
    return rows


def _run_through_slurm(profile: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The documented command (docs/cluster.md) with the edited profile; run.sh picks
    .venv-controller for it. --verbose: the plugin then logs each sbatch call."""
    command = ["bash", "scripts/run.sh", "--workflow-profile", str(profile)]
    command += ["--directory", str(workdir), "--verbose", *args]
    # No slurmdbd on the test cluster: squeue instead of sacct, first status query after 2 s.
    command += ["--slurm-status-command", "squeue"]
    command += ["--slurm-init-seconds-before-status-checks", "2"]
    return subprocess.run(
        ["timeout", "1500", *command],
        cwd=REPO_ROOT,
        env=_env_without_venv(),
        capture_output=True,
        text=True,
    )


def _sbatch_calls(output: str) -> dict[str, list[str]]:
    """{rule: the sbatch command lines the plugin ran for its jobs} from a --verbose run."""
    calls: dict[str, list[str]] = {}
    for line in output.splitlines():
        if "sbatch call: " in line:
            call = line.split("sbatch call: ", 1)[1]
            rule = re.search(r"--comment '?rule_(\w+?)(?:_wildcards_|'| )", call)[1]
            calls.setdefault(rule, []).append(call)
    return calls


@pytest.mark.timeout(2400)
def test_demo_subset_through_slurm(controller: Path, slurm_cluster: Path, tmp_path: Path) -> None:
    site, profile = _site_profile(tmp_path / "site")
    local = copy_demo(tmp_path / "local")
    planned = planned_jobs(local, *TARGETS)
    # The rules' own resources, for what the profile leaves to them (generate: memory, time).
    declared = _job_resources(
        _dry_run(VENV_BIN / "python", local, *TARGETS, *NO_PROFILE, "--cores", "2")
    )
    reference = snakemake(local, *TARGETS, timeout=1200)
    assert reference.returncode == 0, reference.stderr[-4000:]

    workdir = copy_demo(tmp_path / "slurm")
    result = _run_through_slurm(site, workdir, *TARGETS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    n_jobs = sum(planned.values())
    assert f"{n_jobs} of {n_jobs} steps (100%) done" in result.stderr

    # The sbatch lines: the account; a GPU rule's `gpu: 1` as --gpus=1, never also a --gres.
    calls = _sbatch_calls(result.stdout + result.stderr)
    assert Counter({rule: len(c) for rule, c in calls.items()}) == planned
    for rule, rule_calls in calls.items():
        for call in rule_calls:
            assert f" -A {SITE_ACCOUNT} " in call, call
            assert "--gres" not in call, call
            wanted = profile["set-resources"].get(rule, {}).get("gpu")
            assert ("--gpus=" in call) == bool(wanted), call
            if wanted:
                assert call.count("--gpus=") == 1 and f"--gpus={wanted}" in call, call

    # What Slurm received: one job per planned job, each with the profile's request.
    jobs = _slurm_jobs()
    assert Counter(_rule_of(job) for job in jobs) == planned
    cpu_partition = profile["default-resources"]["slurm_partition"]
    gpu_rules = set()
    for job in jobs:
        rule = _rule_of(job)
        assert job["JobState"] == "COMPLETED", job
        wanted = profile["set-resources"].get(rule, {})
        if wanted.get("gpu"):
            gpu_rules.add(rule)
            (own,) = declared[rule].values()  # one job per GPU rule among the targets
            mem_mb, runtime = (
                wanted.get("mem_mb", own["mem_mb"]),
                wanted.get("runtime", own["runtime"]),
            )
            assert job["Partition"] == wanted["slurm_partition"], job
            assert job["TresPerJob"] == f"gres:gpu:{wanted['gpu']}", job
            assert job["MinMemoryNode"] == f"{mem_mb}M", job
            assert job["TimeLimit"] == _time_limit(int(runtime)), job
            assert job["NumCPUs"] == str(profile["set-threads"][rule]), job
        else:
            assert job["Partition"] == cpu_partition, job
            assert "TresPerJob" not in job and "TresPerNode" not in job, job
            if rule in profile["set-threads"]:
                assert job["NumCPUs"] == str(profile["set-threads"][rule]), job
    assert gpu_rules == {"generate", "embed_eval_images", "eval_retrieval"}
    # The plugin's comment carries the wildcards: the one generation job is BLIP-2's, shard 0.
    (generation,) = (job["Comment"] for job in jobs if _rule_of(job) == "generate")
    assert set(generation.split("_wildcards_")[1].split("_")) == {"blip2", "00000"}, generation

    # Every job's Slurm log is kept, the successful ones' too.
    logs = {path.stem for path in (workdir / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert {job["JobId"] for job in jobs} <= logs

    # The same results as the local run.
    for name in COMPARED_SHARDS:
        assert _shard_rows(workdir / name, workdir) == _shard_rows(local / name, local), name
    for name in COMPARED_JSON:
        assert json.loads((workdir / name).read_text()) == json.loads((local / name).read_text())

    # The gres alternative as documented (gpu: 0 beside gres), and a profile that does not allow
    # the CPU: generation goes out with --gres alone, and the job, given Slurm's GPU but seeing
    # none (placeholder devices), stops at once naming them.
    gres_site, _ = _site_profile(tmp_path / "gres", allow_cpu=0, gres_rules=("generate",))
    generation = "results/dialogue/blip2/00000.parquet"
    stopped = _run_through_slurm(gres_site, workdir, generation, "--forcerun", "generate")
    assert stopped.returncode != 0
    (call,) = _sbatch_calls(stopped.stdout + stopped.stderr)["generate"]
    assert " --gres=gpu:1" in call and "--gpus" not in call, call
    job_log = (workdir / "logs" / "generate" / "blip2" / "00000.log").read_text()
    assert "this job was given GPUs (Slurm's GPUs 0) but torch sees none" in job_log
    (gres_job,) = [
        job for job in _slurm_jobs() if _rule_of(job) == "generate" and job["JobState"] == "FAILED"
    ]
    assert gres_job["TresPerNode"] == "gres:gpu:1" and "TresPerJob" not in gres_job, gres_job
