"""Whether a run is being written right now: the folder lock and the writer's process.

A run's metrics.json says ``running`` with the pid and host of its writer. Files alone
cannot tell a live writer from a dead one, so the status that pages show also asks the
operating system (is that process alive?) and this process (did a writer here end
without being able to record it?). The lock keeps two trainers out of one folder.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from .record import LOCK_FILE, RunError

# Run folders whose writer in this process ended without recording it on disk (the last
# write failed: disk full, folder gone). Their metrics.json still says "running" under this
# live process's pid; without this set they would show as running until a restart.
_ended_unrecorded: set[Path] = set()
_ended_lock = threading.Lock()


def _key(folder: Path) -> Path:
    return Path(folder).resolve()


def writer_started(folder: Path) -> None:
    """A writer in this process (re)starts ``folder``: it is running again."""
    with _ended_lock:
        _ended_unrecorded.discard(_key(folder))


def writer_ended_unrecorded(folder: Path) -> None:
    """The writer of ``folder`` in this process ended, but could not write so."""
    with _ended_lock:
        _ended_unrecorded.add(_key(folder))


def writer_alive(folder: Path, pid: int | None, host: str | None) -> bool:
    """Whether the writer that metrics.json names (``pid`` on ``host``) is still writing ``folder``."""
    if not (host == socket.gethostname() and pid is not None and _pid_alive(pid)):
        return False
    if pid == os.getpid():
        with _ended_lock:
            return _key(folder) not in _ended_unrecorded
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def training_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder`` (which must exist) while this process trains in it; ``RunError`` at
    once when another process, or another thread here, holds it.

    The status check (a pid in metrics.json) cannot tell apart two resumes started at the
    same moment; this lock can. The operating system drops it when its holder ends, however
    it ends, so a killed run never leaves a stale lock.
    """
    try:
        handle = open(Path(folder) / LOCK_FILE, "a+b")
    except OSError as err:
        raise RunError(f"cannot lock {folder}: {err.strerror}") from None
    with handle:
        try:
            _lock(handle.fileno())
        except OSError:
            raise RunError(f"{folder} is being trained by another process right now") from None
        try:
            yield
        finally:
            _unlock(handle.fileno())


if os.name == "nt":
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
