"""Shared widgets for the app's pages: where the zoo and store are, cached card and curve loading,
the zoo table, curve figures, the dictionary picker and feature loading, and the two ways file content
reaches the screen (plain text, or the escaped token highlighter).

Sibling modules hold what is too heavy to load on every page: ``graph_view.py`` (the payload of the
client-side graph viewer, ``components/graph_viewer``), ``graph_data.py`` / ``graph_sources.py`` (what a graph
page draws and where graphs come from; they import torch) and ``feature_data.py`` (feature tables).
A new page is one file in ``app/pages/`` that imports what it needs from these.

Every page imports this module as ``widgets`` after putting ``app/`` on ``sys.path`` (streamlit and
AppTest run pages as scripts, not as a package). It imports only the catalog from the workbench:
``workbench.zoo`` and ``workbench.store.model_files`` pull in the trainer and every architecture, and
browsing cards and curves needs neither.

Anything read from a file (names, notes, error messages) is shown with :func:`show_text` or escaped
with :func:`md_escape`; every label put into a plotly figure (axis ticks, hover, legend, titles,
annotations) goes through :func:`plot_text`; :func:`token_highlighter` (and ``feature_panel.contexts_html``, which lines its output up)
is the one place HTML is built, every token escaped. Dictionary folders are read only inside the
artifacts root or the zoo (:func:`feature_data.safe_folder`), whichever page or file names them.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import feature_data  # app/feature_data.py: app/ is on sys.path, as for this module
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from workbench.store.catalog import Catalog, artifacts_root, models_root

CURVE_COLUMNS = {"step", "split", "metric", "value"}
ZOO_COLUMNS = ["name", "architecture", "task", "parameters", "test accuracy", "test perplexity",
               "bigram perplexity", "training tokens", "training time s", "transcoder FVU (worst layer)",
               "replacement agreement", "graph replacement score", "graph completeness score", "graph validation r"]
# A figure's legend as one row under the plot, clear of plotly's toolbar (top right, over the plot area).
LEGEND_BELOW = {"orientation": "h", "yanchor": "top", "y": -0.25, "xanchor": "left", "x": 0, "title": {"text": ""}}
# CommonMark lets a backslash escape any ASCII punctuation, so escaping all of it is always safe.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~&$:])")


def md_escape(text: object) -> str:
    """``text`` made inert inside st.markdown / st.warning / st.subheader bodies."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def plot_text(text: object) -> str:
    """``text`` as plain text inside a plotly figure: plotly renders a subset of HTML in every label
    (``<a href>`` becomes a live link), so ``&``, ``<`` and ``>`` are escaped. Quotes are left alone:
    plotly does not decode ``&quot;``."""
    return html.escape(str(text), quote=False)


def models_dir() -> Path:
    return models_root()


@st.cache_resource(show_spinner=False)
def _catalog_at(root: str) -> Catalog:
    return Catalog(root)


def catalog() -> Catalog:
    """The store's catalog, one per artifacts root (the root can change between test runs)."""
    return _catalog_at(str(artifacts_root()))


def store_counts() -> dict[str, int] | None:
    """Artifacts per kind in the catalog; None (with a warning shown) when it cannot be read. Kind
    ``dictionary`` holds sets (a model's per-layer transcoders or its CLT, as ``wb dict train`` and the
    zoo register them) and their single members (which carry a ``config``): they are counted apart, as
    ``dictionary_set`` and ``dictionary``."""
    try:
        df = catalog().query(
            "SELECT CASE WHEN kind = 'dictionary' AND json_extract(meta, '$.config') IS NULL "
            "THEN 'dictionary_set' ELSE kind END AS kind, count(*) AS n FROM artifacts GROUP BY 1")
    except Exception as err:  # noqa: BLE001 - a locked or damaged catalog must not break the page
        st.warning(f"The catalog could not be read: {md_escape(err)}")
        return None
    return {str(k): int(n) for k, n in zip(df["kind"], df["n"])}


def _card_signature(folder: Path) -> tuple:
    """(path, mtime, size) of every card: a changed card or a new model invalidates the cache."""
    sig = []
    for path in sorted(folder.glob("*/card.json")):
        try:
            stat = path.stat()
            sig.append((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            sig.append((str(path), 0, 0))
    return tuple(sig)


def _read_card(path: Path) -> dict:
    """One card, checked enough that pages can index it; ValueError or TypeError says what is wrong."""
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable JSON ({err})") from err
    if not isinstance(card, dict):
        raise TypeError(f"expected a JSON object, found {type(card).__name__}")
    for field in ("task", "metrics", "model_config", "train_config"):
        if field in card and not isinstance(card[field], dict):
            raise TypeError(f"field {field!r} should be an object")
    card.setdefault("name", path.parent.name)
    card["name"] = str(card["name"])
    card["_folder"] = str(path.parent)  # where curves.parquet lives; the name need not match it
    return card


@st.cache_data(show_spinner=False)
def _read_cards(signature: tuple) -> tuple[list[dict], list[str]]:
    cards, problems = [], []
    for path_str, _, _ in signature:
        try:
            cards.append(_read_card(Path(path_str)))
        except (ValueError, TypeError) as err:
            problems.append(f"{Path(path_str).parent.name}/card.json: {err}")
    return cards, problems


def load_cards(report: bool = True) -> list[dict]:
    """Every readable card in the zoo; damaged ones are skipped and (with ``report``) named in a warning."""
    cards, problems = _read_cards(_card_signature(models_dir()))
    if report and problems:
        st.warning("Skipped damaged model cards:\n\n" + "\n\n".join(f"- {md_escape(p)}" for p in problems))
    return cards


@st.cache_data(show_spinner=False)
def _read_curves(path: str, mtime_ns: int) -> pd.DataFrame:
    df = pd.read_parquet(path)
    missing = CURVE_COLUMNS - set(df.columns)
    if missing:
        raise ValueError(f"curves lack columns {sorted(missing)}")
    return df


def load_curves(card: dict) -> pd.DataFrame | None:
    """The card's training curves, or None when it has none; ValueError when the file is damaged."""
    path = Path(card.get("_folder", "")) / "curves.parquet"
    if not path.is_file():
        return None
    try:
        return _read_curves(str(path), path.stat().st_mtime_ns)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{path.parent.name}/curves.parquet is damaged: {err}") from err


def recall_grid_table() -> pd.DataFrame | None:
    """The recall sweep's table (issue #16): the committed copy beside the zoo, else the store's."""
    from workbench.zoo.recall_grid import PUBLISHED, SWEEP_DIR

    for path in (models_dir() / PUBLISHED, catalog().root / SWEEP_DIR / "table.parquet"):
        if path.is_file():
            return pd.read_parquet(path)
    return None


def model_picker(cards: list[dict], key: str, label: str = "Model") -> dict | None:
    """A selectbox over the cards; returns the chosen card (None when there are none)."""
    if not cards:
        return None
    index = st.selectbox(label, range(len(cards)), format_func=lambda i: cards[i]["name"], key=key)
    return cards[index]


def number(value: object) -> float | None:
    """A card value as a float; None when it is missing, not a number, or NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def task_label(card: dict) -> str:
    """``recall_multi → recall`` when a model is trained on one task and its card measured on another."""
    trained = str((card.get("task") or {}).get("name", "?"))
    tested = str((card.get("eval_task") or {}).get("name", trained))
    return trained if tested == trained else f"{trained} → {tested}"


def dictionary_summary(card: dict, recipe: str = "transcoders") -> list[float | None]:
    """The zoo table's dictionary columns from ``card["dictionaries"][recipe]`` (``wb zoo dicts``):
    worst-layer FVU, spliced agreement, mean replacement and completeness of the full graphs, and the
    graphs' mean validation correlation (predicted against live ablation effects)."""
    entry = card.get("dictionaries", {}).get(recipe) if isinstance(card.get("dictionaries"), dict) else None
    if not isinstance(entry, dict):
        return [None] * 5
    fvu = [number(v) for v in entry.get("fvu", [])]
    graphs = entry.get("graphs") or {}
    return [max((v for v in fvu if v is not None), default=None), number(entry.get("agreement")),
            number(graphs.get("replacement")), number(graphs.get("completeness")),
            number((graphs.get("validation") or {}).get("pearson"))]


def zoo_dataframe(cards: list[dict]) -> pd.DataFrame:
    """One row per card with the zoo table's columns; missing values are left empty, not invented."""
    rows = []
    for card in cards:
        metrics = card.get("metrics", {})
        rows.append([
            card["name"], str(card.get("architecture", "?")), task_label(card),
            number(card.get("parameters")), number(metrics.get("test_accuracy")),
            number(metrics.get("test_perplexity")), number(metrics.get("bigram_perplexity")),
            number(card.get("training_tokens")), number(card.get("training_time_s")),
            *dictionary_summary(card),
        ])
    return pd.DataFrame(rows, columns=ZOO_COLUMNS)


def curves_figure(df: pd.DataFrame, metric: str) -> go.Figure | None:
    """Line chart of one metric over steps, train and test as colours; None when it was not recorded."""
    rows = df[df["metric"] == metric].sort_values("step")
    if rows.empty:
        return None
    rows = rows.assign(split=rows["split"].map(plot_text))  # split names come from the file: legend and hover
    fig = px.line(rows, x="step", y="value", color="split", markers=len(rows) < 40,
                  labels={"value": plot_text(metric), "step": "step"}, title=plot_text(metric))
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend=LEGEND_BELOW)
    return fig


def show_text(label: str, text: object) -> None:
    """File content as plain text under a bold label: never interpreted as markdown or HTML."""
    st.markdown(f"**{md_escape(label)}**")
    st.text(str(text))


def _highlight_colour(value: float, scale: float) -> str:
    # positive values red, negative blue, alpha by magnitude relative to the scale
    alpha = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    rgb = "220,38,38" if value >= 0 else "37,99,235"
    return f"rgba({rgb},{alpha:.3f})"


def token_highlighter(tokens: list[str], values: list[float], scale: float | None = None,
                      marked: int | None = None) -> str:
    """Tokens as spans shaded by value, as HTML for st.html; every token is escaped here.

    ``scale`` is the value drawn at full colour (default: the largest magnitude here; pass a feature's
    max activation so its contexts compare). A NaN value is one not recorded: no shade. ``marked``
    outlines one token (the context's own)."""
    if len(tokens) != len(values):
        raise ValueError(f"token_highlighter got {len(tokens)} tokens but {len(values)} values")
    values = [float(v) for v in values]
    if scale is None:
        scale = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    spans = []
    for i, (token, value) in enumerate(zip(tokens, values)):
        known = math.isfinite(value)
        title = f"{value:.4g}" if known else "activation not recorded"
        background = _highlight_colour(value, scale) if known else "transparent"
        outline = "outline:1px solid #555;" if i == marked else ""
        spans.append(
            f'<span title="{title}" style="background:{background};{outline}'
            f'padding:1px 2px;margin:0 1px;border-radius:3px;white-space:pre">'
            f"{html.escape(str(token), quote=True)}</span>"
        )
    return '<div style="font-family:monospace;line-height:1.9">' + "".join(spans) + "</div>"


# ---- dictionaries and their features (the Features page; one feature on screen: feature_panel.py)

def dictionary_entries() -> list[dict] | None:
    """Catalogued dictionaries, less the members of a catalogued set (``set/layer0``: the set's feature
    data covers them); None (with a warning shown) when the catalog cannot be read."""
    try:
        rows = catalog().list("dictionary")
    except Exception as err:  # noqa: BLE001 - a locked or damaged catalog must not break the page
        st.warning(f"The catalog could not be read: {md_escape(err)}")
        return None
    names = {r["name"] for r in rows}
    return [r for r in rows if r["name"].rpartition("/")[0] not in names]


def dictionary_label(entry: dict) -> str:
    meta = entry.get("meta") or {}
    kind = meta.get("kind") or (meta.get("config") or {}).get("kind")
    data = "" if (meta.get("features") or {}) else " · no feature data catalogued"
    return f"{entry['name']}{f' · {kind}' if kind else ''}{data}"


def dictionary_picker(entries: list[dict], key: str, label: str = "Dictionary") -> dict | None:
    """A selectbox over catalog entries (:func:`dictionary_entries`); the chosen one, None when none."""
    if not entries:
        return None
    index = st.selectbox(label, range(len(entries)), format_func=lambda i: dictionary_label(entries[i]), key=key)
    return entries[index]


def dictionary_entry(dictionary: str | Path | dict) -> tuple[dict, str | None]:
    """(catalog entry, member hint) of an entry, a catalogued name (``set`` or ``set/member``) or a set
    folder (an entry without meta); its path is not yet checked against the read roots."""
    if isinstance(dictionary, dict):
        return dictionary, None
    text = str(dictionary)
    known = {r["name"]: r for r in (dictionary_entries() or [])}
    if text in known:
        return known[text], None
    parent, _, member = text.rpartition("/")
    if parent in known:  # a member's own folder holds no feature data; its set's does
        return known[parent], member
    return {"name": text, "path": Path(text), "meta": {}}, None


@st.cache_data(show_spinner=False, max_entries=8)
def _feature_data_at(folder: str, signature: tuple) -> feature_data.FeatureData:
    return feature_data.load_feature_data(folder)


def load_features(dictionary: str | Path | dict) -> tuple[feature_data.FeatureData | None, str | None]:
    """(feature data, member hint) of a dictionary; (None, None) with a message shown when its folder
    is outside the read roots, missing, without feature data, or damaged."""
    entry, member = dictionary_entry(dictionary)
    name, folder = entry["name"], Path(entry["path"])
    try:
        folder = feature_data.safe_folder(folder)
        return _feature_data_at(str(folder), feature_data.signature(folder)), member
    except PermissionError as err:
        st.error(md_escape(err))
    except feature_data.MissingFeatureData:
        st.info(f"Dictionary {md_escape(name)} has no feature data yet. Write it with:")
        model = (entry.get("meta") or {}).get("model") or "MODEL_FOLDER"
        st.code(f"wb dict features --model {model} --dict {folder}", language="bash")
    except FileNotFoundError:
        st.error(f"The files of dictionary {md_escape(name)} are missing: {md_escape(folder)} does not "
                 "exist (deleted or moved). Train it again with `wb dict train`, or restore the folder.")
    except ValueError as err:
        st.warning(f"The feature data of {md_escape(name)} is damaged: {md_escape(err)}")
    return None, None
