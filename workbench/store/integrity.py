"""Integrity of published folders (models, dictionaries): sha256 checksums and finite weights.

A model or dictionary folder carries ``checksums.json``::

    {"algorithm": "sha256", "files": {"config.json": "<hex>", "model.safetensors": "<hex>", ...}}

1. Written last into the staging folder, before it is published (:func:`write_checksums`): every
   regular, non-hidden file directly in the folder, not sub-folders (a model's ``dictionaries/``
   carry their own checksums).
2. A covered file rewritten after publication (a card updated by ``wb zoo dicts``) goes through
   :func:`rewrite_json`, which writes the file atomically and then updates its entry. Any other edit
   breaks the checksum, on purpose.
3. Checked on load (:func:`check_checksums`). Files that decide what the folder computes (weights,
   config, tokenizer) must match: a mismatch is :class:`CorruptArtifactError` naming the file.
   Descriptive files (``card.json``, ``curves.parquet``: metadata, not computation) that were edited by
   hand only warn on load, so a note typed into a card does not make the model unusable; ``wb zoo
   verify`` fails them (:func:`checksum_problems`), and ``wb zoo checksums --force`` accepts the edit.
4. A folder without ``checksums.json`` (written before checksums existed) loads with an
   :class:`IntegrityWarning`; ``wb zoo verify`` fails it until ``wb zoo checksums`` writes one.
5. Non-finite weights (:func:`check_finite`) are an error naming the tensor and the file, except
   constants the freshly built module holds itself (transformer_lens's ``-inf`` attention mask).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from workbench.store.atomic import CorruptArtifactError, atomic_write_json, read_json, sha256_file

CHECKSUMS_FILE = "checksums.json"
DESCRIPTIVE_FILES = frozenset({"card.json", "curves.parquet"})


class IntegrityWarning(UserWarning):
    """A folder loads, but something about it could not be vouched for (see the module docstring)."""


def covered_files(folder: Path) -> list[str]:
    """The files :func:`write_checksums` hashes: regular, not hidden (temporary names), not itself."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name != CHECKSUMS_FILE)


def write_checksums(folder: str | Path) -> Path:
    """Step 1: hash every covered file and write ``checksums.json`` atomically."""
    folder = Path(folder)
    files = {name: sha256_file(folder / name) for name in covered_files(folder)}
    return atomic_write_json(folder / CHECKSUMS_FILE, {"algorithm": "sha256", "files": files})


def read_checksums(folder: str | Path) -> dict[str, str] | None:
    """``{file name: sha256}``, or None for a folder without checksums (step 4)."""
    path = Path(folder) / CHECKSUMS_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or data.get("algorithm") != "sha256":
        raise CorruptArtifactError(f"{path} is not a checksum list ({{'algorithm': 'sha256', 'files': {{...}}}}); "
                                   "the file is damaged")
    return files


def rewrite_json(folder: str | Path, name: str, obj) -> Path:
    """Step 2: the one way to rewrite a covered JSON file of a published folder (cards)."""
    folder = Path(folder)
    path = atomic_write_json(folder / name, obj)
    files = read_checksums(folder)
    if files is not None:  # an old folder without checksums is not blessed by one rewrite
        files[name] = sha256_file(path)
        atomic_write_json(folder / CHECKSUMS_FILE, {"algorithm": "sha256", "files": files})
    return path


def _mismatch(folder: Path, name: str, expected: str) -> str | None:
    path = folder / name
    if not path.is_file():
        return f"{path} is listed in {CHECKSUMS_FILE} but missing"
    actual = sha256_file(path)
    if actual != expected:
        return (f"{path} has changed since it was written (sha256 {actual[:12]}..., expected {expected[:12]}...); "
                "the file is damaged or was edited")
    return None


def checksum_problems(folder: str | Path) -> list[str]:
    """Every problem with ``folder``'s checksums, descriptive files included (for ``wb zoo verify``)."""
    folder = Path(folder)
    files = read_checksums(folder)
    if files is None:
        return [f"{folder} has no {CHECKSUMS_FILE}; write one with `wb zoo checksums`"]
    return [p for name, digest in sorted(files.items()) if (p := _mismatch(folder, name, digest))]


def check_checksums(folder: str | Path) -> None:
    """Step 3 and 4 on load: raise for a file that decides what the folder computes, warn otherwise."""
    folder = Path(folder)
    files = read_checksums(folder)
    if files is None:
        warnings.warn(f"{folder} has no {CHECKSUMS_FILE} (written before checksums existed); its files cannot "
                      "be checked; write one with `wb zoo checksums`", IntegrityWarning, stacklevel=3)
        return
    for name, digest in sorted(files.items()):
        problem = _mismatch(folder, name, digest)
        if problem and name in DESCRIPTIVE_FILES:
            warnings.warn(problem, IntegrityWarning, stacklevel=3)
        elif problem:
            raise CorruptArtifactError(problem)


def non_finite_constants(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of a freshly built module's non-finite tensors (taken before weights are loaded into it)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())}


def check_finite(weights: dict[str, torch.Tensor], source: Path, fresh: dict[str, torch.Tensor]) -> None:
    """Step 5: every floating tensor finite, unless the freshly built module holds exactly the same
    non-finite constant (``fresh``: :func:`non_finite_constants`)."""
    for name, tensor in weights.items():
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
            continue
        if name in fresh and fresh[name].shape == tensor.shape and torch.equal(fresh[name], tensor):
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"tensor {name!r} in {source} holds {bad} non-finite value(s) (NaN or inf); "
                         "the weights are unusable: restore the file or retrain")


def non_finite(metrics: dict) -> list[str]:
    """The names of the numeric entries of ``metrics`` that are NaN or infinite."""
    return [k for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)]


__all__ = ["CHECKSUMS_FILE", "DESCRIPTIVE_FILES", "IntegrityWarning", "check_checksums", "check_finite",
           "checksum_problems", "covered_files", "non_finite", "non_finite_constants", "read_checksums", "rewrite_json",
           "write_checksums"]
