"""What the Energy page draws: a 3-token EBT's energy landscape over y^ (the 2-simplex) with its
descent paths, and an EBT card's accuracy/loss against inference steps.

1. :func:`landscape_figure`: the simplex grid's points coloured by energy (a heat map on the triangle;
   token vertices labelled), each descent path as a line with markers from its start (hollow) to its
   last step, hover text giving y^ and the energy at each step.
2. :func:`steps_figure`: from a card's ``thinking`` section (workbench/zoo/ebt_steps.py), accuracy and
   loss against inference steps for the EBT, and the FLOP-matched Transformer as a flat line.
Every label goes through ``widgets.plot_text``.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import widgets
from plotly.subplots import make_subplots

from workbench.zoo.ebt_toy import simplex_xy

PATH_COLOURS = ("#111111", "#d62728", "#2ca02c", "#1f77b4")


def _hover(y, energy) -> list[str]:
    return [f"y^ = ({a:.3f}, {b:.3f}, {c:.3f})<br>E = {e:.4f}" for (a, b, c), e in zip(y.tolist(), energy.tolist())]


def landscape_figure(land: dict, paths: list, token_labels: list[str]) -> go.Figure:
    """Step 1."""
    x, y = simplex_xy(land["y"])
    fig = go.Figure(go.Scatter(x=x, y=y, mode="markers", name="energy", hoverinfo="text",
                               text=_hover(land["y"], land["energy"]),
                               marker={"color": land["energy"].tolist(), "colorscale": "Viridis", "size": 7,
                                       "symbol": "triangle-up", "colorbar": {"title": "E"}}))
    for i, path in enumerate(paths):
        px, py = simplex_xy(path.y)
        colour = PATH_COLOURS[i % len(PATH_COLOURS)]
        fig.add_trace(go.Scatter(x=px, y=py, mode="lines+markers", name=widgets.plot_text(path.label),
                                 line={"color": colour, "width": 2}, hoverinfo="text",
                                 text=[f"step {k}<br>{t}" for k, t in enumerate(_hover(path.y, path.energy))],
                                 marker={"color": colour, "size": [11] + [6] * (len(px) - 1),
                                         "symbol": ["circle-open"] + ["circle"] * (len(px) - 1)}))
    corners = [(0, 0, "bottom left"), (1, 0, "bottom right"), (0.5, math.sqrt(3) / 2, "top center")]
    for (cx, cy, pos), label in zip(corners, token_labels):
        fig.add_trace(go.Scatter(x=[cx], y=[cy], mode="markers+text", text=[widgets.plot_text(label)],
                                 textposition=pos, showlegend=False, marker={"color": "black", "size": 4},
                                 hoverinfo="skip"))
    fig.update_layout(height=520, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis={"visible": False, "range": [-0.1, 1.1]},
                      yaxis={"visible": False, "scaleanchor": "x", "range": [-0.1, 1.0]},
                      legend={"orientation": "h", "y": -0.02})
    return fig


def steps_figure(thinking: dict) -> go.Figure:
    """Step 2."""
    rows, base = thinking["steps_curve"], thinking["baseline"]
    steps = [r["inference_steps"] for r in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy", "loss"))
    for col, metric in ((1, "accuracy"), (2, "loss")):
        fig.add_trace(go.Scatter(x=steps, y=[r[metric] for r in rows], mode="lines+markers", name=f"EBT {metric}",
                                 line={"color": "#d62728"}), row=1, col=col)
        fig.add_trace(go.Scatter(x=[steps[0], steps[-1]], y=[base[metric]] * 2, mode="lines",
                                 name=f"Transformer {metric} (FLOP-matched)", line={"color": "#1f77b4", "dash": "dash"}),
                      row=1, col=col)
        fig.update_xaxes(type="log", title_text="inference steps", row=1, col=col)
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig
