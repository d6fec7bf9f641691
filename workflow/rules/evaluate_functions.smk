# Input functions and parameters of the evaluate stage (workflow/rules/evaluate.smk includes
# this file: `snakemake --lint` wants Python functions and rules in separate snakefiles). The
# evaluation entries themselves (get_eval_models, typed EvalEntry) and get_evaluate_outputs are
# in common.smk: the report reads them too.
# Wildcards: {model} an evaluate.models name, {image_model} an image-tower cache key,
# {dataset} any evaluation set, {retrieval_set} / {vqa_set} the sets of each task; their
# constraints are in common.smk.
from dialogclip.evaluate.datasets import check_dataset_files


def get_image_models():
    """{cache key: architecture, pretrained and quickgelu of that image tower}: every entry on
    one image tower shares its cache."""
    return {
        entry.image_model: entry.image_tower() for entry in get_eval_models().values()
    }


def _dataset(wildcards):
    """The evaluation set a job works on, whichever task's wildcard names it."""
    for name in ("dataset", "retrieval_set", "vqa_set"):
        if name in wildcards.keys():
            return wildcards[name]
    raise WorkflowError(f"no evaluation-set wildcard in {dict(wildcards)}")


def get_image_model_checkpoint(wildcards):
    """The weights file of the image tower."""
    model = get_image_models()[wildcards.image_model]
    return get_weights_file(model["architecture"], model["pretrained"])


def get_eval_checkpoints(wildcards):
    """The weight files a model entry reads: its weights and its second text tower."""
    entry = get_eval_models()[wildcards.model]
    files = [get_weights_file(entry.architecture, entry.pretrained)]
    return files + ([entry.other] if entry.other else [])


def get_eval_image_emb(wildcards):
    """The cached image embeddings of the entry's image tower on this dataset."""
    key = get_eval_models()[wildcards.model].image_model
    return f"results/eval/image_emb/{key}/{_dataset(wildcards)}.safetensors"


def get_eval_files(wildcards):
    """The dataset's annotation and question files and its image folder, as inputs. `ancient`:
    copying or touching them reruns nothing (a new path does). A missing one stops the
    workflow when the DAG is built, naming it and where it is published."""
    dataset = _dataset(wildcards)
    files = config["evaluate"][dataset]
    try:
        check_dataset_files(dataset, files)
    except FileNotFoundError as err:
        raise WorkflowError(str(err)) from None
    keys = ("questions", "annotations", "images")
    return [ancient(files[key]) for key in keys if files.get(key)]


def get_eval_image_list_files(wildcards):
    """The files that say which images a set has (its annotation and question files), without
    the image folder: the inputs of embed_eval_images. The between-workflow cache checksums a
    rule's source inputs for its key and cannot checksum a folder; the folder's path is in the
    job's params (the images of COCO and VQA are fixed public files, named by these lists).
    The folder is still checked when the DAG is built, as get_eval_files does."""
    return [
        path
        for path in get_eval_files(wildcards)
        if path != config["evaluate"][_dataset(wildcards)]["images"]
    ]


def _eval_job(model, wildcards, **settings):
    """One evaluation job's science as JSON (machine settings are command-line flags)."""
    dataset = _dataset(wildcards)
    job = {
        "model": model,
        "dataset": dataset,
        "files": config["evaluate"][dataset],
        **settings,
    }
    return json.dumps(job, sort_keys=True)


def get_embed_params(wildcards):
    """The image-embedding job as JSON: only the image tower's fields and the dataset's files,
    so no text-side edit (variant, beta, template, ks) recomputes the cache."""
    model = {"name": wildcards.image_model, **get_image_models()[wildcards.image_model]}
    return _eval_job(model, wildcards)


def get_retrieval_params(wildcards):
    """One retrieval job as JSON: the model entry, the dataset and its files, recall cut-offs."""
    model = get_eval_models()[wildcards.model].job_dict()
    return _eval_job(model, wildcards, ks=config["evaluate"]["ks"])


def get_vqa_params(wildcards):
    """One VQA job as JSON; candidates take the one text form of pairs (text.qa_template).
    A function: Snakemake would read the template's {question} as a wildcard."""
    model = get_eval_models()[wildcards.model].job_dict()
    return _eval_job(model, wildcards, template=config["text"]["qa_template"])


def get_clip_weights_outputs(wildcards):
    """The fetched weight files of every configured pretrained tag, for fetch_clip_weights -
    the evaluation entries', the training runs' and the report's scoring CLIP."""
    models = [
        (entry.architecture, entry.pretrained) for entry in get_eval_models().values()
    ]
    if is_train_active():
        models += [(run.architecture, run.pretrained) for run in get_train_runs()]
    if config["report"]["activate"]:
        clip = config["report"]["clip"]
        models.append((clip["architecture"], clip["pretrained"]))
    return sorted(
        {
            get_weights_file(architecture, pretrained)
            for architecture, pretrained in models
            if not is_checkpoint_path(pretrained)
        }
    )


def get_fetched_weights_dir(wildcards, output):
    """The folder fetch_clip_weights writes into (its output's)."""
    return str(Path(output.weights).parent)
