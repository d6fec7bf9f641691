# Entry points for people: `make demo` runs the embedded demo through the whole DAG,
# `make test` runs the CPU test suite. Both install .venv first when needed; `make test` also
# installs the Debian browser its report test drives (scripts/system_deps.sh).
SHELL := /bin/bash
VENV := .venv
export NO_ALBUMENTATIONS_UPDATE := 1
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install install-gpu demo run test test-deps test-fast lint format clean-demo rulegraph

# The demo and the tests never touch a hub (their models are built here); `make run` must reach
# one, since its fetch_clip_weights / fetch_vlm_weights rules download the pinned weights.
demo test test-fast lint rulegraph: export HF_HUB_OFFLINE := 1
demo test test-fast lint rulegraph: export TRANSFORMERS_OFFLINE := 1

install:
	bash scripts/setup.sh

# On a machine with NVIDIA GPUs: CUDA torch + vLLM's CUDA build into .venv (docs/gpu.md).
# CUDA=13 (default): NVIDIA driver >= 580; CUDA=12: older drivers (envs/gpu-requirements-cuda12.txt).
CUDA ?= 13
install-gpu:
	bash scripts/setup.sh --gpu --cuda $(CUDA)

demo: install
	bash scripts/run.sh --workflow-profile workflow/profiles/demo

run: install
	bash scripts/run.sh

test: install test-deps
	pytest

# System packages the suite needs beyond .venv: Debian's chromium for the report's HTML test.
test-deps:
	bash scripts/system_deps.sh chromium

# The inner loop: everything but the tests that run Snakemake, a vLLM engine, a browser, a
# SIGKILL and rerun, or whole jobs in processes of their own (markers in pyproject.toml);
# `make test` and CI still run those.
FAST_MARKERS := not gpu and not slow and not slurm and not dag and not vllm and not browser and not crash and not jobs
test-fast: install
	pytest -m '$(FAST_MARKERS)'

lint: install
	ruff check .
	ruff format --check .
	snakefmt --check Snakefile workflow
	snakemake --lint --workflow-profile workflow/profiles/demo

format: install
	ruff format .
	ruff check --fix .
	snakefmt Snakefile workflow

clean-demo:
	rm -rf resources/demo/results resources/demo/logs resources/demo/benchmarks resources/demo/.snakemake resources/demo/report.html

# The README's rule graph: the demo's DAG of rules (the same rules as the full run), rendered by
# graphviz's `dot` (Debian package graphviz, installed by scripts/system_deps.sh when missing).
# Rerun after adding or renaming a rule; commit docs/rulegraph.png.
rulegraph: install
	bash scripts/system_deps.sh graphviz
	snakemake --workflow-profile workflow/profiles/demo --rulegraph > docs/.rulegraph.dot
	dot -Tpng -Gdpi=96 docs/.rulegraph.dot -o docs/.rulegraph.png
	mv docs/.rulegraph.png docs/rulegraph.png
	rm -f docs/.rulegraph.dot
