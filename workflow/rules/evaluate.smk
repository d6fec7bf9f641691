# Stage: evaluate. For every entry of evaluate.models (an image tower + a text variant): COCO 5k
# zero-shot retrieval and VQA v1 multiple choice (real, abstract), one JSON each with
# CLIP_benchmark's fields (dataset, model, pretrained, task, metrics) plus ours. Image embeddings
# are computed once per (image tower, dataset) and shared by every text variant on that tower.
# Checkpoint paths in the config (pretrained, other) are inputs, so a rule that trains them runs
# first. get_evaluate_outputs() and the input functions are in evaluate_functions.smk.


include: "evaluate_functions.smk"


rule tiny_clip:
    output:
        checkpoint="results/models/tiny-clip-{seed}.safetensors",
    log:
        "logs/tiny_clip/{seed}.log",
    benchmark:
        "benchmarks/tiny_clip/{seed}.tsv"
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "dialogclip make-tiny-clip --output {output.checkpoint:q} --seed {wildcards.seed}"
        " 2> {log:q}"


rule world_clip:
    # The demo's baseline: the world's CLIP, committed compact (resources/demo/world_models;
    # docs/world.md), restored to the open_clip checkpoint every stage loads.
    input:
        compact="world_models/clip.safetensors",
    output:
        checkpoint="results/models/world-clip.safetensors",
    log:
        "logs/world_clip/world_clip.log",
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "dialogclip world expand-clip --compact {input.compact:q} --output {output.checkpoint:q}"
        " 2> {log:q}"


rule clip_weights:
    # Target for a machine with network: `snakemake clip_weights` fetches every configured
    # pretrained tag once; the GPU jobs then read only local files.
    input:
        get_clip_weights_outputs,
    localrule: True


rule fetch_clip_weights:
    output:
        weights=f"{config['weights_dir']}/{{architecture}}__{{tag}}.safetensors",
    log:
        "logs/fetch_clip_weights/{architecture}__{tag}.log",
    cache: OUTPUT_CACHE
    retries: 2  # network
    localrule: True  # needs network: run it on the machine Snakemake runs on
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        # in the cache key (the wildcards are not): one entry per architecture and tag
        architecture="{architecture}",
        tag="{tag}",
        weights_dir=get_fetched_weights_dir,
    shell:
        "dialogclip fetch-clip-weights --architecture {wildcards.architecture:q}"
        " --pretrained {wildcards.tag:q} --weights-dir {params.weights_dir:q} 2> {log:q}"


rule embed_eval_images:
    input:
        checkpoint=get_image_model_checkpoint,
        files=get_eval_image_list_files,
    output:
        emb="results/eval/image_emb/{image_model}/{dataset}.safetensors",
    log:
        "logs/embed_eval_images/{image_model}/{dataset}.log",
    cache: OUTPUT_CACHE
    conda:
        "../../envs/dialogclip-gpu.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
        batch_size=64,  # machine setting: images per forward pass
    params:
        cfg=get_embed_params,
        weights_dir=config["weights_dir"],
    shell:
        "dialogclip --gpus {resources.gpu} --allow-cpu {resources.allow_cpu} embed-images --params {params.cfg:q} --threads {threads}"
        " --weights-dir {params.weights_dir:q}"
        " --batch-size {resources.batch_size}"
        " --output {output.emb:q} 2> {log:q}"


rule eval_retrieval:
    input:
        emb=get_eval_image_emb,
        checkpoints=get_eval_checkpoints,
        files=get_eval_files,
    output:
        metrics="results/eval/retrieval/{model}/{retrieval_set}.json",
    log:
        "logs/eval_retrieval/{model}/{retrieval_set}.log",
    benchmark:
        "benchmarks/eval_retrieval/{model}/{retrieval_set}.tsv"
    conda:
        "../../envs/dialogclip-gpu.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
        batch_size=64,  # machine setting: texts per forward pass
    params:
        cfg=get_retrieval_params,
        weights_dir=config["weights_dir"],
    shell:
        "dialogclip --gpus {resources.gpu} --allow-cpu {resources.allow_cpu} eval-retrieval --params {params.cfg:q} --threads {threads}"
        " --weights-dir {params.weights_dir:q}"
        " --batch-size {resources.batch_size}"
        " --image-emb {input.emb:q} --output {output.metrics:q} 2> {log:q}"


rule eval_vqa:
    input:
        emb=get_eval_image_emb,
        checkpoints=get_eval_checkpoints,
        files=get_eval_files,
    output:
        results="results/eval/vqa/{model}/{vqa_set}_results.json",
        metrics="results/eval/vqa/{model}/{vqa_set}.json",
    log:
        "logs/eval_vqa/{model}/{vqa_set}.log",
    benchmark:
        "benchmarks/eval_vqa/{model}/{vqa_set}.tsv"
    conda:
        "../../envs/dialogclip-gpu.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
        batch_size=64,  # machine setting: texts per forward pass
    params:
        cfg=get_vqa_params,
        weights_dir=config["weights_dir"],
    shell:
        "dialogclip --gpus {resources.gpu} --allow-cpu {resources.allow_cpu} eval-vqa --params {params.cfg:q} --threads {threads}"
        " --weights-dir {params.weights_dir:q}"
        " --batch-size {resources.batch_size}"
        " --image-emb {input.emb:q} --results {output.results:q}"
        " --output {output.metrics:q} 2> {log:q}"
