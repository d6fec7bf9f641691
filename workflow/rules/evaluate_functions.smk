# Input functions and parameters of the evaluate stage (workflow/rules/evaluate.smk includes
# this file: `snakemake --lint` wants Python functions and rules in separate snakefiles).
from dialogclip.evaluate.datasets import check_dataset_files
from dialogclip.models.naming import image_model_key, is_checkpoint_path

EVAL_DATASETS = ("coco", "vqa_real", "vqa_abstract")
IMAGE_MODEL_FIELDS = ("architecture", "pretrained", "quickgelu")


def get_eval_models():
    """The evaluate.models entries by name (names must be unique: they name the results)."""
    entries = config["evaluate"]["models"]
    names = [entry["name"] for entry in entries]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise WorkflowError(f"evaluate.models: duplicated name(s) {duplicated}")
    return {entry["name"]: entry for entry in entries}


def get_model_datasets(entry):
    """The evaluation sets of one model entry: its `datasets`, else every configured set."""
    configured = [
        name for name in EVAL_DATASETS if config["evaluate"][name] is not None
    ]
    if entry["datasets"] is None:
        return configured
    unconfigured = sorted(set(entry["datasets"]) - set(configured))
    if unconfigured:
        raise WorkflowError(
            f"evaluate.models: {entry['name']} asks for {unconfigured}, which "
            "evaluate.<dataset> does not configure (null)"
        )
    return [name for name in configured if name in entry["datasets"]]


def get_evaluate_outputs():
    """One metrics JSON per model entry and evaluation set (COCO retrieval, VQA real/abstract)."""
    outputs = []
    for name, entry in get_eval_models().items():
        for dataset in get_model_datasets(entry):
            task = "retrieval" if dataset == "coco" else "vqa"
            outputs.append(f"results/eval/{task}/{name}/{dataset}.json")
    return outputs


def get_image_model(entry):
    """The cache key of an entry's image tower (every text variant on it shares the cache)."""
    return image_model_key(*(entry[field] for field in IMAGE_MODEL_FIELDS))


def get_image_models():
    """{cache key: architecture, pretrained and quickgelu of that image tower}."""
    return {
        get_image_model(entry): {field: entry[field] for field in IMAGE_MODEL_FIELDS}
        for entry in get_eval_models().values()
    }


def get_image_model_checkpoint(wildcards):
    """The image tower's checkpoint when it is a file (a rule may build it), else nothing."""
    pretrained = get_image_models()[wildcards.image_model]["pretrained"]
    return [pretrained] if is_checkpoint_path(pretrained) else []


def get_eval_checkpoints(wildcards):
    """The checkpoint files a model entry reads: its weights and its second text tower."""
    entry = get_eval_models()[wildcards.model]
    return [
        path
        for path in (entry["pretrained"], entry["other"])
        if is_checkpoint_path(path)
    ]


def get_eval_image_emb(wildcards):
    """The cached image embeddings of the entry's image tower on this dataset."""
    key = get_image_model(get_eval_models()[wildcards.model])
    return f"results/eval/image_emb/{key}/{wildcards.dataset}.safetensors"


def get_eval_files(wildcards):
    """The dataset's annotation (and question) files. A missing file or image folder stops the
    workflow with a message naming it and where it is published."""
    files = config["evaluate"][wildcards.dataset]
    try:
        check_dataset_files(wildcards.dataset, files)
    except FileNotFoundError as err:
        raise WorkflowError(str(err)) from None
    return [files[key] for key in ("questions", "annotations") if files.get(key)]


def get_eval_entry(name):
    """The entry as its evaluation jobs receive it: without thesis_row, which only the report
    reads (linking an entry to the thesis reruns the report, not the evaluation)."""
    entry = get_eval_models()[name]
    return {key: value for key, value in entry.items() if key != "thesis_row"}


def _eval_job(model, wildcards, **settings):
    section = config["evaluate"]
    job = {
        "model": model,
        "dataset": wildcards.dataset,
        "files": section[wildcards.dataset],
        "batch_size": section["batch_size"],
        **settings,
    }
    return json.dumps(job, sort_keys=True)


def get_embed_params(wildcards):
    """The image-embedding job as JSON: only the image tower's fields, so editing a text
    variant never recomputes the cache."""
    model = {"name": wildcards.image_model, **get_image_models()[wildcards.image_model]}
    return _eval_job(model, wildcards)


def get_retrieval_params(wildcards):
    """One retrieval job as JSON: the model entry, the dataset and its files, recall cut-offs."""
    model = get_eval_entry(wildcards.model)
    return _eval_job(model, wildcards, ks=config["evaluate"]["ks"])


def get_vqa_params(wildcards):
    """One VQA job as JSON; candidates take the one text form of pairs (text.qa_template).
    A function: Snakemake would read the template's {question} as a wildcard."""
    model = get_eval_entry(wildcards.model)
    return _eval_job(model, wildcards, template=config["text"]["qa_template"])
