# Input functions and parameters of the report stage (workflow/rules/report.smk includes this
# file: `snakemake --lint` wants Python functions and rules in separate snakefiles).
# The thesis' numbers live in the repository, whatever the working directory (the demo runs in
# resources/demo/): an absolute path, an input of the report.
THESIS_NUMBERS = str(Path(workflow.basedir) / "resources" / "thesis" / "numbers.yaml")
REPORT_PLOTS = (
    "recall_bars",
    "beta_curve",
    "vqa_answer_types",
    "download_errors",
    "parse_rates",
    "training_loss",
    "dialogue_clipscore",
    "dialogue_tokens",
)
QUALITY_TABLE = "dialogue_quality"


def is_report_active():
    return config["report"]["activate"]


def is_dialogue_quality_active():
    return config["report"]["dialogue_quality"]["activate"] and bool(get_generators())


@cache
def get_thesis_numbers():
    """numbers.yaml, read and checked once per planning (its table names decide the report's
    table files; the entries' thesis rows are checked against it)."""
    from dialogclip.report.thesis import load_thesis_numbers

    try:
        return load_thesis_numbers(THESIS_NUMBERS)
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


def check_thesis_rows():
    """Every thesis_row of the entries the report receives (evaluate.models and the training
    runs' variants) must be a row of numbers.yaml: the report's own check, run at load time.
    """
    from dialogclip.report.settings import report_settings_from_params
    from dialogclip.report.tables import check_thesis_rows as check_rows

    settings = report_settings_from_params(json.loads(get_report_params(None)))
    try:
        check_rows(settings, get_thesis_numbers())
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


def get_report_tables():
    """The report's tables: those of numbers.yaml, then the dialogue-quality table."""
    return [*get_thesis_numbers().tables, QUALITY_TABLE]


def get_report_table_outputs():
    """{name: report-flagged HTML table}: the named outputs the report embeds."""
    outputs = {}
    for name in get_report_tables():
        caption = Path(workflow.basedir) / "workflow" / "report" / f"table_{name}.rst"
        outputs[f"table_{name}"] = report(
            f"results/report/tables/{name}.html",
            caption=str(
                caption if caption.is_file() else caption.with_name("table.rst")
            ),
            category="Tables",
            labels={"table": name},
        )
    return outputs


def get_report_plot_outputs():
    """{name: report-flagged PNG plot}."""
    return {
        f"plot_{name}": report(
            f"results/report/plots/{name}.png",
            caption=str(
                Path(workflow.basedir) / "workflow" / "report" / f"plot_{name}.rst"
            ),
            category="Plots",
            labels={"plot": name},
        )
        for name in REPORT_PLOTS
    }


def get_report_text_outputs():
    """The Markdown and CSV twins of every table (not embedded: the HTML is)."""
    return [
        f"results/report/tables/{name}{suffix}"
        for name in get_report_tables()
        for suffix in (".md", ".csv")
    ]


def get_dialogue_quality_outputs():
    """Per generator: the dialogue-quality summary and its per-image table."""
    if not is_dialogue_quality_active():
        return []
    return expand(
        "results/report/dialogue_quality/{generator}.{ext}",
        generator=get_generators(),
        ext=("json", "parquet"),
    )


def get_report_outputs():
    """Everything the report stage adds to the target `all`."""
    if not is_report_active():
        return []
    # The gallery by name too: a finished working directory from before it existed then builds
    # it (Snakemake checks only the requested outputs of a job for being missing).
    return [
        "results/report/report.md",
        "results/report/gallery.html",
        *get_dialogue_quality_outputs(),
    ]


def get_training_metrics(wildcards):
    """The metrics.jsonl of every training run (outputs of train_run: the report waits)."""
    if not is_train_active():
        return []
    return [run.metrics for run in get_train_runs()]


def get_report_params(wildcards):
    """What decides the tables: the evaluation entries (every field of the one entry type, the
    training runs' entries included), the generators, the number format. As JSON, a param:
    editing an entry's beta reruns the report.
    """
    models = [entry.as_dict() for entry in get_eval_models().values()]
    return json.dumps(
        {
            "models": models,
            "generators": get_generators(),
            "decimals": config["report"]["decimals"],
            "gallery": config["report"]["gallery"],
            "compare_with_thesis": config["report"]["compare_with_thesis"],
            "note": config["report"]["note"],
        },
        sort_keys=True,
    )


def get_report_eval_inputs(wildcards):
    """Every evaluation result (evaluate stage outputs)."""
    return get_evaluate_outputs()


def get_report_dialogue_summaries(wildcards):
    return expand(
        "results/dialogue/{generator}/summary.json", generator=get_generators()
    )


def get_report_quality_inputs(wildcards):
    return [path for path in get_dialogue_quality_outputs() if path.endswith(".json")]


def get_report_clip_checkpoint(wildcards):
    """report.clip's weights: a checkpoint file (a rule may build it, as tiny_clip in the demo)
    or a pretrained tag's weights fetched into weights_dir."""
    clip = config["report"]["clip"]
    return get_weights_file(clip["architecture"], clip["pretrained"])


def get_dialogue_quality_params(wildcards):
    """The text form, the scoring CLIP and the dialogue_quality settings, as JSON (not the
    batch size: a machine setting, the rule's resource). A function: the text form's
    {question} would be read as a wildcard."""
    quality = {
        key: value
        for key, value in config["report"]["dialogue_quality"].items()
        if key != "activate"
    }
    return json.dumps(
        {
            "text": config["text"],
            "clip": config["report"]["clip"],
            "dialogue_quality": quality,
        },
        sort_keys=True,
    )
