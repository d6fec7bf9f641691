# Shared Python of the workflow: config validation, parameters and input functions.
# Stage files define get_<stage>_outputs(); get_final_output() collects them for the target `all`.
import json
import os
import sys
from functools import cache
from pathlib import Path

from dialogclip.core.config import ConfigError, validate_config

SCHEMA = Path(workflow.source_path("../schemas/config.schema.yaml"))

# Rule shells call `dialogclip`: find the one installed beside the Python running Snakemake even
# when its environment is not activated (`.venv/bin/snakemake ...`). A conda: env a rule
# activates still comes first on PATH.
_env_bin = Path(sys.executable).parent
os.environ.update(PATH=f"{_env_bin}{os.pathsep}{os.environ.get('PATH', '')}")

try:
    validate_config(config, SCHEMA, source="workflow config")
except ConfigError as err:
    raise WorkflowError(str(err)) from None


def params_json(*keys):
    """The config sections ``keys`` (one -> that section, several -> a dict) as a JSON string.

    Rules pass it to a command as ``--params {params.cfg:q}``; because it is a param, editing
    that section of the config makes Snakemake rerun exactly the jobs that use it.
    """
    if len(keys) == 1:
        return json.dumps(config[keys[0]], sort_keys=True)
    return json.dumps({key: config[key] for key in keys}, sort_keys=True)


def get_final_output():
    """Every file the target `all` asks for: the outputs of each activated stage."""
    return [
        *get_ingest_outputs(),
        *get_generate_outputs(),
        *get_evaluate_outputs(),
        *get_train_outputs(),
    ]


@cache
def get_shard_plan():
    """How the (possibly limited) CC3M TSV splits into shards of cc3m.shard_size rows."""
    from dialogclip.core.shards import ShardPlan, count_lines

    tsv = Path(config["cc3m"]["tsv"])
    if not tsv.is_file():
        raise WorkflowError(
            f"CC3M TSV not found: {tsv.resolve()}\n"
            "Conceptual Captions is published at https://ai.google.com/research/ConceptualCaptions/download "
            "(Train_GCC-training.tsv, Validation_GCC-1.1.0-Validation.tsv). Download it there, then put "
            "it at that path or set cc3m.tsv in your config."
        )
    n_rows = count_lines(tsv, limit=config["cc3m"]["limit"])
    return ShardPlan(n_rows=n_rows, shard_size=config["cc3m"]["shard_size"])


def get_shards():
    """Names (``00000``...) of the shards of the CC3M TSV."""
    return get_shard_plan().names


def print_run_summary():
    """At the end of a successful run, repeat the ingestion summary (it scrolls by mid-run)."""
    summary = Path("results/ingest/summary.json")
    if summary.is_file():
        from dialogclip.core.io import read_json
        from dialogclip.ingest.stats import format_summary

        logger.info(format_summary(read_json(summary)))
