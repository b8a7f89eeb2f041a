"""The artifacts root, its published manifests and the DuckDB catalog that indexes them.

Everything the workbench makes (models, training runs, dictionaries, graphs, studies) lives as files
under one artifacts root and is listed in ``catalog.duckdb`` there: one row per artifact with its kind,
name, path (relative to the root), creation time and a JSON ``meta`` column. One table for all kinds
keeps a new kind free (issues add dictionaries, graphs, studies); a view per kind keeps queries plain::

    SELECT name, meta->>'$.metrics.test_accuracy' FROM models

The source of truth is the manifest each artifact gets when it is registered,
``manifests/<kind>/<name, percent-encoded>.json`` (kind, name, path, created, meta); the catalog is an
index of the manifests, rebuilt from them by :meth:`Catalog.reindex` (``wb store reindex``).

Many processes write one root at once (graphs beside dictionary training beside the app), and DuckDB
admits one writing process at a time. Registering therefore goes:

1. Write the manifest atomically; no lock is needed, and from here on the artifact can be re-indexed.
2. Take the catalog lock exclusively (``catalog.lock``, :mod:`.locking`: readers share it, a waiting
   writer stops new readers), retrying with back-off for up to ``timeout`` seconds in all; DuckDB's own
   file lock, held by a process outside this protocol, is retried the same way.
3. Upsert the row as the manifest on disk now says (so two writers of one name leave the catalog and
   the manifest agreeing), then close the connection.
4. If the catalog cannot be reached in time, or is damaged, log a warning naming ``wb store reindex``
   and return: the artifact stays published and listed by its manifest.

Readers open DuckDB read-only under the shared lock, with the same retry. A catalog file that DuckDB
cannot read raises :class:`CatalogDamaged` naming the file and the fix.

The root is ``./artifacts`` unless ``WB_ARTIFACTS`` or an explicit argument says otherwise. Paths handed
in from outside (the app, the CLI) are resolved with :func:`inside_root`, which refuses to leave it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import duckdb

from workbench.store.atomic import atomic_write_text, read_json
from workbench.store.locking import LockTimeout, ReadWriteLock, retry_delays

VIEWS = {"model": "models", "run": "runs", "dictionary": "dictionaries", "graph": "graphs", "study": "studies",
         "sweep": "sweeps"}
KINDS = tuple(VIEWS)
ENV_VAR = "WB_ARTIFACTS"
MODELS_ENV_VAR = "WB_MODELS"
REPO_ROOT = Path(__file__).resolve().parents[2]
CATALOG_FILE, LOCK_FILE, MANIFESTS = "catalog.duckdb", "catalog.lock", "manifests"
MANIFEST_FORMAT = "workbench-manifest/1"
DEFAULT_TIMEOUT_S = 30.0
TABLE = ("CREATE TABLE IF NOT EXISTS artifacts (kind VARCHAR, name VARCHAR, path VARCHAR, created TIMESTAMP, "
         "meta JSON, PRIMARY KEY (kind, name))")
SCHEMA = [TABLE] + [
    f"CREATE VIEW IF NOT EXISTS {view} AS SELECT name, path, created, meta FROM artifacts WHERE kind = '{kind}'"
    for kind, view in VIEWS.items()]
log = logging.getLogger(__name__)


class CatalogError(RuntimeError):
    """The catalog cannot be used now; the message says why and what to do."""


class CatalogDamaged(CatalogError):
    """``catalog.duckdb`` is not a readable DuckDB catalog."""


class CatalogBusy(CatalogError):
    """Other processes held the catalog past the timeout."""


class _DuckDBLocked(Exception):
    """DuckDB's own file lock is held by a process that does not take the catalog lock."""


def artifacts_root(override: str | Path | None = None) -> Path:
    root = Path(override or os.environ.get(ENV_VAR) or "artifacts").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_root(override: str | Path | None = None) -> Path:
    """The zoo folder: explicit argument, else ``WB_MODELS``, else the checkout's ``models/``."""
    if override or os.environ.get(MODELS_ENV_VAR):
        return Path(override or os.environ[MODELS_ENV_VAR]).resolve()
    return REPO_ROOT / "models"


def inside_root(root: Path, relative: str | Path, what: str = "the artifacts root") -> Path:
    """``root / relative``, refusing any path that resolves outside ``root`` (``..``, absolute, links);
    ``what`` names the root in the error (a study folder, a dictionary set...)."""
    root = Path(root).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise PermissionError(f"path {str(relative)!r} leads outside {what} {root}")
    return target


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return kind


def manifest_file_name(name: str) -> str:
    """A file name for an artifact name: percent-encoded (``set/layer0`` -> ``set%2Flayer0.json``), so
    distinct names get distinct files and none leaves its folder or hides; very long names are cut
    and keep a hash of the whole (``+`` never occurs in an encoded name, so the cut form is unique)."""
    safe = quote(name, safe="")
    if safe.startswith("."):
        safe = "%2E" + safe[1:]
    safe = safe or "+empty"
    if len(safe) > 200:
        safe = f"{safe[:180]}+{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return safe + ".json"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _is_lock_conflict(err: duckdb.Error) -> bool:
    text = str(err)
    return "Could not set lock" in text or "Conflicting lock" in text


def _upsert(con, record: dict) -> None:
    con.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?)",
                [record["kind"], record["name"], record["path"], datetime.fromisoformat(record["created"]),
                 json.dumps(record.get("meta") or {})])


class Catalog:
    """Rows of the catalog; each call opens and closes its own connection under the catalog lock, so
    readers (the app) and writers (the CLI, jobs) in other processes never hold the file between calls.
    ``timeout`` bounds each call's wait for the lock, in seconds."""

    def __init__(self, root: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        self.root = artifacts_root(root)
        self.path = self.root / CATALOG_FILE
        self.timeout = timeout
        self.lock = ReadWriteLock(self.root / LOCK_FILE)

    # -- writing -------------------------------------------------------------------------------------
    def manifest_path(self, kind: str, name: str) -> Path:
        return self.root / MANIFESTS / check_kind(kind) / manifest_file_name(name)

    def write_manifest(self, kind: str, name: str, path: str, created: datetime, meta: dict) -> tuple[Path, dict]:
        """Step 1: ``(manifest file, record)``, the record written there atomically."""
        record = {"format": MANIFEST_FORMAT, "kind": check_kind(kind), "name": name, "path": path,
                  "created": created.isoformat(), "meta": meta}
        manifest = self.manifest_path(kind, name)
        atomic_write_text(manifest, json.dumps(record, indent=2) + "\n")
        return manifest, record

    def register(self, kind: str, name: str, path: str | Path, meta: dict | None = None) -> None:
        """Publish ``name``'s manifest, then insert or replace its catalog row (module docstring, steps
        1-4); ``path`` is stored relative to the root when inside it."""
        path = Path(path).resolve()
        rel = path.relative_to(self.root) if self.root in path.parents or path == self.root else path
        manifest, record = self.write_manifest(kind, name, str(rel), datetime.now(UTC).replace(tzinfo=None),
                                               meta or {})
        try:
            self._write(lambda con: _upsert(con, self._current(manifest, record)))
        except CatalogError as err:
            log.warning("%s. The %s %r is published at %s and its manifest is written, but the catalog does not "
                        "list it yet: run `wb store reindex --artifacts %s`", err, kind, name, path, self.root)

    @staticmethod
    def _current(manifest: Path, fallback: dict) -> dict:
        """The manifest as it is now on disk (another writer of the same name may have replaced ours)."""
        try:
            record = read_json(manifest)
        except (OSError, ValueError, RuntimeError):
            return fallback
        whole = isinstance(record, dict) and all(k in record for k in ("path", "created", "meta"))
        if not whole or (record.get("kind"), record.get("name")) != (fallback["kind"], fallback["name"]):
            return fallback
        return record

    # -- reading -------------------------------------------------------------------------------------
    def list(self, kind: str) -> list[dict]:
        rows = self._rows("SELECT name, path, created, meta FROM artifacts WHERE kind = ? ORDER BY name",
                          [check_kind(kind)])
        return [self._row(*r) for r in rows]

    def get(self, kind: str, name: str) -> dict:
        rows = self._rows("SELECT name, path, created, meta FROM artifacts WHERE kind = ? AND name = ?",
                          [check_kind(kind), name])
        if not rows:
            known = ", ".join(r["name"] for r in self.list(kind)) or "none"
            raise KeyError(f"no {kind} named {name!r} in the catalog; known: {known}")
        return self._row(*rows[0])

    def query(self, sql: str, params: list | None = None):
        """Run a read query (views: models, runs, dictionaries, graphs, studies) -> pandas DataFrame.
        The connection is read-only: a statement that writes fails."""
        return self._read(lambda con: con.execute(sql, params or []).df())

    def reindex(self):
        """Rebuild the catalog from the manifests; see :func:`workbench.store.reindex.reindex`."""
        from workbench.store.reindex import reindex

        return reindex(self)

    def _rows(self, sql: str, params: list) -> list[tuple]:
        def run(con):
            try:
                return con.execute(sql, params).fetchall()
            except duckdb.Error as err:  # our own query failing means the file is not our catalog
                raise self._damaged(err) from err
        return self._read(run)

    def _row(self, name, path, created, meta) -> dict:
        p = Path(path)
        return {"name": name, "path": p if p.is_absolute() else self.root / p, "created": created,
                "meta": json.loads(meta) if isinstance(meta, str) else meta}

    # -- connections under the lock ------------------------------------------------------------------
    def _damaged(self, err: BaseException) -> CatalogDamaged:
        return CatalogDamaged(f"the catalog {self.path} is damaged ({_first_line(err)}); rebuild it with "
                              f"`wb store reindex --artifacts {self.root}`")

    @contextmanager
    def connect(self, read_only: bool, path: Path | None = None):
        """A DuckDB connection to the catalog file (or ``path``); the caller holds the lock."""
        try:
            con = duckdb.connect(str(path or self.path), read_only=read_only)
        except duckdb.Error as err:
            if _is_lock_conflict(err):
                raise _DuckDBLocked(_first_line(err)) from err
            raise self._damaged(err) from err
        try:
            yield con
        finally:
            con.close()

    def locked(self, exclusive: bool, action):
        """``action()`` under the catalog lock, retried while the lock or DuckDB's file lock is held
        elsewhere, for up to ``timeout`` seconds in all; then :class:`CatalogBusy`."""
        deadline, last = time.monotonic() + self.timeout, None
        for _ in retry_delays(deadline):
            try:
                with self.lock.hold(exclusive, max(0.0, deadline - time.monotonic())):
                    return action()
            except LockTimeout as err:
                last = err
                break
            except _DuckDBLocked as err:
                last = err
        raise CatalogBusy(f"the catalog {self.path} stayed locked by other processes for {self.timeout:g} s "
                          f"({_first_line(last)})") from last

    def _write(self, action):
        def run():
            with self.connect(read_only=False) as con:
                try:
                    for statement in SCHEMA:
                        con.execute(statement)
                except duckdb.Error as err:
                    raise self._damaged(err) from err
                return action(con)
        return self.locked(True, run)

    def _read(self, action):
        if not self.path.exists():
            self._write(lambda con: None)  # a new root: create the table and views

        def run():
            with self.connect(read_only=True) as con:
                return action(con)
        return self.locked(False, run)
