# Stage: ingest. The CC3M TSV is cut into shards of cc3m.shard_size rows; one job per shard
# downloads its images with img2dataset into results/ingest/shards/{shard}.parquet (one row per
# TSV row, failures included) plus a stats JSON; an optional second pass re-tries the failed
# downloads; a local aggregation writes and prints results/ingest/summary.json.
# get_ingest_outputs() and get_ingested_shard(wildcards) are defined in ingest_functions.smk.


include: "ingest_functions.smk"


rule download_shard:
    input:
        # ancient: copying or touching the TSV redoes no shard; which rows a shard holds is
        # a param (get_shard_rows), so a cc3m.limit/shard_size edit redoes the shards it moves.
        tsv=ancient(config["cc3m"]["tsv"]),
    output:
        # Kept when the retry pass runs: a retry_failed edit then redoes only the retry pass.
        shard="results/ingest/shards/{shard}.parquet",
        stats="results/ingest/stats/{shard}.json",
    log:
        "logs/download_shard/{shard}.log",
    benchmark:
        "benchmarks/download_shard/{shard}.tsv"
    retries: 2  # network flakiness; every attempt starts the shard afresh
    conda:
        "../../envs/dialogclip.yaml"
    threads: 2  # one img2dataset worker decoding/resizing + this process assembling
    resources:
        mem_mb=4000,
        runtime=120,
        # img2dataset's concurrent downloads (network-bound, not CPU threads); override in a
        # profile with set-resources. Not a config key, so tuning it never redoes a shard.
        download_threads=64,
    params:
        rows=get_shard_rows,
        cfg=get_download_params,
    shell:
        "dialogclip ingest-shard --tsv {input.tsv:q} --shard {wildcards.shard}"
        " --rows {params.rows} --params {params.cfg:q}"
        " --download-threads {resources.download_threads}"
        " --output {output.shard:q} --stats {output.stats:q} 2> {log:q}"


rule retry_failed_downloads:
    input:
        shard="results/ingest/shards/{shard}.parquet",
        tsv=ancient(config["cc3m"]["tsv"]),
    output:
        shard="results/ingest/retried/shards/{shard}.parquet",
        stats="results/ingest/retried/stats/{shard}.json",
    log:
        "logs/retry_failed_downloads/{shard}.log",
    benchmark:
        "benchmarks/retry_failed_downloads/{shard}.tsv"
    retries: 2
    conda:
        "../../envs/dialogclip.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        download_threads=64,
    params:
        cfg=get_retry_params,
    shell:
        "dialogclip ingest-retry --tsv {input.tsv:q} --shard {wildcards.shard}"
        " --input {input.shard:q} --params {params.cfg:q}"
        " --download-threads {resources.download_threads}"
        " --output {output.shard:q} --stats {output.stats:q} 2> {log:q}"


rule ingest_summary:
    input:
        stats=get_ingest_stats(),
    output:
        summary="results/ingest/summary.json",
    log:
        "logs/ingest_summary/summary.log",
    benchmark:
        "benchmarks/ingest_summary/summary.tsv"
    localrule: True
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        # stdout is the readable summary, shown at the end of the ingestion.
        "dialogclip ingest-summary --stats {input.stats:q} --output {output.summary:q} 2> {log:q}"
