# Stage: train (data part). Per block of train.shards_per_block consecutive ingested shards
# (named FIRST-LAST, e.g. 00000-00007; one job and one file per block and kind): the frozen
# image tower's embeddings I(x) (one cache per image tower, shared by every run on it), the
# frozen text tower's caption embeddings T(y) (third-tower runs), and the training rows (one
# generator's dialogue joined on key, in a text form, tokenised once). A block rather than a
# shard: each is a minute of work with nothing to resume inside, and a job per shard made
# thousands of them (docs/cluster.md, "Job granularity"). Batch size, device and threads are
# machine settings: resources / threads, overridable in a profile, never parameters. Targets
# only with train.activate; get_train_outputs() and the input functions are in
# train_functions.smk.


include: "train_functions.smk"


rule embed_train_images:
    input:
        shards=get_block_ingested_shards,
        checkpoint=get_train_image_checkpoint,
    output:
        emb="results/train/emb/image/{image_model}/{block}.arrow",
    log:
        "logs/embed_train_images/{image_model}/{block}.log",
    cache: OUTPUT_CACHE
    conda:
        "../../envs/dialogclip-gpu.yaml"
    threads: 4  # image decoding
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
        batch_size=256,  # images per forward pass
    params:
        cfg=get_train_image_params,
        weights_dir=config["weights_dir"],
    shell:
        "dialogclip --gpus {resources.gpu} --allow-cpu {resources.allow_cpu} embed-train-images --params {params.cfg:q} --shards {input.shards:q}"
        " --output {output.emb:q} --batch-size {resources.batch_size}"
        " --weights-dir {params.weights_dir:q}"
        " --threads {threads} 2> {log:q}"


rule embed_train_captions:
    input:
        shards=get_block_ingested_shards,
        checkpoint=get_train_text_checkpoint,
    output:
        emb="results/train/emb/text/{text_model}/{block}.arrow",
    log:
        "logs/embed_train_captions/{text_model}/{block}.log",
    cache: OUTPUT_CACHE
    conda:
        "../../envs/dialogclip-gpu.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
        batch_size=512,  # captions per forward pass
    params:
        cfg=get_train_text_params,
        weights_dir=config["weights_dir"],
    shell:
        "dialogclip --gpus {resources.gpu} --allow-cpu {resources.allow_cpu} embed-train-captions --params {params.cfg:q} --shards {input.shards:q}"
        " --output {output.emb:q} --batch-size {resources.batch_size}"
        " --weights-dir {params.weights_dir:q}"
        " --threads {threads} 2> {log:q}"


# One job per block and rows set (generator, architecture, form), not per block and generator
# with every set at once: an edit of one set's settings (the joined form's separator, a new
# run's architecture) then rewrites only that set's files and reruns only the runs reading it.
rule train_rows:
    input:
        ingested=get_block_ingested_shards,
        dialogue=get_block_dialogue_shards,
    output:
        rows="results/train/rows/{generator}/{architecture}/{rows_form}/{block}.arrow",
        stats="results/train/rows/{generator}/{architecture}/{rows_form}/stats/{block}.json",
    log:
        "logs/train_rows/{generator}/{architecture}/{rows_form}/{block}.log",
    benchmark:
        "benchmarks/train_rows/{generator}/{architecture}/{rows_form}/{block}.tsv"
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,  # seconds of CPU per shard
    params:
        cfg=get_train_rows_params,
    shell:
        "dialogclip train-rows --params {params.cfg:q} --ingested {input.ingested:q}"
        " --dialogue {input.dialogue:q} --output {output.rows:q} --stats {output.stats:q}"
        " 2> {log:q}"


rule train_run:
    input:
        unpack(get_train_run_inputs),
    output:
        final="results/train/runs/{run}/final.safetensors",
        metrics="results/train/runs/{run}/metrics.jsonl",
    log:
        "logs/train_run/{run}.log",
    benchmark:
        "benchmarks/train_run/{run}.tsv"
    conda:
        "../../envs/dialogclip-gpu.yaml"
    threads: 2
    resources:
        gpu=1,  # with processes > 1: as many GPUs as processes
        mem_mb=32000,
        runtime=720,
        processes=1,  # data-parallel processes (the global batch stays optim.batch_size)
        checkpoint_every=500,  # optimizer updates between checkpoints
        num_workers=0,  # DataLoader workers per process
    params:
        cfg=get_train_run_params,
        run_dir=get_train_run_dir,
        caption_emb=get_caption_emb_flag,
        weights_dir=config["weights_dir"],
    shell:
        "dialogclip --gpus {resources.gpu} --allow-cpu {resources.allow_cpu} train --params {params.cfg:q}"
        " --rows {input.rows:q} --image-emb {input.image_emb:q} {params.caption_emb}"
        " --run-dir {params.run_dir:q} --final {output.final:q} --metrics {output.metrics:q}"
        " --weights-dir {params.weights_dir:q} --threads {threads}"
        " --processes {resources.processes} --checkpoint-every {resources.checkpoint_every}"
        " --num-workers {resources.num_workers} 2> {log:q}"
