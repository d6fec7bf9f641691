# Input functions and parameters of the export stage (workflow/rules/export.smk includes this
# file: `snakemake --lint` wants Python functions and rules in separate snakefiles).
import shlex

DATASET = "results/dataset"


def is_dataset_export_active():
    return config["export"]["dataset"]["activate"]


def get_export_outputs():
    """What the export stage adds to the target `all` (the dataset folder when activated)."""
    return [DATASET] if is_dataset_export_active() else []


def get_export_ingested_shards(wildcards):
    """Every final ingested shard, in shard order (the dataset's rows come from them)."""
    return [ingested_shard(shard) for shard in get_shards()]


def get_export_dialogue_shards(wildcards):
    """Every dialogue shard of every switched-on generator."""
    return [
        shard for generator in get_generators() for shard in dialogue_shards(generator)
    ]


def get_export_dialogue_args(wildcards):
    """``--dialogue <generator> <its shards>`` once per generator, for the shell line."""
    return " ".join(
        shlex.join(["--dialogue", generator, *dialogue_shards(generator)])
        for generator in get_generators()
    )


def get_export_dataset_params(wildcards):
    """export.dataset less `activate` (which only decides whether `all` asks for the folder)."""
    settings = dict(config["export"]["dataset"])
    settings.pop("activate")
    return json.dumps(settings, sort_keys=True)
