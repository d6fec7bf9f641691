# Stage: export. The dialogue-enriched CC3M as a shareable dataset folder (results/dataset/):
# one Parquet file per shard, the downloaded rows with every generator's dialogue joined on key,
# and a dataset card (README.md with the Hugging Face header) that `datasets.load_dataset` reads.
# `snakemake dataset` builds it; `all` does when export.dataset.activate. One job: it only reads
# columns and joins (no image bytes), and it is redone whole if killed (docs/export.md).


include: "export_functions.smk"


rule export_dataset:
    input:
        ingested=get_all_ingested_shards,
        dialogue=get_all_dialogue_shards,
    output:
        directory(DATASET),
    log:
        "logs/export_dataset/export_dataset.log",
    benchmark:
        "benchmarks/export_dataset/export_dataset.tsv"
    localrule: True
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cfg=get_export_dataset_params,
        dialogue=get_dialogue_args,
    shell:
        "dialogclip export-dataset --params {params.cfg:q} --ingested {input.ingested:q}"
        " {params.dialogue} --output {output:q} 2> {log:q}"


rule dataset:
    input:
        DATASET,
    localrule: True


# Every training run's models as files open_clip loads (docs/export.md, "Trained models"): one
# job and folder per run, on the CPU (copies and one blend per weight-blend entry); redone when
# the run's tower or its evaluation entries change.
rule export_models:
    input:
        tower=get_export_models_tower,
        weights=get_export_models_weights,
    output:
        directory(f"{EXPORTED_MODELS}/{{run}}"),
    log:
        "logs/export_models/{run}.log",
    benchmark:
        "benchmarks/export_models/{run}.tsv"
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        cfg=get_export_models_params,
        weights_dir=config["weights_dir"],
    shell:
        "dialogclip export-models --params {params.cfg:q} --tower {input.tower:q}"
        " --weights-dir {params.weights_dir:q} --output {output:q} 2> {log:q}"


rule models:
    input:
        get_exported_models,
    localrule: True
