"""The figures studies and the app draw from intervention tables: a layer x position heatmap and bars.

Every label that reaches a figure (token strings, component names) is made plain text first: Plotly
renders a subset of HTML in text, and token strings come from files.
"""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go


def plain(text: object) -> str:
    return html.escape(str(text), quote=False)


def layer_position_heatmap(table: pd.DataFrame, value: str, title: str, tokens: list[str] | None = None,
                           row: str = "layer", column: str = "position") -> go.Figure:
    """``table`` rows (row, column, value) as a heatmap, rows bottom-up like a model's layers; the x axis
    shows ``position: token`` when the tokens are known."""
    grid = table.pivot_table(index=row, columns=column, values=value, aggfunc="mean").sort_index()
    columns = list(grid.columns)
    x = [plain(f"{c}: {tokens[c]}") if tokens is not None and isinstance(c, int | float) and int(c) < len(tokens)
         else plain(c) for c in columns]
    scale = float(abs(grid.to_numpy()).max()) if grid.size else 1.0
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=x, y=[plain(r) for r in grid.index], colorscale="RdBu",
                               zmid=0, zmin=-scale, zmax=scale, colorbar={"title": plain(value)},
                               hovertemplate=f"{row} %{{y}}<br>{column} %{{x}}<br>{plain(value)} %{{z:.4f}}"
                                             "<extra></extra>"))
    fig.update_layout(title=plain(title), xaxis_title=plain(column), yaxis_title=plain(row), height=420,
                      margin={"l": 60, "r": 20, "t": 50, "b": 80})
    return fig


def component_bars(table: pd.DataFrame, value: str, title: str, label: str = "label", top: int = 40) -> go.Figure:
    """The ``top`` components by |value|, one bar each, largest first."""
    ranked = table.reindex(table[value].abs().sort_values(ascending=False).index).head(top)
    fig = go.Figure(go.Bar(x=[plain(v) for v in ranked[label]], y=ranked[value],
                           hovertemplate=f"%{{x}}<br>{plain(value)} %{{y:.4f}}<extra></extra>"))
    fig.update_layout(title=plain(title), yaxis_title=plain(value), height=380,
                      margin={"l": 60, "r": 20, "t": 50, "b": 120})
    return fig
