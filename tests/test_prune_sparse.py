"""prune_sparse computes what prune computes (masks, influence, scores), on dense and sparse graphs,
and prunes a 10,000-node graph fast."""

from __future__ import annotations

import time

import pytest
import torch
from graph_fixtures import synthetic_graph

from workbench.attribution.prune import graph_scores, prune_graph
from workbench.attribution.prune_sparse import graph_edges, graph_scores_sparse, prune_graph_sparse


def _tiny_real_graph(tmp_path):
    from test_graph_job import _dict_set, _model_folder, _prompt

    from workbench.attribution.attribute import attribute
    from workbench.attribution.jobs import encode_prompt
    from workbench.dictionaries.dictionary_set import load_dictionary_set

    bundle = _model_folder(tmp_path / "model")
    dictionaries = list(load_dictionary_set(_dict_set(tmp_path / "dicts", bundle))[0].values())
    return attribute(bundle.model, dictionaries, encode_prompt(bundle, _prompt(bundle)), progress=False)


@pytest.mark.parametrize("source", ["real", "synthetic"])
# (at exactly 1.0 the dense version may drop the weakest edges by rounding; this keeps them all)
@pytest.mark.parametrize("thresholds", [(0.8, 0.98), (0.5, 0.7), (0.99, 0.999)])
def test_sparse_pruning_matches_dense(source, thresholds, tmp_path):
    graph = _tiny_real_graph(tmp_path) if source == "real" else synthetic_graph(600, seed=1)
    dense = prune_graph(graph, *thresholds)
    sparse = prune_graph_sparse(graph, *thresholds)
    assert torch.allclose(sparse.node_influence, dense.node_influence, rtol=1e-4, atol=1e-7)
    assert torch.equal(sparse.node_mask, dense.node_mask)
    assert torch.equal(sparse.dense_edge_mask(), dense.edge_mask)
    assert torch.allclose(sparse.cumulative, dense.cumulative, rtol=1e-4, atol=1e-6)
    for mask in (None, dense.node_mask):
        assert graph_scores_sparse(graph, mask) == pytest.approx(graph_scores(graph, mask), rel=1e-4, abs=1e-6)


def test_sparse_pruning_of_a_10k_node_graph_is_fast():
    graph = synthetic_graph(10_000)
    start = time.perf_counter()
    edges = graph_edges(graph)
    pruned = prune_graph_sparse(graph, edges=edges)
    scores = graph_scores_sparse(graph, edges=edges), graph_scores_sparse(graph, pruned.node_mask, edges=edges)
    elapsed = time.perf_counter() - start
    assert 0 < pruned.n_nodes < graph.n_nodes and all(0 <= s <= 1 for pair in scores for s in pair)
    assert elapsed < 5, f"pruning and scoring took {elapsed:.2f} s"
