"""A generator given as a hub model at a pinned commit, through the workflow: the DAG is refused
until its weights are fetched (naming the command); `snakemake vlm_weights` fetches them once
(from a hub on 127.0.0.1); generation then reads only that folder, offline, and records the hub
id and commit in the Parquet metadata. The commit is science (a new one reruns generation), the
folder's path a machine setting (moving it reruns nothing)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from loopback_hub import COMMITS, REPO, Hub, serve_model
from workflow_helpers import DEMO, copy_demo, planned_jobs, snakemake

from dialogclip.core.config import load_yaml
from dialogclip.core.io import read_parquet_metadata

TARGET = "results/dialogue/blip2/00000.parquet"
# The demo's own BLIP-2 (the world's, a folder of the demo): served, it is the hub model.
DEMO_BLIP2 = DEMO / load_yaml(DEMO / "config.yaml")["generate"]["blip2"]["model"]


def _pin(workdir: Path, revision: str | None) -> None:
    """Point the demo's BLIP-2 at the hub model (its own weights, served) at ``revision``."""
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["generate"]["blip2"].update(model=REPO, revision=revision)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _folder(revision: str) -> str:
    return f"resources/vlm_weights/loopback--tiny-blip2/{revision}"


@pytest.mark.dag
def test_a_hub_generator_reads_only_its_fetched_folder(
    finished_demo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workdir = copy_demo(tmp_path / "demo")
    _pin(workdir, None)
    unpinned = snakemake(workdir, TARGET, "--dry-run")
    assert unpinned.returncode != 0
    assert (
        "generate.blip2.revision is not set: a hub model (loopback/tiny-blip2) must be pinned"
        in (unpinned.stdout + unpinned.stderr)
    )

    _pin(workdir, COMMITS[0])
    missing = snakemake(workdir, TARGET, "--dry-run")
    assert missing.returncode != 0
    assert (
        f"generate.blip2: {REPO} at {COMMITS[0]} is not fetched ({_folder(COMMITS[0])} is "
        "missing). Fetch it once on a machine with internet access: `snakemake --cores 1 "
        f"vlm_weights` (or `dialogclip fetch-vlm-weights --model {REPO} --revision {COMMITS[0]} "
        f"--output {_folder(COMMITS[0])}`)"
    ) in missing.stdout + missing.stderr

    with serve_model(DEMO_BLIP2) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub)
        fetched = snakemake(workdir, "vlm_weights")
        assert fetched.returncode == 0, fetched.stderr[-3000:]
        assert any(hit.startswith("/cdn/") for hit in Hub.hits)
        monkeypatch.delenv("HF_ENDPOINT")
    # Every file of the model arrived (its weights in two safetensors shards and their index).
    files = sorted(path for path in DEMO_BLIP2.iterdir() if path.is_file())
    assert len([path for path in files if path.suffix == ".safetensors"]) > 1
    for path in files:
        assert (workdir / _folder(COMMITS[0]) / path.name).read_bytes() == path.read_bytes()

    # The job reads the folder (resource model_dir) with the hub out of reach (HF_HUB_OFFLINE
    # in the tests, no server): its rows are those of the same weights loaded by path.
    shown = snakemake(workdir, TARGET, "--dry-run", "--printshellcmds")
    assert f"--model-dir={_folder(COMMITS[0])} " in shown.stdout
    ran = snakemake(workdir, TARGET)
    assert ran.returncode == 0, ran.stderr[-3000:]
    columns = ["key", "responses", "parse_status"]
    made = pq.read_table(workdir / TARGET, columns=columns).to_pylist()
    assert made == pq.read_table(finished_demo / TARGET, columns=columns).to_pylist()
    metadata = read_parquet_metadata(workdir / TARGET)
    assert (metadata["model"], metadata["revision"]) == (REPO, COMMITS[0])
    assert pq.read_table(workdir / TARGET, columns=["model", "revision"]).to_pylist()[0] == {
        "model": REPO,
        "revision": COMMITS[0],
    }

    # Where the weights lie is a machine setting: a copy elsewhere reruns nothing.
    moved = tmp_path / "local-disk" / "blip2"
    shutil.copytree(workdir / _folder(COMMITS[0]), moved)
    assert planned_jobs(workdir, TARGET, "--set-resources", f"generate:model_dir='{moved}'") == {}
    # Which commit is science: a new one must be fetched, then reruns generation.
    _pin(workdir, COMMITS[1])
    assert snakemake(workdir, TARGET, "--dry-run").returncode != 0
    with serve_model(DEMO_BLIP2) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub)
        assert snakemake(workdir, "vlm_weights").returncode == 0
    assert planned_jobs(workdir, TARGET) == {"generate": 1}
