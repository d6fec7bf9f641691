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
    wildcard_constraints:
        seed=r"\d+",
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "dialogclip make-tiny-clip --output {output.checkpoint:q} --seed {wildcards.seed}"
        " 2> {log:q}"


rule embed_eval_images:
    input:
        checkpoint=get_image_model_checkpoint,
        files=get_eval_files,
    output:
        emb="results/eval/image_emb/{image_model}/{dataset}.safetensors",
    log:
        "logs/embed_eval_images/{image_model}/{dataset}.log",
    benchmark:
        "benchmarks/embed_eval_images/{image_model}/{dataset}.tsv"
    wildcard_constraints:
        image_model=r"[A-Za-z0-9_.-]+",
        dataset=r"coco|vqa_real|vqa_abstract",
    conda:
        "../../envs/dialogclip.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        cfg=get_embed_params,
    shell:
        "dialogclip embed-images --params {params.cfg:q} --threads {threads}"
        " --output {output.emb:q} 2> {log:q}"


rule eval_retrieval:
    input:
        emb=get_eval_image_emb,
        checkpoints=get_eval_checkpoints,
        files=get_eval_files,
    output:
        metrics="results/eval/retrieval/{model}/{dataset}.json",
    log:
        "logs/eval_retrieval/{model}/{dataset}.log",
    benchmark:
        "benchmarks/eval_retrieval/{model}/{dataset}.tsv"
    wildcard_constraints:
        model=r"[A-Za-z0-9_.-]+",
        dataset=r"coco",
    conda:
        "../../envs/dialogclip.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        cfg=get_retrieval_params,
    shell:
        "dialogclip eval-retrieval --params {params.cfg:q} --threads {threads}"
        " --image-emb {input.emb:q} --output {output.metrics:q} 2> {log:q}"


rule eval_vqa:
    input:
        emb=get_eval_image_emb,
        checkpoints=get_eval_checkpoints,
        files=get_eval_files,
    output:
        results="results/eval/vqa/{model}/{dataset}_results.json",
        metrics="results/eval/vqa/{model}/{dataset}.json",
    log:
        "logs/eval_vqa/{model}/{dataset}.log",
    benchmark:
        "benchmarks/eval_vqa/{model}/{dataset}.tsv"
    wildcard_constraints:
        model=r"[A-Za-z0-9_.-]+",
        dataset=r"vqa_real|vqa_abstract",
    conda:
        "../../envs/dialogclip.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        cfg=get_vqa_params,
    shell:
        "dialogclip eval-vqa --params {params.cfg:q} --threads {threads}"
        " --image-emb {input.emb:q} --results {output.results:q}"
        " --output {output.metrics:q} 2> {log:q}"
