"""Static checks: which selectors may select nothing, and which only look backwards (causal mode).

A selector is judged on pairs (key index k, query index q) with a three-valued answer (True, False,
unknown), sound for every input:
1. ``Select(keys, queries, p)`` whose keys and queries are both *position-determined* (``indices``,
   ``Full`` and Maps/SequenceMaps of those, so a value depends on the position only) answers exactly:
   p(keys(k), queries(q)). ``Comparison.TRUE``/``FALSE`` answer True/False. On the diagonal k = q, a
   Select whose keys and queries are the same SOp answers True when p(v, v) holds for every value v it
   can take (EQ, LEQ, GEQ on anything), False when it fails for every v. Anything else is unknown.
2. And is False when either side is False, True when both are True; Or dually; Not swaps True/False.
3. Causal rule: in causal mode the key k > q is masked, so the compiled model agrees with the
   interpreter only if no selector ever selects a key after its query. A selector passes when every
   pair k > q (indices < max_seq_len) answers False; otherwise the compiler refuses the program, naming
   the selector and the SOp that uses it. Sound, not complete: a selector that is backward-only for a
   reason the rule cannot see (e.g. through token values) is refused too.
4. Emptiness rule: a selector surely selects something at query q when some k <= q answers True (with
   k <= q the key exists in both modes). Otherwise it may select nothing.
"""

from __future__ import annotations

from functools import lru_cache

from workbench.rasp import rasp


class StaticAnalysis:
    def __init__(self, max_seq_len: int, sets: dict[str, list]):
        self.n = max_seq_len
        self.sets = sets  # filled in by the value-set stage as it goes (inputs before users)
        self._position_values = lru_cache(maxsize=None)(self._position_values_uncached)

    def _position_values_uncached(self, sop: rasp.SOp) -> tuple | None:
        for expr in rasp.walk(sop):
            if not isinstance(expr, (rasp.IndicesType, rasp.Full, rasp.Map, rasp.SequenceMap)):
                return None
        try:
            return tuple(rasp.evaluate(sop, [None] * self.n))
        except Exception:  # noqa: BLE001 - a user function failing on some index: fall back to unknown
            return None

    def pair(self, sel: rasp.Selector, k: int, q: int) -> bool | None:
        if isinstance(sel, rasp.Select):
            return self._select_pair(sel, k, q)
        if isinstance(sel, rasp.SelectorNot):
            inner = self.pair(sel.inner, k, q)
            return None if inner is None else not inner
        a, b = self.pair(sel.fst, k, q), self.pair(sel.snd, k, q)
        if isinstance(sel, rasp.SelectorOr):
            return True if (a or b) else (False if a is False and b is False else None)
        return False if (a is False or b is False) else (True if a and b else None)

    def _select_pair(self, sel: rasp.Select, k: int, q: int) -> bool | None:
        if sel.predicate in (rasp.Comparison.TRUE, rasp.Comparison.FALSE):
            return sel.predicate is rasp.Comparison.TRUE
        keys, queries = self._position_values(sel.keys), self._position_values(sel.queries)
        if keys is not None and queries is not None:
            return sel.predicate(keys[k], queries[q])
        if k == q and sel.keys.label == sel.queries.label and sel.keys.label in self.sets:
            truths = {sel.predicate(v, v) for v in self.sets[sel.keys.label]}
            return truths.pop() if len(truths) == 1 else None
        return None

    def may_be_empty(self, sel: rasp.Selector) -> bool:
        return not all(any(self.pair(sel, k, q) is True for k in range(q + 1)) for q in range(self.n))

    def looks_forward(self, sel: rasp.Selector) -> tuple[int, int] | None:
        """A pair (k, q), k > q, that the selector may select; None when it provably selects none."""
        for q in range(self.n):
            for k in range(q + 1, self.n):
                if self.pair(sel, k, q) is not False:
                    return k, q
        return None


def check_causal(graph, analysis: StaticAnalysis) -> None:
    """Raise ValueError naming the first selector that may select a key after its query."""
    for label in graph.order:
        sop = graph.sop(label)
        if not isinstance(sop, (rasp.Aggregate, rasp.SelectorWidth)):
            continue
        pair = analysis.looks_forward(sop.selector)
        if pair is not None:
            k, q = pair
            raise ValueError(
                f"cannot compile causally: selector {sop.selector.label!r} (used by {sop!r}) may select key "
                f"index {k} for query index {q}, a later position; a causal model cannot see it. "
                f"Compile with causal=False, or select on indices so the selector only looks backwards")
