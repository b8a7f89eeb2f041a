"""workbench.compare: sensitivity/specificity (SEEDS test vectors), probes, head matching, circuits."""

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS

from workbench.compare.heads import match_heads, overlap_scores, selector_attention
from workbench.compare.probes import gather_positions, probe_table, residual_streams
from workbench.compare.sensitivity import (
    best_feature_per_value,
    binary_rates,
    confusion_matrix,
    feature_vs_variable,
    features_vs_variable,
    one_vs_rest,
)
from workbench.compare.variables import AttentionSelector, Variable, categorical_classes

# --- sensitivity / specificity ---------------------------------------------------------------------


def test_one_vs_rest_on_the_talks_three_class_matrix():
    # rows = predicted, columns = truth (Troll 2, Gore Police, Cool as Ice), SEEDS.md
    table = one_vs_rest([[12, 102, 93], [112, 23, 77], [83, 92, 17]], ["Troll 2", "Gore Police", "Cool as Ice"])
    troll, gore, ice = (table.iloc[i] for i in range(3))
    assert (troll.tp, troll.fn, troll.fp, troll.tn) == (12, 195, 195, 209)
    assert round(troll.sensitivity, 2) == 0.06 and troll.sensitivity == pytest.approx(12 / 207)
    assert round(troll.specificity, 2) == 0.52
    assert round(gore.sensitivity, 2) == 0.11 and round(gore.specificity, 2) == 0.52
    assert round(ice.sensitivity, 3) == 0.091 and round(ice.specificity, 3) == 0.587


def test_binary_rates_on_the_talks_example():
    sens, spec = binary_rates(139, 32, 112, 20)
    assert round(float(sens), 2) == 0.81 and round(float(spec), 2) == 0.85


def test_confusion_matrix_rows_are_predictions():
    m = confusion_matrix(predicted=["a", "a", "b", "b"], truth=["a", "b", "b", "b"], labels=["a", "b"])
    assert m.tolist() == [[1, 1], [0, 2]]  # one 'b' predicted as 'a' sits in row a, column b
    table = one_vs_rest(m, ["a", "b"])
    assert table.sensitivity.tolist() == [1.0, pytest.approx(2 / 3)]
    assert table.specificity.tolist() == [pytest.approx(2 / 3), 1.0]
    with pytest.raises(ValueError, match="'c' is not among the labels"):
        confusion_matrix(["c"], ["a"], ["a", "b"])


def test_feature_vs_variable_hand_case():
    acts = [0.0, 2.0, 3.0, 0.0, 1.0, 0.0]
    values = ["x", "x", "x", "y", "y", "z"]
    table = feature_vs_variable(acts, values, threshold=0.5).set_index("value")
    # fires on 1, 2, 4: for x: TP 2, FN 1, FP 1, TN 2
    assert table.loc["x", ["tp", "fn", "fp", "tn"]].tolist() == [2, 1, 1, 2]
    assert table.loc["x", "sensitivity"] == pytest.approx(2 / 3)
    assert table.loc["x", "specificity"] == pytest.approx(2 / 3)
    assert table.loc["z", "sensitivity"] == 0.0 and table.loc["z", "specificity"] == pytest.approx(2 / 5)


def test_best_feature_per_value_picks_the_detector():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 3, 300)
    acts = rng.random((300, 4)) * 0.1
    acts[:, 2] += values == 1  # feature 2 detects value 1 exactly
    best = best_feature_per_value(features_vs_variable(acts, values.tolist(), threshold=0.5)).set_index("value")
    assert best.loc[1, "feature"] == 2
    assert best.loc[1, "sensitivity"] == 1.0 and best.loc[1, "specificity"] == 1.0
    assert best.loc[0, "youden_j"] == 0.0  # nothing fires for value 0


# --- probes ----------------------------------------------------------------------------------------


def _planted_streams(n_inputs=60, length=5, d=16, seed=0):
    """Layer 1 holds a categorical variable linearly (plus noise); layer 0 is noise."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4, (n_inputs, length))
    directions = rng.normal(size=(4, d))
    noise = rng.normal(scale=0.3, size=(2, n_inputs, length + 1, d))
    streams = {0: torch.tensor(noise[0], dtype=torch.float32),
               1: torch.tensor(noise[1], dtype=torch.float32)}
    streams[1][:, 1:] += torch.tensor(directions[values], dtype=torch.float32)
    flat = values.reshape(-1).tolist()
    variables = {"planted": Variable("planted", False, flat, categorical_classes(flat)),
                 "size": Variable("size", True, [float(v) * 0.5 for v in flat])}
    return streams, variables, [length] * n_inputs


def test_probe_recovers_a_planted_variable():
    streams, variables, lengths = _planted_streams()
    table = probe_table(streams, variables, lengths).set_index(["layer", "variable"])
    assert table.loc[(1, "planted"), "score"] > 0.95
    assert table.loc[(0, "planted"), "score"] < 0.5  # chance is about 0.25
    assert 0.2 < table.loc[(1, "planted"), "baseline"] < 0.4
    assert table.loc[(1, "size"), "metric"] == "r2" and table.loc[(1, "size"), "score"] > 0.6
    assert table.loc[(0, "size"), "score"] < 0.2


def test_gather_positions_skips_bos_and_checks_lengths():
    stream = torch.arange(2 * 4).reshape(2, 4, 1).float()
    assert gather_positions(stream, [2, 3]).reshape(-1).tolist() == [1, 2, 5, 6, 7]
    with pytest.raises(ValueError, match="do not fit"):
        gather_positions(stream, [4, 4])


@pytest.mark.parametrize("arch", ["transformer", "xlstm"])
def test_residual_streams_on_any_architecture(arch):
    from workbench.architectures import build_model, model_config

    model = build_model(model_config(arch, d_vocab=10, n_ctx=8, **TINY_CONFIGS[arch])).eval()
    streams = residual_streams(model, torch.randint(0, 10, (3, 6)), batch_size=2)
    assert sorted(streams) == [0, 1, 2]  # entering layers 0 and 1, then after layer 1
    assert streams[2].shape == (3, 6, model.cfg.d_model)
    assert not torch.equal(streams[0], streams[2])


# --- head matching ---------------------------------------------------------------------------------


def test_selector_attention_normalises_rows_and_defaults_to_bos():
    matrix = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 1]], dtype=bool)
    target, mask = selector_attention([matrix], n_pos=5, offset=1)
    assert target[0, 1].tolist() == [0, 0.5, 0.5, 0, 0]
    assert target[0, 2].tolist() == [1, 0, 0, 0, 0]  # selects nothing: <bos>
    assert mask[0].tolist() == [False, True, True, True, False]
    assert overlap_scores(target[:, None, None], target, mask).item() == pytest.approx(1.0)


def test_head_matching_finds_a_planted_head():
    rng = np.random.default_rng(1)
    n, length, pos = 20, 6, 7
    matrices = [np.tril(rng.random((length, length)) < 0.4) for _ in range(n)]
    target, _ = selector_attention(matrices, pos, offset=1)
    patterns = torch.softmax(torch.randn(n, 2, 3, pos, pos) * 2, dim=-1)
    patterns[:, 1, 2] = 0.9 * target + 0.1 * patterns[:, 1, 2]  # L1H2 is (almost) the selector
    table = match_heads([AttentionSelector("prev", "agg", matrices)], patterns)
    row = table.iloc[0]
    assert row.best_head == "L1H2" and row.score > 0.85
    assert row.runner_up != "L1H2" and row.runner_up_score < 0.6


# --- interpreter variables -------------------------------------------------------------------------


def _hist_program():
    from workbench.rasp import rasp

    same = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same")
    hist = rasp.SelectorWidth(same).named("hist")
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named("prevs")
    is_x = rasp.numerical(rasp.Map(lambda t: 1 if t == "x" else 0, rasp.tokens)).named("is_x")
    frac = rasp.numerical(rasp.Aggregate(prevs, is_x, default=0)).named("frac")
    return rasp.SequenceMap(lambda a, b: a + b, hist, frac).named("out")


def test_variables_and_selectors_from_the_interpreter():
    from workbench.compare.variables import evaluate_variables, selector_matrices

    variables = evaluate_variables(_hist_program(), [["x", "y", "x"], ["y", "y"]], include_inputs=False)
    assert sorted(variables) == ["frac", "hist", "is_x", "out"]
    assert variables["hist"].values == [2, 1, 2, 2, 2] and variables["hist"].codes().tolist() == [1, 0, 1, 1, 1]
    assert variables["frac"].numerical and variables["frac"].codes().tolist() == pytest.approx([1, 0.5, 2 / 3, 0, 0])
    selectors = {s.selector: s for s in selector_matrices(_hist_program(), [["x", "y", "x"]])}
    assert selectors["same"].consumer == "hist"
    assert selectors["prevs"].matrices[0].astype(int).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


# --- circuit recovery (pieces that need no compiler) -----------------------------------------------


def test_exact_transcoders_reproduce_relu_mlps():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from workbench.compare.circuit import exact_transcoders, transcoder_fvu

    cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=6, d_head=4, n_heads=2, d_mlp=16, d_vocab=7,
                                  act_fn="relu", normalization_type=None, seed=0)
    model = HookedTransformer(cfg)
    model.set_use_hook_mlp_in(True)
    for p in model.parameters():  # transformer_lens starts biases at 0; exactness must hold with them too
        torch.nn.init.normal_(p, std=0.3)
    transcoders = exact_transcoders(model)
    errors = transcoder_fvu(model, transcoders, torch.randint(0, 7, (4, 6)))
    assert len(errors) == 2 and max(errors) < 1e-10


def test_true_edges_pass_through_attention():
    from workbench.compare.circuit import EMBED, LOGITS, true_edges

    # hist is written by an MLP (selector width); frac is an attention aggregate of the MLP is_x
    edges = true_edges(_hist_program(), {"hist", "is_x", "out", EMBED, LOGITS})
    assert edges == {(EMBED, "hist"), (EMBED, "is_x"), ("is_x", "out"), ("hist", "out"), ("out", LOGITS)}


def test_recovery_scores_and_auroc():
    from workbench.compare.circuit import auroc, recovery_scores

    assert auroc(np.array([0.9, 0.8, 0.1]), np.array([True, False, False])) == 1.0
    assert auroc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    weights = {("embed", "a"): 0.9, ("embed", "b"): 0.005, ("a", "b"): 0.6, ("b", "logits"): 0.7,
               ("a", "logits"): 0.2, ("embed", "logits"): 0.0}
    layer_of = {"embed": -1, "a": 0, "b": 1, "logits": 9}
    truth = {("embed", "a"), ("a", "b"), ("b", "logits")}
    scores = recovery_scores(weights, truth, layer_of, threshold=0.01)
    assert scores["candidates"] == 6 and scores["predicted_edges"] == 4
    assert scores["precision"] == 0.75 and scores["recall"] == 1.0
    assert scores["auroc"] == 1.0


def test_true_edges_with_selectors():
    from workbench.compare.circuit import EMBED, LOGITS, true_edges
    from workbench.rasp import rasp

    is_x = rasp.numerical(rasp.Map(lambda t: 1 if t == "x" else 0, rasp.tokens)).named("is_x")
    first = rasp.Map(lambda t: t == "x", rasp.tokens).named("first")
    same = rasp.Select(first, first, rasp.Comparison.EQ).named("same")
    program = rasp.numerical(rasp.Aggregate(same, is_x, default=0)).named("share")
    nodes = {"is_x", "first", EMBED, LOGITS}
    assert true_edges(program, nodes) == {(EMBED, "is_x"), (EMBED, "first"), ("is_x", LOGITS)}
    assert ("first", LOGITS) in true_edges(program, nodes, value_paths_only=False)  # the selector's query


def test_circuit_recovery_on_a_compiled_program():
    from workbench.compare.run import compiled_circuit
    from workbench.rasp import rasp

    same = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same")
    capped = rasp.Map(lambda h: min(h, 3), rasp.SelectorWidth(same).named("hist")).named("capped")
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named("prevs")
    is_x = rasp.numerical(rasp.Map(lambda t: 1 if t == "x" else 0, rasp.tokens)).named("is_x")
    frac = rasp.numerical(rasp.Aggregate(prevs, is_x, default=0)).named("frac")
    high = rasp.Map(lambda f: 1 if f > 0.5 else 0, frac).named("frac_hi")
    program = rasp.SequenceMap(lambda a, b: a + b, capped, high).named("out")
    table = compiled_circuit(program, [["x", "y", "x", "z"], ["y", "y", "x", "z"]]).set_index("edges")
    row = table.loc["all"]
    assert row.max_transcoder_fvu < 1e-8  # the compiled MLPs' transcoders are exact
    assert row.true == ("capped->out, embed->hist, embed->is_x, frac_hi->out, hist->capped, is_x->frac_hi, "
                        "out->logits")
    assert row.recall == 1.0 and row.precision >= 0.8 and row.auroc > 0.9
    inner = table.loc["between variables"]
    assert inner.precision == 1.0 and inner.recall == 1.0 and inner.auroc == 1.0
