"""Compiled RASP models equal the interpreter: exhaustively on small programs in both modes, at every
selector width, and on hypothesis-generated programs; bad programs and inputs give clear errors."""

import itertools
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.rasp import rasp
from workbench.rasp.compile import EmptySelectionWarning, compile_rasp_to_model

VOCAB = ["a", "b", "c"]


def all_inputs(vocab, max_len):
    for n in range(1, max_len + 1):
        yield from (list(xs) for xs in itertools.product(vocab, repeat=n))


def assert_agrees(program, vocab, max_len, causal, inputs=None, dtype=torch.float32):
    compiled = compile_rasp_to_model(program, vocab, max_len, causal=causal, dtype=dtype)
    inputs = list(all_inputs(vocab, max_len)) if inputs is None else inputs
    by_len = {}
    for xs in inputs:
        by_len.setdefault(len(xs), []).append(xs)
    for batch in by_len.values():
        for xs, got in zip(batch, compiled.run_batch(batch)):
            want = rasp.evaluate(program, xs)
            assert same(got, want), (program.label, xs, got, want)
    return compiled


def same(got: list, want: list) -> bool:
    """Equal, numbers within 1e-9 (one rational, two float roundings: 2/3 - 1/3 vs 1/3)."""
    return len(got) == len(want) and all(
        g == w or (isinstance(g, float) and isinstance(w, (int, float)) and math.isclose(g, w, abs_tol=1e-9))
        for g, w in zip(got, want))


def frac_prevs():
    is_a = rasp.numerical(rasp.Map(lambda t: 1 if t == "a" else 0, rasp.tokens)).named("is_a")
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named("prevs")
    return rasp.numerical(rasp.Aggregate(prevs, is_a, default=0)).named("frac_prevs")


def shift_by_one():
    prev = rasp.Select(rasp.indices + 1, rasp.indices, rasp.Comparison.EQ).named("prev")  # key = query - 1
    return rasp.Aggregate(prev, rasp.tokens).named("shifted")


def causal_programs():
    count = rasp.SelectorWidth(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LT)).named("count")
    frac = frac_prevs()
    # a Map on frac_prevs: tracr's value set misses 2/3, 3/4, 2/5 ... and gets these wrong
    big = rasp.Map(lambda f: "hi" if f > 0.5 else "lo", frac).named("frac_big")
    prev_same = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ) & rasp.Select(
        rasp.indices, rasp.indices, rasp.Comparison.LT)
    seen_before = rasp.SelectorWidth(prev_same).named("seen_before")
    pair = rasp.SequenceMap(lambda x, y: f"{x}{y}", rasp.tokens, shift_by_one()).named("pair")
    return [count, frac, big, seen_before, shift_by_one(), pair]


def bidirectional_programs():
    hist = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)).named("hist")
    length = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)).named("length")
    opp = (length - rasp.indices - 1).named("opp_idx")
    reverse = rasp.Aggregate(rasp.Select(rasp.indices, opp, rasp.Comparison.EQ), rasp.tokens).named("reverse")
    smaller = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.LT)).named("smaller")
    not_eq = rasp.SelectorWidth(~rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)).named("not_eq")
    return [hist, reverse, smaller, not_eq]


@pytest.mark.parametrize("index", range(6))
def test_causal_programs_equal_interpreter_in_both_modes(index):
    program = causal_programs()[index]
    for causal in (False, True):
        assert_agrees(program, VOCAB, 4, causal)


@pytest.mark.parametrize("index", range(4))
def test_bidirectional_programs_equal_interpreter(index):
    assert_agrees(bidirectional_programs()[index], VOCAB, 4, causal=False)


def test_float64_numerical_output_is_exact_to_rounding():
    compiled = compile_rasp_to_model(frac_prevs(), ["a", "b"], 6, dtype=torch.float64)
    for xs in all_inputs(["a", "b"], 6):
        raw = compiled.apply(["BOS", *xs]).logits[1:, 0].tolist()
        want = rasp.evaluate(frac_prevs(), xs)
        assert max(abs(r - w) for r, w in zip(raw, want)) < 1e-12


def test_selector_width_is_right_at_every_width_up_to_max_seq_len():
    length = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)).named("length")
    count = rasp.SelectorWidth(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)).named("count")
    n = 24
    lengths = compile_rasp_to_model(length, ["x"], n)
    counts = compile_rasp_to_model(count, ["x"], n, causal=True)
    for k in range(1, n + 1):
        assert lengths.apply(["BOS", *["x"] * k]).outputs == [k] * k
        assert counts.run_batch([["x"] * k])[0] == list(range(1, k + 1))


def test_layers_residual_and_circuit_of_reverse():
    reverse = bidirectional_programs()[1]
    compiled = compile_rasp_to_model(reverse, VOCAB, 4)
    # length: head + MLP (layer 0); length - indices: MLP (layer 1); opp_idx: MLP (layer 2); reverse: head
    assert compiled.model.cfg.n_layers == 4
    circuit = compiled.circuit
    assert circuit["length"] == {"reads": ["tokens"], "kind": "attention+mlp", "layer": 0, "heads": [(0, 0)],
                                 "mlp": 0}
    assert circuit["opp_idx"]["mlp"] == 2 and circuit["opp_idx"]["kind"] == "mlp"
    assert circuit["reverse"]["heads"] == [(3, 0)] and sorted(circuit["reverse"]["reads"]) == [
        "indices", "opp_idx", "tokens"]
    assert {"reverse:a", "tokens:c", "indices:3", "length:4", "one", "bos"} <= set(compiled.residual_labels)
    result = compiled.apply(["BOS", "a", "b", "c"])
    assert result.decoded == ["BOS", "c", "b", "a"]
    resid = result.cache["blocks.1.hook_resid_post"][0]
    seen = compiled.decode("blocks.1.hook_resid_post", resid)
    assert seen["length"] == [None, 3, 3, 3] and "reverse" not in seen and "opp_idx" not in seen
    assert compiled.decode("blocks.3.hook_attn_out", result.cache["blocks.3.hook_attn_out"][0]) == {
        "reverse": [None, "c", "b", "a"]}


# ---------------------------------------------------------------- hypothesis: random programs

MAPS = [lambda x: (x + 1) % 3, lambda x: x % 2, lambda x: min(x, 2)]
SEQ_MAPS = [lambda x, y: (x + y) % 3, lambda x, y: max(x, y), lambda x, y: int(x == y)]
NUM_MAPS = [lambda x: 1 if x == 0 else 0, lambda x: x % 2]
COMPARISONS = list(rasp.Comparison)


@st.composite
def random_programs(draw):
    """Compositions of Map, SequenceMap, Select, Aggregate, SelectorWidth over tokens in {0, 1, 2}."""
    cats, nums, nullable = [rasp.tokens, rasp.indices], [], set()
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["map", "seqmap", "width", "agg_cat", "agg_num"]))
        pick = st.sampled_from(cats)
        if kind == "map":
            x = draw(pick)
            cats.append(rasp.Map(draw(st.sampled_from(MAPS)), x))
        elif kind == "seqmap":
            a, b = draw(pick), draw(pick)
            if a is b:
                continue
            cats.append(rasp.SequenceMap(draw(st.sampled_from(SEQ_MAPS)), a, b))
        elif kind == "width":
            sel = rasp.Select(draw(pick), draw(pick), draw(st.sampled_from(COMPARISONS)))
            sel = ~sel if draw(st.booleans()) else sel  # Not of an And over different SOps is refused
            if draw(st.booleans()):
                sel = sel & rasp.Select(rasp.indices, rasp.indices, draw(st.sampled_from(COMPARISONS)))
            cats.append(rasp.SelectorWidth(sel))
        elif kind == "agg_cat":  # keys = indices, EQ: at most one key selected, so categorical is defined
            default = draw(st.sampled_from([None, 0]))
            agg = rasp.Aggregate(rasp.Select(rasp.indices, draw(pick), rasp.Comparison.EQ), draw(pick), default)
            cats.append(agg)
            if default is None:
                nullable.add(agg.label)
        else:
            source = draw(st.sampled_from([c for c in cats if c.label not in nullable]))
            value = rasp.numerical(rasp.Map(draw(st.sampled_from(NUM_MAPS)), source))
            sel = rasp.Select(draw(pick), draw(pick), draw(st.sampled_from(COMPARISONS)))
            mean = rasp.numerical(rasp.Aggregate(sel, value, default=0))
            nums.append(mean)
            cats.append(rasp.Map(lambda f: int(f * 4), mean))
        nullable.update(c.label for c in cats[-1:] if any(
            getattr(ch, "label", None) in nullable for ch in cats[-1].children))
    return draw(st.sampled_from(cats[2:] + nums)) if len(cats) > 2 or nums else rasp.Map(MAPS[0], rasp.tokens)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_programs(), st.booleans())
def test_random_programs_compile_and_agree(program, causal):
    inputs = list(all_inputs([0, 1, 2], 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptySelectionWarning)
        try:
            assert_agrees(program, [0, 1, 2], 4, causal, inputs)
        except ValueError as err:  # only the causal refusal is allowed, and it must name a selector
            assert causal and "cannot compile causally: selector" in str(err), err


# ---------------------------------------------------------------- static errors and bad input


def test_causal_refuses_forward_looking_selector_by_name():
    hist = bidirectional_programs()[0]
    with pytest.raises(ValueError, match=r"cannot compile causally: selector 'select_\d+' \(used by "
                                         r"SelectorWidth\('hist'\)\) may select key index 1 for query index 0"):
        compile_rasp_to_model(hist, VOCAB, 4, causal=True)
    nxt = rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices + 1, rasp.Comparison.EQ).named("next"),
                         rasp.tokens).named("next_tok")
    with pytest.raises(ValueError, match="selector 'next' .*next_tok"):
        compile_rasp_to_model(nxt, VOCAB, 4, causal=True)


def test_empty_selection_is_reported_statically():
    with pytest.warns(EmptySelectionWarning, match=r"Aggregate\('shifted'\) may select nothing \(selector 'prev'\)"):
        compile_rasp_to_model(shift_by_one(), VOCAB, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptySelectionWarning)  # LEQ on indices always selects itself
        compile_rasp_to_model(rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ),
                                             rasp.tokens, default=None), VOCAB, 3)
    is_a = rasp.numerical(rasp.Map(lambda t: int(t == "a"), rasp.tokens))
    empty_mean = rasp.numerical(rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LT),
                                               is_a)).named("mean_before")
    with pytest.raises(ValueError, match="numerical Aggregate\\('mean_before'\\) may select nothing"):
        compile_rasp_to_model(empty_mean, VOCAB, 3)


def test_invalid_programs_raise_naming_the_expression():
    sel = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    with pytest.raises(ValueError, match="'mean_tok'.*numerical Aggregate of categorical sop 'tokens'"):
        compile_rasp_to_model(rasp.numerical(rasp.Aggregate(sel, rasp.tokens, default=0)).named("mean_tok"),
                              VOCAB, 3)
    odd = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ) | sel
    with pytest.raises(ValueError, match="cannot compile selector SelectorOr\\('either'\\)"):
        compile_rasp_to_model(rasp.SelectorWidth(odd.named("either")), VOCAB, 3)
    with pytest.raises(ValueError, match="the program must be an SOp"):
        compile_rasp_to_model(sel, VOCAB, 3)


def test_bad_inputs_give_clear_errors():
    compiled = compile_rasp_to_model(bidirectional_programs()[0], VOCAB, 3)
    with pytest.raises(ValueError, match=r"unknown token 'z'; the vocabulary is \['a', 'b', 'c'\]"):
        compiled.apply(["BOS", "a", "z"])
    with pytest.raises(ValueError, match="input has 4 tokens, more than max_seq_len=3"):
        compiled.apply(["BOS", "a", "b", "c", "a"])
    with pytest.raises(ValueError, match="must start with the BOS token 'BOS'"):
        compiled.apply(["a", "b"])
    with pytest.raises(KeyError, match="cannot decode hook 'blocks.7.hook_resid_post'"):
        compiled.decode("blocks.7.hook_resid_post", torch.zeros(compiled.residual.d_model))
    with pytest.raises(ValueError, match="the BOS token 'a' is also in the vocabulary"):
        compile_rasp_to_model(bidirectional_programs()[0], VOCAB, 3, compiler_bos="a")


def test_ten_thousand_random_inputs_at_length_eight():
    import random

    rng = random.Random(0)
    hist = bidirectional_programs()[0]
    frac = frac_prevs()
    # histogram plus a lookup on the running fraction of a's (means k/n for every n <= 8 must be exact)
    scaled = rasp.Map(lambda f: int(f * 8), frac).named("frac_scaled")
    mixed = rasp.SequenceMap(lambda h, f: h + f, hist, scaled).named("mixed")
    inputs = [[rng.choice(VOCAB) for _ in range(rng.randint(1, 8))] for _ in range(10_000)]
    assert_agrees(mixed, VOCAB, 8, causal=False, inputs=inputs)


def test_pair_balance_difference_of_means_is_exact():
    opens = rasp.numerical(rasp.Map(lambda t: int(t == "("), rasp.tokens))
    closes = rasp.numerical(rasp.Map(lambda t: int(t == ")"), rasp.tokens))
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    balance = rasp.numerical(rasp.LinearSequenceMap(rasp.numerical(rasp.Aggregate(prevs, opens, default=0)),
                                                    rasp.numerical(rasp.Aggregate(prevs, closes, default=0)), 1, -1))
    below = rasp.Map(lambda b: b < 0, balance.named("balance")).named("below_zero")
    for causal in (False, True):
        assert_agrees(balance, ["(", ")"], 5, causal)
        assert_agrees(below, ["(", ")"], 5, causal)
