"""``prune.py``'s pruning and scores on the adjacency's non-zero entries only, for graphs too large for
its dense matrices (the app's graph page, a 10,000-node graph).

The definitions are prune.py's (its module docstring, steps 1-5); only the arithmetic differs. The dense
version sorts all ``n_nodes**2`` edge scores (10^8 for 10,000 nodes: tens of seconds and gigabytes);
here every step costs O(non-zero edges), so such a graph prunes in well under a second. An edge is an
entry ``(target, source, weight)``; the dense matrix's zeros are implicit and take part only where the
dense version lets them (the edge threshold, when the kept share runs past the non-zero scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.attribution.graph import Graph
from workbench.attribution.prune import _check_fraction, find_threshold


@dataclass
class Edges:
    """The non-zero entries of ``adjacency[target, source]``, target-major."""

    target: torch.Tensor  # [n_edges] int64
    source: torch.Tensor  # [n_edges] int64
    weight: torch.Tensor  # [n_edges] float32
    n_nodes: int

    def __len__(self) -> int:
        return int(self.weight.shape[0])


def graph_edges(graph: Graph) -> Edges:
    """The graph's non-zero edges, whether its adjacency is dense or sparse."""
    adjacency = graph.adjacency.detach().cpu()
    if adjacency.is_sparse:
        adjacency = adjacency.coalesce()
        (target, source), weight = adjacency.indices(), adjacency.values()
    else:
        target, source = adjacency.nonzero(as_tuple=True)
        weight = adjacency[target, source]
    keep = weight != 0
    order = torch.argsort(target[keep] * graph.n_nodes + source[keep])
    return Edges(target[keep][order], source[keep][order], weight[keep][order].float(), graph.n_nodes)


def normalized_weights(edges: Edges, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``|weight|`` divided by its target's total (prune.normalize_rows); dropped entries are 0."""
    magnitude = edges.weight.abs() if keep is None else edges.weight.abs() * keep
    totals = torch.zeros(edges.n_nodes).index_add_(0, edges.target, magnitude)
    return magnitude / totals.clamp_min(1e-10)[edges.target]


def influence(edges: Edges, normalized: torch.Tensor, seed: torch.Tensor, max_depth: int = 10_000) -> torch.Tensor:
    """``seed @ (A + A^2 + ...)`` (prune.compute_influence) with ``A`` given by its entries."""
    def step(vector: torch.Tensor) -> torch.Tensor:
        return torch.zeros(edges.n_nodes).index_add_(0, edges.source, vector[edges.target] * normalized)

    current = step(seed.float())
    total = current.clone()
    for _ in range(max_depth):
        if not bool(current.any()):
            return total
        current = step(current)
        total += current
    raise RuntimeError("influence did not converge: the adjacency matrix has a cycle")


def edge_threshold_value(scores: torch.Tensor, n_entries: int, fraction: float) -> torch.Tensor:
    """prune.find_threshold over ``scores`` plus ``n_entries - len(scores)`` implicit zeros."""
    if len(scores) == 0:
        return torch.tensor(0.0)
    ordered = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(ordered, 0) / ordered.sum().clamp_min(1e-30)
    index = int(torch.searchsorted(cumulative, torch.tensor(fraction, dtype=cumulative.dtype)))
    if index < len(ordered):
        return ordered[index]
    return torch.tensor(0.0) if n_entries > len(ordered) else ordered[-1]


@dataclass
class SparsePruned:
    """prune.Pruned with the edge mask over :class:`Edges` instead of a dense matrix."""

    edges: Edges
    node_mask: torch.Tensor  # [n_nodes] bool
    edge_keep: torch.Tensor  # [n_edges] bool
    node_influence: torch.Tensor  # [n_nodes]
    cumulative: torch.Tensor  # [n_nodes]

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(self.edge_keep.sum())

    @property
    def edge_mask(self) -> torch.Tensor:
        """The dense mask (``prune.Pruned``'s interface), built on first use."""
        if getattr(self, "_dense", None) is None:
            self._dense = self.dense_edge_mask()
        return self._dense

    def dense_edge_mask(self) -> torch.Tensor:
        """``[n_nodes, n_nodes]`` bool, target x source, as graph_file.graph_to_json takes it."""
        n = self.edges.n_nodes
        mask = torch.zeros(n, n, dtype=torch.bool)
        mask[self.edges.target[self.edge_keep], self.edges.source[self.edge_keep]] = True
        return mask


def _drop_dangling(graph: Graph, edges: Edges, node_mask: torch.Tensor, edge_keep: torch.Tensor) -> None:
    """prune.prune_graph's last loop, in place: features and errors must feed a kept edge, features
    must be fed by one."""
    sources_end, n_f = graph.token_start, graph.n_features
    while True:
        before = node_mask.clone()
        edge_keep &= node_mask[edges.target] & node_mask[edges.source]
        feeds = torch.zeros(graph.n_nodes, dtype=torch.bool)
        feeds[edges.source[edge_keep]] = True
        fed = torch.zeros(graph.n_nodes, dtype=torch.bool)
        fed[edges.target[edge_keep]] = True
        node_mask[:sources_end] &= feeds[:sources_end]
        node_mask[:n_f] &= fed[:n_f]
        if torch.equal(before, node_mask):
            return


def prune_graph_sparse(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                       edges: Edges | None = None) -> SparsePruned:
    """prune.prune_graph (steps 1-4), on the non-zero entries; pass ``edges`` to reuse them."""
    _check_fraction("node_threshold", node_threshold)
    _check_fraction("edge_threshold", edge_threshold)
    edges = edges if edges is not None else graph_edges(graph)
    seed = graph.logit_weights()
    node_influence = influence(edges, normalized_weights(edges), seed)
    node_mask = node_influence >= find_threshold(node_influence, node_threshold)
    node_mask[graph.token_start:] = True
    kept = node_mask[edges.target] & node_mask[edges.source]
    normalized = normalized_weights(edges, kept)
    scores = normalized * (influence(edges, normalized, seed) + seed)[edges.target]
    threshold = edge_threshold_value(scores[kept], graph.n_nodes ** 2, edge_threshold)
    edge_keep = kept & (scores >= threshold)
    _drop_dangling(graph, edges, node_mask, edge_keep)
    order = torch.argsort(node_influence, descending=True)
    cumulative = torch.empty_like(node_influence)
    cumulative[order] = torch.cumsum(node_influence[order], 0) / node_influence.sum().clamp_min(1e-30)
    return SparsePruned(edges, node_mask, edge_keep, node_influence, cumulative)


def graph_scores_sparse(graph: Graph, node_mask: torch.Tensor | None = None,
                        edges: Edges | None = None) -> tuple[float, float]:
    """prune.graph_scores: ``(replacement, completeness)`` of the graph or of the ``node_mask`` subgraph."""
    edges = edges if edges is not None else graph_edges(graph)
    seed = graph.logit_weights()
    errors = torch.zeros(graph.n_nodes, dtype=torch.bool)
    errors[graph.error_start:graph.token_start] = True
    if node_mask is not None:  # a pruned-away feature is an unexplained input: treat it as error
        errors |= ~node_mask.bool()
        errors[graph.token_start:] = False
    normalized = normalized_weights(edges)
    node_influence = influence(edges, normalized, seed)
    token_influence = node_influence[graph.token_start:graph.logit_start].sum()
    error_influence = node_influence[errors].sum()
    replacement = token_influence / (token_influence + error_influence).clamp_min(1e-30)
    error_share = torch.zeros(graph.n_nodes).index_add_(0, edges.target, normalized * errors[edges.source])
    output_influence = node_influence + seed
    completeness = ((1 - error_share) * output_influence).sum() / output_influence.sum().clamp_min(1e-30)
    return float(replacement), float(completeness)


__all__ = ["Edges", "SparsePruned", "graph_edges", "graph_scores_sparse", "influence", "normalized_weights",
           "prune_graph_sparse"]
