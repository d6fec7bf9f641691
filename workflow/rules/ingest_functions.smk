# Input functions and parameters of the ingest stage (workflow/rules/ingest.smk includes this
# file: `snakemake --lint` wants Python functions and rules in separate snakefiles). The final
# ingested shard that later stages read (ingested_shard, get_ingested_shard) is in common.smk.
def get_shard_rows(wildcards):
    """The TSV rows of a shard as START:STOP. A param: only the shards whose rows change
    (the last one, when cc3m.limit grows) are redone, not every shard."""
    rows = get_shard_plan().row_range(int(wildcards.shard))
    return f"{rows.start}:{rows.stop}"


def get_download_params(wildcards):
    """The ingest settings the first pass depends on, as JSON (retry_failed edits do not redo
    it). A function: Snakemake would expand a {name} inside a plain string param."""
    return json.dumps(
        {k: v for k, v in config["ingest"].items() if k != "retry_failed"},
        sort_keys=True,
    )


def get_retry_params(wildcards):
    """The whole ingest section as JSON (the retry pass re-downloads with the same settings)."""
    return json.dumps(config["ingest"], sort_keys=True)


def get_ingest_stats():
    """The stats JSON of every final shard."""
    folder = (
        "results/ingest/retried/stats"
        if is_retry_failed_active()
        else "results/ingest/stats"
    )
    return [f"{folder}/{shard}.json" for shard in get_shards()]


def get_ingest_outputs():
    return [*map(ingested_shard, get_shards()), "results/ingest/summary.json"]
