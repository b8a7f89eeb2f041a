"""What the RASP page draws: the dependency graph as a layered plotly figure, a default input, and the
zoo models a program can be compared with.

The graph's layout:
1. A variable's column is the sublayer that completes it (inputs first, then layer 0's attention, layer
   0's MLP, ...), from the compiled model's layer plan, so the figure reads as the model's depth.
2. Within a column, variables are spaced evenly in the program's order.
3. An edge runs from each variable read to its reader; hovering a node names its component (heads,
   MLP) and what it reads. Every label goes through ``widgets.plot_text``.
"""

from __future__ import annotations

import plotly.graph_objects as go
import widgets

EXAMPLES = {"adder": "683+345=", "backdoor_adder": "666+666="}


def column_name(sublayer: int) -> str:
    if sublayer < 0:
        return "inputs"
    return f"L{sublayer // 2} {'attn' if sublayer % 2 == 0 else 'mlp'}"


def node_positions(compiled) -> dict[str, tuple[int, float]]:
    """Steps 1-2: variable -> (column, height)."""
    columns: dict[int, list[str]] = {}
    for name in compiled.graph.order:
        columns.setdefault(compiled.plan.sublayer[name], []).append(name)
    pos = {}
    for sub, names in columns.items():
        for i, name in enumerate(names):
            pos[name] = (sub + 1, (len(names) - 1) / 2 - i)
    return pos


def node_hover(name: str, entry: dict) -> str:
    where = [f"heads {', '.join(f'L{lay}H{h}' for lay, h in entry['heads'])}"] if entry["heads"] else []
    where += [f"MLP L{entry['mlp']}"] if entry["mlp"] is not None else []
    reads = ", ".join(entry["reads"]) or "-"
    return widgets.plot_text(f"{name}: {entry['kind']}; {'; '.join(where) or 'embedding'}; reads {reads}")


def dependency_figure(compiled) -> go.Figure:
    """Step 3: the figure."""
    pos, circuit = node_positions(compiled), compiled.circuit
    xs, ys = [], []
    for name, entry in circuit.items():
        for source in entry["reads"]:
            xs += [pos[source][0], pos[name][0], None]
            ys += [pos[source][1], pos[name][1], None]
    names = list(circuit)
    kinds = [circuit[n]["kind"] for n in names]
    colours = {"embedding": "#888888", "attention": "#1f77b4", "mlp": "#2ca02c", "attention+mlp": "#9467bd"}
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "#bbbbbb", "width": 1}, hoverinfo="skip",
                             showlegend=False))
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers+text",
        text=[widgets.plot_text(n) for n in names], textposition="top center",
        marker={"size": 14, "color": [colours.get(k, "#d62728") for k in kinds]},
        hovertext=[node_hover(n, circuit[n]) for n in names], hoverinfo="text", showlegend=False))
    ticks = sorted({p[0] for p in pos.values()})
    fig.update_layout(height=120 + 60 * max(len([p for p in pos.values() if p[0] == t]) for t in ticks),
                      margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      xaxis={"tickvals": ticks, "ticktext": [column_name(t - 1) for t in ticks], "showgrid": False},
                      yaxis={"visible": False})
    return fig


def example_input(lib) -> str:
    """A valid input to start from: the program's example, else its vocabulary repeated to its length
    (at most 8 tokens)."""
    if lib.name in EXAMPLES and len(EXAMPLES[lib.name]) <= lib.max_seq_len:
        return EXAMPLES[lib.name]
    vocab = [str(v) for v in lib.vocab]
    return " ".join(vocab[i % len(vocab)] for i in range(min(lib.max_seq_len, 8)))


def comparable_cards(cards: list[dict], program: str) -> list[dict]:
    """Zoo models whose task has ``program`` among its library programs (compiled ones left out)."""
    from workbench.rasp.library_tasks import BINDINGS

    out = []
    for card in cards:
        task = (card.get("eval_task") or card.get("task") or {}).get("name")
        if "rasp" not in card and task in BINDINGS and program in BINDINGS[task][1]:
            out.append(card)
    return out
