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


def _batched_ablations(model, dictionaries, graph: Graph, nodes: list[int], mode: str) -> torch.Tensor:
    """``[len(nodes)]``: the change of the top logit target when each node's feature is ablated (step 3),
    one row of one pass per node."""
    tokens = graph.input_tokens[None]
    splice = FeatureSplice(model, dictionaries, tokens.expand(len(nodes), -1))
    edits = []
    for row, node in enumerate(nodes):
        layer, pos, index = (int(v) for v in graph.active_features[node])
        edits.append(FeatureEdit(layer, index, "ablate", positions=(pos,), rows=(row,)))
    clean = logit_targets(graph, splice.clean_logits[:1])[0, 0]
    return logit_targets(graph, splice.run(edits, mode))[:, 0] - clean


@torch.no_grad()
def validate_graph(model, dictionaries, graph: Graph, top_k: int = 10) -> dict:
    """Steps 1-4: the validation record stored in a graph's metadata under ``validation``."""
    nodes = top_features(graph, top_k)
    if len(nodes) < 2:
        return {"n_features": len(nodes), "pearson": None, "spearman": None,
                "note": "fewer than two influential features: no correlation to measure"}
    predicted = torch.stack([graph_prediction(graph, [FeatureEdit(*_edit_of(graph, n))])[1][0] for n in nodes])
    actual = _batched_ablations(model, list(dictionaries), graph, nodes, "live").double()
    frozen = _batched_ablations(model, list(dictionaries), graph, nodes, "frozen").double()
    return {"n_features": len(nodes), "pearson": _pearson(predicted, actual),
            "spearman": _pearson(_ranks(predicted), _ranks(actual)),
            "frozen_max_deviation": float((frozen - predicted).abs().max()),
            "target": graph.logit_labels[0],
            "features": [graph.node_label(n) for n in nodes],
            "predicted": [float(v) for v in predicted], "actual": [float(v) for v in actual]}


def _edit_of(graph: Graph, node: int) -> tuple:
    layer, pos, index = (int(v) for v in graph.active_features[node])
    return layer, index, "ablate", 0.0, (pos,)


__all__ = ["top_features", "validate_graph"]
