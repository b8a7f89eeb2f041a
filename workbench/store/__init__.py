"""Where artifacts live: atomic file writes, model folders, and the DuckDB catalog."""

from workbench.store.atomic import (
    CorruptArtifactError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_safetensors,
    read_json,
    save_safetensors,
    sha256_file,
)
from workbench.store.catalog import KINDS, Catalog, artifacts_root, inside_root, models_root

__all__ = [
    "KINDS",
    "Catalog",
    "CorruptArtifactError",
    "artifacts_root",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "inside_root",
    "load_safetensors",
    "models_root",
    "read_json",
    "save_safetensors",
    "sha256_file",
]
