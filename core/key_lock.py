"""One computation per key at a time, across threads and processes, with the holder's progress shown to waiters.

:func:`core.featurize.featurize` holds its cache key while it computes an entry, so a second caller —
another thread (an app session) or another process (the app's warm-up process) — waits for the entry
instead of computing it again. :func:`one_at_a_time` takes this process's lock of the key, then (where
``fcntl`` exists; Windows keeps the in-process lock only) an exclusive ``flock`` on the caller's
``lock_file`` (featurize: the cache entry's name with ``.lock``), tried without blocking every ``poll_seconds``. The holder
writes ``"<done> <total>"`` into that file (``publish(done)``, also kept in memory for this process's
threads); a waiter calls ``report(done)`` with it every poll, never lower than before (a ``report``
that raises, e.g. ``core.progress.Cancelled``, ends the wait). The kernel drops a dead holder's
``flock``: the waiter then gets the key. Lock files are never unlinked (unlink + ``flock`` races).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

try:  # POSIX: one computation per key across processes; elsewhere within this process only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["one_at_a_time"]

_LOCKS: dict[str, threading.Lock] = {}
_PROGRESS: dict[str, int] = {}  # key -> structures done by its computation (here or in another process)
_GUARD = threading.Lock()


@contextlib.contextmanager
def one_at_a_time(key: str, report, *, lock_file=None, total: int = 0, poll_seconds: float = 0.1):
    """Hold cache ``key`` in this process and, with ``lock_file`` and ``fcntl``, across processes.
    While another thread or process holds it, ``report(done)`` every ``poll_seconds`` with its
    progress (a callback that raises ends the wait). Yields ``publish(done)`` for the holder."""
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    while not lock.acquire(timeout=poll_seconds):
        report(_PROGRESS.get(key, 0))
    try:
        with _file_lock(key, lock_file, report, total, poll_seconds) as fd:
            def publish(done: int) -> None:
                _PROGRESS[key] = int(done)
                if fd is not None:  # truncate + write on the holder's own fd; no fsync needed
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{int(done)} {total}\n".encode(), 0)

            publish(0)  # no stale count from a holder that died
            yield publish
    finally:
        fd = None  # the lock file is closed: a late publish() writes no file
        _PROGRESS.pop(key, None)
        lock.release()


@contextlib.contextmanager
def _file_lock(key: str, lock_file, report, total: int, poll_seconds: float):
    """Yield the fd of ``lock_file`` once its exclusive ``flock`` is ours
    (tried without blocking; meanwhile the holder's count in the file is reported and shared with
    this process's threads); None without ``fcntl`` or an openable file (in-process lock only)."""
    fd = None
    if fcntl is not None and lock_file is not None:
        with contextlib.suppress(OSError):
            Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    if fd is None:
        yield None
        return
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                _PROGRESS[key] = max(_PROGRESS.get(key, 0), _read_progress(fd, total))
                report(_PROGRESS[key])
                time.sleep(poll_seconds)
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_progress(fd: int, total: int) -> int:
    """Structures done from a lock file's ``"<done> <total>"``; 0 when empty, garbled or foreign."""
    with contextlib.suppress(OSError, ValueError):
        done, their_total = (int(v) for v in os.pread(fd, 64, 0).split())
        return done if their_total == total and 0 <= done <= total else 0
    return 0
