"""Attribution graphs as the JSON files that circuit-tracer's and Neuronpedia's graph viewers open.

The format is circuit-tracer's (``utils/create_graph_files.py``, ``frontend/graph_models.py``), which
Neuronpedia publishes as ``graph-schema.json``:

1. One object: ``metadata``, ``qParams``, ``nodes``, ``links``.
2. ``metadata``: ``slug`` (the file is ``{slug}.json``), ``scan`` (Neuronpedia's model id; a list of
   transcoders becomes ``custom-<hash>`` plus ``transcoder_list``), ``prompt_tokens`` (newline, tab,
   return drawn ``⏎ → ↵``), ``prompt``, ``node_threshold``, ``schema_version: 1`` (``feature`` is a
   Cantor pair). Neuronpedia's optional ``info``, ``feature_details``, ``generation_settings`` and
   ``pruning_settings`` come in through ``metadata_extra``.
3. ``qParams``, the viewer's state: ``pinnedIds``, ``supernodes`` (``[name, node_id, ...]``),
   ``linkType`` (``"both"``), ``clickedId``, ``sg_pos``.
4. Nodes in our order (features, errors, tokens, logits) with circuit-tracer's fields ``node_id,
   feature, layer, ctx_idx, feature_type, token_prob, is_target_logit, run_idx, reverse_ctx_idx,
   jsNodeId, clerp, influence, activation``. ``influence`` is prune's cumulative influence (the viewer's
   slider keeps ``influence <= threshold``; logits have none). Per kind, node_id | feature | layer |
   feature_type | jsNodeId, for layer l, feature index i, position p, vocabulary id v:

   - feature ``{l}_{i}_{p}`` | cantor(l, i) | l | cross layer transcoder (per-layer ones too) | ``{l}_{i}-0``
   - error ``{l}_-1_{p}`` | -1 | l | mlp reconstruction error | ``{l}_-1-{p}`` (circuit-tracer's current
     ids; older files wrote ``0_{l}_{p}``, which can collide with a feature, so reading never parses them)
   - token ``E_{v}_{p}`` | p | E | embedding | ``E_{v}-{p}``
   - logit ``{L}_{v}_{last p}`` | v | L = n_layers + 1 | logit | ``L_{v}-{p}``; ``token_prob``,
     ``is_target_logit`` on the first, clerp ``Output "tok" (p=0.123)`` (the viewer parses ``p=``); a
     custom direction gets v = vocab_size + k as in circuit-tracer, or -(k+1) if the size is unknown.
5. Links ``{source, target, weight}``, weight = ``adjacency[target, source]``, target-major like
   circuit-tracer's ``edge_mask.nonzero()``. Given prune's ``node_mask [n]`` / ``edge_mask [n, n]``
   (target x source), only edges with the mask set and both ends kept are written, then feature and error
   nodes left without a link are dropped (tokens, logits stay): ``create_used_nodes_and_edges``.
   Without masks every node and every non-zero edge is written.
6. Our fields are namespaced so the viewers ignore them: node ``wb_index`` (index in our ``Graph``),
   ``wb_value``, ``wb_bias``; ``metadata.wb`` (sizes, tokens, logit targets, dtypes, graph metadata).
   With them ``Graph -> JSON -> Graph`` is exact: floats are written in full and read back as written.
7. Reading validates against :data:`~.graph_schema.GRAPH_JSON_SCHEMA` (:mod:`.graph_schema`), then
   that node ids are unique and links name nodes; errors name the file and field (``nodes[3].feature_type: 'foo' is not one of ...``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from workbench.attribution.graph import Graph
from workbench.attribution.graph_schema import (
    FEATURE_TYPE_KINDS,
    FILE_NODE_KINDS,
    GRAPH_JSON_SCHEMA,
    WB_TENSORS,
    GraphFileError,
    validate_graph_json,
)
from workbench.store.atomic import CorruptArtifactError, atomic_write_text, read_json

WB_FORMAT_VERSION = 1
INDEX_FILE = "graph-metadata.json"  # circuit-tracer's local viewer lists a folder's graphs here
def process_token(token: str) -> str:
    """Draw the whitespace the viewers cannot show, as circuit-tracer does."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def cantor_pair(layer: int, index: int) -> int:
    """One integer per (layer, feature): Neuronpedia's ``feature`` under ``schema_version`` 1."""
    return (layer + index) * (layer + index + 1) // 2 + index


def _node(node_id, feature, layer, pos, feature_type, js_id, **rest) -> dict:
    """A node with every field circuit-tracer writes, in its order and with its defaults."""
    return {"node_id": node_id, "feature": feature, "layer": str(layer), "ctx_idx": pos,
            "feature_type": feature_type, "token_prob": rest.get("token_prob", 0.0),
            "is_target_logit": rest.get("is_target_logit", False), "run_idx": 0, "reverse_ctx_idx": 0,
            "jsNodeId": js_id, "clerp": rest.get("clerp", ""), "influence": rest.get("influence"),
            "activation": rest.get("activation")}


def logit_vocab_ids(graph: Graph, vocab_size: int | None = None) -> list[int]:
    """The ``feature`` number of each logit node: its vocabulary id; a custom direction (token -1)
    gets ``vocab_size + k`` as in circuit-tracer, or ``-(k + 1)`` when the size is unknown."""
    vocab_size = vocab_size or graph.metadata.get("vocab_size") or graph.metadata.get("d_vocab")
    return [t if t >= 0 else (vocab_size + k if vocab_size else -(k + 1))
            for k, t in enumerate(graph.logit_tokens.tolist())]


def node_id(graph: Graph, i: int, logit_ids: list[int]) -> str:
    """Node ``i``'s ``node_id`` (module docstring, step 4); ``logit_ids`` from :func:`logit_vocab_ids`."""
    kind, layer, pos, number = graph.node_address(i)
    if kind == "feature":
        return f"{layer}_{number}_{pos}"
    if kind == "error":
        return f"{layer}_-1_{pos}"
    if kind == "token":
        return f"E_{number}_{pos}"
    return f"{graph.n_layers + 1}_{logit_ids[number]}_{pos}"


def _graph_node(graph: Graph, i: int, influence, logit_ids: list[int]) -> dict:
    kind, layer, pos, number = graph.node_address(i)
    inf, nid = None if influence is None else float(influence[i]), node_id(graph, i, logit_ids)
    if kind == "feature":
        return _node(nid, cantor_pair(layer, number), layer, pos, "cross layer transcoder", f"{layer}_{number}-0",
                     influence=inf, activation=float(graph.activations[i]))
    if kind == "error":
        return _node(nid, -1, layer, pos, "mlp reconstruction error", f"{layer}_-1-{pos}", influence=inf)
    if kind == "token":
        return _node(nid, pos, "E", pos, "embedding", f"E_{number}-{pos}", influence=inf)
    prob, vocab, layer = float(graph.logit_probabilities[number]), logit_ids[number], graph.n_layers + 1
    label = process_token(graph.logit_labels[number])
    return _node(nid, vocab, layer, pos, "logit", f"L_{vocab}-{pos}", token_prob=prob,
                 is_target_logit=number == 0, clerp=f'Output "{label}" (p={prob:.3f})')


def _mask(mask, shape: tuple, name: str) -> torch.Tensor:
    mask = torch.as_tensor(mask).cpu()
    if mask.dtype != torch.bool or tuple(mask.shape) != shape:
        raise ValueError(f"{name} must be a bool tensor of shape {shape}; "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    return mask


def _selection(graph: Graph, node_mask, edge_mask):
    """Kept node indices and kept edges (target-major), following create_used_nodes_and_edges."""
    adjacency, n = graph.dense_adjacency().detach().cpu(), graph.n_nodes
    pruned = node_mask is not None or edge_mask is not None
    keep = torch.ones(n, dtype=torch.bool) if node_mask is None else _mask(node_mask, (n,), "node_mask")
    edges = adjacency != 0 if edge_mask is None else _mask(edge_mask, (n, n), "edge_mask")
    dsts, srcs = (edges & keep[:, None] & keep[None, :]).nonzero(as_tuple=True)
    weights = adjacency[dsts, srcs]
    for name, t in (("edge weights", weights), ("values", graph.values), ("bias", graph.bias),
                    ("activations", graph.activations)):
        if not torch.isfinite(t).all():  # NaN and Infinity are not JSON; the viewers' parsers reject them
            raise ValueError(f"graph has {int((~torch.isfinite(t)).sum())} non-finite {name}; "
                             "JSON cannot carry them")
    if pruned:  # a pruned file drops feature and error nodes left without any link
        linked = torch.zeros(n, dtype=torch.bool)
        linked[dsts], linked[srcs], linked[graph.token_start:] = True, True, True
        keep = keep & linked
    return keep.nonzero().flatten().tolist(), srcs.tolist(), dsts.tolist(), weights.tolist(), pruned


def _metadata(graph: Graph, slug, scan, node_threshold, metadata_extra, pruned: bool) -> dict:
    scan = scan if scan is not None else graph.metadata.get("scan", "workbench")
    transcoder_list = list(scan) if isinstance(scan, (list, tuple)) else []
    if transcoder_list:  # circuit-tracer uses Python's salted hash(); a digest keeps files reproducible
        scan = f"custom-{int(hashlib.sha256('-'.join(transcoder_list).encode()).hexdigest()[:15], 16)}"
    metadata = {"slug": slug or graph.metadata.get("slug", "graph"), "scan": str(scan),
                "transcoder_list": transcoder_list,
                "prompt_tokens": [process_token(t) for t in graph.token_strings], "prompt": graph.prompt,
                "node_threshold": node_threshold, "schema_version": 1}
    if node_threshold is None:  # Neuronpedia's schema takes a number or no key, not null
        del metadata["node_threshold"]
    for key, value in (metadata_extra or {}).items():
        if key in metadata or key == "wb":
            raise ValueError(f"metadata_extra may not set {key!r}; it comes from the graph and arguments")
        metadata[key] = value
    metadata["wb"] = {
        "format_version": WB_FORMAT_VERSION, "n_layers": graph.n_layers, "n_pos": graph.n_pos,
        "n_nodes": graph.n_nodes, "n_features": graph.n_features, "pruned": pruned,
        "input_tokens": graph.input_tokens.tolist(), "token_strings": list(graph.token_strings),
        "logit_tokens": graph.logit_tokens.tolist(), "logit_labels": list(graph.logit_labels),
        "logit_probabilities": graph.logit_probabilities.tolist(), "graph_metadata": graph.metadata,
        "dtypes": {name: str(getattr(graph, name).dtype).removeprefix("torch.") for name in WB_TENSORS}}
    return metadata


def graph_to_json(graph: Graph, node_mask=None, edge_mask=None, *, slug: str | None = None,
                  scan: str | list[str] | None = None, influence=None,
                  labels: Mapping[int, str] | None = None,
                  node_threshold: float | None = None, vocab_size: int | None = None,
                  metadata_extra: Mapping | None = None, qparams: Mapping | None = None) -> dict:
    """The graph (its pruned part, given prune's masks) as a circuit-tracer graph file (module doc).

    ``influence``: prune's cumulative influence per node; ``labels``: node index -> clerp (e.g. a
    feature's description); ``vocab_size`` numbers custom logit targets (default: graph.metadata's
    ``vocab_size`` / ``d_vocab``); ``metadata_extra``: Neuronpedia's optional metadata keys;
    ``qparams``: viewer state over the defaults."""
    graph.check()
    kept, srcs, dsts, weights, pruned = _selection(graph, node_mask, edge_mask)
    influence = None if influence is None else torch.as_tensor(influence).detach().cpu().flatten().tolist()
    if influence is not None and len(influence) != graph.n_nodes:
        raise ValueError(f"influence has {len(influence)} entries for a graph of {graph.n_nodes} nodes")
    values, bias = graph.values.detach().cpu().tolist(), graph.bias.detach().cpu().tolist()
    labels = labels or {}
    logit_ids = logit_vocab_ids(graph, vocab_size)
    nodes, ids = [], {}
    for i in kept:
        node = _graph_node(graph, i, influence, logit_ids)
        if i in labels:
            node["clerp"] = str(labels[i])
        nodes.append(node | {"wb_index": i, "wb_value": values[i], "wb_bias": bias[i]})
        ids[i] = node["node_id"]
    links = [{"source": ids[s], "target": ids[t], "weight": w} for s, t, w in zip(srcs, dsts, weights)]
    state = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": _metadata(graph, slug, scan, node_threshold, metadata_extra, pruned),
            "qParams": state | dict(qparams or {}), "nodes": nodes, "links": links}


@dataclass
class GraphFile:
    """A graph file as read: circuit-tracer's four parts; nodes and links keep every field as written."""

    metadata: dict
    qParams: dict  # the format's own (camelCase) key
    nodes: list[dict]
    links: list[dict]
    source: str = field(default="graph", compare=False)

    @classmethod
    def from_dict(cls, doc, source: str = "graph") -> GraphFile:
        validate_graph_json(doc, source)
        return cls(doc["metadata"], doc["qParams"], doc["nodes"], doc["links"], source)

    def to_dict(self) -> dict:
        return {"metadata": self.metadata, "qParams": self.qParams, "nodes": self.nodes, "links": self.links}

    @cached_property
    def index_of(self) -> dict[str, int]:
        """node_id -> position in :attr:`nodes`."""
        return {node["node_id"]: i for i, node in enumerate(self.nodes)}

    @staticmethod
    def kind(node: dict) -> str:
        """Our node kind (feature, error, token, logit), or ``"other"`` for Neuronpedia's bias/unknown."""
        return FEATURE_TYPE_KINDS[node["feature_type"]]

    def nodes_of_kind(self, kind: str) -> list[dict]:
        if kind not in FILE_NODE_KINDS:
            raise ValueError(f"unknown node kind {kind!r}; choose one of: {', '.join(FILE_NODE_KINDS)}")
        return [node for node in self.nodes if self.kind(node) == kind]

    def link_arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(source index, target index, weight) per link, indices into :attr:`nodes`; float64 holds every
        weight exactly as written."""
        index = self.index_of
        src = torch.tensor([index[link["source"]] for link in self.links], dtype=torch.int64)
        tgt = torch.tensor([index[link["target"]] for link in self.links], dtype=torch.int64)
        return src, tgt, torch.tensor([float(link["weight"]) for link in self.links], dtype=torch.float64)

    def adjacency(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Dense ``[n_nodes, n_nodes]``, target x source, over the file's nodes (repeated link: last wins)."""
        src, tgt, weight = self.link_arrays()
        matrix = torch.zeros(len(self.nodes), len(self.nodes), dtype=dtype)
        matrix[tgt, src] = weight.to(dtype)
        return matrix

    @property
    def has_workbench_fields(self) -> bool:
        return "wb" in self.metadata

    def to_graph(self) -> Graph:
        return json_to_graph(self)


def feature_address(node: dict, schema_version: int | None = 1) -> tuple[int, int, int]:
    """(layer, pos, feature index) of a feature node: from a ``{layer}_{index}_{pos}`` id, else from
    ``feature`` (a Cantor pair under schema_version 1, the plain index before)."""
    parts = node["node_id"].split("_")
    if len(parts) == 3 and all(p.lstrip("-").isdigit() for p in parts):
        return int(parts[0]), int(parts[2]), int(parts[1])
    feature = int(node["feature"])
    if schema_version == 1:  # invert the Cantor pairing; the index is the second coordinate
        w = (math.isqrt(8 * feature + 1) - 1) // 2
        feature -= w * (w + 1) // 2
    return int(node["layer"]), int(node["ctx_idx"]), feature


def _json_text(obj) -> str:
    # allow_nan=False: NaN and Infinity are not JSON and break the viewers' parsers.
    return json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def save_graph_json(path: str | Path, graph: Graph | dict, node_mask=None, edge_mask=None, *,
                    update_index: bool = False, **options) -> Path:
    """Validate and atomically write a graph file: ``graph`` is a :class:`Graph` (made into JSON by
    :func:`graph_to_json` with the masks and ``options``) or a ready dict. ``update_index`` also records
    it in the folder's ``graph-metadata.json``, the list circuit-tracer's local viewer shows (the file
    must then be ``{slug}.json``, the name that viewer fetches)."""
    path = Path(path)
    doc = graph if isinstance(graph, dict) else graph_to_json(graph, node_mask, edge_mask, **options)
    validate_graph_json(doc, source=str(path))
    slug = doc["metadata"]["slug"]
    if update_index and path.name != f"{slug}.json":
        raise ValueError(f"the viewer fetches {slug}.json for slug {slug!r}; name the file so, "
                         f"not {path.name}")
    atomic_write_text(path, _json_text(doc))
    if update_index:
        index_path = path.parent / INDEX_FILE
        index = read_json(index_path) if index_path.exists() else {"graphs": []}
        entry = {key: value for key, value in doc["metadata"].items() if key != "wb"}
        index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != slug] + [entry]
        atomic_write_text(index_path, _json_text(index))
    return path


def load_graph_json(path: str | Path) -> GraphFile:
    """Read and validate a graph file written here, by circuit-tracer or by Neuronpedia (.json, .json.gz)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no graph file at {path}")
    raw = path.read_bytes()
    try:
        doc = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    except (OSError, EOFError, ValueError, zlib.error) as err:  # bad gzip, bad UTF-8 or bad JSON
        raise CorruptArtifactError(f"{path} is not valid JSON ({err}); the file is damaged") from err
    return GraphFile.from_dict(doc, source=str(path))


def _placement(gf: GraphFile, wb: dict) -> tuple[list[int], list[tuple[int, int]], int]:
    """The file's features in our order (by wb_index), (file position, Graph index) for every node,
    and the Graph's node count."""
    n_pos, n_logits = wb["n_pos"], len(wb["logit_tokens"])
    features = sorted((i for i, node in enumerate(gf.nodes) if gf.kind(node) == "feature"),
                      key=lambda i: gf.nodes[i]["wb_index"])
    token_start = len(features) + wb["n_layers"] * n_pos
    placed = [(i, j) for j, i in enumerate(features)]
    for i, node in enumerate(gf.nodes):
        kind = gf.kind(node)
        if kind == "error":
            placed.append((i, len(features) + int(node["layer"]) * n_pos + node["ctx_idx"]))
        elif kind == "token":
            placed.append((i, token_start + node["ctx_idx"]))
        elif kind == "logit":  # the k-th logit sat at wb_index = n_nodes - n_logits + k
            placed.append((i, token_start + n_pos + node["wb_index"] - (wb["n_nodes"] - n_logits)))
        elif kind == "other":
            raise GraphFileError(f"graph file {gf.source}: nodes[{i}] has feature_type "
                                 f"{node['feature_type']!r}, which a workbench Graph cannot hold")
    return features, placed, token_start + n_pos + n_logits


def json_to_graph(gf: GraphFile) -> Graph:
    """Our :class:`Graph` back from a file written here. A whole-graph file comes back exactly; a pruned
    one gives the kept subgraph (dropped features gone, dropped errors as zero nodes, kept edges only)
    with ``metadata["json_pruned"] = True``."""
    if not gf.has_workbench_fields:
        raise GraphFileError(f"graph file {gf.source} has no workbench fields (metadata.wb), so it cannot "
                             "become a Graph; read its nodes and links through GraphFile instead")
    wb = gf.metadata["wb"]
    dtype = {name: getattr(torch, wb["dtypes"][name]) for name in WB_TENSORS}
    features, placed, n = _placement(gf, wb)
    values, bias = torch.zeros(n, dtype=dtype["values"]), torch.zeros(n, dtype=dtype["bias"])
    new_index = torch.zeros(len(gf.nodes), dtype=torch.int64)
    for i, j in placed:
        new_index[i], values[j], bias[j] = j, gf.nodes[i]["wb_value"], gf.nodes[i]["wb_bias"]
    src, tgt, weight = gf.link_arrays()
    adjacency = torch.zeros(n, n, dtype=dtype["adjacency"])
    adjacency[new_index[tgt], new_index[src]] = weight.to(dtype["adjacency"])
    active = [feature_address(gf.nodes[i], gf.metadata.get("schema_version")) for i in features]
    graph = Graph(
        prompt=gf.metadata["prompt"], input_tokens=torch.tensor(wb["input_tokens"], dtype=torch.int64),
        token_strings=list(wb["token_strings"]), n_layers=wb["n_layers"],
        active_features=torch.tensor(active, dtype=torch.int64).reshape(-1, 3),
        activations=torch.tensor([gf.nodes[i]["activation"] for i in features], dtype=dtype["activations"]),
        logit_tokens=torch.tensor(wb["logit_tokens"], dtype=torch.int64),
        logit_probabilities=torch.tensor(wb["logit_probabilities"], dtype=dtype["logit_probabilities"]),
        logit_labels=list(wb["logit_labels"]), adjacency=adjacency, values=values, bias=bias,
        metadata=dict(wb["graph_metadata"]) | ({"json_pruned": True} if wb["pruned"] else {}))
    graph.check()
    return graph


__all__ = [
    "FEATURE_TYPE_KINDS",
    "GRAPH_JSON_SCHEMA",
    "GraphFile",
    "GraphFileError",
    "cantor_pair",
    "feature_address",
    "graph_to_json",
    "json_to_graph",
    "load_graph_json",
    "logit_vocab_ids",
    "node_id",
    "process_token",
    "save_graph_json",
    "validate_graph_json",
]
