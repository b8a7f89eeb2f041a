"""Influence, pruning and the graph's scores (the attribution-graph papers' definitions).

1. Normalise: take ``|adjacency|`` and scale each row to sum 1, so a node's inputs are shares of it.
2. Influence of every node on the targets: ``w A + w A^2 + ...`` for the seed ``w`` (each logit's
   probability at its node). The graph is acyclic (a node only reads earlier layers or earlier
   positions), so the series ends after at most depth-many terms.
3. Node pruning: keep the most influential nodes that together hold ``node_threshold`` of the total
   influence; tokens and logits are always kept.
4. Edge pruning: on the node-pruned graph, score each edge by its normalised weight times its target's
   influence (plus the target's own seed weight) and keep the edges holding ``edge_threshold`` of the
   total; then repeatedly drop feature and error nodes left with no outgoing edge and features with no
   incoming edge.
Graphs above ``DENSE_MAX_NODES`` nodes go to ``prune_sparse``, which computes the same definitions on
the non-zero edges only (sorting all n^2 dense edge scores of a 10,000-node graph takes tens of seconds).

5. Scores. Replacement: the share of the tokens' and errors' total influence that belongs to tokens
   (1 when every path from input to output runs through features). Completeness: the influence-weighted
   mean, over nodes, of the share of each node's input that does not come from error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.attribution.graph import Graph

DENSE_MAX_NODES = 2048


def normalize_rows(matrix: torch.Tensor) -> torch.Tensor:
    """``|matrix|`` with each row summing to 1 (all-zero rows stay zero)."""
    a = matrix.abs()
    return a / a.sum(dim=1, keepdim=True).clamp_min(1e-10)


def compute_influence(normalized: torch.Tensor, seed: torch.Tensor, max_depth: int = 10_000) -> torch.Tensor:
    """``seed @ (A + A^2 + ...)`` for an acyclic, row-normalised ``A``."""
    current = seed.to(normalized.dtype) @ normalized
    total = current.clone()
    for _ in range(max_depth):
        if not bool(current.any()):
            return total
        current = current @ normalized
        total += current
    raise RuntimeError("influence did not converge: the adjacency matrix has a cycle")


def find_threshold(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The smallest score among the top scores that together hold ``fraction`` of the total."""
    ordered = torch.sort(scores.flatten(), descending=True).values
    cumulative = torch.cumsum(ordered, 0) / ordered.sum().clamp_min(1e-30)
    index = min(int(torch.searchsorted(cumulative, torch.tensor(fraction, dtype=cumulative.dtype))), len(ordered) - 1)
    return ordered[index]


@dataclass
class Pruned:
    node_mask: torch.Tensor  # [n_nodes] bool
    edge_mask: torch.Tensor  # [n_nodes, n_nodes] bool, target x source
    node_influence: torch.Tensor  # [n_nodes] influence on the targets (step 2)
    cumulative: torch.Tensor  # [n_nodes] each node's cumulative influence rank (0..1]

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1; got {value}")


def prune_graph(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Steps 1-4 of the module docstring."""
    _check_fraction("node_threshold", node_threshold)
    _check_fraction("edge_threshold", edge_threshold)
    if graph.n_nodes > DENSE_MAX_NODES or graph.adjacency.is_sparse:
        from workbench.attribution.prune_sparse import prune_graph_sparse

        return prune_graph_sparse(graph, node_threshold, edge_threshold)
    A = graph.dense_adjacency().float()
    seed = graph.logit_weights()
    influence = compute_influence(normalize_rows(A), seed)
    node_mask = influence >= find_threshold(influence, node_threshold)
    node_mask[graph.token_start:] = True
    pruned = A * node_mask[:, None] * node_mask[None, :]
    normalized = normalize_rows(pruned)
    edge_scores = normalized * (compute_influence(normalized, seed) + seed)[:, None]
    edge_mask = edge_scores >= find_threshold(edge_scores, edge_threshold)
    edge_mask &= pruned != 0
    sources_end, n_f = graph.token_start, graph.n_features
    while True:
        before = node_mask.clone()
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        node_mask[:sources_end] &= edge_mask[:, :sources_end].any(0)  # features and errors must feed something
        node_mask[:n_f] &= edge_mask[:n_f].any(1)  # features must be fed
        if torch.equal(before, node_mask):
            break
    order = torch.argsort(influence, descending=True)
    cumulative = torch.empty_like(influence)
    cumulative[order] = torch.cumsum(influence[order], 0) / influence.sum().clamp_min(1e-30)
    return Pruned(node_mask, edge_mask, influence, cumulative)


def graph_scores(graph: Graph, node_mask: torch.Tensor | None = None) -> tuple[float, float]:
    """``(replacement, completeness)`` (step 5), of the whole graph or of the subgraph ``node_mask``
    keeps (dropped nodes count as error: their influence is no longer explained)."""
    if graph.n_nodes > DENSE_MAX_NODES or graph.adjacency.is_sparse:
        from workbench.attribution.prune_sparse import graph_scores_sparse

        return graph_scores_sparse(graph, node_mask)
    A = graph.dense_adjacency().float()
    seed = graph.logit_weights()
    errors = torch.zeros(graph.n_nodes, dtype=torch.bool)
    errors[graph.error_start:graph.token_start] = True
    if node_mask is not None:  # a pruned-away feature is an unexplained input: treat it as error
        errors |= ~node_mask.bool()
        errors[graph.token_start:] = False
    normalized = normalize_rows(A)
    influence = compute_influence(normalized, seed)
    token_influence = influence[graph.token_start:graph.logit_start].sum()
    error_influence = influence[errors].sum()
    replacement = token_influence / (token_influence + error_influence).clamp_min(1e-30)
    non_error = 1 - normalized[:, errors].sum(1)
    output_influence = influence + seed
    completeness = (non_error * output_influence).sum() / output_influence.sum().clamp_min(1e-30)
    return float(replacement), float(completeness)


__all__ = ["Pruned", "compute_influence", "find_threshold", "graph_scores", "normalize_rows", "prune_graph"]
