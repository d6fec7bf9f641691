# DialogCLIP: CC3M -> VLM dialogue -> CLIP variants -> COCO retrieval / VQA evaluation.
# This file only wires the stages together; each stage lives in workflow/rules/<stage>.smk and
# every rule calls the `dialogclip` command line (src/dialogclip/cli.py).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/train.smk"


# Needs every stage's entries (the training runs add evaluation entries): after the includes.
if is_report_active():
    check_thesis_rows()
# Needs every rule's resources (the profile's applied): after the includes.
check_slurm_requests()


rule all:
    default_target: True
    input:
        get_final_output(),
    localrule: True


onsuccess:
    print_run_summary()
