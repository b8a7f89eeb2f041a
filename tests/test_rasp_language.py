"""The RASP language and interpreter against hand-computed outputs; the validator names bad expressions."""

import pytest

from workbench.rasp import rasp


def test_tokens_indices_map_sequencemap_full():
    xs = [3, 1, 2]
    assert rasp.evaluate(rasp.tokens, xs) == [3, 1, 2]
    assert rasp.evaluate(rasp.indices, xs) == [0, 1, 2]
    assert rasp.evaluate(rasp.Map(lambda x: x * 10, rasp.tokens), xs) == [30, 10, 20]
    assert rasp.evaluate(rasp.SequenceMap(lambda a, b: a - b, rasp.tokens, rasp.indices), xs) == [3, 0, 0]
    assert rasp.evaluate(rasp.LinearSequenceMap(rasp.tokens, rasp.indices, 2, -1), xs) == [6, 1, 2]
    assert rasp.evaluate(rasp.Full(7), xs) == [7, 7, 7]
    assert rasp.ConstantSOp is rasp.Full
    assert rasp.evaluate(rasp.tokens + rasp.indices, xs) == [3, 2, 4]
    assert rasp.evaluate(rasp.tokens == 1, xs) == [False, True, False]
    assert rasp.evaluate(5 - rasp.indices, xs) == [5, 4, 3]


def test_select_calls_predicate_with_key_then_query():
    sel = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LT)  # key < query
    assert rasp.evaluate(sel, "abc") == [[False, False, False], [True, False, False], [True, True, False]]
    assert rasp.Comparison.GT(2, 1) and not rasp.Comparison.GT(1, 2)
    assert rasp.Comparison.TRUE(None, 1) and not rasp.Comparison.FALSE(1, 1)


def test_selector_combinators_and_operators():
    lt = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LT)
    eq = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)
    xs = ["a", "b", "a"]
    assert rasp.evaluate(rasp.SelectorWidth(lt & eq), xs) == [0, 0, 1]
    assert rasp.evaluate(rasp.SelectorWidth(lt | eq), xs) == [2, 2, 3]
    assert rasp.evaluate(rasp.SelectorWidth(~lt), xs) == [3, 2, 1]
    assert isinstance(lt & eq, rasp.SelectorAnd) and isinstance(lt | eq, rasp.SelectorOr)
    assert isinstance(~lt, rasp.SelectorNot)


def test_histogram_count_shift_and_frac_prevs_by_hand():
    hist = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ))
    assert rasp.evaluate(hist, list("abaca")) == [3, 1, 3, 1, 3]
    count = rasp.SelectorWidth(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LT))
    assert rasp.evaluate(count, "xyz") == [0, 1, 2]
    shift_sel = rasp.Select(rasp.indices, rasp.Map(lambda i: i - 1, rasp.indices), rasp.Comparison.EQ)
    assert rasp.evaluate(rasp.Aggregate(shift_sel, rasp.tokens), list("abc")) == [None, "a", "b"]
    assert rasp.evaluate(rasp.Aggregate(shift_sel, rasp.tokens, default="_"), list("abc")) == ["_", "a", "b"]
    is_x = rasp.numerical(rasp.Map(lambda t: 1 if t == "x" else 0, rasp.tokens))
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    frac = rasp.numerical(rasp.Aggregate(prevs, is_x, default=0))
    assert rasp.evaluate(frac, list("xyxx")) == [1.0, 0.5, 2 / 3, 0.75]


def test_none_flows_through_maps():
    shift = rasp.Aggregate(rasp.Select(rasp.indices + 1, rasp.indices, rasp.Comparison.EQ), rasp.tokens)
    assert rasp.evaluate(rasp.Map(lambda t: t.upper(), shift), list("ab")) == [None, "A"]


def test_labels_are_unique_and_named_sets_them():
    a, b = rasp.Map(abs, rasp.tokens), rasp.Map(abs, rasp.tokens)
    assert a.label != b.label and a.label.startswith("map_")
    named = a.named("absval")
    assert named.label == "absval" and a.label != "absval"
    assert rasp.tokens.label == "tokens" and rasp.indices.label == "indices"
    assert rasp.is_numerical(rasp.numerical(a)) and rasp.is_categorical(a)
    assert rasp.get_encoding(rasp.numerical(a).named("n")) is rasp.Encoding.NUMERICAL


def test_map_of_unnamed_map_fuses_but_named_map_stays():
    inner = rasp.Map(lambda x: x + 1, rasp.tokens)
    assert rasp.Map(lambda x: x * 2, inner).inner is rasp.tokens
    kept = inner.named("plus_one")
    fused_not = rasp.Map(lambda x: x * 2, kept)
    assert fused_not.inner is kept
    assert rasp.evaluate(fused_not, [1, 2]) == [4, 6]


def test_categorical_aggregate_of_different_values_names_the_expression():
    agg = rasp.Aggregate(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE), rasp.tokens).named("bad")
    with pytest.raises(ValueError, match="'bad'.*different values"):
        rasp.evaluate(agg, ["a", "b"])


def test_validator_names_the_offending_expression():
    sel = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    bad = rasp.numerical(rasp.Aggregate(sel, rasp.tokens, default=0)).named("mean_tok")
    with pytest.raises(ValueError, match="'mean_tok'.*numerical Aggregate of categorical sop 'tokens'"):
        rasp.validate(bad)
    num = rasp.numerical(rasp.Map(float, rasp.tokens)).named("num")
    with pytest.raises(ValueError, match="'cat_agg'.*categorical Aggregate of numerical sop 'num'"):
        rasp.validate(rasp.Aggregate(sel, num).named("cat_agg"))
    with pytest.raises(ValueError, match="'sel_num'.*keys 'num' are numerical"):
        rasp.validate(rasp.Select(num, rasp.indices, rasp.Comparison.EQ).named("sel_num"))
    twin = rasp.Map(abs, rasp.indices).named("num")
    with pytest.raises(ValueError, match="two different expressions are named 'num'"):
        rasp.validate(rasp.SequenceMap(lambda a, b: a, num, twin))


def test_constructors_reject_wrong_kinds_by_name():
    sop = rasp.Map(abs, rasp.tokens).named("absval")
    with pytest.raises(ValueError, match="SelectorWidth: its selector must be a Selector, got Map absval"):
        rasp.SelectorWidth(sop)
    with pytest.raises(ValueError, match="Aggregate: its selector must be a Selector"):
        rasp.Aggregate(sop, sop)
    with pytest.raises(ValueError, match="Select: its predicate must be a Comparison"):
        rasp.Select(rasp.tokens, rasp.tokens, "EQ")
    with pytest.raises(ValueError, match="Map: f must be callable"):
        rasp.Map(3, rasp.tokens)
    with pytest.raises(ValueError, match="encoding must be one of"):
        rasp.annotate(sop, encoding="numerical")
