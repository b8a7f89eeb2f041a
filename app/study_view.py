"""Studies on screen: a stored study's units (figure and table each) and a figure file made safe to draw.

A study folder (``workbench.studies.runner``) holds ``study.json`` (spec, units and their summaries),
``tables/<unit>.parquet`` and ``figures/<unit>.json`` (plotly JSON). Everything in it is a file, so:

1. the folder is read only inside the artifacts root or the zoo (:func:`feature_data.safe_folder`), and
   every unit's table and figure path only inside the folder (``runner.load_study`` refuses the rest);
2. every string of a figure is made plain text (:func:`safe_figure`): plotly renders a subset of HTML in
   labels, and a tag written into a file (``<a href>``) must not become a live link. The runner already
   escapes its labels, so ``&lt;`` stays ``&lt;``; only the formatting tags plotly's own templates use
   (``<br>``, ``<b>``, ``<i>``, ``<sub>``, ``<sup>``, ``<extra>``) are let through, without attributes;
3. names, summaries and descriptions are shown escaped (:func:`widgets.md_escape`) or as plain text,
   tables as dataframes (text, never markdown).
"""

from __future__ import annotations

import html
import json
import re

import feature_data
import plotly.graph_objects as go
import streamlit as st
import widgets

_ALLOWED_TAG = re.compile(r"&lt;(/?(?:br|b|i|sub|sup|extra)\s*/?)&gt;")


def _plain(value):
    """Step 2 on a figure's JSON tree: every string unescaped once, escaped again, formatting tags kept."""
    if isinstance(value, str):
        return _ALLOWED_TAG.sub(r"<\1>", widgets.plot_text(html.unescape(value)))
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def safe_figure(text: str) -> go.Figure:
    """A plotly figure from its JSON text with every label plain text (module docstring, step 2)."""
    return go.Figure(_plain(json.loads(text)))


@st.cache_data(show_spinner=False, max_entries=8)
def _read_study(folder: str, stamp: tuple) -> dict:
    from workbench.studies.runner import load_study

    return load_study(folder)


def load(entry: dict) -> dict | None:
    """A catalogued study's ``study.json`` with its units' tables and figures; None (and a message
    saying why) when it is outside the store, missing or damaged."""
    name = widgets.md_escape(entry.get("name", "?"))
    try:
        folder = feature_data.safe_folder(entry["path"])
        study_file = folder / "study.json"
        stat = study_file.stat()
        return _read_study(str(folder), (stat.st_mtime_ns, stat.st_size))
    except PermissionError as err:
        st.error(widgets.md_escape(err))
    except FileNotFoundError:
        st.error(f"The files of study {name} are missing (deleted or moved): {widgets.md_escape(entry.get('path'))} "
                 "holds no study.json with its tables. Run it again with `wb study run`.")
    except Exception as err:  # noqa: BLE001 - JSON, parquet and key errors all mean a damaged study
        st.warning(f"Study {name} is damaged: {widgets.md_escape(err)}")
    return None


def show_unit(unit: dict, key: str) -> None:
    """One unit: its name and summary, its figure (made safe) and its table."""
    st.markdown(f"**{widgets.md_escape(unit.get('unit', '?'))}** · method {widgets.md_escape(unit.get('method', '?'))}"
                f" · model {widgets.md_escape(unit.get('model', '?'))}")
    summary = unit.get("summary") or {}
    if isinstance(summary, dict) and summary:
        st.text("   ".join(f"{k}: {v}" for k, v in summary.items()))
    if unit.get("figure_json"):
        try:
            st.plotly_chart(safe_figure(unit["figure_json"]), key=f"{key}_figure")
        except (ValueError, TypeError) as err:
            st.warning(f"The figure of {widgets.md_escape(unit.get('unit'))} is damaged: {widgets.md_escape(err)}")
    else:
        st.caption("This unit drew no figure.")
    st.dataframe(unit["frame"], hide_index=True, key=f"{key}_table")


def show_study(meta: dict, key: str) -> None:
    """Every unit of a loaded study, with its description and parameters."""
    if meta.get("description"):
        widgets.show_text("Description", meta["description"])
    spec = meta.get("spec") or {}
    st.caption(f"Study {widgets.md_escape(meta.get('name', '?'))} · seed {widgets.md_escape(spec.get('seed', '?'))} "
               f"· prompts {widgets.md_escape(json.dumps(spec.get('prompts', {}), sort_keys=True))}")
    for i, unit in enumerate(meta.get("units", [])):
        show_unit(unit, f"{key}_{i}")


def entries() -> list[dict] | None:
    """Catalogued studies, newest first; None (with a warning) when the catalog cannot be read."""
    try:
        rows = widgets.catalog().list("study")
    except Exception as err:  # noqa: BLE001 - a locked or damaged catalog must not break the page
        st.warning(f"The catalog could not be read: {widgets.md_escape(err)}")
        return None
    return sorted(rows, key=lambda e: str(e.get("created", "")), reverse=True)
