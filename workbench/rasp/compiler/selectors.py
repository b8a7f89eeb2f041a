"""Selectors as attention scores: a bilinear form on residual dimensions, selected pairs at exactly ``top``.

A ScoreForm maps (query dim, key dim) -> weight; at a token query and token key its value is
sum w * x_q[query dim] * x_k[key dim]. Invariant: selected pairs score exactly ``top``, unselected ones at
most ``top - 1``; a ``binary`` form scores exactly 1 or 0. Built as:
1. Any selector whose Selects all compare the same key SOp with the same query SOp: the table of the whole
   Boolean combination over (query value, key value) one-hots. Binary, exact for And/Or/Not alike.
2. ``Comparison.TRUE``: one(query) * one(key) (true even where a value is None, like the interpreter).
3. SelectorAnd of any two forms: their sum, tops added (all parts at their top <=> the sum at its top).
4. SelectorNot of a binary form: one*one minus it.
5. Anything else (an Or over different SOps, a Not of an And over different SOps) cannot keep all
   selected scores equal, which exact averaging needs: a ValueError names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.rasp import rasp
from workbench.rasp.compiler.graph import selector_sops
from workbench.rasp.compiler.residual import ONE, cat_dim


@dataclass
class ScoreForm:
    weights: dict[tuple[tuple, tuple], float] = field(default_factory=dict)
    top: int = 1
    binary: bool = True


def truth(sel: rasp.Selector, key, query) -> bool:
    if isinstance(sel, rasp.Select):
        return sel.predicate(key, query)
    if isinstance(sel, rasp.SelectorNot):
        return not truth(sel.inner, key, query)
    if isinstance(sel, rasp.SelectorOr):
        return truth(sel.fst, key, query) or truth(sel.snd, key, query)
    return truth(sel.fst, key, query) and truth(sel.snd, key, query)


def score_form(sel: rasp.Selector, sets: dict[str, list], nullable: set[str]) -> ScoreForm:
    if isinstance(sel, rasp.Select) and sel.predicate in (rasp.Comparison.TRUE, rasp.Comparison.FALSE):
        return ScoreForm({(ONE, ONE): 1.0} if sel.predicate is rasp.Comparison.TRUE else {})
    keys, queries = selector_sops(sel)
    if len(keys) == 1 and len(queries) == 1:
        k, q = keys[0].label, queries[0].label
        if isinstance(sel, rasp.Select) or not ({k, q} & nullable):
            return ScoreForm({(cat_dim(q, qv), cat_dim(k, kv)): 1.0
                              for qv in sets[q] for kv in sets[k] if truth(sel, kv, qv)})
    if isinstance(sel, rasp.SelectorAnd) and not isinstance(sel, rasp.SelectorOr):
        a, b = score_form(sel.fst, sets, nullable), score_form(sel.snd, sets, nullable)
        weights = dict(a.weights)
        for key, w in b.weights.items():
            weights[key] = weights.get(key, 0.0) + w
        return ScoreForm(weights, a.top + b.top, binary=False)
    if isinstance(sel, rasp.SelectorNot):
        inner = score_form(sel.inner, sets, nullable)
        if inner.binary:
            weights = {key: -w for key, w in inner.weights.items()}
            weights[(ONE, ONE)] = weights.get((ONE, ONE), 0.0) + 1.0
            return ScoreForm(weights)
    names = ", ".join(s.label for s in [*keys, *queries])
    raise ValueError(f"cannot compile selector {sel!r}: a {type(sel).__name__} over different SOps ({names}) "
                     f"cannot give every selected key the same attention score; rewrite it as SelectorAnd of "
                     f"Selects, or combine the SOps into one with a SequenceMap and Select on that")
