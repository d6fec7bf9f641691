# Stage: evaluate. Image embeddings are computed once per (model, dataset) and reused; COCO
# zero-shot retrieval and VQA v1 multiple choice (real, abstract) per model write one JSON each
# with CLIP_benchmark's fields (dataset, model, pretrained, task, metrics) plus ours.


include: "evaluate_functions.smk"


wildcard_constraints:
    model=r"[A-Za-z0-9_.-]+",
    dataset=r"coco|vqa_real|vqa_abstract",


rule tiny_clip:
    output:
        checkpoint=TINY_CLIP,
    log:
        "logs/tiny_clip/tiny_clip.log",
    benchmark:
        "benchmarks/tiny_clip/tiny_clip.tsv"
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "dialogclip make-tiny-clip --output {output.checkpoint:q} --seed 0 2> {log:q}"


rule embed_eval_images:
    input:
        checkpoint=get_eval_checkpoint,
    output:
        emb="results/eval/image_emb/{model}/{dataset}.safetensors",
    log:
        "logs/embed_eval_images/{model}/{dataset}.log",
    benchmark:
        "benchmarks/embed_eval_images/{model}/{dataset}.tsv"
    conda:
        "../../envs/dialogclip.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        cfg=get_eval_params,
    shell:
        "dialogclip embed-images --params {params.cfg:q} --output {output.emb:q} 2> {log:q}"


rule eval_retrieval:
    input:
        checkpoint=get_eval_checkpoint,
        emb="results/eval/image_emb/{model}/{dataset}.safetensors",
    output:
        metrics="results/eval/retrieval/{model}/{dataset}.json",
    log:
        "logs/eval_retrieval/{model}/{dataset}.log",
    benchmark:
        "benchmarks/eval_retrieval/{model}/{dataset}.tsv"
    conda:
        "../../envs/dialogclip.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        cfg=get_eval_params,
    shell:
        "dialogclip eval-retrieval --params {params.cfg:q} --image-emb {input.emb:q}"
        " --output {output.metrics:q} 2> {log:q}"


rule eval_vqa:
    input:
        checkpoint=get_eval_checkpoint,
        emb="results/eval/image_emb/{model}/{dataset}.safetensors",
    output:
        results="results/eval/vqa/{model}/{dataset}_results.json",
        metrics="results/eval/vqa/{model}/{dataset}.json",
    log:
        "logs/eval_vqa/{model}/{dataset}.log",
    benchmark:
        "benchmarks/eval_vqa/{model}/{dataset}.tsv"
    conda:
        "../../envs/dialogclip.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        cfg=get_eval_params,
    shell:
        "dialogclip eval-vqa --params {params.cfg:q} --image-emb {input.emb:q}"
        " --results {output.results:q} --output {output.metrics:q} 2> {log:q}"
