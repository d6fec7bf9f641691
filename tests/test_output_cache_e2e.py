"""Snakemake's between-workflow output cache across two working directories of the demo.

The first directory generates the dialogue of every shard (both generators) and the frozen
image tower's embeddings of every block with ``--cache``; the second, with other machine
settings, takes all of them from the cache without running one of those jobs; a prompt edit in
the second then computes that generator's dialogue afresh and leaves the other's cached.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from workflow_helpers import copy_demo, planned, snakemake

pytestmark = pytest.mark.dag

GENERATORS = ("blip2", "llava")
# Machine settings unlike the first directory's (and the rules' defaults): none is in the key.
MACHINE = (
    "--set-resources",
    "generate:chunk_size=3",
    "generate:transformers_batch_size=2",
    "embed_train_images:batch_size=7",
    "--set-threads",
    "generate=1",
    "embed_train_images=1",
)
_CACHE_LINE = re.compile(
    r"^Output file (\S+) will be (obtained from|written to) global between-workflow cache\.$",
    re.MULTILINE,
)


def _targets(workdir: Path) -> list[str]:
    """Every shard's dialogue of both generators and every block's image embeddings, as the
    demo's full dry run names them."""
    plan = planned(workdir)
    shards = sorted({job.wildcards["shard"] for job in plan.of("generate")})
    assert shards, "the demo plans no generation"
    embeddings = sorted(
        f"results/train/emb/image/{job.wildcards['image_model']}/{job.wildcards['block']}.arrow"
        for job in plan.of("embed_train_images")
    )
    assert len(embeddings) >= 2, embeddings  # two blocks: their keys must differ
    dialogue = [f"results/dialogue/{g}/{shard}.parquet" for g in GENERATORS for shard in shards]
    return dialogue + embeddings


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
