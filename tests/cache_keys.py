"""The keys Snakemake's between-workflow output cache gives a rule's jobs, without running them.

Run as a script (it changes into the working directory and builds the DAG in-process):
``python tests/cache_keys.py SNAKEFILE WORKDIR RULE TARGET...`` prints ``{output: key}`` as
JSON for every planned job of RULE. The key is Snakemake's own
(``snakemake.caching.hash.ProvenanceHashMap``), the one ``--cache`` files results under: for a
rule whose job cannot run here (a download), this is how a test sees what the key reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cache_keys(snakefile: Path, workdir: Path, rule: str, targets: list[str]) -> dict[str, str]:
    """{first output of each planned ``rule`` job: its provenance hash}."""
    from snakemake.api import SnakemakeApi
    from snakemake.caching.hash import ProvenanceHashMap
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
        WorkflowSettings,
    )

    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(
            # as the demo profile: GPU jobs may run on the CPU (workflow/rules/common.smk)
            resource_settings=ResourceSettings(cores=1, default_resources={"allow_cpu": 1}),
            config_settings=ConfigSettings(),
            storage_settings=StorageSettings(),
            workflow_settings=WorkflowSettings(cache=[rule]),
            snakefile=snakefile,
            workdir=workdir,
        )
        workflow_api.dag(DAGSettings(targets=set(targets)))
        workflow = workflow_api._workflow  # the DAG API plans only to run; build it here
        workflow._prepare_dag(
            forceall=False, ignore_incomplete=True, lock_warn_only=True, nolock=True
        )
        workflow._build_dag()
        hashes = ProvenanceHashMap()
        return {
            str(job.output[0]): workflow.async_run(hashes.get_provenance_hash(job))
            for job in workflow.dag.jobs
            if job.rule.name == rule
        }


if __name__ == "__main__":
    snakefile, workdir, rule, *targets = sys.argv[1:]
    keys = cache_keys(Path(snakefile).resolve(), Path(workdir).resolve(), rule, targets)
    print(json.dumps(keys, sort_keys=True))
