"""Feature labels: a short name for each feature of a dictionary set, kept with its feature data.

Every feature has an automatic label built from its feature data (``wb dict features``): the tokens it
reads (the tokens of its top-activating contexts) and the tokens it writes (its top direct logit
effects), e.g. ``reads 'K3','K7' → writes 'V2'``. A user may replace it with their own; user labels are
saved in ``<set folder>/features/labels.json`` beside the feature data::

    {"format": "workbench-feature-labels/1", "labels": {"<layer>_<feature>": "text", ...}}

keyed like a graph's feature node ids (``{layer}_{feature}_{pos}`` less the position).

Saving a label (:func:`save_label`):

1. Refuse a folder without finished feature data (no ``features/summary.json``) or a feature it lacks.
2. Take ``features/labels.lock`` exclusively (:mod:`workbench.store.locking`), so two writers (two app
   sessions, a script) read-modify-write one after the other and neither loses the other's label.
3. Read ``labels.json``, set or (empty text) delete the one label, write it back atomically.

Plain Python and pandas: the app, the graph viewer and scripts share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from workbench.store.atomic import atomic_write_json, read_json
from workbench.store.locking import ReadWriteLock

FEATURES_DIR = "features"
LABELS_FILE = "labels.json"
LOCK_FILE = "labels.lock"
LABELS_FORMAT = "workbench-feature-labels/1"
MAX_LABEL_CHARS = 120
LOCK_TIMEOUT_S = 30.0
N_READS, N_WRITES, TOKEN_CHARS = 2, 1, 12


def data_dir(folder: str | Path) -> Path:
    """The ``features/`` folder of a set: ``folder`` itself when it holds the feature data (its
    ``summary.json``), else ``folder/features``."""
    folder = Path(folder)
    return folder if (folder / "summary.json").is_file() else folder / FEATURES_DIR


def _require_feature_data(folder: str | Path) -> Path:
    out = data_dir(folder)
    if not (out / "summary.json").is_file():
        raise FileNotFoundError(f"{folder} has no feature data ({FEATURES_DIR}/summary.json); write it with "
                                "`wb dict features` before labelling its features")
    return out


def _short(token: object) -> str:
    text = str(token)
    return text if len(text) <= TOKEN_CHARS else text[:TOKEN_CHARS - 1] + "…"


def _quoted(tokens: Iterable[object]) -> str:
    return ",".join(repr(_short(t)) for t in tokens)


def top_context_tokens(contexts: pd.DataFrame, n: int = N_READS) -> list[str]:
    """The first ``n`` distinct tokens of one feature's top-activating contexts, highest rank first."""
    if contexts is None or contexts.empty:
        return []
    top = contexts[contexts["group"] == "top"] if "group" in contexts.columns else contexts
    order = top.sort_values("rank", kind="stable") if "rank" in top.columns else top
    seen: list[str] = []
    for token in order["token"].astype(str):
        if token not in seen:
            seen.append(token)
        if len(seen) == n:
            break
    return seen


def automatic_label(row: Mapping, reads: Iterable[object] | None = None) -> str:
    """``reads 'a','b' → writes 'c'`` for one row of ``features.parquet``; ``reads`` are its top context
    tokens (:func:`top_context_tokens`), else the row's own ``reads`` entry when it has one. A feature
    that never fired is ``dead``."""
    if float(row.get("density", 1.0) or 0.0) == 0.0:
        return "dead (never fired)"
    reads = list(reads if reads is not None else (row.get("reads") if row.get("reads") is not None else []))
    writes = row.get("top_tokens")
    writes = [] if writes is None or isinstance(writes, str) else list(writes)[:N_WRITES]
    parts = [f"reads {_quoted(reads[:N_READS])}" if reads else "",
             f"writes {_quoted(writes)}" if writes else ""]
    return " → ".join(p for p in parts if p) or "no tokens recorded"


def _label_key(layer: int, feature: int) -> str:
    return f"{int(layer)}_{int(feature)}"


def user_labels(folder: str | Path) -> dict[tuple[int, int], str]:
    """The saved user labels, keyed (layer, feature); {} when none are saved. A damaged file raises
    ValueError naming it."""
    path = data_dir(folder) / LABELS_FILE
    if not path.is_file():
        return {}
    try:
        record = read_json(path)
    except (RuntimeError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({err}); delete it to start the labels afresh") from err
    labels = record.get("labels") if isinstance(record, dict) else None
    if not isinstance(labels, dict):
        raise ValueError(f"{path} holds no 'labels' object; delete it to start the labels afresh")  # noqa: TRY004
    out = {}
    for key, text in labels.items():
        layer, _, feature = str(key).partition("_")
        if layer.isdigit() and feature.isdigit() and isinstance(text, str):
            out[(int(layer), int(feature))] = text
    return out


def _frames(folder: Path, data) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, contexts) frames: from ``data`` (an object with ``.features``/``.contexts``, or a dict
    of them) or read from the folder."""
    if data is None:
        return (pd.read_parquet(folder / "features.parquet"),
                pd.read_parquet(folder / "contexts.parquet", columns=["layer", "feature", "group", "rank", "token"]))
    if isinstance(data, Mapping):
        return data["features"], data["contexts"]
    return data.features, data.contexts


def automatic_labels(features: pd.DataFrame, contexts: pd.DataFrame) -> dict[tuple[int, int], str]:
    """The automatic label of every feature row, keyed (layer, feature)."""
    top = contexts[contexts["group"] == "top"]
    by_feature = {key: rows for key, rows in top.groupby(["layer", "feature"], sort=False)}
    out = {}
    for row in features.to_dict("records"):
        key = (int(row["layer"]), int(row["feature"]))
        out[key] = automatic_label(row, top_context_tokens(by_feature.get(key, top.iloc[:0])))
    return out


def feature_labels(features_folder: str | Path, data=None) -> dict[tuple[int, int], str]:
    """Every feature's label keyed (layer, feature): the user's where one is saved, else the automatic
    one. ``features_folder`` is the set folder (or its ``features/``); ``data`` the already loaded
    feature data, to skip reading it again."""
    folder = _require_feature_data(features_folder)
    labels = automatic_labels(*_frames(folder, data))
    labels.update(user_labels(folder))
    return labels


def _check_feature(folder: Path, layer: int, feature: int) -> None:
    rows = pd.read_parquet(folder / "features.parquet", columns=["layer", "feature"])
    if not ((rows["layer"] == layer) & (rows["feature"] == feature)).any():
        layers = sorted(int(v) for v in rows["layer"].unique())
        raise KeyError(f"no feature {feature} at layer {layer} in {folder}; its layers are {layers}, "
                       f"features 0..{int(rows['feature'].max()) if len(rows) else -1}")


def save_label(features_folder: str | Path, layer: int, feature: int, text: str) -> dict[tuple[int, int], str]:
    """Save the user's label of (layer, feature), or delete it when ``text`` is blank (the automatic
    label shows again); returns the user labels now saved. Steps in the module docstring."""
    folder = _require_feature_data(features_folder)
    layer, feature = int(layer), int(feature)
    text = " ".join(str(text).split())  # one line: labels sit in hover cards and table cells
    if len(text) > MAX_LABEL_CHARS:
        raise ValueError(f"label of {len(text)} characters is too long; keep it to {MAX_LABEL_CHARS}")
    _check_feature(folder, layer, feature)
    with ReadWriteLock(folder / LOCK_FILE).hold(exclusive=True, timeout=LOCK_TIMEOUT_S):
        labels = user_labels(folder)
        if text:
            labels[(layer, feature)] = text
        else:
            labels.pop((layer, feature), None)
        atomic_write_json(folder / LABELS_FILE, {
            "format": LABELS_FORMAT,
            "labels": {_label_key(*k): v for k, v in sorted(labels.items())}})
    return labels


__all__ = ["LABELS_FILE", "automatic_label", "automatic_labels", "data_dir", "feature_labels", "save_label",
           "top_context_tokens", "user_labels"]
