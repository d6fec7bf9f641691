# Input functions and parameters of the train stage (workflow/rules/train.smk includes this
# file: `snakemake --lint` wants Python functions and rules in separate snakefiles). The file
# names come from dialogclip.train.settings, so the workflow and the code agree on them.
from dialogclip.train.settings import train_settings_from_dict


@cache
def get_train_runs():
    """The train.runs entries, typed; each run's generator must be generated."""
    try:
        runs = train_settings_from_dict(config["train"]).runs
    except ConfigError as err:
        raise WorkflowError(str(err)) from None
    for run in runs:
        if run.generator not in config["generate"]["generators"]:
            raise WorkflowError(
                f"train.runs: {run.name} trains on {run.generator} dialogue, which "
                f"generate.generators {config['generate']['generators']} does not produce"
            )
    return runs


def is_train_active():
    return config["train"]["activate"]


def get_train_outputs():
    """The data of every run (image and caption caches, rows and their stats), once each
    (runs share what they have in common); nothing unless train.activate."""
    if not is_train_active():
        return []
    outputs = []
    for run in get_train_runs():
        for shard in get_shards():
            outputs.append(run.image_cache(shard))
            if run.uses_caption_cache:
                outputs.append(run.caption_cache(shard))
            outputs += [run.rows_file(shard), run.rows_stats(shard)]
    return list(dict.fromkeys(outputs))


def get_train_towers(kind):
    """{cache key: architecture, pretrained, quickgelu} of the frozen image / caption towers."""
    if kind == "image":
        return {run.image_model: run.tower_params() for run in get_train_runs()}
    return {
        run.text_model: run.tower_params()
        for run in get_train_runs()
        if run.uses_caption_cache
    }


def _train_tower(kind, key):
    towers = get_train_towers(kind)
    if key not in towers:
        raise WorkflowError(
            f"no train run uses the {kind} tower {key}: {sorted(towers)}"
        )
    return towers[key]


def get_train_image_params(wildcards):
    """The image tower as JSON: all the cache depends on (shared by the runs on it)."""
    return json.dumps(_train_tower("image", wildcards.image_model), sort_keys=True)


def get_train_text_params(wildcards):
    """The caption tower as JSON: all the cache depends on."""
    return json.dumps(_train_tower("text", wildcards.text_model), sort_keys=True)


def get_train_image_checkpoint(wildcards):
    """The image tower's checkpoint when it is a file (a rule may build it), else nothing."""
    pretrained = _train_tower("image", wildcards.image_model)["pretrained"]
    return [pretrained] if is_checkpoint_path(pretrained) else []


def get_train_text_checkpoint(wildcards):
    """The caption tower's checkpoint when it is a file, else nothing."""
    pretrained = _train_tower("text", wildcards.text_model)["pretrained"]
    return [pretrained] if is_checkpoint_path(pretrained) else []


def get_train_rows_params(wildcards):
    """What the rows depend on besides their inputs, as JSON: the architecture (tokenizer),
    the sample form, include_truncated and the text section. A function: Snakemake would read
    the template's {question} as a wildcard."""
    for run in get_train_runs():
        if (run.generator, run.architecture_key, run.rows_form) == (
            wildcards.generator,
            wildcards.architecture,
            wildcards.rows_form,
        ):
            return json.dumps(run.rows_params(config["text"]), sort_keys=True)
    raise WorkflowError(
        f"no train run reads {wildcards.generator} rows of {wildcards.architecture} "
        f"in the form {wildcards.rows_form}"
    )
