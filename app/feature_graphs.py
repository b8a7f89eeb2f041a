"""Graphs containing a feature: the catalogued attribution graphs built with a dictionary set whose drawn
nodes include a (layer, feature). Plain Python, no streamlit: the Features page shows what this returns.

1. The catalog's graph entries whose ``meta.dictionaries`` names the set: the same folder once resolved
   (relative paths are tried from the artifacts root, the zoo's parent and the checkout), or, for a path
   written on another machine, the same path as a page shows it (:func:`feature_data.display_path`).
2. Each graph's feature nodes, read from its ``neuronpedia.json`` (the pruned graph the viewers draw;
   node ids ``{layer}_{feature}_{pos}``, kind from ``feature_type``), else from ``graph.safetensors``'s
   ``active_features``. The index (layer, feature) -> positions is cached per file, keyed by the file's
   path, modification time and size, so a rebuilt graph is read again.
3. The graphs whose index holds (layer, feature), with the positions it sits at.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import feature_data

from workbench.attribution.graph_file import feature_address
from workbench.store.catalog import REPO_ROOT, artifacts_root, models_root

NEURONPEDIA_FILE, TENSORS_FILE = "neuronpedia.json", "graph.safetensors"
FEATURE_TYPE = "cross layer transcoder"  # circuit-tracer's feature_type for every transcoder feature


@dataclass(frozen=True)
class GraphHit:
    name: str
    prompt: str
    positions: tuple[int, ...]
    tokens: tuple[str, ...]  # the prompt's token at each position, where the graph file names them


def _candidates(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_absolute():
        return [path]
    return [base / path for base in (artifacts_root(), models_root().parent, REPO_ROOT)]


def same_set(recorded: object, set_folder: Path) -> bool:
    """Whether a graph's recorded dictionary folder names ``set_folder`` (step 1)."""
    if not recorded:
        return False
    target = Path(set_folder).resolve()
    if any(c.resolve() == target for c in _candidates(str(recorded))):
        return True
    return feature_data.display_path(str(recorded)) == feature_data.display_path(target)


def _stamp(path: Path) -> tuple[str, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=256)
def _index_of_file(path: str, mtime_ns: int, size: int) -> tuple[dict, tuple[str, ...]]:
    """((layer, feature) -> positions, prompt tokens) of one graph file (step 2); cached by its stamp."""
    found: dict[tuple[int, int], list[int]] = {}
    if path.endswith(".json"):
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        version = (doc.get("metadata") or {}).get("schema_version")
        for node in doc.get("nodes") or []:
            if node.get("feature_type") == FEATURE_TYPE:
                layer, pos, feature = feature_address(node, version)
                found.setdefault((layer, feature), []).append(pos)
        tokens = tuple(str(t) for t in (doc.get("metadata") or {}).get("prompt_tokens") or [])
    else:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            for layer, pos, feature in f.get_tensor("active_features").tolist():
                found.setdefault((int(layer), int(feature)), []).append(int(pos))
        tokens = ()
    return {k: tuple(sorted(set(v))) for k, v in found.items()}, tokens


def feature_index(graph_folder: Path) -> tuple[dict, tuple[str, ...]]:
    """The (layer, feature) -> positions index of a graph folder and its prompt tokens; ({}, ()) when it
    holds neither file. A damaged file raises ValueError naming it."""
    for name in (NEURONPEDIA_FILE, TENSORS_FILE):
        stamp = _stamp(Path(graph_folder) / name)
        if stamp is not None:
            try:
                return _index_of_file(*stamp)
            except Exception as err:  # JSON, safetensors and field errors all mean a damaged file
                raise ValueError(f"{Path(graph_folder).name}/{name} is damaged: {err}") from err
    return {}, ()


def graphs_with_feature(entries: list[dict], set_folder: Path, layer: int,
                        feature: int) -> tuple[list[GraphHit], list[str]]:
    """(graphs holding the feature, newest first as ``entries`` are ordered; problems, one line per graph
    that could not be read). ``entries`` are catalog rows of kind ``graph``."""
    hits, problems = [], []
    for entry in entries:
        meta = entry.get("meta") or {}
        if not same_set(meta.get("dictionaries"), set_folder):
            continue
        try:
            folder = feature_data.safe_folder(entry["path"])
            index, tokens = feature_index(folder)
        except (PermissionError, ValueError) as err:
            problems.append(f"{entry['name']}: {err}")
            continue
        positions = index.get((int(layer), int(feature)))
        if positions:
            named = tuple(tokens[p] if 0 <= p < len(tokens) else "?" for p in positions)
            hits.append(GraphHit(str(entry["name"]), str(meta.get("prompt", "")), positions, named))
    return hits, problems


__all__ = ["GraphHit", "feature_index", "graphs_with_feature", "same_set"]
