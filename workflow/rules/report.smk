# Stage: report. Per generator, dialogue-quality statistics (CLIPScore of dialogue and caption
# against the image, parse success, finish reasons, token lengths); then the thesis' tables
# with our numbers beside the thesis' (Markdown, CSV, HTML) and the plots, in results/report/.
# `snakemake --report report.html` embeds the HTML tables and the plots (report() flags below,
# captions in workflow/report/). Input functions are in report_functions.smk.


include: "report_functions.smk"


rule dialogue_quality:
    input:
        dialogue=get_dialogue_shards,
        ingested=get_all_ingested_shards,
        checkpoint=get_report_clip_checkpoint,
    output:
        json="results/report/dialogue_quality/{generator}.json",
        parquet="results/report/dialogue_quality/{generator}.parquet",
    log:
        "logs/dialogue_quality/{generator}.log",
    benchmark:
        "benchmarks/dialogue_quality/{generator}.tsv"
    conda:
        "../../envs/dialogclip-gpu.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
        # images / texts per CLIP forward pass: a machine setting, never a rerun
        batch_size=256,
    params:
        cfg=get_dialogue_quality_params,
        weights_dir=config["weights_dir"],
    shell:
        "dialogclip --gpus {resources.gpu} --allow-cpu {resources.allow_cpu} dialogue-quality --params {params.cfg:q}"
        " --generator {wildcards.generator} --weights-dir {params.weights_dir:q}"
        " --dialogue {input.dialogue:q} --ingested {input.ingested:q}"
        " --output {output.json:q} --per-image {output.parquet:q}"
        " --batch-size {resources.batch_size} --threads {threads} 2> {log:q}"


rule report:
    input:
        thesis=THESIS_NUMBERS,
        evaluations=get_report_eval_inputs,
        ingest="results/ingest/summary.json",
        dialogue=get_report_dialogue_summaries,
        quality=get_report_quality_inputs,
        train=get_training_metrics,
        ingested=get_all_ingested_shards,
        dialogue_shards=get_all_dialogue_shards,
    output:
        **get_report_table_outputs(),
        **get_report_plot_outputs(),
        gallery=report(
            "results/report/gallery.html",
            caption="../report/gallery.rst",
            category="Gallery",
            labels={"page": "gallery"},
        ),
        text=get_report_text_outputs(),
        page="results/report/report.md",
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report/report.tsv"
    localrule: True
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=get_report_params,
        dialogue=get_dialogue_args,  # the gallery's dialogue shards
    shell:
        "dialogclip report --params {params.cfg:q} --thesis {input.thesis:q}"
        " --results-dir results --metrics {input.train:q}"
        " --ingested {input.ingested:q} {params.dialogue}"
        " --output-dir results/report 2> {log:q}"
