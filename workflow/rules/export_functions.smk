# Input functions and parameters of the export stage (workflow/rules/export.smk includes this
# file: `snakemake --lint` wants Python functions and rules in separate snakefiles).
from dataclasses import asdict

DATASET = "results/dataset"
EXPORTED_MODELS = "results/export/models"


def is_dataset_export_active():
    return config["export"]["dataset"]["activate"]


def get_export_outputs():
    """What the export stage adds to the target `all`: the dataset folder and the exported
    models, each when activated."""
    outputs = [DATASET] if is_dataset_export_active() else []
    if config["export"]["models"]["activate"]:
        outputs += get_exported_models()
    return outputs


def get_exported_models(wildcards=None):
    """One folder per training run (none when training is off)."""
    runs = get_train_runs() if is_train_active() else ()
    return [f"{EXPORTED_MODELS}/{run.name}" for run in runs]


def get_export_models_tower(wildcards):
    """The run's trained tower (its final checkpoint)."""
    return get_train_run(wildcards).final


def get_export_models_weights(wildcards):
    """The weights the run started from (a fetched tag's file or a checkpoint path)."""
    run = get_train_run(wildcards)
    return get_weights_file(run.architecture, run.pretrained)


def get_export_models_params(wildcards):
    """The run (name, method) and its evaluation entries as JSON: what the folder holds."""
    run = get_train_run(wildcards)
    entries = [asdict(entry) for entry in run.eval_entries()]
    return json.dumps(
        {"run": run.name, "method": run.method, "entries": entries}, sort_keys=True
    )


def get_export_dataset_params(wildcards):
    """export.dataset less `activate` (which only decides whether `all` asks for the folder)."""
    settings = dict(config["export"]["dataset"])
    settings.pop("activate")
    return json.dumps(settings, sort_keys=True)
