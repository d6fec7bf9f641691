"""The training loop in this process: plans, schedule, decay groups, NaN stop, learning, and
checkpoints that refuse another configuration."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from open_clip_train.scheduler import cosine_lr
from safetensors.torch import load_file
from trainer_helpers import SyntheticRows, TinyObjective, read_metrics, tiny_text_model

from dialogclip.core.config import ConfigError
from dialogclip.train import checkpoints
from dialogclip.train.optim import param_groups, warmup_cosine_lr
from dialogclip.train.trainer import (
    OptimSettings,
    RunSettings,
    TrainingDiverged,
    collate,
    fit,
    local_slice,
    shuffled_batches,
)

QUIET = RunSettings(checkpoint_every=2, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared, loaded machine two threads run these tiny steps
    10-20x slower (measured), and the result does not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def settings(**overrides) -> OptimSettings:
    values = dict(
        lr=1e-3, weight_decay=0.1, batch_size=8, epochs=2, warmup_steps=2, grad_clip=1.0, seed=3
    )
    return OptimSettings(**{**values, **overrides})


def test_shuffled_batches_visit_every_row_once_per_epoch() -> None:
    plan = shuffled_batches(23, 5, seed=11)
    epoch0, epoch1 = plan(0), plan(1)
    assert [len(b) for b in epoch0] == [5, 5, 5, 5]  # the short remainder (3 rows) is dropped
    assert len({row for b in epoch0 for row in b}) == 20
    assert epoch0 == shuffled_batches(23, 5, seed=11)(0)  # deterministic in (seed, epoch)
    assert epoch0 != epoch1 and epoch0 != shuffled_batches(23, 5, seed=12)(0)
    full = shuffled_batches(23, 5, seed=11, drop_last=False)(0)
    assert [len(b) for b in full] == [5, 5, 5, 5, 3]
    assert sorted(row for b in full for row in b) == list(range(23))
    with pytest.raises(ConfigError, match="4 training rows make no full batch of 8"):
        shuffled_batches(4, 8, seed=0)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_local_slices_tile_the_global_batch_in_rank_order(world: int) -> None:
    for batch in (list(range(8)), list(range(10, 17))):
        pieces = [local_slice(batch, rank, world) for rank in range(world)]
        assert [row for piece in pieces for row in piece] == batch
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_schedule_equals_open_clip_cosine_lr() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    adjust = cosine_lr(optimizer, 0.1, 5, 40)
    for step in range(40):
        assert warmup_cosine_lr(step, 0.1, 5, 40) == pytest.approx(adjust(step), rel=1e-15)
    assert warmup_cosine_lr(0, 0.1, 5, 40) == pytest.approx(0.02)
    assert warmup_cosine_lr(5, 0.1, 5, 40) == pytest.approx(0.1)
    assert warmup_cosine_lr(40, 0.1, 5, 40) == pytest.approx(0.0, abs=1e-15)  # cosine to 0
    assert warmup_cosine_lr(3, 0.1, 0, 10) < 0.1  # no warmup: the cosine starts at once


def test_weight_decay_spares_biases_norms_and_positions() -> None:
    model = tiny_text_model()
    groups = {group["weight_decay"]: set(group["names"]) for group in param_groups(model, 0.1)}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    want_no_decay = {n for n, p in trainable.items() if p.ndim <= 1} | {"positional_embedding"}
    assert groups[0.0] == want_no_decay
    assert groups[0.1] == set(trainable) - want_no_decay
    assert "text_projection" in groups[0.1] and "ln_final.weight" in groups[0.0]
    assert "token_embedding.weight" not in groups[0.0] | groups[0.1]  # frozen: not optimised


def test_decay_embeddings_decays_the_positions_too() -> None:
    model = tiny_text_model()
    groups = {
        group["weight_decay"]: set(group["names"])
        for group in param_groups(model, 0.1, decay_embeddings=True)
    }
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert groups[0.0] == {n for n, p in trainable.items() if p.ndim <= 1}
    assert "positional_embedding" in groups[0.1]


def test_collate_names_the_bad_row() -> None:
    rows = [{"a": torch.zeros(2)}, {"b": torch.zeros(2)}]
    with pytest.raises(ValueError, match=r"dataset row 1 of the batch has keys \['b'\]"):
        collate(rows)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    objective = TinyObjective("third", nan_at=5)
    with pytest.raises(
        TrainingDiverged, match=r"loss is nan at step 5 \(epoch 1, batch 1\)"
    ) as err:
        fit(
            objective,
            SyntheticRows(24),
            shuffled_batches(24, 8, 3),
            settings(),
            QUIET,
            tmp_path,
            {},
        )
    newest = tmp_path / "checkpoints" / "step-00000004"
    assert f"last good checkpoint: {newest}" in str(err.value)
    assert checkpoints.newest_checkpoint(tmp_path) == newest
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert not (tmp_path / "final.safetensors").exists()
    # The kept checkpoint is readable with the safe loaders and holds the weights of step 4,
    # which the stopped run did not change.
    loaded = checkpoints.load(newest, rank=0)
    assert loaded.state["step"] == 4 and loaded.rng is not None
    for name, param in objective.module.named_parameters():
        if param.requires_grad:
            assert torch.equal(loaded.weights[name], param.detach()), name
    assert torch.load(newest / "optimizer.pt", weights_only=True)["state"]


class NanGradient(TinyObjective):
    """A finite loss whose gradient is NaN at one call: 0 * sqrt(0) has the derivative 0 * inf."""

    def __init__(self, bad_call: int) -> None:
        super().__init__("third")
        self.bad_call = bad_call

    def loss(self, batch, gather):
        loss, parts = super().loss(batch, gather)
        if self.calls == self.bad_call:
            weight = self.module.text_projection
            loss = loss + 0.0 * torch.sqrt((weight - weight.detach()).sum())
        return loss, parts


def test_nan_gradient_stops_naming_the_step(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"gradient norm is nan at step 3 \(epoch 1"):
        fit(
            NanGradient(bad_call=3),
            SyntheticRows(16),
            shuffled_batches(16, 8, 3),
            settings(),
            QUIET,
            tmp_path,
            {},
        )
    assert checkpoints.newest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000002"


@pytest.mark.parametrize("kind", ["third", "draft"])
def test_loss_falls_on_a_small_synthetic_set(tmp_path: Path, kind: str) -> None:
    run = RunSettings(checkpoint_every=1000, progress=False)
    objective = TinyObjective(kind)
    final = fit(
        objective,
        SyntheticRows(32),
        shuffled_batches(32, 8, 5),
        settings(epochs=8, warmup_steps=4),
        run,
        tmp_path,
        {"kind": kind},
    )
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 32
    first, last = records[:4], records[-4:]  # the first and the last epoch

    def mean(key: str, rows: list[dict]) -> float:
        return sum(r[key] for r in rows) / len(rows)

    assert mean("loss", last) < 0.6 * mean("loss", first)
    if kind == "draft":
        assert mean("contrastive", last) < 0.6 * mean("contrastive", first)
    exported = load_file(str(final))
    assert torch.equal(exported["text_projection"], objective.module.text_projection.detach())


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path: Path) -> None:
    plan = shuffled_batches(16, 8, 3)
    fit(TinyObjective("third"), SyntheticRows(16), plan, settings(epochs=1), QUIET, tmp_path, {})
    with pytest.raises(checkpoints.CheckpointError, match="different optim") as err:
        fit(
            TinyObjective("third"),
            SyntheticRows(16),
            plan,
            settings(epochs=1, lr=5e-4),
            QUIET,
            tmp_path,
            {},
        )
    assert str(tmp_path / "checkpoints" / "step-00000002") in str(err.value)
    with pytest.raises(checkpoints.CheckpointError, match="different run_config"):
        fit(
            TinyObjective("third"),
            SyntheticRows(16),
            plan,
            settings(epochs=1),
            QUIET,
            tmp_path,
            {"rows": "other"},
        )
    state = json.loads((tmp_path / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert state["epoch"] == 1 and state["batch"] == 0  # the epoch-end position


def test_a_checkpoint_of_other_training_data_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The run's folder is keyed by its settings; the data fingerprint in run_config tells a
    crash's leftovers (same data: resume) from a run on data regenerated since (start afresh:
    the result is a fresh run's on the new data, not the old run's weights)."""
    plan = shuffled_batches(16, 8, 3)

    def run(folder: Path, data: str, seed: int) -> Path:
        return fit(
            TinyObjective("third"),
            SyntheticRows(16, seed=seed),
            plan,
            settings(epochs=1),
            QUIET,
            folder,
            {"data": data},
        )

    first = load_file(str(run(tmp_path / "run", "a", seed=1)))
    with caplog.at_level(logging.INFO, logger="dialogclip.train.trainer"):
        again = load_file(str(run(tmp_path / "run", "a", seed=1)))
    assert "(step 2 of 2)" in caplog.text and "other data" not in caplog.text
    assert all(torch.equal(again[name], first[name]) for name in first)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dialogclip.train.trainer"):
        changed = load_file(str(run(tmp_path / "run", "b", seed=2)))
    assert "was trained on other data than this run's" in caplog.text
    assert "resuming from" not in caplog.text
    fresh = load_file(str(run(tmp_path / "fresh", "b", seed=2)))
    assert all(torch.equal(changed[name], fresh[name]) for name in fresh)
    assert not all(torch.equal(changed[name], first[name]) for name in first)
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_settings_name_the_bad_field() -> None:
    with pytest.raises(ConfigError, match="'precision': 'fp16'"):
        settings(precision="fp16")
    with pytest.raises(ConfigError, match="'lr': 0"):
        settings(lr=0)


def test_plan_batches_larger_than_the_batch_size_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batches of 8 rows, more than batch_size 4"):
        fit(
            TinyObjective("third"),
            SyntheticRows(16),
            shuffled_batches(16, 8, 3),
            settings(batch_size=4),
            QUIET,
            tmp_path,
            {},
        )


def test_data_loader_workers_do_not_change_the_result(tmp_path: Path) -> None:
    results = []
    for workers in (0, 2):
        run = RunSettings(checkpoint_every=100, num_workers=workers, progress=False)
        run_dir = tmp_path / f"workers{workers}"
        final = fit(
            TinyObjective("draft"),
            SyntheticRows(24),
            shuffled_batches(24, 8, 3),
            settings(epochs=1),
            run,
            run_dir,
            {},
        )
        metrics = [
            {k: v for k, v in r.items() if k != "samples_per_s"}
            for r in read_metrics(run_dir / "metrics.jsonl")
        ]
        results.append((metrics, load_file(str(final))))
    (metrics0, weights0), (metrics2, weights2) = results
    assert metrics0 == metrics2 and len(metrics0) == 3
    assert all(torch.equal(weights0[name], weights2[name]) for name in weights0)
