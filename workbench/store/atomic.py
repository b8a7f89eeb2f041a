"""Atomic writes: an artifact is either wholly there or not there at all.

Every write goes to a temporary name in the same folder, is flushed and fsynced, then renamed over
the final name (``os.replace`` is atomic on POSIX). A reader never sees half a file, and a job killed
mid-write leaves the previous version intact. Folders are published the same way: built under a
temporary name, then renamed into place.

Temporary names carry the writer's PID (``.<name>.<pid>-<random>.tmp`` for files,
``.<name>.<pid>-<random>.staging`` for folders), so :func:`clean_stale_temporaries` can tell a killed
writer's leftovers (its PID no longer runs) from a live writer's work in progress.

Weights are safetensors only; :func:`load_safetensors` never unpickles and turns a damaged file into
an error that names it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; published artifacts get the usual modes.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


class CorruptArtifactError(RuntimeError):
    """A file exists but cannot be read back as what it claims to be."""


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.{os.getpid()}-"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_parquet(path: str | Path, frame) -> Path:
    """A pandas DataFrame as parquet, atomically; zstd-compressed (a third smaller than the default
    snappy on the feature tables that make up most of the committed zoo)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, compression="zstd", compression_level=19)
    return atomic_write_bytes(path, buffer.getvalue())


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CorruptArtifactError(f"{path} is not valid JSON ({err}); the file is damaged") from err


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Contiguous CPU copies of ``tensors`` written atomically; metadata values must be strings."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    return atomic_write_bytes(path, st_save(clean, metadata=meta))


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CorruptArtifactError(f"{path} is not a readable safetensors file ({err}); the file is damaged") from err


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def publish_dir(staging: Path, final: Path) -> Path:
    """Move a fully written staging folder to ``final``, replacing an older one without a gap in
    which neither exists for longer than two renames."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(staging, DIR_MODE)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def staging_dir(final: Path) -> Path:
    """A fresh empty folder beside ``final`` to build it in before :func:`publish_dir`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=".staging", dir=final.parent))


# mkstemp/mkdtemp add 8 characters of [a-z0-9_]; older versions wrote no PID (``.<name>.<random>.tmp``)
_WITH_PID = re.compile(r"^\..+\.(\d+)-[a-z0-9_]{8}\.(tmp|staging)$")
_WITHOUT_PID = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|staging)$")
STALE_AFTER_S = 3600.0


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(entry: Path, now: float, max_age_s: float, suffix: str) -> bool:
    if not entry.name.endswith(suffix):  # temporary files end in .tmp, staging folders in .staging
        return False
    match = _WITH_PID.match(entry.name)
    if match:
        return not pid_alive(int(match.group(1)))
    if _WITHOUT_PID.match(entry.name):
        try:
            return now - entry.lstat().st_mtime > max_age_s
        except FileNotFoundError:  # renamed into place meanwhile
            return False
    return False


def clean_stale_temporaries(folder: str | Path, recursive: bool = True,
                            max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files and staging folders of writers that are gone; return what was removed.

    1. Walk ``folder`` (every level when ``recursive``; links are not followed).
    2. A temporary with a PID in its name is stale when that PID no longer runs; one without (written by
       an older version) when it is older than ``max_age_s``. Anything else is left alone.
    3. Remove stale files, and stale staging folders with their contents (their insides are not walked).
    A PID reused by an unrelated process keeps its temporary: cleaning errs on the side of keeping.
    """
    folder, now, removed = Path(folder), time.time(), []
    if not folder.is_dir():
        return removed
    for top, dirs, files in os.walk(folder):
        base = Path(top)
        for name in [d for d in dirs if _is_stale(base / d, now, max_age_s, ".staging")]:
            shutil.rmtree(base / name, ignore_errors=True)
            dirs.remove(name)
            removed.append(base / name)
        for name in files:
            if _is_stale(base / name, now, max_age_s, ".tmp"):
                (base / name).unlink(missing_ok=True)
                removed.append(base / name)
        if not recursive:
            break
    return sorted(removed)
