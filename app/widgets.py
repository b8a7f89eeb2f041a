"""Shared widgets for the app's pages: where the zoo and store are, cached card and curve loading,
the zoo table, curve figures, and the two ways file content reaches the screen (plain text, or the
escaped token highlighter).

Every page imports this module as ``widgets`` after putting ``app/`` on ``sys.path`` (streamlit and
AppTest run pages as scripts, not as a package). It imports only the catalog from the workbench:
``workbench.zoo`` and ``workbench.store.model_files`` pull in the trainer and every architecture, and
browsing cards and curves needs neither.

Anything read from a file (names, notes, error messages) is shown with :func:`show_text` or escaped
with :func:`md_escape`; :func:`token_highlighter` is the one place HTML is built, every token escaped.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from workbench.store.catalog import Catalog, artifacts_root, models_root

CURVE_COLUMNS = {"step", "split", "metric", "value"}
ZOO_COLUMNS = ["name", "architecture", "task", "parameters", "test accuracy", "test perplexity",
               "bigram perplexity", "training tokens", "training time s"]
# CommonMark lets a backslash escape any ASCII punctuation, so escaping all of it is always safe.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~&$:])")


def md_escape(text: object) -> str:
    """``text`` made inert inside st.markdown / st.warning / st.subheader bodies."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def models_dir() -> Path:
    return models_root()


@st.cache_resource(show_spinner=False)
def _catalog_at(root: str) -> Catalog:
    return Catalog(root)


def catalog() -> Catalog:
    """The store's catalog, one per artifacts root (the root can change between test runs)."""
    return _catalog_at(str(artifacts_root()))


def store_counts() -> dict[str, int] | None:
    """Artifacts per kind in the catalog; None (with a warning shown) when it cannot be read."""
    try:
        df = catalog().query("SELECT kind, count(*) AS n FROM artifacts GROUP BY kind")
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
        ])
    return pd.DataFrame(rows, columns=ZOO_COLUMNS)


def curves_figure(df: pd.DataFrame, metric: str) -> go.Figure | None:
    """Line chart of one metric over steps, train and test as colours; None when it was not recorded."""
    rows = df[df["metric"] == metric].sort_values("step")
    if rows.empty:
        return None
    fig = px.line(rows, x="step", y="value", color="split", markers=len(rows) < 40,
                  labels={"value": metric, "step": "step"}, title=metric)
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def show_text(label: str, text: object) -> None:
    """File content as plain text under a bold label: never interpreted as markdown or HTML."""
    st.markdown(f"**{md_escape(label)}**")
    st.text(str(text))


def _highlight_colour(value: float, scale: float) -> str:
    # positive values red, negative blue, alpha by magnitude relative to the largest one
    alpha = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    rgb = "220,38,38" if value >= 0 else "37,99,235"
    return f"rgba({rgb},{alpha:.3f})"


def token_highlighter(tokens: list[str], values: list[float]) -> str:
    """Tokens as spans shaded by value, as HTML for st.html; every token is escaped here."""
    if len(tokens) != len(values):
        raise ValueError(f"token_highlighter got {len(tokens)} tokens but {len(values)} values")
    finite = [abs(float(v)) for v in values if math.isfinite(float(v))]
    scale = max(finite, default=0.0)
    spans = []
    for token, value in zip(tokens, values):
        value = float(value) if math.isfinite(float(value)) else 0.0
        spans.append(
            f'<span title="{value:.4g}" style="background:{_highlight_colour(value, scale)};'
            f'padding:1px 2px;margin:0 1px;border-radius:3px;white-space:pre">'
            f"{html.escape(str(token), quote=True)}</span>"
        )
    return '<div style="font-family:monospace;line-height:1.9">' + "".join(spans) + "</div>"
