"""The artifacts root and its DuckDB catalog.

Everything the workbench makes (models, training runs, dictionaries, graphs, studies) lives as files
under one artifacts root and is listed in ``catalog.duckdb`` there: one row per artifact with its kind,
name, path (relative to the root), creation time and a JSON ``meta`` column. One table for all kinds
keeps a new kind free (issues add dictionaries, graphs, studies); a view per kind keeps queries plain::

    SELECT name, meta->>'$.metrics.test_accuracy' FROM models

The root is ``./artifacts`` unless ``WB_ARTIFACTS`` or an explicit argument says otherwise. Paths handed
in from outside (the app, the CLI) are resolved with :func:`inside_root`, which refuses to leave it.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import duckdb

VIEWS = {"model": "models", "run": "runs", "dictionary": "dictionaries", "graph": "graphs", "study": "studies"}
KINDS = tuple(VIEWS)
ENV_VAR = "WB_ARTIFACTS"
MODELS_ENV_VAR = "WB_MODELS"
REPO_ROOT = Path(__file__).resolve().parents[2]


def artifacts_root(override: str | Path | None = None) -> Path:
    root = Path(override or os.environ.get(ENV_VAR) or "artifacts").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_root(override: str | Path | None = None) -> Path:
    """The zoo folder: explicit argument, else ``WB_MODELS``, else the checkout's ``models/``."""
    if override or os.environ.get(MODELS_ENV_VAR):
        return Path(override or os.environ[MODELS_ENV_VAR]).resolve()
    return REPO_ROOT / "models"


def inside_root(root: Path, relative: str | Path) -> Path:
    """``root / relative``, refusing any path that resolves outside ``root`` (``..``, absolute, links)."""
    root = Path(root).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise PermissionError(f"path {str(relative)!r} leads outside the artifacts root {root}")
    return target


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return kind


class Catalog:
    """Rows of the catalog; each call opens and closes its own connection, so readers (the app) and a
    writer (the CLI) in other processes do not hold the file locked between calls."""

    def __init__(self, root: str | Path | None = None):
        self.root = artifacts_root(root)
        self.path = self.root / "catalog.duckdb"
        with self._connect() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS artifacts (kind VARCHAR, name VARCHAR, path VARCHAR, "
                "created TIMESTAMP, meta JSON, PRIMARY KEY (kind, name))"
            )
            for kind, view in VIEWS.items():
                con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT name, path, created, meta "
                            f"FROM artifacts WHERE kind = '{kind}'")

    def _connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(self.path), read_only=read_only)

    def register(self, kind: str, name: str, path: str | Path, meta: dict | None = None) -> None:
        """Insert or replace one artifact; ``path`` is stored relative to the root when inside it."""
        check_kind(kind)
        path = Path(path).resolve()
        rel = path.relative_to(self.root) if self.root in path.parents or path == self.root else path
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?)",
                [kind, name, str(rel), datetime.now(UTC).replace(tzinfo=None), json.dumps(meta or {})],
            )

    def list(self, kind: str) -> list[dict]:
        with self._connect() as con:
            rows = con.execute(
                "SELECT name, path, created, meta FROM artifacts WHERE kind = ? ORDER BY name", [check_kind(kind)]
            ).fetchall()
        return [self._row(*r) for r in rows]

    def get(self, kind: str, name: str) -> dict:
        with self._connect() as con:
            row = con.execute(
                "SELECT name, path, created, meta FROM artifacts WHERE kind = ? AND name = ?", [check_kind(kind), name]
            ).fetchone()
        if row is None:
            known = ", ".join(r["name"] for r in self.list(kind)) or "none"
            raise KeyError(f"no {kind} named {name!r} in the catalog; known: {known}")
        return self._row(*row)

    def query(self, sql: str, params: list | None = None):
        """Run a read query (views: models, runs, dictionaries, graphs, studies) -> pandas DataFrame."""
        with self._connect() as con:
            return con.execute(sql, params or []).df()

    def _row(self, name, path, created, meta) -> dict:
        p = Path(path)
        return {"name": name, "path": p if p.is_absolute() else self.root / p, "created": created,
                "meta": json.loads(meta) if isinstance(meta, str) else meta}
