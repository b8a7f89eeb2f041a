"""Graph validation by intervention, the per-row feature edits it batches, and the final-norm fold of
the unembedding that makes a Transformer graph's logit targets the model's logits."""

from __future__ import annotations

import pytest
import torch
from test_attribution import _setup

from workbench.attribution.attribute import AttributionConfig, attribute
from workbench.attribution.replacement import unembedding
from workbench.interventions.features import FeatureEdit, FeatureSplice, graph_prediction, logit_targets
from workbench.interventions.validation import top_features, validate_graph


def _trained_looking_final_norm(model) -> None:
    """Untrained models have ln_final w = 1, b = 0, which hides a missing fold; give them other values."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.ln_final.w.copy_(1 + 0.5 * torch.rand(model.ln_final.w.shape, generator=g))
        model.ln_final.b.copy_(0.3 * torch.randn(model.ln_final.b.shape, generator=g))


def test_unembedding_maps_hook_final_to_the_logits_with_the_final_norm_folded_in():
    model, tokens, _ = _setup("transformer")
    _trained_looking_final_norm(model)
    logits, cache = model.run_with_cache(tokens)
    W_U, b_U = unembedding(model)
    assert torch.allclose(cache["hook_final"] @ W_U + b_U, logits, atol=1e-5)


@pytest.mark.parametrize(("arch", "kind"), [("transformer", "transcoder"), ("mamba", "clt"), ("rwkv", "transcoder")])
def test_validation_frozen_pass_equals_the_graph_and_rows_batch_exactly(arch, kind):
    model, tokens, dicts = _setup(arch, kind)
    if arch == "transformer":
        _trained_looking_final_norm(model)
    graph = attribute(model, dicts, tokens, progress=False, config=AttributionConfig(batch_size=16))
    record = validate_graph(model, dicts, graph, top_k=6)
    assert record["n_features"] == len(record["predicted"]) == len(record["actual"]) >= 2
    # the frozen pass is the graph's own linear model: any deviation is a bug in the machinery
    assert record["frozen_max_deviation"] < 1e-4 * max(1.0, max(abs(v) for v in record["predicted"]))
    assert -1.0 <= record["pearson"] <= 1.0 and -1.0 <= record["spearman"] <= 1.0
    # per-row edits in one pass equal one pass per edit
    nodes = top_features(graph, 4)
    splice = FeatureSplice(model, dicts, tokens.expand(len(nodes), -1))
    edits = [FeatureEdit(int(graph.active_features[n, 0]), int(graph.active_features[n, 2]), "ablate",
                         positions=(int(graph.active_features[n, 1]),), rows=(r,)) for r, n in enumerate(nodes)]
    batched = splice.run(edits, "live")
    single = FeatureSplice(model, dicts, tokens)
    for r, e in enumerate(edits):
        alone = single.run([FeatureEdit(e.layer, e.index, "ablate", positions=e.positions)], "live")
        assert torch.allclose(batched[r], alone[0], atol=1e-5)
    # and the predicted effects are the graph's own prediction for each single ablation
    for n, predicted in zip(top_features(graph, 6), record["predicted"], strict=True):
        layer, pos, index = graph.active_features[n].tolist()
        expected = graph_prediction(graph, [FeatureEdit(layer, index, "ablate", positions=(pos,))])[1][0]
        assert float(expected) == pytest.approx(predicted, abs=1e-9)
    with torch.no_grad():
        clean = float(logit_targets(graph, model(tokens))[0, 0])
    assert clean == pytest.approx(float(logit_targets(graph, single.clean_logits)[0, 0]))


def test_feature_edit_rows_out_of_range_is_an_error():
    model, tokens, dicts = _setup("transformer")
    splice = FeatureSplice(model, dicts, tokens)
    with pytest.raises(ValueError, match="batch row 3 out of range"):
        splice.run([FeatureEdit(0, 0, "ablate", rows=(3,))])
