"""Where artifacts live: atomic file writes, model folders, manifests and the DuckDB catalog that indexes them."""

from workbench.store.atomic import (
    CorruptArtifactError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    clean_stale_temporaries,
    load_safetensors,
    read_json,
    save_safetensors,
    sha256_file,
)
from workbench.store.catalog import (
    KINDS,
    Catalog,
    CatalogBusy,
    CatalogDamaged,
    CatalogError,
    artifacts_root,
    inside_root,
    models_root,
)

__all__ = [
    "KINDS",
    "Catalog",
    "CatalogBusy",
    "CatalogDamaged",
    "CatalogError",
    "CorruptArtifactError",
    "artifacts_root",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "clean_stale_temporaries",
    "inside_root",
    "load_safetensors",
    "models_root",
    "read_json",
    "save_safetensors",
    "sha256_file",
]
