"""The dataset folder through the workflow, on the finished demo: `snakemake dataset` runs the one
export job, `datasets.load_dataset` loads what it wrote with every downloaded image and each
generator's dialogue of that image; `all` asks for it only when export.dataset.activate; its
card's settings rerun only the export, a machine setting nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from workflow_helpers import copy_demo, edited_config, planned_jobs, snakemake

from dialogclip.core.io import read_json

EXPORT = Counter({"export_dataset": 1})
# The target `dataset` (a rule without output, like `all`, which the listing leaves out).
DATASET = EXPORT + Counter({"dataset": 1})


@pytest.mark.dag
def test_the_demo_exports_its_dataset(finished_demo: Path, tmp_path: Path) -> None:
    workdir = copy_demo(tmp_path / "demo", source=finished_demo)
    # Not part of `all` by default; activated, `all` asks for it (and for nothing else new).
    assert planned_jobs(workdir) == Counter()
    activated = edited_config(
        workdir,
        tmp_path,
        lambda config: config.setdefault("export", {}).update(dataset={"activate": True}),
    )
    assert planned_jobs(workdir, "--configfile", activated) == EXPORT
    assert planned_jobs(workdir, "dataset") == DATASET

    result = snakemake(workdir, "dataset")
    assert result.returncode == 0, result.stderr[-4000:]
    folder = workdir / "results" / "dataset"
    rows = datasets.load_dataset(str(folder), split="train")
    ingest = read_json(workdir / "results" / "ingest" / "summary.json")
    assert rows.num_rows == ingest["n_success"]
    assert sorted(path.name for path in (folder / "data").iterdir()) == sorted(
        f"{shard}.parquet" for shard in ingest["shards"]
    )
    # Each generator's struct holds that generator's row of the same image.
    for generator in ("blip2", "llava"):
        made = pq.read_table(workdir / "results" / "dialogue" / generator / "00000.parquet")
        by_key = {row["key"]: row for row in made.to_pylist()}
        shard_rows = [row for row in rows if row["key"] in by_key]
        assert len(shard_rows) == made.num_rows
        for row in shard_rows:
            assert row[generator]["answers"] == by_key[row["key"]]["answers"]
            assert row[generator]["prompts"] == by_key[row["key"]]["prompts"]

    # Done: nothing left; the card's name reruns the export alone; a machine setting nothing.
    assert planned_jobs(workdir, "dataset") == Counter()
    renamed = edited_config(
        workdir,
        tmp_path,
        lambda config: config.setdefault("export", {}).update(dataset={"pretty_name": "Renamed"}),
    )
    assert planned_jobs(workdir, "dataset", "--configfile", renamed) == DATASET
    resources = ["--set-resources", "export_dataset:mem_mb=9000", "export_dataset:runtime=5"]
    assert planned_jobs(workdir, "dataset", *resources) == Counter()
