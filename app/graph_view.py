"""The layered picture of an attribution graph and its tables, for the Attribution graph page (and any
page that shows a graph): token positions across, layers up (tokens at the bottom, logits on top).

:func:`layout` places a :class:`graph_data.GraphView`'s nodes, spreading the nodes of one (layer,
position) cell over a small grid; :func:`graph_figure` draws them as one plotly trace per node kind and
the edges as at most six SVG path shapes (sign x three strength bins, colour for the sign, width and opacity
for |weight| relative to the strongest drawn edge), so a 1,000-node, 10,000-edge graph stays a handful
of SVG elements. Every label reaches plotly escaped (:func:`widgets.plot_text`): plotly renders a subset
of HTML in hover text and tick labels, and labels come from files. :func:`clicked_node` reads a click
(``st.plotly_chart(..., on_select="rerun")``) back as a node id; :func:`edge_table` lists a node's inputs
or outputs as a table, which shows labels as text.
"""

from __future__ import annotations

import math

import graph_data
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import widgets

KIND_STYLE = {  # marker symbol, colour, size
    "feature": ("circle", "#e8a33d", 9), "error": ("square", "#9ca3af", 8), "token": ("diamond", "#334155", 11),
    "logit": ("triangle-up", "#16a34a", 12), "supernode": ("hexagon", "#7c3aed", 16), "other": ("x", "#64748b", 8),
}
EDGE_BINS = ((0.0, 0.6, 0.22), (0.1, 1.4, 0.45), (0.4, 2.8, 0.8))  # (from share of max |w|, width, opacity)
EDGE_RGB = {1: "220,38,38", -1: "37,99,235"}  # positive red, negative blue
CELL_WIDTH, CELL_HEIGHT = 0.8, 0.7


def layout(view: graph_data.GraphView) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) per node: the nodes of each (row, position) cell on a grid inside the cell, the most
    influential first (row-major from the cell's top left)."""
    x, y = view.pos.astype(float).copy(), view.row.astype(float).copy()
    cells: dict[tuple[int, int], list[int]] = {}
    for i in np.lexsort((np.nan_to_num(view.influence, nan=2.0), view.pos, view.row)):
        cells.setdefault((int(view.row[i]), int(view.pos[i])), []).append(int(i))
    for members in cells.values():
        k = len(members)
        if k == 1:
            continue
        cols = min(k, max(1, math.ceil(math.sqrt(2 * k))))
        rows = math.ceil(k / cols)
        for j, i in enumerate(members):
            r, c = divmod(j, cols)
            x[i] += (c - (cols - 1) / 2) * CELL_WIDTH / cols
            y[i] += ((rows - 1) / 2 - r) * CELL_HEIGHT / max(rows, 2)
    return x, y


def hover_texts(view: graph_data.GraphView) -> list[str]:
    """One hover label per node: label, kind, value and influence; the label escaped."""
    out = []
    for label, kind, value, infl in zip(view.labels, view.kinds, view.value, view.influence):
        parts = [widgets.plot_text(kind)]
        if math.isfinite(value):
            parts.append(f"{'activation' if kind == 'feature' else 'value'} {value:.4g}")
        if math.isfinite(infl):
            parts.append(f"influence {infl:.3g}")
        out.append(f"{widgets.plot_text(label)}<br>{' · '.join(parts)}")
    return out


def _path(x: np.ndarray, y: np.ndarray, src: np.ndarray, tgt: np.ndarray) -> str:
    """One SVG path of line segments source -> target, in data coordinates."""
    return "".join(f"M{a:.3f},{b:.3f}L{c:.3f},{d:.3f}" for a, b, c, d in zip(x[src], y[src], x[tgt], y[tgt]))


def edge_shapes(view: graph_data.GraphView, x: np.ndarray, y: np.ndarray) -> list[dict]:
    """At most six path shapes (sign x strength bin), under the nodes. One SVG path per bin: a line
    trace with gaps would draw one path element per edge, which a browser lays out ten times slower."""
    if not len(view.weight):
        return []
    strength = np.abs(view.weight) / max(float(np.abs(view.weight).max()), 1e-30)
    upper = [b[0] for b in EDGE_BINS[1:]] + [np.inf]
    shapes = []
    for sign in (1, -1):
        for (low, width, alpha), high in zip(EDGE_BINS, upper):
            pick = np.nonzero((np.sign(view.weight) == sign) & (strength >= low) & (strength < high))[0]
            if len(pick):
                shapes.append({"type": "path", "xref": "x", "yref": "y", "layer": "below",
                               "path": _path(x, y, view.source[pick], view.target[pick]),
                               "line": {"width": width, "color": f"rgba({EDGE_RGB[sign]},{alpha})"}})
    return shapes


def node_traces(view: graph_data.GraphView, x: np.ndarray, y: np.ndarray) -> list[go.Scatter]:
    """One marker trace per node kind; ``customdata`` is the node's id (for clicks)."""
    texts, traces = hover_texts(view), []
    kinds = np.array(view.kinds)
    for kind, (symbol, colour, size) in KIND_STYLE.items():
        pick = np.nonzero(kinds == kind)[0]
        if not len(pick):
            continue
        traces.append(go.Scatter(
            x=np.round(x[pick], 3), y=np.round(y[pick], 3), mode="markers", name=f"{kind}s",
            customdata=[view.ids[i] for i in pick], text=[texts[i] for i in pick], hovertemplate="%{text}<extra></extra>",
            marker={"symbol": symbol, "color": colour, "size": size, "line": {"width": 0.5, "color": "#1f2937"}}))
    return traces


def _rings(view, x, y, picks: list[int], name: str, colour: str, size: int) -> go.Scatter:
    return go.Scatter(x=x[picks], y=y[picks], mode="markers", name=name, customdata=[view.ids[i] for i in picks],
                      hoverinfo="skip",
                      showlegend=False,
                      marker={"symbol": "circle-open", "size": size, "color": colour, "line": {"width": 2.5}})


def graph_figure(view: graph_data.GraphView, selected: int | None = None, pinned: list[int] = (),
                 height: int | None = None) -> go.Figure:
    """The layered figure: edges, then nodes, then rings round the pinned and the selected node."""
    x, y = layout(view)
    fig = go.Figure(node_traces(view, x, y), layout={"shapes": edge_shapes(view, x, y)})
    if pinned:
        fig.add_trace(_rings(view, x, y, list(pinned), "pinned", "#7c3aed", 18))
    if selected is not None:
        fig.add_trace(_rings(view, x, y, [selected], "selected", "#dc2626", 24))
    n_pos = max(len(view.tokens), int(view.pos.max()) + 1 if len(view) else 1)
    ticks = [widgets.plot_text(view.tokens[p]) if p < len(view.tokens) else str(p) for p in range(n_pos)]
    rows = ["tokens"] + [f"L{r - 1}" for r in range(1, view.n_rows - 1)] + ["logits"]
    fig.update_layout(
        height=height or min(260 + 90 * view.n_rows, 900), margin={"l": 10, "r": 10, "t": 30, "b": 10},
        plot_bgcolor="white", hovermode="closest", clickmode="event+select", dragmode="pan",
        legend={"orientation": "h", "y": 1.02, "x": 0}, uirevision="graph",
        xaxis={"tickvals": list(range(n_pos)), "ticktext": ticks, "range": [-0.6, n_pos - 0.4],
               "showgrid": False, "zeroline": False},
        yaxis={"tickvals": list(range(view.n_rows)), "ticktext": rows, "range": [-0.6, view.n_rows - 0.4],
               "showgrid": True, "gridcolor": "#f1f5f9", "zeroline": False})
    return fig


def clicked_node(event) -> str | None:
    """The id of the node a plotly click selected (its ``customdata``), else None. Ids, not positions:
    a selection outlives the view it was made in (new thresholds, another graph)."""
    selection = (event.get("selection") if isinstance(event, dict) else getattr(event, "selection", None)) or {}
    points = selection.get("points", []) if isinstance(selection, dict) else getattr(selection, "points", [])
    for point in points or []:
        data = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(data, list):
            data = data[0] if data else None
        if isinstance(data, str):
            return data
    return None


def edge_table(rows: list[tuple[str, str, float, bool]]) -> pd.DataFrame:
    """(label, kind, weight, drawn) rows as a table."""
    return pd.DataFrame(rows, columns=["node", "kind", "weight", "drawn"])


