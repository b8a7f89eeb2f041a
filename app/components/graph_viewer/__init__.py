"""The graph viewer: a Streamlit custom component (``frontend/``: plain HTML, JS and CSS) that draws an
attribution graph on a canvas and answers hover, click, pin, multi-select into supernodes and the node
and edge thresholds in the browser, with the node panel beside the graph.

1. Python sends the graph once per graph (:func:`graph_view.payload`: columnar nodes and edges, feature
   cards, Features page links) with the view state to open it at (``clickedId``, ``pinnedIds``,
   ``supernodes``, ``nodeThreshold``, ``edgeThreshold``: the saved graph's ``qParams``).
2. The browser keeps its own state from then on; a rerun that sends the same graph key again does not
   reset it (the state it carries may be older than the user's last clicks).
3. The component value is that state plus the graph's key, sent a moment after the user's last change
   (debounced), so Python can save it, put it in the URL and run interventions on the pinned nodes.
"""

from __future__ import annotations

from pathlib import Path

import streamlit.components.v1 as components

FRONTEND = Path(__file__).resolve().parent / "frontend"
FRAME_HEIGHT = 600  # graph and panel side by side fit a 1280x800 window under the page's header
_component = components.declare_component("graph_viewer", path=str(FRONTEND))


def graph_viewer(graph: dict, state: dict, key: str, height: int = FRAME_HEIGHT) -> dict | None:
    """Draw ``graph`` (a :func:`graph_view.payload`) opened at ``state``; returns the browser's last
    sent state for this graph (``{"graph": key, ...}``), or None before it has sent one."""
    value = _component(graph=graph, state=state, height=height, key=key, default=None)
    if isinstance(value, dict) and value.get("graph") == graph.get("key"):
        return value
    return None


__all__ = ["FRONTEND", "graph_viewer"]
