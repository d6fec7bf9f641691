# Input functions and parameters of the generate stage (workflow/rules/generate.smk includes
# this file: `snakemake --lint` wants Python functions and rules in separate snakefiles).
from pathlib import Path

from dialogclip.models import vlm_weights

TINY_MODELS = "results/models/tiny"


def get_generate_outputs():
    """Every dialogue shard of each switched-on generator, plus its parse-rate summary."""
    generators = get_generators()
    if not generators:
        return []
    return [
        *expand(
            "results/dialogue/{generator}/{shard}.parquet",
            generator=generators,
            shard=get_shards(),
        ),
        *expand("results/dialogue/{generator}/summary.json", generator=generators),
    ]


def get_generate_params(wildcards):
    """The params of one generator's jobs: the generate section (science only: the schema admits
    no machine setting) as JSON, without the other generators' settings, so editing the LLaVA
    prompt reruns the LLaVA jobs only, and adding or editing an entry of generate.vlms reruns
    only that generator's jobs (its entry goes in as vlms: {name: entry}).

    A function, not a string: Snakemake would read the prompts' {question} as a wildcard.
    """
    generator = wildcards.generator
    section = {
        key: value
        for key, value in config["generate"].items()
        if key not in ("blip2", "llava", "generators", "vlms")
    }
    if generator in ("blip2", "llava"):
        section[generator] = config["generate"][generator]
    else:
        section["vlms"] = {generator: config["generate"]["vlms"][generator]}
    return json.dumps(section, sort_keys=True)


def get_generator_entry(generator):
    """The config entry of `generator` (generate.blip2, generate.llava or generate.vlms.<name>)
    and its key, for messages."""
    if generator in ("blip2", "llava"):
        return config["generate"][generator], f"generate.{generator}"
    return config["generate"]["vlms"][generator], f"generate.vlms.{generator}"


# Host memory (MB), wall time (minutes) and engine reuse of one generation job: the only
# resource defaults in which the generators differ (LLaVA-1.5-7B has nearly twice BLIP-2
# OPT-2.7B's weights and writes three pairs per image where BLIP-2 writes two short turns). The
# one rule `generate` serves both, so these defaults are callables of its {generator} wildcard
# reading this dict. A profile's set-resources value replaces them for both generators, or per
# generator as an expression:
#   generate: {mem_mb: "60000 if wildcards.generator == 'llava' else 32000"}
# mem_mb leaves room for one 10,000-image shard. runtime covers the job's own shard and those
# it works ahead on (shards_per_engine, below), which stops before it would run out; the Slurm
# profile takes these as they are.
# shards_per_engine: one vLLM start serves this many shards (dialogclip.generate.work_ahead),
# so that start-up stays under 5 % of the GPU's time: K >= 19 S r / N for a start of S s, r
# images/s and N images per shard (docs/gpu.md); at S = 60 s, 3 for LLaVA (25 img/s) and 12 for
# BLIP-2 (100 img/s).
# A generator of generate.vlms takes LLaVA's (a 7B-class chat VLM); its own values go in a
# profile as expressions on the wildcard, as above.
GENERATE_RESOURCES = {
    "blip2": {"mem_mb": 32000, "runtime": 180, "shards_per_engine": 12},
    "llava": {"mem_mb": 48000, "runtime": 240, "shards_per_engine": 3},
}


def _generate_resources(generator):
    return GENERATE_RESOURCES.get(generator, GENERATE_RESOURCES["llava"])


def get_generate_mem_mb(wildcards):
    """Host memory (MB) of a generation job of wildcards.generator (GENERATE_RESOURCES)."""
    return _generate_resources(wildcards.generator)["mem_mb"]


def get_generate_runtime(wildcards):
    """Wall time (minutes) of a generation job of wildcards.generator (GENERATE_RESOURCES)."""
    return _generate_resources(wildcards.generator)["runtime"]


def get_generate_shards_per_engine(wildcards):
    """Shards one engine start of wildcards.generator serves (GENERATE_RESOURCES)."""
    return _generate_resources(wildcards.generator)["shards_per_engine"]


def get_text_params(wildcards):
    """The text section (the one text form of question/answer pairs) as JSON. A function:
    Snakemake would read the template's {question} as a wildcard."""
    return json.dumps(config["text"], sort_keys=True)


def get_text_architectures():
    """The CLIP architectures whose tokenizers read the dialogue texts: for now the distinct
    architectures of evaluate.models (training models join when the training stages land).
    """
    models = (config.get("evaluate") or {}).get("models") or []
    return sorted({entry["architecture"] for entry in models})


@cache
def get_fetched_weights(generator):
    """The folder of `generator`'s fetched hub model (dialogclip.models.vlm_weights), or None
    when its config names a local checkpoint (the demo's tiny models). A hub model needs a
    pinned commit (generate.<generator>.revision). Once per generator: every generation job
    asks (input and resource), 1,328 times at CC3M size."""
    settings, key = get_generator_entry(generator)
    model = settings["model"]
    if model == str(Path(TINY_MODELS) / generator) or not vlm_weights.is_hub_id(model):
        return None
    problem = vlm_weights.revision_problem(key, model, settings["revision"])
    if problem:
        raise WorkflowError(problem)
    return vlm_weights.weights_folder(model, settings["revision"])


def get_local_model(wildcards):
    """The model directory a generation job reads, as an input when the workflow makes it: the
    tiny checkpoint of rule tiny_models. A hub model is read from its fetched folder, which must
    exist when the DAG is built (it is fetched once, on a machine with internet access, by the
    target vlm_weights); its path is the resource model_dir, not an input, so moving it reruns
    nothing. A checkpoint the user provides: nothing."""
    generator = wildcards.generator
    settings, key = get_generator_entry(generator)
    model = Path(settings["model"])
    tiny = Path(TINY_MODELS) / generator
    if model == tiny:
        return [str(tiny)]
    folder = get_fetched_weights(generator)
    if folder is not None and not _is_fetched(folder):
        raise WorkflowError(
            f"{key}: {settings['model']} at {settings['revision']} is not fetched "
            f"({folder} is missing). Fetch it once on a machine with internet access: "
            "`snakemake --cores 1 vlm_weights` (or `"
            f"{vlm_weights.fetch_command(settings['model'], settings['revision'], folder)}`)"
        )
    return []


@cache
def _is_fetched(folder):
    """Whether ``folder`` holds a fetch record, looked up once per planning."""
    return vlm_weights.read_record(folder) is not None


def get_generate_model_dir(wildcards):
    """The resource model_dir of a generation job: the fetched folder of a hub model ("" for a
    local checkpoint). A machine setting: a profile may point it at a copy on a local disk.
    """
    folder = get_fetched_weights(wildcards.generator)
    return "" if folder is None else str(folder)


def get_vlm_weights_outputs(wildcards):
    """The fetched folders of the switched-on generators' hub models (target vlm_weights)."""
    folders = (get_fetched_weights(generator) for generator in get_generators())
    return sorted(str(folder) for folder in folders if folder is not None)


def get_vlm_model(wildcards):
    """The hub id of the folder fetch_vlm_weights fills (owner--name -> owner/name)."""
    return vlm_weights.model_of_folder(wildcards.vlm_repo)


def get_tiny_models_dir(wildcards, output):
    """The folder `dialogclip world make-tiny-models` fills (the parent of both model directories)."""
    return str(Path(output.llava).parent)


def get_dialogue_stats(wildcards):
    """The per-shard stats files of one generator, for its summary."""
    return expand(
        "results/dialogue/{generator}/stats/{shard}.json",
        generator=wildcards.generator,
        shard=get_shards(),
    )
