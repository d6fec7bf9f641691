"""Snakemake's between-workflow output cache across two working directories of the demo.

The first directory generates the dialogue of every shard (both generators), the frozen image
tower's embeddings of every training block and of every evaluation set with ``--cache``; the
second, with other machine settings, takes all of them from the cache without running one of
those jobs; a prompt edit in the second then computes that generator's dialogue afresh and
leaves the other's cached. Fetched generator weights (here from a hub on 127.0.0.1) are cached
per model and commit: a second directory fetches nothing. Fetched CLIP weights are keyed per
architecture and tag (their keys are read from Snakemake without downloading).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from loopback_hub import COMMITS, REPO, Hub, serve_model
from workflow_helpers import REPO_ROOT, VENV_BIN, copy_demo, planned, snakemake

from dialogclip.models.vlm_weights import require_fetched, weights_folder

pytestmark = pytest.mark.dag

GENERATORS = ("blip2", "llava")
# Machine settings unlike the first directory's (and the rules' defaults): none is in the key.
MACHINE = (
    "--set-resources",
    "generate:chunk_size=3",
    "generate:transformers_batch_size=2",
    "embed_train_images:batch_size=7",
    "embed_eval_images:batch_size=5",
    "--set-threads",
    "generate=1",
    "embed_train_images=1",
    "embed_eval_images=1",
)
_CACHE_LINE = re.compile(
    r"^Output file (\S+) will be (obtained from|written to) global between-workflow cache\.$",
    re.MULTILINE,
)


def _targets(workdir: Path) -> list[str]:
    """Every shard's dialogue of both generators, every block's image embeddings and every
    evaluation set's, as the demo's full dry run names them."""
    plan = planned(workdir)
    shards = sorted({job.wildcards["shard"] for job in plan.of("generate")})
    assert shards, "the demo plans no generation"
    embeddings = sorted(
        f"results/train/emb/image/{job.wildcards['image_model']}/{job.wildcards['block']}.arrow"
        for job in plan.of("embed_train_images")
    )
    assert len(embeddings) >= 2, embeddings  # two blocks: their keys must differ
    evaluation = sorted(
        f"results/eval/image_emb/{job.wildcards['image_model']}/{job.wildcards['dataset']}"
        ".safetensors"
        for job in plan.of("embed_eval_images")
    )
    assert len(evaluation) == 3, evaluation  # coco, vqa_real, vqa_abstract: keys must differ
    dialogue = [f"results/dialogue/{g}/{shard}.parquet" for g in GENERATORS for shard in shards]
    return dialogue + embeddings + evaluation


def _cache_plan(workdir: Path, targets: list[str], *options: str) -> dict[str, str]:
    """{output: "obtained from" | "written to"} of the cached jobs a ``--cache`` dry run plans.
    (``--cache`` without rule names: every rule with a cache directive; it comes after the
    targets, which it would otherwise take as rule names.)"""
    result = snakemake(workdir, *targets, "--cache", "--dry-run", *options, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return dict(_CACHE_LINE.findall(result.stdout + result.stderr))


def _run(workdir: Path, targets: list[str], *options: str) -> None:
    result = snakemake(workdir, *targets, "--cache", *options)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]


def _log_sizes(workdir: Path, rule: str) -> dict[str, int]:
    """{log path under logs/<rule>/: its size in bytes}."""
    folder = workdir / "logs" / rule
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*.log")}


def _entries(cache: Path) -> set[str]:
    return {path.name for path in cache.iterdir()}


def test_a_second_working_directory_takes_generation_and_embeddings_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SNAKEMAKE_OUTPUT_CACHE", str(cache))
    first = copy_demo(tmp_path / "first")
    targets = _targets(first)
    dialogue = [target for target in targets if target.startswith("results/dialogue/")]
    stats = [re.sub(r"/(\d+)\.parquet$", r"/stats/\1.json", path) for path in dialogue]

    assert _cache_plan(first, targets) == dict.fromkeys(targets, "written to")
    _run(first, targets)
    # Each output moved into the cache under its own key (a shared key would show as fewer
    # entries), the working directory keeping a link to it.
    assert len(_entries(cache)) == len(targets) + len(stats)
    for path in (*targets, *stats):
        assert (first / path).is_symlink() and (first / path).resolve().parent == cache, path
    computed = _log_sizes(first, "generate")  # each job wrote its progress to its log
    assert len(computed) == len(dialogue) and all(computed.values()), computed

    second = copy_demo(tmp_path / "second")
    assert _cache_plan(second, targets, *MACHINE) == dict.fromkeys(targets, "obtained from")
    _run(second, targets, *MACHINE)
    for path in (*targets, *stats):
        assert (second / path).resolve() == (first / path).resolve(), path
    # Not one generation or embedding job ran there: their logs are empty (Snakemake touches
    # a job's log; the command, had it run, would have written its progress there).
    assert set(_log_sizes(second, "generate").values()) == {0}
    assert set(_log_sizes(second, "embed_train_images").values()) == {0}
    assert set(_log_sizes(second, "embed_eval_images").values()) == {0}
    assert all(_log_sizes(first, "embed_eval_images").values())
    assert len(_entries(cache)) == len(targets) + len(stats)

    # A prompt edit in the second directory: BLIP-2's dialogue is computed afresh (new keys),
    # LLaVA's is still the cached one.
    config = yaml.safe_load((second / "config.yaml").read_text())
    config["generate"]["blip2"]["prompt_template"] = "Question: {question} Short answer:"
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(config))
    blip2 = [path for path in dialogue if "/blip2/" in path]
    plan = _cache_plan(second, targets, "--configfile", str(edited))
    assert plan == dict.fromkeys(blip2, "written to")
    _run(second, targets, "--configfile", str(edited))
    for path in dialogue:
        fresh = (second / path).resolve() != (first / path).resolve()
        assert fresh == (path in blip2), path
    assert {log: size > 0 for log, size in _log_sizes(second, "generate").items()} == {
        path.replace("results/dialogue/", "").replace(".parquet", ".log"): "/blip2/" in path
        for path in dialogue
    }
    assert len(_entries(cache)) == len(targets) + len(stats) + 2 * len(blip2)


def test_fetched_generator_weights_are_cached_per_model_and_commit(
    tiny_blip2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SNAKEMAKE_OUTPUT_CACHE", str(cache))
    # two commits of one model: the commit is a wildcard, which the key does not read, so the
    # rule puts it in its params; a shared key would show as one cache entry
    targets = [str(weights_folder(REPO, commit)) for commit in COMMITS]
    with serve_model(tiny_blip2) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        first = copy_demo(tmp_path / "first")
        assert _cache_plan(first, targets) == dict.fromkeys(targets, "written to")
        _run(first, targets)
        assert len(_entries(cache)) == len(COMMITS)
        fetched = len(Hub.hits)
        assert fetched > 0

        second = copy_demo(tmp_path / "second")
        assert _cache_plan(second, targets) == dict.fromkeys(targets, "obtained from")
        _run(second, targets)
        assert len(Hub.hits) == fetched  # the hub was not asked again
    for target, commit in zip(targets, COMMITS, strict=True):
        folder = require_fetched(second / target, REPO, commit)
        for path in tiny_blip2.iterdir():
            assert (folder / path.name).read_bytes() == path.read_bytes(), path.name


def _cache_keys(workdir: Path, rule: str, targets: list[str]) -> dict[str, str]:
    """Snakemake's cache key of each planned ``rule`` job (tests/cache_keys.py)."""
    result = subprocess.run(
        [
            str(VENV_BIN / "python"),
            str(Path(__file__).parent / "cache_keys.py"),
            str(REPO_ROOT / "Snakefile"),
            str(workdir),
            rule,
            *targets,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_fetched_clip_weights_have_one_key_per_architecture_and_tag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNAKEMAKE_OUTPUT_CACHE", str(tmp_path / "cache"))
    # Both are wildcards, which the key does not read: without the rule's params every tag
    # of every architecture would share one key, and a second tag would get the first's file.
    tags = [("ViT-B-32", "openai"), ("ViT-B-32", "laion2b_s34b_b79k"), ("RN50", "openai")]
    targets = [f"resources/clip_weights/{arch}__{tag}.safetensors" for arch, tag in tags]
    first = _cache_keys(copy_demo(tmp_path / "first"), "fetch_clip_weights", targets)
    assert sorted(first) == sorted(targets)
    assert len(set(first.values())) == len(targets)
    # the same science in another working directory: the same keys, taken from the cache
    assert _cache_keys(copy_demo(tmp_path / "second"), "fetch_clip_weights", targets) == first
