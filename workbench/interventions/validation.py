"""Graph validation by intervention: does ablating a feature do to the logit what the graph says?

An attribution graph is a claim about the frozen local replacement model. The claim worth checking is
about the *live* model, where attention patterns, gates and normalisers respond to the change. For a
graph built on a prompt:

1. Rank its feature nodes by their influence on the logit targets (``prune_graph``'s influence: the
   row-normalised adjacency propagated from the targets), keep the ``top_k``.
2. Predicted effect: for each kept feature, ablate it at its position in the graph's linear model
   (:func:`features.graph_prediction`) and read the change of the top logit target (the demeaned
   logit of the most likely token).
3. Actual effect: ablate the same feature at the same position in the live model with the
   replacement set spliced in and the error terms held (:class:`features.FeatureSplice`, ``live``),
   every kept feature in its own row of one batched pass, and read the same logit target.
4. Report per graph the Pearson and Spearman correlations between predicted and actual effects over
   the kept features, and the frozen pass's largest deviation from the prediction (which must be ~0:
   it is the same linear model, so it checks the machinery, not the graph).
"""

from __future__ import annotations

import torch

from workbench.attribution.graph import Graph
from workbench.attribution.prune import prune_graph
from workbench.interventions.features import FeatureEdit, FeatureSplice, graph_prediction, logit_targets


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = float(x.norm() * y.norm())
    return float((x * y).sum()) / denominator if denominator > 0 else float("nan")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x)).double()


def top_features(graph: Graph, top_k: int) -> list[int]:
    """Step 1: the ``top_k`` feature nodes by influence on the logit targets (active ones only)."""
    influence = prune_graph(graph).node_influence[:graph.n_features]
    influence = torch.where(graph.activations != 0, influence.double(), -1.0)
    order = torch.argsort(influence, descending=True)[:top_k]
    return [int(i) for i in order if influence[i] > 0]


def _ablation_edits(graph: Graph, nodes: list[int]) -> list[FeatureEdit]:
    """One ablation per node, at its position, in its own batch row (row ``i`` ablates ``nodes[i]``)."""
    return [FeatureEdit(layer, index, "ablate", positions=(pos,), rows=(row,))
            for row, (layer, pos, index) in enumerate(graph.active_features[nodes].tolist())]


def _ablation_changes(splice: FeatureSplice, graph: Graph, edits: list[FeatureEdit], mode: str) -> torch.Tensor:
    """``[len(edits)]``: the change of the top logit target when each edit's feature is ablated (step 3),
    one row of one pass per edit."""
    clean = logit_targets(graph, splice.clean_logits[:1])[0, 0]
    return logit_targets(graph, splice.run(edits, mode))[:, 0] - clean


@torch.no_grad()
def validate_graph(model, dictionaries, graph: Graph, top_k: int = 10) -> dict:
    """Steps 1-4: the validation record stored in a graph's metadata under ``validation``. A graph that
    visited only part of its active features (``max_feature_nodes``) cannot predict ablations: its record
    says so instead."""
    visited = graph.metadata.get("n_visited_features", graph.n_features)
    if visited < graph.metadata.get("n_active_features", visited):
        return {"note": "not validated: the graph visited only part of the active features (max_feature_nodes)"}
    nodes = top_features(graph, top_k)
    if len(nodes) < 2:
        return {"n_features": len(nodes), "pearson": None, "spearman": None,
                "note": "fewer than two influential features: no correlation to measure"}
    edits = _ablation_edits(graph, nodes)
    predicted = torch.stack([graph_prediction(graph, [edit])[1][0] for edit in edits])  # rows: unused there
    # one splice (one clean pass) serves the live and the frozen ablations
    splice = FeatureSplice(model, dictionaries, graph.input_tokens[None].expand(len(nodes), -1))
    actual = _ablation_changes(splice, graph, edits, "live").double()
    frozen = _ablation_changes(splice, graph, edits, "frozen").double()
    return {"n_features": len(nodes), "pearson": _pearson(predicted, actual),
            "spearman": _pearson(_ranks(predicted), _ranks(actual)),
            "frozen_max_deviation": float((frozen - predicted).abs().max()),
            "target": graph.logit_labels[0],
            "features": [graph.node_label(n) for n in nodes],
            "predicted": [float(v) for v in predicted], "actual": [float(v) for v in actual]}


__all__ = ["top_features", "validate_graph"]
