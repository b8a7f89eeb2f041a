"""Rebuilding the catalog from the published manifests (``wb store reindex``).

Everything runs under the catalog's exclusive lock (readers and writers wait, up to their timeout):

1. Remove stale temporaries anywhere under the root (:func:`~workbench.store.atomic.clean_stale_temporaries`).
2. Read the old catalog, if there is one. If DuckDB cannot read it, move it (and its write-ahead log)
   aside as ``catalog.duckdb.damaged-<UTC time>``: it is never deleted. If it can, write a manifest for
   every row that has none (catalogs written before manifests existed), so nothing catalogued is lost.
3. Build a new catalog in a temporary file from every manifest. A manifest that does not parse, names an
   unknown kind, or whose path no longer exists is reported and skipped (and left where it is).
4. Rename the new catalog over the old one: atomic, so a reader sees the old rows or the new ones.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from workbench.store.atomic import clean_stale_temporaries, read_json
from workbench.store.catalog import (
    CATALOG_FILE,
    KINDS,
    MANIFESTS,
    SCHEMA,
    Catalog,
    CatalogDamaged,
    _upsert,
)


@dataclass
class Reindexed:
    """What :func:`reindex` did."""

    restored: list[tuple[str, str]] = field(default_factory=list)  # (kind, name) rows in the new catalog
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (manifest file, why)
    migrated: list[tuple[str, str]] = field(default_factory=list)  # old rows that got their manifest
    moved_aside: Path | None = None  # where an unreadable old catalog went
    cleaned: list[Path] = field(default_factory=list)  # stale temporaries removed


def _aside(path: Path, label: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target, n = path.with_name(f"{path.name}.{label}-{stamp}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.{label}-{stamp}-{n}"), n + 1
    os.replace(path, target)
    return target


def _old_rows(catalog: Catalog) -> list[tuple]:
    """Step 2's read: the old catalog's rows (read-write, so closing folds its log into the file)."""
    with catalog.connect(read_only=False) as con:
        try:
            return con.execute("SELECT kind, name, path, created, meta FROM artifacts").fetchall()
        except duckdb.Error as err:
            raise CatalogDamaged(str(err)) from err


def _migrate(catalog: Catalog, done: Reindexed) -> None:
    """Step 2."""
    wal = catalog.path.with_name(CATALOG_FILE + ".wal")
    if not catalog.path.exists():
        if wal.exists():  # a log without its file would be replayed into the new catalog
            _aside(wal, "orphan")
        return
    try:
        rows = _old_rows(catalog)
    except CatalogDamaged:
        done.moved_aside = _aside(catalog.path, "damaged")
        if wal.exists():
            _aside(wal, "damaged")
        return
    for kind, name, path, created, meta in rows:
        if kind in KINDS and not catalog.manifest_path(kind, name).exists():
            catalog.write_manifest(kind, name, path, created or datetime.now(UTC).replace(tzinfo=None),
                                   json.loads(meta) if isinstance(meta, str) else meta)
            done.migrated.append((kind, name))


def _problem(catalog: Catalog, record) -> str | None:
    """Why a manifest cannot become a row, or None."""
    if not isinstance(record, dict) or not all(k in record for k in ("kind", "name", "path", "created")):
        return "not a manifest (kind, name, path, created missing)"
    if record["kind"] not in KINDS:
        return f"unknown artifact kind {record['kind']!r}; choose one of: {', '.join(KINDS)}"
    path = Path(record["path"])
    path = path if path.is_absolute() else catalog.root / path
    if not path.exists():
        return f"its path {path} no longer exists"
    return None


def _build(catalog: Catalog, target: Path, done: Reindexed) -> None:
    """Step 3."""
    with catalog.connect(read_only=False, path=target) as con:
        for statement in SCHEMA:
            con.execute(statement)
        for manifest in sorted((catalog.root / MANIFESTS).glob("*/*.json")):
            try:
                record = read_json(manifest)
                problem = _problem(catalog, record)
                if problem is None:
                    _upsert(con, record)
                    done.restored.append((record["kind"], record["name"]))
            except (RuntimeError, ValueError, TypeError, OSError, duckdb.Error) as err:
                problem = str(err).splitlines()[0] if str(err) else type(err).__name__
            if problem is not None:
                done.skipped.append((manifest, problem))


def reindex(catalog: Catalog) -> Reindexed:
    """Steps 1-4 of the module docstring; returns what was restored, skipped, migrated and moved."""
    def run() -> Reindexed:
        done = Reindexed(cleaned=clean_stale_temporaries(catalog.root))
        _migrate(catalog, done)
        # the name matches atomic.py's temporaries, so a killed reindex's leftover is cleaned later
        target = catalog.root / f".{CATALOG_FILE}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            _build(catalog, target, done)
            os.replace(target, catalog.path)
        finally:
            target.unlink(missing_ok=True)
            target.with_name(target.name + ".wal").unlink(missing_ok=True)
        return done
    return catalog.locked(True, run)
