"""Reading a dictionary set's feature data (``<set folder>/features/``, written by ``wb dict features``)
for the app: loading and checking the files, one (member, layer)'s features, search, and the token
window of a context. Plain pandas, no streamlit: :mod:`widgets` caches and shows what this returns.

Feature data has one row per feature of each (member, layer): a per-layer transcoder set has members
``layer0``, ``layer1``, ... each with its own layer; a cross-layer transcoder is one member ``clt``
with features per layer. See ``workbench/dictionaries/features.py`` for what each file holds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workbench.dictionaries.features import with_bin_edges
from workbench.store.catalog import artifacts_root, inside_root, models_root

FEATURES_DIR = "features"
COLUMNS = {
    "features": {"member", "layer", "feature", "density", "max_activation", "mean_active_activation",
                 "top_tokens", "top_values", "bottom_tokens", "bottom_values"},
    "contexts": {"member", "layer", "feature", "group", "band", "rank", "activation", "token", "text"},
    "histograms": {"member", "layer", "feature", "bin", "count"},
}
# Histograms written since issue #16 leave out the bins' edges (they follow from the features' nonzero
# range and summary.json's histogram_bins); older ones hold them as columns.
EDGE_SOURCES = ("nonzero_min", "nonzero_max")
# Optional context columns giving the feature's activation on every token of the window; without
# them only the context's own token (marked ``[[tok]]`` in ``text``) has a known activation.
WINDOW_COLUMNS = ("window_tokens", "window_activations", "window_center")
SEARCH_MODES = ("token", "feature index")


class MissingFeatureData(FileNotFoundError):
    """The folder is there but holds no finished feature data (``features/summary.json``)."""


@dataclass
class FeatureData:
    folder: Path
    summary: dict
    features: pd.DataFrame
    contexts: pd.DataFrame
    histograms: pd.DataFrame


def read_roots() -> list[Path]:
    """Folders the app may read dictionaries from: the artifacts root, and the zoo (its transcoders)."""
    return [artifacts_root(), models_root()]


def safe_folder(path: str | Path) -> Path:
    """``path`` (relative paths are taken from the artifacts root) resolved, refusing anything that leads
    outside every read root: a path from the catalog, a graph file or the UI never reads elsewhere."""
    roots = read_roots()
    for root in roots:
        try:
            return inside_root(root, path)
        except PermissionError:
            continue
    raise PermissionError(f"path {str(path)!r} leads outside the artifacts root {roots[0]} and the zoo {roots[1]}; "
                          "the app reads dictionaries only from those")


def display_path(path: str | Path) -> str:
    """``path`` as a page shows it, never a full path from another machine: a relative path as written;
    one inside the zoo or the artifacts root relative to it, under the root's folder name
    (``models/transformer-recall``); any other absolute path (feature data written elsewhere) from its
    last ``models`` or ``artifacts`` folder on, else by its last part alone."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    resolved = path.resolve()
    for root in (models_root().resolve(), artifacts_root()):
        if resolved == root or root in resolved.parents:
            return str(Path(root.name) / resolved.relative_to(root))
    parts = path.parts
    tail = [i for i, part in enumerate(parts) if part in ("models", "artifacts") and i < len(parts) - 1]
    return str(Path(*parts[tail[-1]:])) if tail else path.name


def signature(folder: Path) -> tuple:
    """(name, mtime, size) of each feature file: a rewritten file invalidates any cache keyed on it."""
    out = []
    for name in ("summary.json", *(f"{n}.parquet" for n in COLUMNS)):
        path = folder / FEATURES_DIR / name
        stat = path.stat() if path.is_file() else None
        out.append((name, stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0))
    return tuple(out)


def load_feature_data(folder: str | Path) -> FeatureData:
    """Every feature file of a set folder; FileNotFoundError (missing folder or data) or ValueError
    (a damaged file, named) say what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"the folder {folder} does not exist (deleted or moved)")
    data_dir = folder / FEATURES_DIR
    # summary.json is written last, so without it the parquet files may be half a job's output
    if not (data_dir / "summary.json").is_file():
        raise MissingFeatureData(f"{folder} has no feature data ({FEATURES_DIR}/summary.json)")
    try:
        summary = json.loads((data_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{FEATURES_DIR}/summary.json is damaged: {err}") from err
    summary = summary if isinstance(summary, dict) else {}
    frames = {name: _read_frame(data_dir / f"{name}.parquet", columns) for name, columns in COLUMNS.items()}
    frames["histograms"] = _histograms_with_edges(frames["histograms"], frames["features"], summary)
    return FeatureData(folder, summary, **frames)


def _histograms_with_edges(histograms: pd.DataFrame, features: pd.DataFrame, summary: dict) -> pd.DataFrame:
    if {"lo", "hi"} <= set(histograms.columns):
        return histograms
    lacks = [c for c in EDGE_SOURCES if c not in features.columns]
    if not isinstance(summary.get("histogram_bins"), int):
        lacks.append("summary.json histogram_bins")
    if lacks:
        raise ValueError(f"{FEATURES_DIR}/histograms.parquet has no bin edges and they cannot be derived: "
                         f"lacks {lacks}")
    return with_bin_edges(histograms, features, summary["histogram_bins"])


def _read_frame(path: Path, columns: set[str]) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"{FEATURES_DIR}/{path.name} is missing")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{FEATURES_DIR}/{path.name} is damaged: {err}") from err
    missing = columns - set(frame.columns)
    if missing:
        raise ValueError(f"{FEATURES_DIR}/{path.name} lacks columns {sorted(missing)}")
    return frame


def layers(data: FeatureData) -> list[tuple[str, int]]:
    """Every (member, layer) with features, in file order."""
    pairs = data.features[["member", "layer"]].drop_duplicates()
    return [(str(m), int(layer)) for m, layer in pairs.itertuples(index=False)]


def member_for(data: FeatureData, layer: int, member: str | None = None) -> str:
    """The member holding ``layer``'s features (``layer3`` for a per-layer set, ``clt`` for a CLT)."""
    pairs = layers(data)
    found = [m for m, l in pairs if l == layer and member in (None, m)]
    if not found:
        known = ", ".join(f"{m} layer {l}" for m, l in pairs) or "none"
        wanted = f"member {member!r} " if member else ""
        raise KeyError(f"no features for {wanted}layer {layer}; this set has: {known}")
    return found[0]


def layer_frame(frame: pd.DataFrame, member: str, layer: int) -> pd.DataFrame:
    return frame[(frame["member"] == member) & (frame["layer"] == layer)]


def feature_rows(frame: pd.DataFrame, member: str, layer: int, feature: int) -> pd.DataFrame:
    rows = layer_frame(frame, member, layer)
    return rows[rows["feature"] == feature]


def parse_indices(query: str) -> list[int]:
    """``"12"`` or ``"3, 7 12"`` -> feature indices; ValueError names what is not a whole number."""
    parts = query.replace(",", " ").split()
    bad = [p for p in parts if not p.isdigit()]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a feature index; type whole numbers such as 12 or 3, 7")
    return [int(p) for p in parts]


def _token_list(value: object) -> list[str]:
    return [str(t) for t in value] if value is not None and not isinstance(value, str) else []


def search(features: pd.DataFrame, contexts: pd.DataFrame, query: str, mode: str) -> pd.DataFrame:
    """Features of one (member, layer) matching ``query``, with a ``match`` column saying where.
    By token (case-insensitive, whole token): a top context's token, a top or bottom logit token."""
    query = query.strip()
    if not query:
        return features.assign(match="")
    if mode == "feature index":
        return features[features["feature"].isin(parse_indices(query))].assign(match="index")
    if mode != "token":
        raise ValueError(f"unknown search mode {mode!r}; choose one of: {', '.join(SEARCH_MODES)}")
    wanted = query.casefold()
    top = contexts[contexts["group"] == "top"]
    in_context = set(top.loc[top["token"].astype(str).str.casefold() == wanted, "feature"].tolist())
    where = []
    for feature, up, down in zip(features["feature"], features["top_tokens"], features["bottom_tokens"]):
        hits = [label for label, found in [
            ("top context", feature in in_context),
            ("raises logit", any(t.casefold() == wanted for t in _token_list(up))),
            ("lowers logit", any(t.casefold() == wanted for t in _token_list(down)))] if found]
        where.append(", ".join(hits))
    out = features.assign(match=where)
    return out[out["match"] != ""]


def context_window(row: pd.Series) -> tuple[list[str], list[float], int | None]:
    """(tokens, activations, index of the context's token) of one context row. Activations the data
    does not hold are NaN: without the window columns only the marked token's is known."""
    if all(c in row.index for c in WINDOW_COLUMNS) and row["window_tokens"] is not None:
        tokens = [str(t) for t in row["window_tokens"]]
        values = [float(v) for v in row["window_activations"]]
        if len(values) == len(tokens):
            center = int(row["window_center"])
            return tokens, values, center if 0 <= center < len(tokens) else None
    # tokens are whitespace-free words joined by spaces, the context's own token written [[tok]]
    words = str(row["text"]).split()
    marked = f"[[{row['token']}]]"
    center = words.index(marked) if marked in words else None
    tokens = [str(row["token"]) if i == center else w for i, w in enumerate(words)]
    values = [float(row["activation"]) if i == center else math.nan for i in range(len(words))]
    return tokens, values, center


__all__ = ["COLUMNS", "SEARCH_MODES", "WINDOW_COLUMNS", "FeatureData", "MissingFeatureData", "context_window",
           "display_path", "feature_rows", "layer_frame", "layers", "load_feature_data", "member_for", "parse_indices", "read_roots",
           "safe_folder", "search", "signature"]
