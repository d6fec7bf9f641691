# Stage: generate. Dialogue from the image alone (the caption is never shown): BLIP-2 two-turn
# and LLaVA-1.5 three-QA, one job per ingested shard and generator, resumable by chunk inside
# the job (finished chunks under results/dialogue/{generator}/.chunks/{shard}/). Backend vLLM on
# GPU, transformers otherwise (generate.backend: auto). Machine settings (gpu, mem_mb, runtime,
# threads) are defaults that profiles override with set-resources / set-threads.

# get_generate_outputs() and the rules' input functions are in generate_functions.smk.


include: "generate_functions.smk"


rule generate_blip2:
    input:
        shard=get_ingested_shard,
        model=get_local_model("blip2"),
    output:
        parquet="results/dialogue/blip2/{shard}.parquet",
        stats="results/dialogue/blip2/stats/{shard}.json",
    log:
        "logs/generate_blip2/{shard}.log",
    benchmark:
        "benchmarks/generate_blip2/{shard}.tsv"
    conda:
        "../../envs/dialogclip.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=24000,
        runtime=180,
    params:
        cfg=get_generate_params("blip2"),
        work_dir="results/dialogue/blip2/.chunks/{shard}",
    shell:
        "dialogclip generate-dialogue --generator blip2 --shard {input.shard:q}"
        " --output {output.parquet:q} --stats {output.stats:q}"
        " --work-dir {params.work_dir:q} --threads {threads} --params {params.cfg:q}"
        " 2> {log:q}"


rule generate_llava:
    input:
        shard=get_ingested_shard,
        model=get_local_model("llava"),
    output:
        parquet="results/dialogue/llava/{shard}.parquet",
        stats="results/dialogue/llava/stats/{shard}.json",
    log:
        "logs/generate_llava/{shard}.log",
    benchmark:
        "benchmarks/generate_llava/{shard}.tsv"
    conda:
        "../../envs/dialogclip.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=40000,
        runtime=240,
    params:
        cfg=get_generate_params("llava"),
        work_dir="results/dialogue/llava/.chunks/{shard}",
    shell:
        "dialogclip generate-dialogue --generator llava --shard {input.shard:q}"
        " --output {output.parquet:q} --stats {output.stats:q}"
        " --work-dir {params.work_dir:q} --threads {threads} --params {params.cfg:q}"
        " 2> {log:q}"


rule dialogue_summary:
    input:
        stats=get_dialogue_stats,
    output:
        json="results/dialogue/{generator}/summary.json",
    log:
        "logs/dialogue_summary/{generator}.log",
    wildcard_constraints:
        generator="blip2|llava",
    localrule: True
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "dialogclip dialogue-summary --stats {input.stats:q} --output {output.json:q} 2> {log:q}"


rule tiny_models:
    output:
        llava=directory(f"{TINY_MODELS}/llava"),
        blip2=directory(f"{TINY_MODELS}/blip2"),
    log:
        "logs/tiny_models/tiny_models.log",
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out_dir=get_tiny_models_dir,
    shell:
        "dialogclip make-tiny-models {params.out_dir:q} 2> {log:q}"
