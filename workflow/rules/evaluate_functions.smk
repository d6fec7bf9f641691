# Input functions and parameters of the evaluate stage (workflow/rules/evaluate.smk includes
# this file: `snakemake --lint` wants Python functions and rules in separate snakefiles).
TINY_CLIP = "results/models/tiny-clip.safetensors"
VQA_DATASETS = ("vqa_real", "vqa_abstract")


def get_eval_models():
    """The evaluate.models entries by name."""
    return {model["name"]: model for model in config["evaluate"]["models"]}


def get_eval_datasets():
    """The evaluation sets the config switches on (those not null)."""
    return [
        name for name in ("coco", *VQA_DATASETS) if config["evaluate"][name] is not None
    ]


def get_evaluate_outputs():
    """Retrieval JSON per model on COCO, VQA metrics JSON per model and VQA set."""
    models = list(get_eval_models())
    datasets = get_eval_datasets()
    outputs = []
    if "coco" in datasets:
        outputs += expand("results/eval/retrieval/{model}/coco.json", model=models)
    vqa = [name for name in datasets if name in VQA_DATASETS]
    outputs += expand(
        "results/eval/vqa/{model}/{dataset}.json", model=models, dataset=vqa
    )
    return outputs


def get_eval_params(wildcards):
    """One evaluation job as JSON: the model entry, the dataset and its files, run settings.
    A function: Snakemake would read the template's {question} as a wildcard."""
    section = config["evaluate"]
    job = {
        "model": get_eval_models()[wildcards.model],
        "dataset": wildcards.dataset,
        "files": section[wildcards.dataset],
        "batch_size": section["batch_size"],
        "template": section["template"],
        "ks": section["ks"],
    }
    return json.dumps(job, sort_keys=True)


def get_eval_checkpoint(wildcards):
    """The tiny checkpoint when a model points at it (the rule tiny_clip builds it)."""
    pretrained = get_eval_models()[wildcards.model]["pretrained"]
    return [TINY_CLIP] if pretrained == TINY_CLIP else []
