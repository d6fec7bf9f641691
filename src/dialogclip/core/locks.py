"""Lock files shared by the jobs of a run: GPU slots (``core.devices``) and work-ahead claims
(``generate.work_ahead``), both ``fcntl.flock`` on a file that stays open while held.

Why ``flock``: the kernel drops the lock when its process ends in any way (SIGKILL and the
out-of-memory killer included), so no claim is ever left stale. Some shared file systems do not
implement it: Lustre mounted without ``flock``, some NFS mounts. There ``flock`` fails with
ENOSYS, ENOLCK or EOPNOTSUPP; :func:`flock` turns that into one line naming the folder and the
setting that moves the lock files to a local disk, ``DIALOGCLIP_LOCK_DIR`` (docs/cluster.md,
"Shared file systems", says which guarantees hold there).

Lock files that several users may share (a node's GPU slot folder, ``DIALOGCLIP_GPU_SLOT_DIR``;
``DIALOGCLIP_LOCK_DIR``) are created read-write for all, in folders writable by all with the
sticky bit (as ``/tmp``), whatever the umask: ``flock`` needs an open file, and the slot files
record their holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from dialogclip.core.config import ConfigError

ENV_LOCK_DIR = "DIALOGCLIP_LOCK_DIR"
# What flock returns on a file system that does not implement it (EOPNOTSUPP == ENOTSUP here).
UNSUPPORTED = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP})
SHARED_FILE_MODE = 0o666
SHARED_DIR_MODE = 0o1777


class LockUnsupportedError(ConfigError):
    """``flock`` does not work in a folder (a user error: the fix is a setting)."""


def lock_dir_override(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder ``DIALOGCLIP_LOCK_DIR`` names (None when unset or empty)."""
    value = (os.environ if environ is None else environ).get(ENV_LOCK_DIR, "")
    return Path(value) if value else None


def lock_folder(folder: Path, environ: Mapping[str, str] | None = None) -> Path:
    """The folder that holds the lock files meant for ``folder``: ``folder`` itself, or, when
    ``DIALOGCLIP_LOCK_DIR`` is set, a sub-folder of it named after ``folder`` (its name and a
    hash of its absolute path, so that the lock files of two folders never meet)."""
    base = lock_dir_override(environ)
    if base is None:
        return folder
    absolute = folder.resolve()
    tag = hashlib.sha256(str(absolute).encode()).hexdigest()[:16]
    return base / f"{absolute.name}-{tag}"


def make_shared_dir(path: Path, top: Path | None = None) -> None:
    """Create ``path`` and its missing parents; those created here from ``top`` (default:
    ``path`` itself) down to ``path`` get mode 1777, the others the umask's mode."""
    top = path if top is None else top
    shared = [folder for folder in (path, *path.parents) if not folder.exists()]
    shared = [folder for folder in shared if folder == top or top in folder.parents]
    path.mkdir(parents=True, exist_ok=True)
    for folder in shared:
        # Made by another user between our mkdir and chmod: their mode stands.
        with contextlib.suppress(PermissionError):
            os.chmod(folder, SHARED_DIR_MODE)


def open_lock_file(path: Path, shared: bool = False) -> int:
    """Open (create) the lock file ``path`` read-write and return its descriptor.

    ``shared``: other users may use it too (a node's GPU slots, ``DIALOGCLIP_LOCK_DIR``): the
    file gets mode 666 and its folder (with the folders made under ``DIALOGCLIP_LOCK_DIR``)
    1777, whatever the umask.
    """
    if not shared:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    folder = path.parent.resolve()
    base = lock_dir_override()
    base = None if base is None else base.resolve()
    make_shared_dir(folder, top=base if base is not None and base in folder.parents else None)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, SHARED_FILE_MODE)
    # The umask narrowed the mode; only the file's owner may widen it (others leave it).
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, SHARED_FILE_MODE)
    return fd


def flock(fd: int, operation: int, path: Path, setting: str = ENV_LOCK_DIR) -> None:
    """``fcntl.flock(fd, operation)`` on the open lock file ``path``.

    Raises:
        LockUnsupportedError: the file system has no ``flock``; the one-line message names
            ``path``'s folder and ``setting``, the variable that moves the lock files.
        OSError: any other failure (``BlockingIOError``: held elsewhere, non-blocking).
    """
    try:
        fcntl.flock(fd, operation)
    except OSError as err:
        if err.errno not in UNSUPPORTED:
            raise
        raise LockUnsupportedError(
            f"{path.parent}: the file system does not support flock ({errno.errorcode[err.errno]}),"
            f" which the lock file {path.name} needs; set {setting} to a folder on the node's "
            f"local disk (e.g. {setting}=/tmp/dialogclip-locks) to keep the lock files there"
        ) from None
