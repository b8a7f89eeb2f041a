"""Graphs for the graph page's tests: a synthetic graph of any size (random sparse edges that respect
the node order and the layers, as a real graph's do), and a tiny zoo (model, transcoder set with
feature data) in the test's WB_MODELS folder, from which the page builds real graphs."""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.attribution.graph import Graph


def _feature_sources(layer, pos, n_pos, fan_in, g):
    """(target, source) pairs: each feature reads its token, ``fan_in`` features of earlier layers at
    earlier or equal positions, and one error node of an earlier layer at its position."""
    n_features = len(layer)
    first_of_layer = torch.searchsorted(layer, layer)  # features are sorted by layer
    targets = torch.arange(n_features).repeat_interleave(fan_in)
    picks = (torch.rand(len(targets), generator=g) * first_of_layer[targets]).long()
    ok = (first_of_layer[targets] > 0) & (pos[picks] <= pos[targets])
    rows, cols = [targets[ok]], [picks[ok]]
    err0, tok0 = n_features, n_features + int(layer.max() + 1) * n_pos
    rows.append(torch.arange(n_features))
    cols.append(tok0 + pos)
    has_error = layer > 0
    err_layer = (torch.rand(n_features, generator=g) * layer).long()
    rows.append(torch.arange(n_features)[has_error])
    cols.append((err0 + err_layer * n_pos + pos)[has_error])
    return torch.cat(rows), torch.cat(cols)


def synthetic_graph(n_nodes: int = 10_000, n_layers: int = 4, n_pos: int = 20, n_logits: int = 10,
                    fan_in: int = 6, seed: int = 0, token_label: str | None = None) -> Graph:
    """A random graph of ``n_nodes`` nodes with a sparse adjacency; ``token_label`` names token 1."""
    g = torch.Generator().manual_seed(seed)
    n_features = n_nodes - n_layers * n_pos - n_pos - n_logits
    layer, _ = torch.sort(torch.randint(0, n_layers, (n_features,), generator=g))
    pos = torch.randint(0, n_pos, (n_features,), generator=g)
    rows, cols = _feature_sources(layer, pos, n_pos, fan_in, g)
    logit0 = n_nodes - n_logits
    last_err = n_features + (n_layers - 1) * n_pos + n_pos - 1
    for k in range(n_logits):  # each logit reads 40 random features, the last error and the last token
        srcs = torch.cat([torch.randint(0, n_features, (40,), generator=g), torch.tensor([last_err, logit0 - 1])])
        rows, cols = torch.cat([rows, torch.full_like(srcs, logit0 + k)]), torch.cat([cols, srcs])
    weights = torch.randn(len(rows), generator=g)
    adjacency = torch.sparse_coo_tensor(torch.stack([rows, cols]), weights, (n_nodes, n_nodes),
                                        check_invariants=True).coalesce()
    values = torch.sparse.sum(adjacency, 1).to_dense()
    tokens = [f"t{i}" for i in range(n_pos)]
    if token_label is not None:
        tokens[1] = token_label
    return Graph(prompt=" ".join(tokens), input_tokens=torch.arange(n_pos), token_strings=tokens, n_layers=n_layers,
                 active_features=torch.stack([layer, pos, torch.randint(0, 512, (n_features,), generator=g)], 1),
                 activations=values[:n_features].abs(), logit_tokens=torch.arange(n_logits),
                 logit_probabilities=torch.softmax(torch.randn(n_logits, generator=g), 0),
                 logit_labels=[f"out{k}" for k in range(n_logits)], adjacency=adjacency, values=values,
                 bias=torch.zeros(n_nodes), metadata={"synthetic": True})


def save_graph(graph: Graph, name: str, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Path:
    """Write ``graph`` into this test's artifacts root and catalogue it, as ``wb graph`` would (without
    the Neuronpedia file and summary, which the page does not need)."""
    from workbench.store.catalog import Catalog

    catalog = Catalog()
    folder = graph.save(catalog.root / "graphs" / name)
    catalog.register("graph", name, folder, {"prompt": graph.prompt, "n_nodes": graph.n_nodes,
                                             "node_threshold": node_threshold, "edge_threshold": edge_threshold})
    return folder


def tiny_zoo(models: Path, with_features: bool = True):
    """``models/tiny-recall`` (a 2-layer transformer on recall) with a transcoder set at
    ``dictionaries/transcoders`` (and its feature data, catalogued); returns (bundle, set folder, prompt)."""
    from test_graph_job import _dict_set, _model_folder, _prompt

    bundle = _model_folder(models / "tiny-recall")
    folder = models / "tiny-recall" / "dictionaries" / "transcoders"
    folder.mkdir(parents=True)
    _dict_set(folder, bundle)
    if with_features:
        from workbench.dictionaries.jobs import write_features
        from workbench.store.catalog import Catalog

        write_features(bundle, folder, Catalog(), n_sequences=16)
    return bundle, folder, _prompt(bundle)
