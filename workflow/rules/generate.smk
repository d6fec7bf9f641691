# Stage: generate. Dialogue from the image alone (the caption is never shown): BLIP-2 two-turn,
# LLaVA-1.5 three-QA, and any generator configured by data under generate.vlms. One rule, `generate`, with a {generator} wildcard: one job per ingested
# shard and generator, resumable by chunk inside the job (finished chunks under
# results/dialogue/{generator}/.chunks/{shard}/); its engine then works ahead on other shards'
# chunks (shards_per_engine below).
# Science in params, machine in resources: params carry the generate section (models, prompts,
# sampling, dtype, image preprocessing; only the job's own generator), so editing it reruns the
# jobs that read it. Everything about how a job runs on its node is a resource with its default
# here, passed on the shell line as a flag of the same name
# (dialogclip.generate.config.MACHINE_FLAGS): Snakemake never reruns a job for a resource, and a
# profile overrides them with set-resources / set-threads:
#   backend                  auto | vllm | transformers (auto: vllm when CUDA and vLLM exist).
#                            Machine, not science: at a fixed dtype both give the same greedy
#                            replies (parity tests), as any batch size does; rows record it.
#   chunk_size               images per persisted chunk (the unit of resume)
#   decode_workers           image-decode threads (0 = threads)
#   prefetch_chunks          chunks decoded ahead of the engine
#   transformers_batch_size  images per generate call;  transformers_device  auto | cuda | cpu
#   vllm_gpu_memory_percent  percent of GPU memory for vLLM (an int: Snakemake rounds floats)
#   vllm_kv_cache_mib        KV cache size in MiB (0 = from the percent on GPU, 1 GiB on CPU)
#   vllm_max_model_len       context length (0 = the model's; a reply it would cut stops the job)
#   vllm_max_num_seqs, vllm_tensor_parallel_size (raise gpu with it)
#   vllm_enforce_eager       auto (eager on CPU, compiled on GPU) | 0 | 1
#   vllm_executor            auto (vLLM's choice on GPU, in-process "uni" on CPU) | uni | mp | ray
#   model_dir                the folder a hub model is loaded from (its fetched copy,
#                            resources/vlm_weights/<owner>--<name>/<commit>; "" for a local
#                            checkpoint): where the weights are, not which (the config's
#                            model and revision, in params, decide that).
#   shards_per_engine        one engine start serves this many shards: after its own, the
#                            job makes the chunks of pending shards beside it, which their
#                            jobs then only assemble (dialogclip.generate.work_ahead); within
#                            95 % of runtime. 1 = its own shard only.
# mem_mb, runtime and shards_per_engine differ per generator: callables of {generator}
# (GENERATE_RESOURCES in generate_functions.smk). A set-resources value applies to both generators; to set one
# generator only, give a Python expression on the wildcard (Snakemake evaluates set-resources
# values with `wildcards` in scope), e.g. LLaVA-1.5-13B tensor parallel on two GPUs:
#   set-resources:
#     generate:
#       gpu: "2 if wildcards.generator == 'llava' else 1"
#       vllm_tensor_parallel_size: "2 if wildcards.generator == 'llava' else 1"

# get_generate_outputs() and the rule's input functions are in generate_functions.smk.


include: "generate_functions.smk"


rule generate:
    input:
        shard=get_ingested_shard,
        model=get_local_model,
    output:
        parquet="results/dialogue/{generator}/{shard}.parquet",
        stats="results/dialogue/{generator}/stats/{shard}.json",
    log:
        "logs/generate/{generator}/{shard}.log",
    cache: OUTPUT_CACHE
    conda:
        "../../envs/dialogclip-gpu.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=get_generate_mem_mb,
        runtime=get_generate_runtime,
        shards_per_engine=get_generate_shards_per_engine,
        backend="auto",
        chunk_size=512,
        decode_workers=0,
        prefetch_chunks=1,
        transformers_batch_size=8,
        transformers_device="auto",
        vllm_gpu_memory_percent=90,
        vllm_kv_cache_mib=0,
        vllm_max_model_len=0,
        vllm_max_num_seqs=256,
        vllm_tensor_parallel_size=1,
        vllm_enforce_eager="auto",
        vllm_executor="auto",
        model_dir=get_generate_model_dir,
    params:
        cfg=get_generate_params,
        work_dir="results/dialogue/{generator}/.chunks/{shard}",
    shell:
        "dialogclip --gpus {resources.gpu} --allow-cpu {resources.allow_cpu} generate-dialogue --generator {wildcards.generator}"
        " --shard {input.shard:q}"
        " --output {output.parquet:q} --stats {output.stats:q}"
        " --work-dir {params.work_dir:q} --threads {threads} --params {params.cfg:q}"
        " --backend {resources.backend} --chunk-size {resources.chunk_size}"
        " --decode-workers {resources.decode_workers}"
        " --prefetch-chunks {resources.prefetch_chunks}"
        " --transformers-batch-size {resources.transformers_batch_size}"
        " --transformers-device {resources.transformers_device}"
        " --vllm-gpu-memory-percent {resources.vllm_gpu_memory_percent}"
        " --vllm-kv-cache-mib {resources.vllm_kv_cache_mib}"
        " --vllm-max-model-len {resources.vllm_max_model_len}"
        " --vllm-max-num-seqs {resources.vllm_max_num_seqs}"
        " --vllm-tensor-parallel-size {resources.vllm_tensor_parallel_size}"
        " --vllm-enforce-eager {resources.vllm_enforce_eager}"
        " --vllm-executor {resources.vllm_executor}"
        " --shards-per-engine {resources.shards_per_engine} --runtime {resources.runtime}"
        " --model-dir={resources.model_dir:q}"
        " 2> {log:q}"


rule dialogue_summary:
    input:
        stats=get_dialogue_stats,
        shards=get_dialogue_shards,
    output:
        json="results/dialogue/{generator}/summary.json",
    log:
        "logs/dialogue_summary/{generator}.log",
    localrule: True
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        # The text form and the tokenizers measure the dialogue texts: a text edit redoes only
        # this cheap summary, never generation.
        text=get_text_params,
        architectures=get_text_architectures(),
    shell:
        "dialogclip dialogue-summary --stats {input.stats:q} --shards {input.shards:q}"
        " --text {params.text:q} --architectures {params.architectures:q}"
        " --output {output.json:q} 2> {log:q}"


rule vlm_weights:
    # Target for a machine with internet access: `snakemake --cores 1 vlm_weights` fetches each
    # switched-on generator's hub model at its pinned commit (generate.<generator>.revision)
    # once; generation jobs then read only those folders.
    input:
        get_vlm_weights_outputs,
    localrule: True


rule fetch_vlm_weights:
    output:
        folder=directory("resources/vlm_weights/{vlm_repo}/{revision}"),
    log:
        "logs/fetch_vlm_weights/{vlm_repo}/{revision}.log",
    wildcard_constraints:
        vlm_repo=r"[A-Za-z0-9][A-Za-z0-9_.-]*--[A-Za-z0-9][A-Za-z0-9_.-]*",
        revision=r"[0-9a-f]{40}",
    cache: OUTPUT_CACHE
    retries: 2  # network
    localrule: True  # needs internet access: run it on the machine Snakemake runs on
    conda:
        "../../envs/dialogclip.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        # in the cache key (the wildcards are not): one entry per model and commit
        model=get_vlm_model,
        revision="{revision}",
    shell:
        "dialogclip fetch-vlm-weights --model {params.model:q} --revision {wildcards.revision}"
        " --output {output.folder:q} 2> {log:q}"


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
        "dialogclip world make-tiny-models {params.out_dir:q} 2> {log:q}"
