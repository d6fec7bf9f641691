# Shared Python of the workflow: config validation, parameters and the input functions that more
# than one stage uses. Stage files define get_<stage>_outputs(); get_final_output() collects them
# for the target `all`. A stage's <stage>_functions.smk calls only its own functions and these.
import json
import os
import re
import shlex
import sys
from functools import cache
from pathlib import Path

from dialogclip.core.config import ConfigError, section_from_dict, validate_config
from dialogclip.models.eval_entry import EVAL_DATASETS, RETRIEVAL_SETS, EvalEntry
from dialogclip.models.naming import is_checkpoint_path
from dialogclip.models.weights import weights_file
from dialogclip.train.settings import train_settings_from_dict

SCHEMA = Path(workflow.source_path("../schemas/config.schema.yaml"))

# Rule shells call `dialogclip`: find the one installed beside the Python running Snakemake even
# when its environment is not activated (`.venv/bin/snakemake ...`). The cluster controller's
# environment (.venv-controller, docs/cluster.md) has Snakemake but not that command (no torch);
# there, and in the Slurm jobs, which run the controller's Python too, the command comes from the
# project's .venv beside the Snakefile. A conda: env a rule activates still comes first on PATH.
_env_bin = Path(sys.executable).parent
_tool_bins = [_env_bin]
if not (_env_bin / "dialogclip").exists():
    _tool_bins.append(Path(workflow.basedir).resolve() / ".venv" / "bin")
os.environ.update(
    PATH=os.pathsep.join([*map(str, _tool_bins), os.environ.get("PATH", "")])
)
# The conda envs (--software-deployment-method conda) install this checkout: Snakemake copies
# an env file under .snakemake/conda/, so envs/*.yaml name the repository through this variable.
os.environ.setdefault("DIALOGCLIP_ROOT", str(Path(workflow.basedir).resolve()))

# Snakemake's between-workflow output cache (README, "Sharing GPU work between working
# directories"): the expensive deterministic rules (generation, the frozen towers' embeddings
# of the training images, captions and evaluation images, the fetched weights) carry
# `cache: OUTPUT_CACHE`. Their key hashes the shell command as written (never the resources it
# formats), the params (so the fetch rules repeat their wildcards there), the checksums of
# source inputs and the upstream jobs' keys, so a machine setting never defeats it.
# "omit-software": the conda env is no part of the science. Declared only when
# $SNAKEMAKE_OUTPUT_CACHE names a cache, because Snakemake warns about every cacheable rule on
# every run otherwise; `--cache` switches it on. Snakemake refuses a benchmark: directive on a
# cacheable rule, so these rules record their times themselves (generation's stats JSON, the
# embedding logs).
OUTPUT_CACHE = "omit-software" if os.environ.get("SNAKEMAKE_OUTPUT_CACHE") else False

# The TSV's line counts (get_shard_plan), kept with Snakemake's state of this working directory.
TSV_LINES_CACHE = Path(".snakemake/dialogclip/tsv_lines.json")

NAME = r"[A-Za-z0-9_.-]+"
NO_MATCH = r"(?!)"


def check_config():
    """The config against the schema (types, required and unknown keys, defaults filled in),
    then the rules between fields that the schema cannot express, through the typed settings
    the commands use. Runs when the DAG is built; every message names the key."""
    from dialogclip.core.text_forms import TextForms
    from dialogclip.generate.config import generate_config_from_dict

    validate_config(config, SCHEMA, source="workflow config")
    problems = []
    section_from_dict(TextForms, config["text"], "text")
    try:  # e.g. a name in generate.generators with no entry in generate.vlms
        generate_config_from_dict(config["generate"])
    except ConfigError as err:
        problems.append(str(err))
    entries = config["evaluate"]["models"]
    names = [entry["name"] for entry in entries]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        problems.append(f"evaluate.models: duplicated name(s) {duplicated}")
    for entry in entries:
        try:
            section_from_dict(EvalEntry, entry, f"evaluate.models ({entry['name']})")
        except ConfigError as err:
            problems.append(str(err))
        unconfigured = [
            name for name in entry["datasets"] or () if config["evaluate"][name] is None
        ]
        if unconfigured:
            problems.append(
                f"evaluate.models ({entry['name']}).datasets: {unconfigured} not configured "
                "(evaluate.<dataset> is null)"
            )
    if problems:
        raise ConfigError(
            "invalid workflow config:\n" + "\n".join(f"  - {p}" for p in problems)
        )


try:
    check_config()
except ConfigError as err:
    raise WorkflowError(str(err)) from None


def check_allow_cpu():
    """The GPU rules pass the machine setting `allow_cpu` (may a job given GPUs run on the CPU
    when torch sees none?) from the default resources: every profile states it (the demo's 1,
    the cluster profiles' 0), so that no run falls back to the CPU by omission."""
    defaults = workflow.resource_settings.default_resources
    if defaults is None or defaults.get("allow_cpu") is None:
        raise WorkflowError(
            "the machine setting allow_cpu is not set: add `allow_cpu: 0` (GPU jobs stop when "
            "torch sees no GPU) or `allow_cpu: 1` (they may run on the CPU, as in the demo) "
            "under default-resources of your profile, or pass --default-resources allow_cpu=0"
        )


check_allow_cpu()

# The Slurm profile's account until it is edited (workflow/profiles/slurm/config.yaml).
SLURM_ACCOUNT_PLACEHOLDER = "your-account"


def _raw_resource(resources, name):
    """A resource as the rule, profile or command line wrote it (a number, a string, or the text
    of an expression evaluated per job); None when absent."""
    resource = resources.get(name) if resources is not None else None
    if resource is None:
        return None
    raw = resource.raw if resource.raw is not None else resource.value
    return raw.strip("'\"") if isinstance(raw, str) else raw


def check_slurm_requests():
    """What the Slurm plugin would submit, checked once the rules are defined: an account that
    is still the profile's placeholder, and a rule that asks for GPUs twice, as `gres` and as
    `gpu` (the plugin sends --gres and --gpus; Slurm then counts both)."""
    defaults = workflow.resource_settings.default_resources
    if _raw_resource(defaults, "slurm_account") == SLURM_ACCOUNT_PLACEHOLDER:
        raise WorkflowError(
            f"default-resources slurm_account is still the placeholder "
            f"'{SLURM_ACCOUNT_PLACEHOLDER}': set your Slurm account in the profile "
            "(sacctmgr -n show associations user=$USER format=account), or delete the line "
            "on a cluster without accounts"
        )
    double = [
        f"{rule.name} (gres {gres}, gpu {gpu})"
        for rule in workflow.rules
        if "gpu" in str(gres := _raw_resource(rule.resources, "gres") or "")
        and str(gpu := _raw_resource(rule.resources, "gpu")) not in ("None", "0")
    ]
    if double:
        raise WorkflowError(
            f"GPUs requested twice, as gres and as gpu: {', '.join(double)}; the Slurm plugin "
            "would send both --gres and --gpus. Set `gpu: 0` beside `gres` (set-resources of "
            "the profile), or drop `gres`"
        )


# Every wildcard's constraint, in one place: a path that does not fit names no job. After the
# config check, which fills in its defaults: a generator is one that generate.generators switches
# on (NO_MATCH, a pattern nothing fits, when none is).
wildcard_constraints:
    shard=r"\d{5}",
    block=r"\d{5}-\d{5}",
    seed=r"\d+",
    model=NAME,
    image_model=NAME,
    dataset="|".join(EVAL_DATASETS),
    retrieval_set="|".join(RETRIEVAL_SETS),
    vqa_set="vqa_real|vqa_abstract",
    architecture=r"[A-Za-z0-9_.-]+?",
    tag=r"[A-Za-z0-9_.-]+",
    run=NAME,
    text_model=NAME,
    generator="|".join(map(re.escape, config["generate"]["generators"])) or NO_MATCH,
    rows_form=r"(concatenated|pairs)(-with_truncated)?",


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
        *get_report_outputs(),
        *get_train_outputs(),
        *get_export_outputs(),
    ]


@cache
def get_shard_plan():
    """How the (possibly limited) CC3M TSV splits into shards of cc3m.shard_size rows."""
    from dialogclip.core.shards import ShardPlan, count_lines_cached

    tsv = Path(config["cc3m"]["tsv"])
    if not tsv.is_file():
        raise WorkflowError(
            f"CC3M TSV not found: {tsv.resolve()}\n"
            "Conceptual Captions is published at https://ai.google.com/research/ConceptualCaptions/download "
            "(Train_GCC-training.tsv, Validation_GCC-1.1.0-Validation.tsv). Download it there, then put "
            "it at that path or set cc3m.tsv in your config."
        )
    # Remembered per TSV file (size, mtime, inode) beside Snakemake's own state: counting
    # CC3M's 3.3M lines is ~0.4 s of every start, a dry run's included.
    n_rows = count_lines_cached(tsv, config["cc3m"]["limit"], TSV_LINES_CACHE)
    if n_rows == 0:
        from dialogclip.ingest.tsv import empty_tsv_message

        # Zero shards would leave the summary rule without inputs (an obscure argparse error).
        raise WorkflowError(empty_tsv_message(tsv))
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


def get_generators():
    """The generators the config switches on (generate.generators)."""
    return config["generate"]["generators"]


def is_retry_failed_active():
    return config["ingest"]["retry_failed"]["activate"]


def ingested_shard(shard):
    """Path of the final ingested shard ``shard`` (re-tried when the retry pass runs)."""
    if is_retry_failed_active():
        return f"results/ingest/retried/shards/{shard}.parquet"
    return f"results/ingest/shards/{shard}.parquet"


def get_ingested_shard(wildcards):
    """The final ingested shard Parquet of wildcards.shard (what generation and training read)."""
    return ingested_shard(wildcards.shard)


def dialogue_shards(generator):
    """Every dialogue shard of ``generator``, in shard order."""
    return expand(
        "results/dialogue/{generator}/{shard}.parquet",
        generator=generator,
        shard=get_shards(),
    )


def get_dialogue_shards(wildcards):
    """Every dialogue shard of wildcards.generator (its summary and its dialogue quality)."""
    return dialogue_shards(wildcards.generator)


def get_all_ingested_shards(wildcards):
    """Every final ingested shard, in shard order (captions and images: the dataset export,
    the dialogue quality, the gallery)."""
    return [ingested_shard(shard) for shard in get_shards()]


def get_all_dialogue_shards(wildcards):
    """Every dialogue shard of every switched-on generator (the dataset export, the gallery)."""
    return [
        shard for generator in get_generators() for shard in dialogue_shards(generator)
    ]


def get_dialogue_args(wildcards):
    """``--dialogue <generator> <its shards>`` once per generator, for the shell line."""
    return " ".join(
        shlex.join(["--dialogue", generator, *dialogue_shards(generator)])
        for generator in get_generators()
    )


def get_weights_file(architecture, pretrained):
    """The file a model's weights load from: a checkpoint path as it is (a rule may build it),
    a pretrained tag's weights fetched into weights_dir by fetch_clip_weights."""
    if is_checkpoint_path(pretrained):
        return pretrained
    return str(weights_file(config["weights_dir"], architecture, pretrained))


def is_train_active():
    return config["train"]["activate"]


@cache
def get_train_runs():
    """The train.runs entries, typed; each run's generator must be generated."""
    try:
        runs = train_settings_from_dict(config["train"]).runs
    except ConfigError as err:
        raise WorkflowError(str(err)) from None
    for run in runs:
        if run.generator not in get_generators():
            raise WorkflowError(
                f"train.runs: {run.name} trains on {run.generator} dialogue, which "
                f"generate.generators {get_generators()} does not produce"
            )
    return runs


def is_evaluate_active():
    return config["evaluate"]["activate"]


@cache
def get_eval_models():
    """The evaluation entries by name (typed): evaluate.models, then the entries of every
    training run (TrainRun.eval_entries) when training is on. Names are unique."""
    entries = {
        entry["name"]: section_from_dict(
            EvalEntry, entry, f"evaluate.models ({entry['name']})"
        )
        for entry in config["evaluate"]["models"]
    }
    for run in get_train_runs() if is_train_active() else ():
        for entry in run.eval_entries():
            if entry.name in entries:
                raise WorkflowError(
                    f"evaluate.models: {entry.name} is also the name of an evaluation entry of "
                    f"the training run {run.name}; rename one of them"
                )
            entries[entry.name] = entry
    return entries


def get_model_datasets(entry):
    """The evaluation sets of one entry: its `datasets`, else every configured set."""
    configured = [
        name for name in EVAL_DATASETS if config["evaluate"][name] is not None
    ]
    if entry.datasets is None:
        return configured
    return [name for name in configured if name in entry.datasets]


def get_evaluate_outputs():
    """One metrics JSON per evaluation entry and set (COCO / Flickr30k retrieval, VQA
    real/abstract): the evaluate stage's targets and the report's inputs."""
    if not is_evaluate_active():
        return []
    outputs = []
    for name, entry in get_eval_models().items():
        for dataset in get_model_datasets(entry):
            task = "retrieval" if dataset in RETRIEVAL_SETS else "vqa"
            outputs.append(f"results/eval/{task}/{name}/{dataset}.json")
    return outputs
