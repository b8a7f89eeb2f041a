"""Verification that remembers: re-measure only the zoo models whose files changed since they last passed.

``wb zoo verify`` re-measures every model (that is what it promises). ``make demo`` runs on every start,
where four minutes of silent re-measuring buys nothing when no file changed. So:

1. A model folder's fingerprint is the (relative path, size, modification time) of every file under it,
   dictionaries included, hashed. Any edit, rebuild or checkout of one of its files changes it.
2. ``<artifacts>/zoo-verified.json`` keeps, per model, the fingerprint it had when all of its rows
   (the model and its dictionary sets) last passed.
3. A model whose fingerprint matches is reported from that record, marked "unchanged since it last
   passed"; any other is verified in full (``build.verify_folder``) and the
   record is updated only when every row passes. A failing model is re-measured on every run.
4. A progress bar counts the models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from workbench.store.atomic import atomic_write_json, read_json
from workbench.store.catalog import Catalog
from workbench.zoo import build
from workbench.zoo.build import VerifyRow, _model_folders

CACHE_FILE = "zoo-verified.json"


def fingerprint(folder: Path) -> str:
    """Step 1."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stat = path.stat()
        h.update(json.dumps([str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns]).encode())
    return h.hexdigest()


def verify_zoo_cached(models_dir: Path, catalog: Catalog, progress: bool = True) -> list[VerifyRow]:
    """Steps 1-4 over every model folder of the zoo; missing entries are reported as by ``verify_zoo``."""
    path = catalog.root / CACHE_FILE
    record = read_json(path) if path.is_file() else {}
    rows: list[VerifyRow] = []
    for folder in tqdm(_model_folders(models_dir), desc="verify zoo", unit="model", disable=not progress):
        stamp = fingerprint(folder)
        known = record.get(folder.name)
        if known and known.get("fingerprint") == stamp:
            rows += [VerifyRow(**{**r, "detail": (r.get("detail") or "") + " (unchanged since it last passed)"})
                     for r in known["rows"]]
            continue
        fresh = build.verify_folder(folder, catalog)
        rows += fresh
        if all(r.ok for r in fresh):
            record[folder.name] = {"fingerprint": stamp, "rows": [asdict(r) for r in fresh]}
        else:
            record.pop(folder.name, None)
        atomic_write_json(path, record)
    return rows + build.missing_rows(models_dir)


__all__ = ["CACHE_FILE", "fingerprint", "verify_zoo_cached"]
