"""A readers-writer lock between processes, on lock files, with a bounded jittered back-off.

``fcntl.flock`` locks an open file description, so two opens in one process (two threads of the app,
or a test holding the lock) exclude each other exactly as two processes do, and a killed holder's lock
goes with its file descriptors: nothing is ever left locked.

Holding (:meth:`ReadWriteLock.hold`):

1. Take the *gate* (``<lock>.gate``) exclusively. A writer keeps it until it is done; a reader lets it
   go at once. So a waiting writer stops new readers at the gate and is not starved by readers that
   follow one another without a break (the app, a reader in a loop).
2. Take the lock file itself: exclusively for a writer, shared for a reader (readers run together).
3. Every take is non-blocking and retried after a jittered delay that doubles from ``FIRST_DELAY_S``
   to ``MAX_DELAY_S``; when the deadline passes, :class:`LockTimeout` is raised and nothing is held.

Where a lock file cannot be created (a read-only root), a reader goes on without the lock: nobody can
write there either.
"""

from __future__ import annotations

import fcntl
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FIRST_DELAY_S = 0.002
MAX_DELAY_S = 0.1


class LockTimeout(TimeoutError):
    """A lock stayed held by others past the deadline."""


def retry_delays(deadline: float) -> Iterator[int]:
    """Attempt numbers 0, 1, ...; before each attempt after the first, sleep a jittered, doubling
    delay; stop once ``deadline`` (``time.monotonic()``) has passed (at least one attempt is made)."""
    delay, attempt = FIRST_DELAY_S, 0
    while True:
        yield attempt
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, delay * random.uniform(0.5, 1.5)))
        delay, attempt = min(delay * 2, MAX_DELAY_S), attempt + 1


def _open_lock_file(path: Path) -> int | None:
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(path, flags, 0o666)
        except OSError:
            continue
    return None


def _take(path: Path, operation: int, deadline: float) -> int | None:
    """A file descriptor of ``path`` holding ``operation`` (LOCK_EX / LOCK_SH), or None without a file."""
    fd = _open_lock_file(path)
    if fd is None:
        return None
    for _ in retry_delays(deadline):
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            continue
    os.close(fd)
    raise LockTimeout(f"{path} stayed locked by another process")


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the last descriptor of the open file drops its flock


class ReadWriteLock:
    """Exclusive for writers, shared for readers, fair to writers (module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.gate = self.path.with_name(self.path.name + ".gate")

    @contextmanager
    def hold(self, exclusive: bool, timeout: float):
        deadline = time.monotonic() + timeout
        gate = _take(self.gate, fcntl.LOCK_EX, deadline)
        try:
            if not exclusive:
                _release(gate)
                gate = None
            fd = _take(self.path, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, deadline)
        except BaseException:
            _release(gate)
            raise
        try:
            yield
        finally:
            _release(fd)
            _release(gate)
