"""A replacement set on disk: the dictionaries that together replace a model's MLPs.

    set.json     {"model": ..., "kind": ..., "members": {"layer0": "runs/layer0/dictionary", ...}, ...}

Members are dictionary folders (:func:`save_dictionary`), paths relative to the set folder: one per
layer for per-layer kinds, one for a CLT. A plain dictionary folder (``config.json`` +
``dictionary.safetensors``, no ``set.json``) is read as a set of one.
"""

from __future__ import annotations

from pathlib import Path

from workbench.dictionaries.models import CONFIG_FILE, Dictionary, load_dictionary
from workbench.store.atomic import atomic_write_json, read_json

SET_FILE = "set.json"


def save_dictionary_set(folder: str | Path, members: dict[str, str], meta: dict) -> Path:
    """Write ``set.json`` last and atomically, once every member folder is published."""
    folder = Path(folder)
    for name, rel in members.items():
        if not (folder / rel / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"dictionary set member {name!r} has no dictionary at {folder / rel}")
    return atomic_write_json(folder / SET_FILE, {**meta, "members": members})


def load_dictionary_set(folder: str | Path) -> tuple[dict[str, Dictionary], dict]:
    """``({member name: dictionary}, set meta)`` from a set folder or a single dictionary folder."""
    folder = Path(folder)
    if (folder / SET_FILE).is_file():
        meta = read_json(folder / SET_FILE)
        members = meta.get("members") or {}
        if not members:
            raise ValueError(f"dictionary set {folder / SET_FILE} lists no members")
        return {name: load_dictionary(folder / rel) for name, rel in members.items()}, meta
    if (folder / CONFIG_FILE).is_file():
        return {folder.name: load_dictionary(folder)}, {}
    raise FileNotFoundError(f"{folder} is neither a dictionary set (no {SET_FILE}) nor a dictionary folder "
                            f"(no {CONFIG_FILE}); pass the folder `wb dict train` wrote")


__all__ = ["SET_FILE", "load_dictionary_set", "save_dictionary_set"]
