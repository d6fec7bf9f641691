"""Lock files on shared file systems (dialogclip.core.locks): a folder without flock fails with
one line naming it and the setting that moves the lock files (DIALOGCLIP_LOCK_DIR); with that
setting the GPU slots and work-ahead claims live on a local disk and still exclude each other;
files that several users share are made read-write for all.

A file system without flock is simulated by making fcntl.flock fail with the errno such file
systems return (ENOSYS, ENOLCK, EOPNOTSUPP).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dialogclip import cli
from dialogclip.core import devices, locks
from dialogclip.core.devices import claim_gpus
from dialogclip.core.locks import LockUnsupportedError, lock_folder
from dialogclip.generate.work_ahead import ShardLock, shards_per_engine_here

NO_FLOCK = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    for name in ("DIALOGCLIP_LOCK_DIR", "DIALOGCLIP_GPU_SLOT_DIR", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    yield
    devices.release_gpus()


def _no_flock(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def flock(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)


@pytest.mark.parametrize("code", NO_FLOCK)
def test_gpu_slots_without_flock_name_the_folder_and_the_setting(
    code: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_flock(monkeypatch, code)
    with pytest.raises(LockUnsupportedError) as err:
        claim_gpus(1, environ={"DIALOGCLIP_DEVICES": "0"})
    assert str(err.value) == (
        f".snakemake/gpu-slots: the file system does not support flock ({errno.errorcode[code]}),"
        " which the lock file assign.lock needs; set DIALOGCLIP_LOCK_DIR to a folder on the "
        "node's local disk (e.g. DIALOGCLIP_LOCK_DIR=/tmp/dialogclip-locks) to keep the lock "
        "files there"
    )


def test_a_slot_dir_set_by_hand_is_the_setting_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_flock(monkeypatch, errno.ENOLCK)
    shared = tmp_path / "nfs" / "slots"
    with pytest.raises(LockUnsupportedError, match=f"^{shared}: .* set DIALOGCLIP_GPU_SLOT_DIR to"):
        claim_gpus(1, environ={"DIALOGCLIP_DEVICES": "0", "DIALOGCLIP_GPU_SLOT_DIR": str(shared)})


@pytest.mark.parametrize("code", NO_FLOCK)
def test_work_ahead_claims_without_flock_name_the_folder(
    code: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_flock(monkeypatch, code)
    chunks = tmp_path / "results" / "dialogue" / "blip2" / ".chunks"
    lock = ShardLock(chunks / "00001")
    for take in (lock.try_acquire, lock.acquire_as_owner):
        with pytest.raises(LockUnsupportedError) as err:
            take()
        assert str(err.value).startswith(
            f"{chunks}: the file system does not support flock ({errno.errorcode[code]}), which "
            "the lock file 00001.lock needs; set DIALOGCLIP_LOCK_DIR to a folder"
        )


def test_other_lock_errors_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_flock(monkeypatch, errno.EBADF)
    with pytest.raises(OSError) as err:
        ShardLock(Path("x") / "00001").try_acquire()
    assert err.value.errno == errno.EBADF and not isinstance(err.value, LockUnsupportedError)


def test_the_job_reports_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _no_flock(monkeypatch, errno.ENOSYS)
    monkeypatch.setenv("DIALOGCLIP_DEVICES", "0")
    status = cli.main(["--gpus", "1", "dialogue-summary", "--output", str(tmp_path / "s.json")])
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if " ERROR " in line]
    assert line.split(" dialogclip: ", 1)[1].startswith(
        ".snakemake/gpu-slots: the file system does not support flock (ENOSYS)"
    )
    assert not (tmp_path / "s.json").exists()  # the command never ran


def test_the_lock_dir_moves_slots_and_claims_and_they_still_exclude(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    local = tmp_path / "local-disk" / "locks"
    monkeypatch.setenv("DIALOGCLIP_LOCK_DIR", str(local))
    environ = {"DIALOGCLIP_DEVICES": "0", "DIALOGCLIP_LOCK_DIR": str(local)}
    first = claim_gpus(1, environ=dict(environ), poll_s=0.01)
    assert first is not None and first.devices == ("0",)
    slots = lock_folder(Path(".snakemake") / "gpu-slots", environ)
    assert slots.parent == local and slots.name.startswith("gpu-slots-")
    assert sorted(p.name for p in slots.iterdir()) == ["assign.lock", "gpu0.lock"]
    assert not (tmp_path / ".snakemake").exists()  # nothing left in the working directory
    # The slot is held: a second claim of the only device would wait; all-or-nothing _take.
    assert devices._take(slots, ["0"], 1, "DIALOGCLIP_LOCK_DIR") == []

    work_dir = tmp_path / "results" / ".chunks" / "00001"
    held, other = ShardLock(work_dir), ShardLock(work_dir)
    assert held.path.parent.parent == local and held.path.name == "00001.lock"
    assert held.try_acquire() and not other.try_acquire()
    held.release()
    assert other.try_acquire()
    other.release()
    # Two folders with the same name in different places keep separate lock folders.
    assert (
        ShardLock(tmp_path / "a" / ".chunks" / "x").path
        != ShardLock(tmp_path / "b" / ".chunks" / "x").path
    )
    assert not (tmp_path / "results" / ".chunks" / "00001.lock").exists()


def test_shared_lock_files_are_usable_by_every_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old = os.umask(0o077)
    try:
        slots = tmp_path / "shared" / "slots"
        claim_gpus(1, environ={"DIALOGCLIP_DEVICES": "0", "DIALOGCLIP_GPU_SLOT_DIR": str(slots)})
        local = tmp_path / "node" / "locks"
        monkeypatch.setenv("DIALOGCLIP_LOCK_DIR", str(local))
        lock = ShardLock(tmp_path / "results" / ".chunks" / "00001")
        assert lock.try_acquire()
        lock.release()
    finally:
        os.umask(old)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(slots) == 0o1777 and mode(tmp_path / "shared") == 0o700  # only the slot folder
    assert {mode(p) for p in slots.iterdir()} == {0o666}
    assert mode(local) == mode(lock.path.parent) == 0o1777 and mode(lock.path) == 0o666
    # Lock files beside a run's own results stay private to its user.
    devices.release_gpus()
    monkeypatch.delenv("DIALOGCLIP_LOCK_DIR")
    os.umask(0o077)
    try:
        private = ShardLock(tmp_path / "mine" / ".chunks" / "00001")
        assert private.try_acquire()
        private.release()
    finally:
        os.umask(old)
    assert mode(private.path) == 0o600 and mode(private.path.parent) == 0o700


def test_work_ahead_stays_on_its_own_shard_under_slurm_with_node_local_locks() -> None:
    assert shards_per_engine_here(3, {}) == 3
    assert shards_per_engine_here(3, {"DIALOGCLIP_LOCK_DIR": "/tmp/l"}) == 3  # one node
    assert shards_per_engine_here(3, {"SLURM_JOB_ID": "7"}) == 3  # shared locks: fine
    assert shards_per_engine_here(3, {"DIALOGCLIP_LOCK_DIR": "/tmp/l", "SLURM_JOB_ID": "7"}) == 1
    assert locks.ENV_LOCK_DIR == "DIALOGCLIP_LOCK_DIR"
