"""The RASP reference interpreter (``rasp.evaluate``): a program's value on one input, by tracr's semantics.

1. Visit the expressions children first (``rasp.walk``), each evaluated once.
2. An SOp's value is a list (one value per position), a selector's a [query][key] matrix of bools.
3. Aggregate: numerical -> the mean of the selected values; categorical -> the one selected value (equal
   values count as one; different values are an error naming the aggregate); nothing selected -> default.
4. Map and SequenceMap pass ``None`` through (an empty aggregate's None stays None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench.rasp import rasp


def evaluate(program: rasp.RASPExpr, xs: Sequence[Any]) -> list[Any]:
    """The program's value on input ``xs``: a list per SOp, a [query][key] matrix per selector."""
    return _evaluate_walk(program, xs)[-1][1]


def evaluate_each(program: rasp.RASPExpr, xs: Sequence[Any]) -> dict[str, Any]:
    """Every expression's value on ``xs`` from one pass, keyed by label (the first expression of a label,
    as ``.named`` copies of one node share it)."""
    out: dict[str, Any] = {}
    for expr, value in _evaluate_walk(program, xs):
        out.setdefault(expr.label, value)
    return out


def _evaluate_walk(program: rasp.RASPExpr, xs: Sequence[Any]) -> list[tuple[rasp.RASPExpr, Any]]:
    """(expression, value) for every expression, children first, so the program itself is last."""
    memo: dict[int, Any] = {}
    exprs = rasp.walk(program)
    for expr in exprs:
        memo[id(expr)] = _eval_one(expr, list(xs), memo)
    return [(expr, memo[id(expr)]) for expr in exprs]


def _eval_one(expr: rasp.RASPExpr, xs: list, memo: dict[int, Any]) -> Any:
    val = (lambda e: memo[id(e)])
    n = len(xs)
    if isinstance(expr, rasp.TokensType):
        return list(xs)
    if isinstance(expr, rasp.IndicesType):
        return list(range(n))
    if isinstance(expr, rasp.Full):
        return [expr.value] * n
    if isinstance(expr, rasp.Map):
        return [None if x is None else expr.f(x) for x in val(expr.inner)]
    if isinstance(expr, rasp.SequenceMap):
        return [None if a is None or b is None else expr.f(a, b) for a, b in zip(val(expr.fst), val(expr.snd))]
    if isinstance(expr, rasp.Select):
        keys, queries = val(expr.keys), val(expr.queries)
        return [[expr.predicate(k, q) for k in keys] for q in queries]
    if isinstance(expr, rasp.SelectorOr):
        return [[a or b for a, b in zip(ra, rb)] for ra, rb in zip(val(expr.fst), val(expr.snd))]
    if isinstance(expr, rasp.SelectorAnd):
        return [[a and b for a, b in zip(ra, rb)] for ra, rb in zip(val(expr.fst), val(expr.snd))]
    if isinstance(expr, rasp.SelectorNot):
        return [[not a for a in row] for row in val(expr.inner)]
    if isinstance(expr, rasp.SelectorWidth):
        return [sum(row) for row in val(expr.selector)]
    if isinstance(expr, rasp.Aggregate):
        values = val(expr.sop)
        return [_aggregate(expr, [v for v, s in zip(values, row) if s]) for row in val(expr.selector)]
    raise ValueError(f"cannot evaluate {expr!r}: not a RASP expression")


def _aggregate(expr: rasp.Aggregate, selected: list) -> Any:
    if not selected:
        return expr.default
    if rasp.is_numerical(expr):
        if any(v is None for v in selected):
            raise ValueError(f"{expr!r}: numerical Aggregate selected a None value")
        return sum(selected) / len(selected)
    distinct = set(selected)
    if len(distinct) > 1:
        raise ValueError(f"{expr!r}: categorical Aggregate selected different values {sorted(map(repr, distinct))}; "
                         f"it needs a selector that picks one value (or equal values)")
    return selected[0]
