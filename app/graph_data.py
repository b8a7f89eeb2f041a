"""What the Attribution graph page draws, as plain data (numpy, no streamlit): the drawn part of a graph
(:class:`GraphView`) from our :class:`Graph` and its pruning, or from a graph file's nodes and links
(circuit-tracer / Neuronpedia files without our fields); the draw budget; the view state (selection,
pins, supernodes, thresholds) as the browser, the URL and the saved ``qParams`` hold it; the JSON
document the page offers for download.

Node ids are the graph files' (``{layer}_{feature}_{pos}``, ``{layer}_-1_{pos}``, ``E_{token}_{pos}``,
``{n_layers + 1}_{token}_{last pos}``: graph_file's module docstring), so pins and supernodes picked here
are the ``qParams`` of the downloaded file and of the viewers that open it.

Rows of the layered view: tokens 0, features and errors of layer ``l`` at ``l + 1``, logits on top.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from workbench.attribution.graph import Graph
from workbench.attribution.graph_file import (
    GraphFile,
    feature_address,
    graph_to_json,
    logit_vocab_ids,
    node_id,
    validate_graph_json,
)
from workbench.attribution.prune_sparse import Edges, SparsePruned

DRAW_NODES, DRAW_EDGES = 1500, 20_000  # above these the view keeps the most influential / strongest


@dataclass
class GraphView:
    """Drawn nodes (in node order) and the edges between them (indices into the nodes)."""

    ids: list[str]
    kinds: list[str]  # feature, error, token, logit, other
    labels: list[str]
    row: np.ndarray  # int: 0 tokens, layer + 1, n_layers + 1 logits
    pos: np.ndarray  # int token position
    value: np.ndarray  # float: activation of a feature, value of other nodes; NaN when unknown
    influence: np.ndarray  # float: cumulative influence (the files' field); NaN when unknown
    address: list[tuple[int, int] | None]  # (layer, feature index) of each feature
    source: np.ndarray  # [n_edges] int
    target: np.ndarray  # [n_edges] int
    weight: np.ndarray  # [n_edges] float
    tokens: list[str]
    n_rows: int
    graph_index: np.ndarray | None = None  # index of each node in the Graph, when there is one
    prob: np.ndarray | None = None  # float: a logit node's probability; NaN for other nodes
    notes: list[str] = field(default_factory=list)  # what the draw budget left out

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def index_of(self) -> dict[str, int]:
        return {node_id: i for i, node_id in enumerate(self.ids)}


# ---- from our Graph ---------------------------------------------------------------------------------

def _graph_node(graph: Graph, i: int) -> tuple[str, int, int, float, tuple[int, int] | None]:
    """(kind, row, position, value, feature address) of node ``i``."""
    kind, layer, pos, number = graph.node_address(i)
    if kind == "feature":
        return kind, layer + 1, pos, float(graph.activations[i]), (layer, number)
    if kind == "error":
        return kind, layer + 1, pos, float(graph.values[i]), None
    if kind == "token":
        return kind, 0, pos, math.nan, None
    return kind, graph.n_layers + 1, pos, float(graph.values[i]), None


def cap_to_budget(graph: Graph, pruned: SparsePruned, max_nodes: int = DRAW_NODES,
                  max_edges: int = DRAW_EDGES) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(node mask, edge mask over ``pruned.edges``, notes): the pruned graph, or, when it is still too
    big to draw, its most influential nodes (tokens and logits always) and strongest edges."""
    node_mask, edge_keep, notes = pruned.node_mask.clone(), pruned.edge_keep.clone(), []
    if int(node_mask.sum()) > max_nodes:
        inner = node_mask.clone()
        inner[graph.token_start:] = False
        room = max(max_nodes - (graph.n_nodes - graph.token_start), 0)
        ranked = torch.argsort(torch.where(inner, pruned.node_influence, -math.inf), descending=True)
        node_mask[:graph.token_start] = False
        node_mask[ranked[:room]] = True
        notes.append(f"The pruned graph has {int(pruned.node_mask.sum()):,} nodes, more than the {max_nodes:,} "
                     f"drawn: showing its {room:,} most influential features and errors with every token and "
                     "logit. Lower the node threshold to draw a smaller graph.")
    edges = pruned.edges
    edge_keep &= node_mask[edges.target] & node_mask[edges.source]
    if int(edge_keep.sum()) > max_edges:
        strength = torch.where(edge_keep, edges.weight.abs(), -1.0)
        edge_keep = torch.zeros_like(edge_keep)
        edge_keep[torch.topk(strength, max_edges).indices] = True
        notes.append(f"Drawing the {max_edges:,} strongest of the kept edges; lower the edge threshold to "
                     "draw fewer.")
    return node_mask, edge_keep, notes


def view_from_graph(graph: Graph, pruned: SparsePruned, node_mask: torch.Tensor, edge_keep: torch.Tensor,
                    notes: list[str] | None = None) -> GraphView:
    """The nodes ``node_mask`` keeps and the edges ``edge_keep`` keeps between them."""
    kept = node_mask.nonzero().flatten()
    nodes = [_graph_node(graph, int(i)) for i in kept]
    logit_ids = logit_vocab_ids(graph)
    position = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    position[kept] = torch.arange(len(kept))
    edges: Edges = pruned.edges
    keep = edge_keep & node_mask[edges.target] & node_mask[edges.source]
    return GraphView(
        ids=[node_id(graph, int(i), logit_ids) for i in kept], kinds=[n[0] for n in nodes],
        labels=[graph.node_label(int(i)) for i in kept],
        row=np.array([n[1] for n in nodes], dtype=int), pos=np.array([n[2] for n in nodes], dtype=int),
        value=np.array([n[3] for n in nodes], dtype=float),
        influence=pruned.cumulative[kept].double().numpy(), address=[n[4] for n in nodes],
        source=position[edges.source[keep]].numpy(), target=position[edges.target[keep]].numpy(),
        weight=edges.weight[keep].double().numpy(), tokens=list(graph.token_strings), n_rows=graph.n_layers + 2,
        graph_index=kept.numpy(), notes=list(notes or []), prob=_logit_probs(graph, kept))


def _logit_probs(graph: Graph, kept: torch.Tensor) -> np.ndarray:
    """Each kept node's probability if it is a logit node (the logits are the graph's last nodes)."""
    first = graph.logit_start
    out = np.full(len(kept), np.nan)
    is_logit = (kept >= first).numpy()
    out[is_logit] = graph.logit_probabilities[kept[kept >= first] - first].double().numpy()
    return out


# ---- from a graph file's nodes and links -------------------------------------------------------------

def _file_row(node: dict, kind: str, logit_row: int) -> int:
    layer = str(node.get("layer", "0"))
    if kind == "token" or not layer.lstrip("-").isdigit():
        return 0 if kind != "logit" else logit_row
    return int(layer) if kind == "logit" else int(layer) + 1


def _file_label(node: dict, kind: str, tokens: list[str], schema: int | None) -> str:
    pos = int(node["ctx_idx"])
    token = repr(tokens[pos]) if 0 <= pos < len(tokens) else "?"
    clerp = str(node.get("clerp") or "")
    if kind == "feature":
        layer, _, feat = feature_address(node, schema)
        base = f"L{layer} F{feat} @{pos} {token}"
    elif kind == "error":
        base = f"L{node.get('layer')} error @{pos} {token}"
    elif kind == "token":
        base = f"token {token} @{pos}"
    else:
        base = clerp or f"{kind} {node['node_id']}"
        clerp = ""
    return f"{base} · {clerp}" if clerp else base


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def file_keeps(gf: GraphFile, node_threshold: float, edge_threshold: float) -> tuple[list[int], list[int]]:
    """(kept node positions, kept link positions): nodes whose ``influence`` is at most the threshold
    (the viewers' slider; tokens, logits and nodes without one stay), and the strongest links between
    them holding ``edge_threshold`` of their total |weight|."""
    nodes = [i for i, node in enumerate(gf.nodes)
             if gf.kind(node) in ("token", "logit") or node.get("influence") is None
             or float(node["influence"]) <= node_threshold]
    kept, index = set(nodes), gf.index_of
    links = [j for j, link in enumerate(gf.links) if index[link["source"]] in kept and index[link["target"]] in kept]
    strength = np.array([abs(float(gf.links[j]["weight"])) for j in links])
    if len(links) and edge_threshold < 1:
        order = np.argsort(-strength, kind="stable")
        share = np.cumsum(strength[order]) / max(strength.sum(), 1e-30)
        links = sorted(links[j] for j in order[: int(np.searchsorted(share, edge_threshold)) + 1])
    return nodes, links


def view_from_file(gf: GraphFile, node_threshold: float = 1.0, edge_threshold: float = 1.0) -> GraphView:
    """The file's nodes and links (as :func:`file_keeps` selects them), drawn as they are."""
    meta = gf.metadata
    tokens, schema = [str(t) for t in meta.get("prompt_tokens", [])], meta.get("schema_version")
    keep, links = file_keeps(gf, node_threshold, edge_threshold)
    nodes = [gf.nodes[i] for i in keep]
    kinds = [gf.kind(node) for node in nodes]
    layers = [int(n["layer"]) for n, k in zip(nodes, kinds) if k in ("feature", "error")
              and str(n["layer"]).lstrip("-").isdigit()]
    logit_row = max(layers, default=-1) + 2
    rows = [_file_row(node, kind, logit_row) for node, kind in zip(nodes, kinds)]
    position = {gf.nodes[i]["node_id"]: j for j, i in enumerate(keep)}
    return GraphView(
        ids=[n["node_id"] for n in nodes], kinds=kinds,
        labels=[_file_label(n, k, tokens, schema) for n, k in zip(nodes, kinds)],
        row=np.array(rows, dtype=int), pos=np.array([int(n["ctx_idx"]) for n in nodes], dtype=int),
        value=np.array([_number(n.get("activation" if k != "logit" else "token_prob")) for n, k in zip(nodes, kinds)]),
        influence=np.array([_number(n.get("influence")) for n in nodes]),
        address=[feature_address(n, schema)[::2] if k == "feature" else None for n, k in zip(nodes, kinds)],
        source=np.array([position[gf.links[j]["source"]] for j in links], dtype=int),
        target=np.array([position[gf.links[j]["target"]] for j in links], dtype=int),
        weight=np.array([float(gf.links[j]["weight"]) for j in links]), tokens=tokens,
        n_rows=max(max(rows, default=0) + 1, 2),
        prob=np.array([_number(n.get("token_prob")) if k == "logit" else math.nan for n, k in zip(nodes, kinds)]))


# ---- the download -----------------------------------------------------------------------------------

def view_state(view: GraphView, pins: list[str], supernodes: list[list[str]], clicked: str | None,
               thresholds: tuple[float, float] | None = None) -> dict:
    """The viewers' ``qParams`` for what is on screen (ids not drawn are left out), with the thresholds."""
    drawn = set(view.ids)
    groups = [[str(name), *[m for m in members if m in drawn]] for name, *members in supernodes]
    state = {"pinnedIds": [p for p in pins if p in drawn], "supernodes": [g for g in groups if len(g) > 1],
             "clickedId": clicked if clicked in drawn else ""}
    if thresholds is not None:
        state["nodeThreshold"], state["edgeThreshold"] = (float(t) for t in thresholds)
    return state


# ---- view state: the browser's, the URL's and the saved qParams ------------------------------------------

def _fraction(value, default: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if 0.0 <= value <= 1.0 else default


def clean_state(state: dict, thresholds: tuple[float, float]) -> dict:
    """A view state from the browser, a URL or a file's ``qParams`` with its types fixed: ``clickedId``,
    ``pinnedIds``, ``supernodes`` (``[name, id, ...]``, at least one member), ``nodeThreshold`` and
    ``edgeThreshold`` (fractions; ``thresholds`` where missing or out of range)."""
    state = state if isinstance(state, dict) else {}
    pins = state.get("pinnedIds") if isinstance(state.get("pinnedIds"), list) else []
    groups = state.get("supernodes") if isinstance(state.get("supernodes"), list) else []
    return {"clickedId": str(state.get("clickedId") or ""),
            "pinnedIds": [str(p) for p in pins if isinstance(p, (str, int))],
            "supernodes": [[str(x) for x in g] for g in groups if isinstance(g, list) and len(g) > 1],
            "nodeThreshold": _fraction(state.get("nodeThreshold"), thresholds[0]),
            "edgeThreshold": _fraction(state.get("edgeThreshold"), thresholds[1])}


def state_to_query(source: dict[str, str], state: dict) -> dict[str, str]:
    """URL query parameters for a view: ``source`` (``{"graph": name}`` or ``{"file": path}``), then
    ``node``, ``pins`` (comma-separated ids; JSON if an id holds a comma), ``groups`` (JSON),
    ``nt`` and ``et``."""
    query = dict(source)
    if state["clickedId"]:
        query["node"] = state["clickedId"]
    pins = state["pinnedIds"]
    if pins:
        query["pins"] = json.dumps(pins) if any("," in p for p in pins) else ",".join(pins)
    if state["supernodes"]:
        query["groups"] = json.dumps(state["supernodes"], ensure_ascii=False, separators=(",", ":"))
    query["nt"], query["et"] = f"{state['nodeThreshold']:g}", f"{state['edgeThreshold']:g}"
    return query


def _json_list(text: str | None) -> list:
    try:
        value = json.loads(text) if text else []
    except json.JSONDecodeError:
        return []  # a hand-edited link: what cannot be read is left out, the rest still opens
    return value if isinstance(value, list) else []


def state_from_query(params: Mapping[str, str], thresholds: tuple[float, float]) -> tuple[dict[str, str], dict]:
    """The inverse of :func:`state_to_query`: (source, state)."""
    source = {k: str(params[k]) for k in ("graph", "file") if params.get(k)}
    pins = str(params.get("pins") or "")
    state = {"clickedId": params.get("node") or "",
             "pinnedIds": _json_list(pins) if pins.startswith("[") else [p for p in pins.split(",") if p],
             "supernodes": _json_list(params.get("groups")),
             "nodeThreshold": params.get("nt"), "edgeThreshold": params.get("et")}
    return source, clean_state(state, thresholds)


def graph_document(graph: Graph, pruned: SparsePruned, node_mask: torch.Tensor, edge_keep: torch.Tensor,
                   state: dict, slug: str, node_threshold: float) -> dict:
    """The drawn graph as a circuit-tracer / Neuronpedia file with the page's pins and supernodes."""
    edge_mask = torch.zeros(graph.n_nodes, graph.n_nodes, dtype=torch.bool)
    edges = pruned.edges
    edge_mask[edges.target[edge_keep], edges.source[edge_keep]] = True
    doc = graph_to_json(graph, node_mask, edge_mask, slug=slug, influence=pruned.cumulative,
                        node_threshold=node_threshold, scan=str(graph.metadata.get("model", "workbench")))
    return _with_state(doc, state)


def file_document(gf: GraphFile, view: GraphView, state: dict) -> dict:
    """An imported file cut to the drawn nodes and links, with the page's pins and supernodes."""
    drawn = set(view.ids)
    nodes = [node for node in gf.nodes if node["node_id"] in drawn]
    links = [link for link in gf.links if link["source"] in drawn and link["target"] in drawn]
    pairs = {(view.ids[s], view.ids[t]) for s, t in zip(view.source, view.target)}
    links = [link for link in links if (link["source"], link["target"]) in pairs]
    return _with_state({**gf.to_dict(), "nodes": nodes, "links": links}, state)


def _with_state(doc: dict, state: dict) -> dict:
    """``doc`` with ``state`` as its ``qParams`` (cut to the file's nodes), checked against the schema."""
    ids = {node["node_id"] for node in doc["nodes"]}  # a file drops nodes left without links
    state = {**state, "pinnedIds": [p for p in state["pinnedIds"] if p in ids],
             "supernodes": [[g[0], *[m for m in g[1:] if m in ids]] for g in state["supernodes"]],
             "clickedId": state["clickedId"] if state["clickedId"] in ids else ""}
    state["supernodes"] = [g for g in state["supernodes"] if len(g) > 1]
    doc = {**doc, "qParams": {**doc.get("qParams", {}), **state}}
    validate_graph_json(doc, "the downloaded graph")
    return doc
