"""Names that come from users and files, confined to their folder; one writer per published folder.

- :func:`name_folder`: ``parent / name`` for a *name* (one plain folder name: no separator, not ``.``
  or ``..``, not hidden), resolved with :func:`~workbench.store.catalog.inside_root`, so neither
  ``../../escape`` nor a link leads out of ``parent``. A path is chosen with ``--out``, never ``--name``.
- :func:`short_hash`: a short stable hash of the parts that make an automatic name unique.
- :func:`sole_writer`: while a job builds and publishes a folder it holds an exclusive lock beside it
  (``.<folder>.lock``, :class:`~workbench.store.locking.ReadWriteLock`); a second writer of the same
  folder is refused at once with :class:`FolderBusy` instead of both "succeeding" with one result
  silently lost. The lock goes with its holder's process: a killed writer leaves nothing locked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from workbench.store.catalog import inside_root
from workbench.store.locking import LockTimeout, ReadWriteLock


class FolderBusy(ValueError):
    """Another process is writing the folder now."""


def name_folder(parent: str | Path, name: str, what: str) -> Path:
    """``parent / name`` for a plain folder name; an error naming the name otherwise."""
    text = str(name)
    if not text.strip() or "/" in text or "\\" in text or "\0" in text or text.startswith("."):
        raise ValueError(f"{what} name {text!r} is not a plain name: a name is one folder name (no '/', not "
                         f"starting with '.'); to write elsewhere pass --out with a folder")
    return inside_root(Path(parent), text)


def short_hash(*parts) -> str:
    """8 hex digits of the sha256 of the parts (JSON, so the same parts always give the same hash)."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:8]


@contextmanager
def sole_writer(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold the folder's writer lock for the ``with`` body, or raise :class:`FolderBusy` at once."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        try:
            held.enter_context(ReadWriteLock(folder.parent / f".{folder.name}.lock").hold(exclusive=True, timeout=0.0))
        except LockTimeout:
            raise FolderBusy(f"{what} {folder} is being written by another process right now; wait for it to "
                             "finish, or write elsewhere (--out, or another --name)") from None
        yield folder


__all__ = ["FolderBusy", "name_folder", "short_hash", "sole_writer"]
