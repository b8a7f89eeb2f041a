"""Attribution graphs on every architecture: the sum identity, edges = interventions, a known circuit,
pruning and scores, the feature cap, files and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CONFIGS

from workbench.architectures import build_model, model_config
from workbench.attribution.attribute import AttributionConfig, attribute
from workbench.attribution.graph import Graph
from workbench.attribution.prune import graph_scores, prune_graph
from workbench.attribution.replacement import LocalReplacement, ReplacementMismatch
from workbench.attribution.targets import salient_logits
from workbench.attribution.verify import ablation_effects
from workbench.dictionaries.models import DictionaryConfig, build_dictionary

VOCAB, N_POS = 20, 9


def _transcoders(model, tokens, kind: str = "transcoder", activation: str = "topk", n_features: int = 24):
    """Untrained but non-trivial dictionaries for every layer (random biases so features differ)."""
    _, cache = model.run_with_cache(tokens)
    L = model.cfg.n_layers
    width = lambda kind_, l: cache[f"blocks.{l}.hook_mlp_{kind_}"].shape[-1]
    common = {"activation": activation, "k": 4 if "topk" in activation else None, "init_norm": 1.0}
    if kind == "clt":
        d = build_dictionary(DictionaryConfig("clt", d_in=width("in", 0), d_out=width("out", 0), n_layers=L,
                                              n_features=n_features, seed=3, **common,
                                              input_hooks=[f"blocks.{l}.hook_mlp_in" for l in range(L)],
                                              output_hooks=[f"blocks.{l}.hook_mlp_out" for l in range(L)]))
        dicts = [d]
    else:
        dicts = [build_dictionary(DictionaryConfig(kind, d_in=width("in", l), d_out=width("out", l), seed=l,
                                                   n_features=n_features, **common,
                                                   input_hooks=[f"blocks.{l}.hook_mlp_in"],
                                                   output_hooks=[f"blocks.{l}.hook_mlp_out"])) for l in range(L)]
    with torch.no_grad():
        for d in dicts:
            d.b_enc.normal_(0, 0.3)
            d.b_dec.normal_(0, 0.1)
            if d.W_skip is not None:
                d.W_skip.normal_(0, 0.1)
            if activation == "jumprelu":
                d.activation.log_threshold.fill_(-2.0)
    return [d.eval() for d in dicts]


def _setup(arch: str, kind: str = "transcoder", activation: str = "topk", seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(model_config(arch, d_vocab=VOCAB, n_ctx=32, **TINY_CONFIGS[arch])).eval()
    tokens = torch.randint(2, VOCAB, (1, N_POS))
    return model, tokens, _transcoders(model, tokens, kind, activation)


def _check_identity(graph: Graph, tol: float = 1e-4) -> None:
    rows = torch.cat([torch.arange(graph.n_features), torch.arange(graph.logit_start, graph.n_nodes)])
    total = graph.adjacency[rows].double().sum(1) + graph.bias[rows].double()
    values = graph.values[rows].double()
    scale = values.abs().clamp_min(1.0)  # relative for large values, absolute near zero
    assert ((total - values).abs() / scale).max() <= tol, (total - values).abs().max()


def _check_ablations(model, dicts, graph: Graph, n_sources: int = 12, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    candidates = torch.arange(graph.logit_start)
    sources = candidates[torch.randperm(len(candidates), generator=g)[:n_sources]].tolist()
    measured = ablation_effects(model, dicts, graph, sources)  # [sources, features + logits]
    targets = torch.cat([torch.arange(graph.n_features), torch.arange(graph.logit_start, graph.n_nodes)])
    predicted = graph.adjacency[targets][:, sources].T
    assert torch.allclose(measured.float(), predicted, rtol=1e-3, atol=1e-4), (measured - predicted).abs().max()


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_every_architecture_graph_is_exact(arch):
    model, tokens, dicts = _setup(arch)
    graph = attribute(model, dicts, tokens, progress=False, config=AttributionConfig(batch_size=16))
    assert graph.n_features > 0 and graph.n_logits >= 1
    # exact, unless the model declares why it cannot be (the EBT: logits are log y^ after a descent step)
    assert graph.metadata["approximate"] == bool(getattr(model, "linearization_note", None)), graph.metadata
    _check_identity(graph)  # (a) incoming edges + bias == pre-activation / logit
    _check_ablations(model, dicts, graph)  # (b) edge == the target's drop when the source is removed
    # errors and tokens have no inputs; sources never come from later positions
    assert not graph.adjacency[graph.error_start:graph.logit_start].any()


@pytest.mark.parametrize("arch,kind,activation", [("transformer", "clt", "jumprelu"),
                                                  ("transformer", "skip_transcoder", "relu"),
                                                  ("rwkv", "clt", "topk"), ("mamba", "skip_transcoder", "topk")])
def test_cross_layer_and_skip_transcoders(arch, kind, activation):
    model, tokens, dicts = _setup(arch, kind, activation, seed=1)
    graph = attribute(model, dicts, tokens, progress=False, config=AttributionConfig(batch_size=8))
    _check_identity(graph)
    _check_ablations(model, dicts, graph, seed=1)


def test_replacement_model_reproduces_the_original():
    model, tokens, dicts = _setup("lstm")
    rep = LocalReplacement(model, dicts, tokens)
    out = rep.linear_forward(rep.embed[None], rep.constant_writes()[None], logits=True)
    assert torch.allclose(out["logits"][0], model(tokens)[0], atol=1e-5)
    assert torch.allclose(out["final"][0], rep.final, atol=1e-6)


def test_unreplaced_layer_is_one_error_node_and_stays_exact():
    model, tokens, dicts = _setup("transformer")
    graph = attribute(model, dicts[:1], tokens, progress=False)
    assert graph.metadata["unreplaced_layers"] == [1]
    assert set(graph.active_features[:, 0].tolist()) == {0}
    _check_identity(graph)


def _known_circuit_model():
    """Token X -> feature A (layer 0) -> one attention head moves A's direction one position on ->
    feature B (layer 1) -> logit Z. No LayerNorm; every other weight zero (module test docstring)."""
    model = build_model({"architecture": "transformer", "d_vocab": 6, "n_ctx": 4, "n_layers": 2, "d_model": 8,
                         "positional_embedding_type": "standard",
                         "n_heads": 1, "d_head": 4, "d_mlp": 4, "act_fn": "relu", "normalization_type": None})
    e = torch.eye(8)
    X, Y, Z = 2, 3, 4
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[X], model.W_E[Y] = e[0], e[1]
        model.W_pos[0], model.W_pos[1] = e[6], e[7]
        mlp0, mlp1, attn1 = model.blocks[0].mlp, model.blocks[1].mlp, model.blocks[1].attn
        mlp0.W_in[:, 0], mlp0.W_out[0] = e[0], e[2]  # A: reads e0, writes e2
        attn1.W_Q[0, 7, 0] = 1.0  # queries from position 1 ...
        attn1.W_K[0, 6, 0] = 200.0  # ... match keys at position 0 (pattern ~ one-hot on the previous token)
        attn1.W_V[0, 2, 1], attn1.W_O[0, 1] = 1.0, e[3]  # OV: e2 -> e3
        mlp1.W_in[:, 0], mlp1.W_out[0] = e[3], e[4]  # B: reads e3, writes e4
        model.W_U[:, Z] = e[4]
    dicts = []
    for layer, (reads, writes) in enumerate([(0, 2), (3, 4)]):
        d = build_dictionary(DictionaryConfig("transcoder", d_in=8, n_features=3, activation="relu",
                                              input_hooks=[f"blocks.{layer}.hook_mlp_in"],
                                              output_hooks=[f"blocks.{layer}.hook_mlp_out"]))
        with torch.no_grad():
            d.W_enc.zero_()
            d.W_enc[0, reads, 0] = 1.0
            for w in d.W_dec:
                w.zero_()
            d.W_dec[0][0, 0, writes] = 1.0
        dicts.append(d.eval())
    return model.eval(), dicts, torch.tensor([[X, Y]]), Z


def test_hand_built_circuit_gives_exactly_that_graph():
    model, dicts, tokens, Z = _known_circuit_model()
    rep = LocalReplacement(model, dicts, tokens)
    targets = salient_logits(rep.logits, rep.W_U, rep.b_U, str, max_n_logits=1)
    graph = attribute(model, dicts, tokens, targets=targets, progress=False)
    assert graph.logit_tokens.tolist() == [Z]
    feats = {tuple(f): i for i, f in enumerate(graph.active_features.tolist())}
    A0, B0, B1 = feats[(0, 0, 0)], feats[(1, 0, 0)], feats[(1, 1, 0)]
    assert set(feats) == {(0, 0, 0), (1, 0, 0), (1, 1, 0)}  # A at X's position; B wherever e2 arrives
    assert not rep.errors.abs().max() > 1e-6  # the transcoders are exact on this model
    expected = torch.zeros_like(graph.adjacency)
    expected[A0, graph.token_index(0)] = 1.0  # X's embedding e0 drives A
    expected[B0, A0] = 1.0  # position 0 can only attend to itself
    expected[B1, A0] = 1.0  # the head moves A's write from position 0 to position 1
    expected[graph.logit_index(0), B1] = 1.0 - 1.0 / 6  # demeaned logit: W_U[:, Z] - mean over 6 tokens
    assert torch.allclose(graph.adjacency, expected, atol=1e-5)
    pruned = prune_graph(graph, node_threshold=0.99, edge_threshold=0.99)
    kept = set(pruned.node_mask.nonzero().flatten().tolist())
    assert {A0, B1, graph.token_index(0), graph.logit_index(0)} <= kept and B0 not in kept
    replacement, completeness = graph_scores(graph)
    assert replacement == pytest.approx(1.0) and completeness == pytest.approx(1.0)


def test_pruning_keeps_tokens_and_logits_and_thresholds_order():
    model, tokens, dicts = _setup("mingru")
    graph = attribute(model, dicts, tokens, progress=False)
    loose, tight = prune_graph(graph, 0.95, 0.99), prune_graph(graph, 0.5, 0.9)
    for p in (loose, tight):
        assert p.node_mask[graph.token_start:].all()
        assert not (p.edge_mask & ~(p.node_mask[:, None] & p.node_mask[None, :])).any()
    assert tight.n_nodes <= loose.n_nodes and tight.n_edges <= loose.n_edges
    full = graph_scores(graph)
    pruned = graph_scores(graph, tight.node_mask)
    assert all(0.0 <= s <= 1.0 for s in full + pruned)
    assert pruned[1] <= full[1] + 1e-6  # dropping features can only lose completeness
    with pytest.raises(ValueError, match="node_threshold"):
        prune_graph(graph, node_threshold=1.5)


def test_feature_cap_visits_the_most_influential_features():
    model, tokens, dicts = _setup("transformer")
    full = attribute(model, dicts, tokens, progress=False, config=AttributionConfig(batch_size=4))
    capped = attribute(model, dicts, tokens, progress=False,
                       config=AttributionConfig(batch_size=4, max_feature_nodes=8, rerank_every=1))
    assert capped.n_features == 8 and capped.metadata["n_active_features"] == full.n_features
    # logit rows agree on the shared columns: same edges from tokens and errors
    assert torch.allclose(capped.adjacency[capped.logit_start:, capped.error_start:capped.logit_start],
                          full.adjacency[full.logit_start:, full.error_start:full.logit_start], atol=1e-6)
    # the first visited features are among the most influential on the logits (direct edges rank them)
    direct = full.adjacency[full.logit_start:, :full.n_features].abs().sum(0)
    top = {tuple(full.active_features[i].tolist()) for i in torch.argsort(direct, descending=True)[:4].tolist()}
    chosen = {tuple(f) for f in capped.active_features.tolist()}
    assert top <= chosen


def test_graph_folder_round_trip(tmp_path):
    model, tokens, dicts = _setup("rwkv")
    graph = attribute(model, dicts, tokens, progress=False, prompt="a b c", token_strings=[f"t{i}" for i in range(N_POS)])
    graph.save(tmp_path / "g")
    back = Graph.load(tmp_path / "g")
    assert torch.equal(back.adjacency, graph.adjacency) and torch.equal(back.active_features, graph.active_features)
    assert back.token_strings == graph.token_strings and back.metadata == graph.metadata
    assert torch.equal(back.logit_directions, graph.logit_directions)


def test_dictionaries_of_another_model_are_refused():
    model, tokens, _ = _setup("transformer")
    _, _, other_dicts = _setup("rwkv")  # RWKV's mlp_in is twice as wide
    with pytest.raises(ReplacementMismatch, match="trained on another model"):
        LocalReplacement(model, other_dicts, tokens)
    bad = build_dictionary(DictionaryConfig("transcoder", d_in=32, n_features=8, input_hooks=["blocks.0.hook_resid_pre"],
                                            output_hooks=["blocks.0.hook_mlp_out"]))
    with pytest.raises(ReplacementMismatch, match="hook_mlp_in"):
        LocalReplacement(model, [bad], tokens)
    deep = build_dictionary(DictionaryConfig("transcoder", d_in=32, n_features=8, input_hooks=["blocks.5.hook_mlp_in"],
                                             output_hooks=["blocks.5.hook_mlp_out"]))
    with pytest.raises(ReplacementMismatch, match="layer the model lacks"):
        LocalReplacement(model, [deep], tokens)
    sae = build_dictionary(DictionaryConfig("sae", d_in=32, n_features=8, input_hooks=["blocks.0.hook_mlp_out"],
                                            output_hooks=["blocks.0.hook_mlp_out"]))
    with pytest.raises(ReplacementMismatch, match="transcoders"):
        LocalReplacement(model, [sae], tokens)


def test_models_that_are_not_exactly_linear_are_marked_approximate(monkeypatch):
    from contextlib import nullcontext

    from workbench.attribution import replacement

    model, tokens, dicts = _setup("mamba")
    model.linearization_note = "declared by the architecture"
    graph = attribute(model, dicts, tokens, progress=False)
    assert graph.metadata["approximate"] and graph.metadata["approximate_reason"] == "declared by the architecture"
    del model.linearization_note
    # a gate left live (as if it were not behind a hook): edges become gradient x input and the sums miss
    monkeypatch.setattr(replacement, "frozen_gates", lambda model, gates: nullcontext(gates))
    graph = attribute(model, dicts, tokens, progress=False)
    assert graph.metadata["approximate"] and graph.metadata["identity_error"] > 1e-3
    assert "not behind a gate hook" in graph.metadata["approximate_reason"]


def test_large_graphs_prune_on_their_nonzero_edges():
    from workbench.attribution import prune

    model, tokens, dicts = _setup("transformer")
    graph = attribute(model, dicts, tokens, progress=False)
    dense = prune_graph(graph, 0.8, 0.98)
    old = prune.DENSE_MAX_NODES
    try:
        prune.DENSE_MAX_NODES = 10  # force the sparse path on the same graph
        sparse = prune_graph(graph, 0.8, 0.98)
        assert torch.equal(sparse.node_mask, dense.node_mask) and torch.equal(sparse.edge_mask, dense.edge_mask)
        assert graph_scores(graph, sparse.node_mask) == pytest.approx(graph_scores(graph, dense.node_mask), abs=1e-5)
    finally:
        prune.DENSE_MAX_NODES = old
