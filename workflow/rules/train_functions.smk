# Input functions and parameters of the train stage (workflow/rules/train.smk includes this
# file: `snakemake --lint` wants Python functions and rules in separate snakefiles). The file
# names come from dialogclip.train.settings, so the workflow and the code agree on them.
# The runs themselves (get_train_runs, is_train_active) and their evaluation entries
# (TrainRun.eval_entries, gathered by get_eval_models) are in common.smk.
import hashlib
import shlex

from dialogclip.train.loss_settings import loss_params


def get_train_outputs():
    """Every run's trained tower and metrics, and the data behind them (image and caption
    caches, rows and their stats, once each: runs share what they have in common); nothing
    unless train.activate."""
    if not is_train_active():
        return []
    outputs = []
    for run in get_train_runs():
        outputs += [run.final, run.metrics]
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
    """The image tower's weights: a checkpoint file or a fetched pretrained tag."""
    tower = _train_tower("image", wildcards.image_model)
    return get_weights_file(tower["architecture"], tower["pretrained"])


def get_train_text_checkpoint(wildcards):
    """The caption tower's weights: a checkpoint file or a fetched pretrained tag."""
    tower = _train_tower("text", wildcards.text_model)
    return get_weights_file(tower["architecture"], tower["pretrained"])


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


def get_train_run(wildcards):
    """The train.runs entry of wildcards.run (typed)."""
    for run in get_train_runs():
        if run.name == wildcards.run:
            return run
    raise WorkflowError(f"no train.runs entry is named {wildcards.run}")


def _run_entry(name):
    """The run's config entry as the schema filled it (plain types, for JSON)."""
    return next(entry for entry in config["train"]["runs"] if entry["name"] == name)


def get_train_run_inputs(wildcards):
    """What a run reads: per shard its rows and image cache (and caption cache for the third
    tower), and the pretrained weights. Named lists, in shard order."""
    run = get_train_run(wildcards)
    shards = get_shards()
    inputs = {
        "rows": [run.rows_file(shard) for shard in shards],
        "image_emb": [run.image_cache(shard) for shard in shards],
        "caption_emb": [],
        "weights": get_weights_file(run.architecture, run.pretrained),
    }
    if run.uses_caption_cache:
        inputs["caption_emb"] = [run.caption_cache(shard) for shard in shards]
    return inputs


def get_train_run_params(wildcards):
    """The run's entry as JSON: everything its result depends on besides the data files (not
    its `evaluate` variants, which only the evaluation reads), the loss with its defaults
    filled in (a changed default reruns the run). A function: a text template inside it must
    not be read as wildcards."""
    entry = {k: v for k, v in _run_entry(wildcards.run).items() if k != "evaluate"}
    entry["loss"] = loss_params(
        entry["method"], entry["loss"], f"train.runs[{entry['name']}]"
    )
    return json.dumps(entry, sort_keys=True)


def get_train_run_dir(wildcards):
    """Where the run keeps checkpoints: one folder per configuration, so a rerun after an edit
    starts afresh while a rerun after a crash resumes (the trainer refuses to resume from a
    checkpoint of other settings)."""
    digest = hashlib.sha1(get_train_run_params(wildcards).encode()).hexdigest()[:12]
    return f"results/train/runs/{wildcards.run}/work/{digest}"


def get_caption_emb_flag(wildcards, input):
    """`--caption-emb FILES` for the third tower; nothing for DRAFT."""
    if not input.caption_emb:
        return ""
    return "--caption-emb " + " ".join(shlex.quote(path) for path in input.caption_emb)
