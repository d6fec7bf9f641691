"""The cluster hand-off: the demo DAG through `snakemake --executor slurm` (workflow/profiles/slurm,
run by scripts/run.sh from the controller environment .venv-controller) against a real one-node
Slurm on loopback (scripts/slurm_local.sh: munge, slurmctld, slurmd from Debian's packages),
the short jobs grouped as the profile declares (docs/cluster.md, "Submissions").

Marker `slurm`, excluded from the default run. Needs root and the packages:
    bash scripts/slurm_local.sh install && pytest -m slurm tests/cluster
The controller environment is made here when missing (scripts/setup_controller.sh, ~1-3 min).
The test cluster declares two placeholder GPUs, so the demo's small GPU jobs run on its CPUs
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

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from workflow_helpers import (
    DEMO_BLOCKS,
    DEMO_RUNS,
    DEMO_SHARDS,
    REPO_ROOT,
    VENV_BIN,
    copy_demo,
    demo_after_runs,
    planned_jobs,
    snakemake,
)

from dialogclip.models.naming import image_model_key
from dialogclip.train.cache import read_embedding_cache
from dialogclip.train.rows import read_rows

pytestmark = [pytest.mark.slurm, pytest.mark.dag]

CONTROLLER = REPO_ROOT / ".venv-controller" / "bin" / "python"
PROFILE = REPO_ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
SITE_ACCOUNT = "dialogclip-test"  # what a user writes over the profile's placeholder
NO_PROFILE = ("--workflow-profile", "none", "--default-resources", "allow_cpu=0")
SHARDS = ("00000", "00001", "00002")
BLOCKS = ("00000-00001", "00002-00002")  # the demo's train.shards_per_block = 2
# The demo's one CLIP (the world's, expanded by rule world_clip from its committed file).
MODEL = image_model_key("world-clip", "results/models/world-clip.safetensors")
ROWS = "results/train/rows/blip2/world-clip/concatenated"
# Every kind of rule and every group of the profile, 18 jobs: the 3 shards' downloads and retry
# passes (group downloads), the world's BLIP-2 (committed) on each shard (rule generate), the
# world's CLIP, the training caches of both blocks (group train_caches: 2 image + 2 caption),
# the BLIP-2 rows of both blocks (group train_rows), the COCO image embeddings and the
# retrieval of the demo's `tiny` on them.
TARGETS = (
    *(
        f"results/train/emb/{tower}/{MODEL}/{block}.arrow"
        for tower in ("image", "text")
        for block in BLOCKS
    ),
    *(f"{ROWS}/{block}.arrow" for block in BLOCKS),
    "results/eval/retrieval/tiny/coco.json",
)
# What Slurm receives: one sbatch job per group and per ungrouped job, named in the plugin's
# log path by `group_<group>_<its rules>` or `rule_<rule>`: 9 submissions for the 18 jobs.
SUBMISSIONS = Counter(
    {
        "group_downloads_download_shard_retry_failed_downloads": 1,
        "group_train_caches_embed_train_captions_embed_train_images": 1,
        "group_train_rows_train_rows": 1,
        "rule_generate": 3,
        "rule_world_clip": 1,
        "rule_embed_eval_images": 1,
        "rule_eval_retrieval": 1,
    }
)
# Outputs a Slurm run must reproduce exactly (every job is deterministic on CPU).
COMPARED_SHARDS = (
    *(f"results/ingest/shards/{shard}.parquet" for shard in SHARDS),
    *(f"results/ingest/retried/shards/{shard}.parquet" for shard in SHARDS),
    *(f"results/dialogue/blip2/{shard}.parquet" for shard in SHARDS),
)
COMPARED_JSON = ("results/eval/retrieval/tiny/coco.json",)


def _site_profile(
    folder: Path, allow_cpu: int = 1, gres_rules: tuple[str, ...] = ()
) -> tuple[Path, dict]:
    """The Slurm profile as a user edits it for this cluster, in ``folder``/slurm/config.yaml
    (scripts/run.sh picks the controller for a profile folder named slurm): the account over
    the placeholder; ``allow_cpu`` (1: the placeholder GPUs run the world's small models on the
    CPU); for ``gres_rules``, the documented gres alternative in place of ``gpu: 1``."""
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
    listing (a job without wildcards under ""; a grouped job is listed indented under its group)."""
    jobs: dict[str, dict[str, dict[str, str]]] = {}
    rule = None
    wildcards = ""
    for line in output.splitlines():
        if match := re.match(r"^\s*(?:local)?rule (\w+):$", line):
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
    named = set(profile["set-resources"]) | set(profile["set-threads"]) | set(profile["groups"])
    assert named <= rules, f"profile names unknown rules: {sorted(named - rules)}"


def _group_jobs(output: str) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """The group jobs of a dry run's listing: (group name, [(rule, resources) of each member])."""
    groups: list[tuple[str, list[tuple[str, dict[str, str]]]]] = []
    members = None
    for line in output.splitlines():
        if match := re.search(r"Group job (\S+) \(jobs in lexicogr\. order\):$", line):
            members = []
            groups.append((match[1], members))
        elif match := re.match(r"^(\s*)(?:local)?rule (\w+):$", line):
            if not match[1]:
                members = None  # a top-level job: the group listed before it has ended
            elif members is not None:
                members.append((match[2], {}))
        elif members and (match := re.match(r"^\s+resources: (.*)$", line)):
            members[-1][1].update(item.split("=", 1) for item in match[1].split(", "))
    return groups


def test_profile_groups_the_short_jobs(controller: Path, tmp_path: Path) -> None:
    """On the whole demo DAG, as the Slurm profile submits it: the short jobs of each grouped
    rule are in groups of that rule's group and of at most `group-components` jobs (downloads:
    shards, each a download and its retry pass); the serial groups' jobs take the one
    `group_slot`, the downloads none; the long GPU jobs and the evaluations are never grouped."""
    site, profile = _site_profile(tmp_path)
    groups, sizes = profile["groups"], profile["group-components"]
    assert profile["resources"] == {"group_slot": 1}
    assert profile["resource-scopes"] == {"group_slot": "local"}
    workdir = copy_demo(tmp_path / "demo")
    output = _dry_run(controller, workdir, "--workflow-profile", str(site))
    found = _group_jobs(output)
    in_groups: Counter[str] = Counter()
    per_group: Counter[str] = Counter()
    for name, members in found:
        per_group[name] += 1
        rules = Counter(rule for rule, _ in members)
        in_groups += rules
        assert {groups[rule] for rule in rules} == {name}, (name, rules)
        components = rules["download_shard"] if name == "downloads" else sum(rules.values())
        assert 1 <= components <= sizes[name], (name, rules)
        for rule, resources in members:
            serial = rule not in ("download_shard", "retry_failed_downloads")
            assert resources.get("group_slot") == ("1" if serial else None), (rule, resources)
    # The demo: its shards (downloads + retries), its blocks x 2 towers of caches, its blocks x
    # 3 rows sets (BLIP-2 and LLaVA concatenated, LLaVA pairs).
    assert in_groups == {
        "download_shard": DEMO_SHARDS,
        "retry_failed_downloads": DEMO_SHARDS,
        "embed_train_images": DEMO_BLOCKS,
        "embed_train_captions": DEMO_BLOCKS,
        "train_rows": demo_after_runs(list(DEMO_RUNS))["train_rows"],
    }
    assert per_group == {"downloads": 1, "train_caches": 1, "train_rows": 1}
    planned = planned_jobs(workdir)
    assert {rule: planned[rule] for rule in in_groups} == in_groups  # every job of those rules
    assert not {"generate", "train_run", "eval_retrieval", "eval_vqa"} & set(groups)


def _slurm_jobs(ids: set[str]) -> dict[str, dict[str, str]]:
    """{Slurm job id: its record} of the jobs ``ids`` (finished ones stay listed for MinJobAge,
    30 minutes on the test cluster)."""
    output = subprocess.run(
        ["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    jobs = {}
    for line in output.splitlines():
        fields = dict(item.partition("=")[::2] for item in line.split(" ") if "=" in item)
        if fields.get("JobId") in ids:
            jobs[fields["JobId"]] = fields
    return jobs


def _submissions(controller_log: str) -> dict[str, str]:
    """{Slurm job id: `group_<group>_<rules>` or `rule_<rule>`} of every sbatch the plugin made,
    from its log lines "Job N has been submitted with SLURM jobid ID (log: .../slurm_logs/
    <group or rule>/...)"."""
    found = re.findall(
        r"has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/((?:group|rule)_\w+)/",
        controller_log,
    )
    return dict(found)


def _sbatch_calls(output: str) -> dict[str, list[str]]:
    """{`group_<group>_<rules>` or `rule_<rule>`: the sbatch command lines the plugin ran for
    them} from a --verbose run (the name is the folder of the call's --output log)."""
    calls: dict[str, list[str]] = {}
    for line in output.splitlines():
        if "sbatch call: " in line:
            call = line.split("sbatch call: ", 1)[1]
            name = re.search(r"--output '?\S*/slurm_logs/((?:group|rule)_\w+)/", call)[1]
            calls.setdefault(name, []).append(call)
    return calls


def _time_limit(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def _shard_rows(path: Path, workdir: Path) -> list[dict]:
    # Download errors name the absolute path of the missing demo image: compare it relatively.
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        if row.get("error_message"):
            row["error_message"] = row["error_message"].replace(str(workdir), "<demo>")
    return rows


def _request(job: dict[str, str]) -> tuple[str, str | None, str, str, str]:
    """What a Slurm job asked for: partition, GPUs, memory, time limit, CPUs."""
    return (
        job["Partition"],
        job.get("TresPerJob"),
        job["MinMemoryNode"],
        job["TimeLimit"],
        job["NumCPUs"],
    )


def _run_through_slurm(profile: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The documented command (docs/cluster.md) with the edited profile; run.sh picks
    .venv-controller for it. --verbose: the plugin then logs each sbatch call."""
    command = ["bash", "scripts/run.sh", "--workflow-profile", str(profile)]
    command += ["--directory", str(workdir), "--verbose", *args]
    # No slurmdbd on the test cluster: squeue instead of sacct, first status query after 2 s.
    command += ["--slurm-status-command", "squeue"]
    command += ["--slurm-init-seconds-before-status-checks", "2"]
    return subprocess.run(
        ["timeout", "2400", *command],
        cwd=REPO_ROOT,
        env=_env_without_venv(),
        capture_output=True,
        text=True,
    )


@pytest.mark.timeout(3600)
def test_demo_subset_through_slurm(controller: Path, slurm_cluster: Path, tmp_path: Path) -> None:
    """18 demo jobs through Slurm as the profile submits them: one sbatch job per group (each
    group asking for what its jobs need together) and per ungrouped job, 9 in all; the
    results equal a local run's."""
    site, profile = _site_profile(tmp_path / "site")
    local = copy_demo(tmp_path / "local")
    planned = planned_jobs(local, *TARGETS)
    assert sum(planned.values()) == 18
    reference = snakemake(local, *TARGETS, timeout=1800)
    assert reference.returncode == 0, reference.stderr[-4000:]

    workdir = copy_demo(tmp_path / "slurm")
    result = _run_through_slurm(site, workdir, *TARGETS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    n_jobs = sum(planned.values())
    assert f"{n_jobs} of {n_jobs} steps (100%) done" in result.stderr

    # The sbatch submissions: one per group and per ungrouped job.
    submitted = _submissions(result.stdout + result.stderr)
    assert Counter(submitted.values()) == SUBMISSIONS
    jobs = _slurm_jobs(set(submitted))
    assert jobs.keys() == submitted.keys()
    assert all(job["JobState"] == "COMPLETED" for job in jobs.values()), jobs
    requests: dict[str, set] = {}
    for slurm_id, name in submitted.items():
        requests.setdefault(name, set()).add(_request(jobs[slurm_id]))
    cpu, gpu = profile["default-resources"]["slurm_partition"], "gpu"
    wanted = profile["set-resources"]
    threads = profile["set-threads"]
    caches = wanted["embed_train_images"], wanted["embed_train_captions"]

    def own_gpu_request(rule: str) -> tuple[str, str, str, str, str]:
        """An ungrouped GPU job's request: the profile's memory, wall time and threads."""
        mem_mb, runtime = wanted[rule]["mem_mb"], wanted[rule]["runtime"]
        return (gpu, "gres:gpu:1", f"{mem_mb}M", _time_limit(runtime), str(threads[rule]))

    assert requests == {
        # The 3 shards side by side (no group slot): 3 x 2 CPUs and 3 x 4000 MB, then the 3
        # retry passes; wall time: a download's, then a retry pass's.
        "group_downloads_download_shard_retry_failed_downloads": {
            (cpu, None, "12000M", _time_limit(120 + 60), str(3 * threads["download_shard"]))
        },
        # Serial groups: one GPU, the largest job's memory and CPUs, the sum of the wall times
        # (2 image caches, 2 caption caches; 2 rows blocks).
        "group_train_caches_embed_train_captions_embed_train_images": {
            (
                gpu,
                "gres:gpu:1",
                f"{caches[0]['mem_mb']}M",
                _time_limit(2 * caches[0]["runtime"] + 2 * caches[1]["runtime"]),
                "4",  # embed_train_images' own threads
            )
        },
        "group_train_rows_train_rows": {(cpu, None, "4000M", _time_limit(2 * 15), "1")},
        # Ungrouped: each job's own request (generate: BLIP-2's memory and wall time).
        "rule_generate": {
            (gpu, "gres:gpu:1", "32000M", _time_limit(180), str(threads["generate"]))
        },
        "rule_embed_eval_images": {own_gpu_request("embed_eval_images")},
        "rule_eval_retrieval": {own_gpu_request("eval_retrieval")},
        "rule_world_clip": {(cpu, None, "2000M", _time_limit(10), "1")},
    }

    # The sbatch lines: the account; a GPU request (the submissions above given gres:gpu:1) as
    # the profile's `gpu: 1`, --gpus=1, never also a --gres.
    calls = _sbatch_calls(result.stdout + result.stderr)
    assert Counter({name: len(c) for name, c in calls.items()}) == SUBMISSIONS
    gpu_submissions = {name for name, asked in requests.items() if any(r[1] for r in asked)}
    assert len(gpu_submissions) == 4  # train_caches, generate, embed_eval_images, eval_retrieval
    for name, name_calls in calls.items():
        for call in name_calls:
            assert f" -A {SITE_ACCOUNT} " in call, call
            assert "--gres" not in call, call
            assert call.count("--gpus=") == int(name in gpu_submissions), call
            assert name not in gpu_submissions or " --gpus=1" in call, call

    # Every submission's Slurm log is kept, the successful ones' too.
    logs = {path.stem for path in (workdir / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert set(jobs) <= logs

    # The same results as the local run.
    for name in COMPARED_SHARDS:
        assert _shard_rows(workdir / name, workdir) == _shard_rows(local / name, local), name
    for name in COMPARED_JSON:
        assert json.loads((workdir / name).read_text()) == json.loads((local / name).read_text())
    for block in BLOCKS:
        for tower in ("image", "text"):
            name = f"results/train/emb/{tower}/{MODEL}/{block}.arrow"
            got, want = read_embedding_cache(workdir / name), read_embedding_cache(local / name)
            assert got.keys.equals(want.keys) and np.array_equal(got.emb, want.emb), name
        got, want = (
            read_rows(workdir / f"{ROWS}/{block}.arrow"),
            read_rows(local / f"{ROWS}/{block}.arrow"),
        )
        assert got.keys.equals(want.keys) and np.array_equal(got.tokens, want.tokens), block

    # The gres alternative as documented (gpu: 0 beside gres), and a profile that does not allow
    # the CPU: generation goes out with --gres alone, and the job, given Slurm's GPU but seeing
    # none (placeholder devices), stops at once naming them.
    gres_site, _ = _site_profile(tmp_path / "gres", allow_cpu=0, gres_rules=("generate",))
    generation = "results/dialogue/blip2/00000.parquet"
    stopped = _run_through_slurm(gres_site, workdir, generation, "--forcerun", "generate")
    assert stopped.returncode != 0
    (call,) = _sbatch_calls(stopped.stdout + stopped.stderr)["rule_generate"]
    assert " --gres=gpu:1" in call and "--gpus" not in call, call
    job_log = (workdir / "logs" / "generate" / "blip2" / "00000.log").read_text()
    assert "this job was given GPUs (Slurm's GPUs 0) but torch sees none" in job_log
    ((gres_id, name),) = _submissions(stopped.stdout + stopped.stderr).items()
    gres_job = _slurm_jobs({gres_id})[gres_id]
    assert name == "rule_generate" and gres_job["JobState"] == "FAILED", gres_job
    assert gres_job["TresPerNode"] == "gres:gpu:1" and "TresPerJob" not in gres_job, gres_job
