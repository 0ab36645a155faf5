"""Which process trains which zoo model: one OS file lock per model in the shared cache.

Several processes (the tasks of a SLURM array, two notebooks, a task and the attack run) may
fill one zoo's cache folder at once. Each zoo model has a lock file ``.KEY.lock`` next to its
entry ``KEY.pt``. A process *claims* a missing model by taking that lock without waiting
(:func:`try_claim`), looks once more whether the entry appeared meanwhile, trains only what it
claimed and holds the claims until the entries are saved; a model claimed by another process is
waited for (:func:`wait_for`) and then read from the cache, or claimed and trained if the other
process died without saving it. So no model is trained twice, whatever the ranges of the tasks.

The lock only prevents duplicated work; entries are written atomically (a temporary file, then a
rename, :func:`~mcmia_helpers.io.atomic_torch_save`) and checked against their digest when read,
so a reader never sees half an entry whether or not it holds a lock. The locks are ``flock``
locks (``msvcrt`` on Windows): the kernel drops them when their process ends, even on
``kill -9`` or a node that a scheduler pre-empts, so a crashed task leaves no stale claim
behind. On a network file system ``flock`` must reach the server (NFSv4 does; Lustre needs the
``flock`` mount option); lock files are empty and stay in the cache, as they must: removing
a lock file that another process has open would let a third process lock a new file of the
same name.
"""

from __future__ import annotations

import os
from pathlib import Path

from mcmia_helpers.errors import UserError


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"cannot lock {path} ({exc.strerror}): point MCMIA_CACHE at a writable "
                        "folder") from None


def _lock(fd: int, wait: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def try_claim(path: str | os.PathLike) -> int | None:
    """The exclusive lock on ``path`` if no other process holds it (an open file descriptor:
    pass it to :func:`release`), else ``None``; never waits."""
    fd = _open(Path(path))
    if _lock(fd, wait=False):
        return fd
    os.close(fd)
    return None


def release(fd: int) -> None:
    """Give a claim back (closing the descriptor releases the lock)."""
    os.close(fd)


def wait_for(path: str | os.PathLike) -> None:
    """Return once no other process holds the lock on ``path`` (it finished or died)."""
    fd = _open(Path(path))
    try:
        _lock(fd, wait=True)
    finally:
        os.close(fd)
