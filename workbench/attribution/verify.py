"""Check a graph against the intervention it predicts: ablate a source, measure its targets.

A graph's edge ``adjacency[t, s]`` claims that removing source ``s`` from the local replacement model
(features held at their activations, gates frozen) lowers target ``t`` by exactly that weight. This
module performs the removal for real:

1. Rebuild the prompt's :class:`LocalReplacement` (same model, dictionaries and tokens).
2. For a source node, subtract its contribution from the inputs of the frozen linear model: a feature's
   activation x decoder from the MLP writes at its position, an error node's vector from its layer's
   write, a token's embedding from the embeddings.
3. Run the frozen model on the clean and the ablated inputs (one batch) and read every target
   (feature pre-activations, logit targets); the drop is the measured edge.
"""

from __future__ import annotations

import torch

from workbench.attribution.graph import Graph
from workbench.attribution.replacement import LocalReplacement


def _feature_rows(rep: LocalReplacement, graph: Graph) -> list[int]:
    """The replacement model's feature index of each of the graph's feature nodes."""
    index = {tuple(int(v) for v in row): i for i, row in enumerate(rep.active_features)}
    missing = [tuple(int(v) for v in row) for row in graph.active_features if tuple(int(v) for v in row) not in index]
    if missing:
        raise ValueError(f"graph features {missing[:3]} are not active in this replacement model: the graph "
                         "was built with other dictionaries or another prompt")
    return [index[tuple(int(v) for v in row)] for row in graph.active_features]


@torch.no_grad()
def target_values(rep: LocalReplacement, graph: Graph, embed: torch.Tensor, writes: torch.Tensor) -> torch.Tensor:
    """``[B, n_features + n_logits]``: every target of ``graph`` read from the frozen model on a batch
    (logit targets without their constant unembedding bias, which no ablation changes)."""
    out = rep.linear_forward(embed, writes)
    features = rep.read_features(out["mlp_in"], graph.active_features)
    if graph.logit_directions is None:
        raise ValueError("this graph stores no logit directions (a file from another tool): it cannot be "
                         "checked by intervention")
    logits = out["final"][:, -1] @ graph.logit_directions.T.to(out["final"].dtype)
    return torch.cat([features.to(logits.dtype), logits], dim=1)


@torch.no_grad()
def ablation_effects(model, dictionaries, graph: Graph, sources: list[int]) -> torch.Tensor:
    """``[len(sources), n_features + n_logits]``: each target's drop when each source is removed
    (steps 1-3), to compare with ``graph.adjacency[targets][:, sources].T``."""
    rep = LocalReplacement(model, list(dictionaries), graph.input_tokens[None])
    rows = _feature_rows(rep, graph)
    base_writes = rep.constant_writes()
    embeds = rep.embed.expand(len(sources) + 1, -1, -1).clone()
    writes = base_writes.expand(len(sources) + 1, -1, -1, -1).clone()
    for b, s in enumerate(sources, start=1):
        kind = graph.node_kind(s)
        if kind == "feature":
            i = rows[s]
            writes[b, :, int(rep.active_features[i, 1])] -= rep.feature_writes[i]
        elif kind == "error":
            _, layer, pos, _ = graph.node_address(s)
            writes[b, layer, pos] -= rep.errors[layer, pos]
        elif kind == "token":
            embeds[b, s - graph.token_start] = 0
        else:
            raise ValueError(f"node {s} is a logit; only features, errors and tokens are sources")
    values = target_values(rep, graph, embeds, writes)
    return values[:1] - values[1:]


__all__ = ["ablation_effects", "target_values"]
