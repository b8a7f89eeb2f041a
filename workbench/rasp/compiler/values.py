"""Stage 2: the exact finite set of values every SOp can take.

1. ``tokens`` takes the vocabulary, ``indices`` 0..max_seq_len-1, ``Full(v)`` {v}.
2. A Map or SequenceMap takes f over its inputs' sets (pairs for SequenceMap); inputs on which f raises
   are unreachable on real inputs and left out; ``None`` results are not values (they encode as zero).
3. A categorical Aggregate takes its sop's set, plus its default when the selector may select nothing.
4. A numerical Aggregate takes every mean of n values of its sop's set for every n <= max_seq_len: the
   sums of n values are built up one value at a time (exact integers when the values are integers, so
   k/n is the same float the interpreter computes), then divided by n. Tracr takes only {x/n}, missing
   k/n for k >= 2 (2/5, 3/4, ...). The default joins when the selector may select nothing.
5. A SelectorWidth takes 0..max_seq_len.
6. A numerical set keeps one representative of numbers within 1e-9 of each other (the same rational
   rounded differently); "exact" for numerical outputs means equal to the interpreter within 1e-9.
"""

from __future__ import annotations

from workbench.rasp import rasp
from workbench.rasp.compiler.graph import ProgramGraph

MAX_VALUES = 50_000  # a value set beyond this makes lookup tables too large to be worth building


def sort_values(values) -> list:
    """Numbers ascending; anything else by (type, repr), so every set has one deterministic order."""
    vals = list(values)
    try:
        return sorted(vals)
    except TypeError:
        return sorted(vals, key=lambda v: (type(v).__name__, repr(v)))


def infer_value_sets(graph: ProgramGraph, vocab, max_seq_len: int, may_be_empty) -> dict[str, list]:
    """label -> sorted value list; ``may_be_empty(selector)`` is the static emptiness test."""
    sets: dict[str, list] = {}
    for label in graph.order:
        sop = graph.sop(label)
        values = _values_of(sop, sets, vocab, max_seq_len, may_be_empty)
        values.discard(None)
        if len(values) > MAX_VALUES:
            raise ValueError(f"{sop!r} can take {len(values)} values (more than {MAX_VALUES}); "
                             f"lower max_seq_len or the vocabulary")
        sets[label] = merge_close(sort_values(values)) if rasp.is_numerical(sop) else sort_values(values)
    return sets


def merge_close(values: list, tol: float = 1e-9) -> list:
    """One representative per cluster of numbers within ``tol``: 2/3 - 1/3 and 1/3 are the same rational
    in different float roundings, and a lookup step between them would need a slope of ~1e16."""
    out: list = []
    for v in values:
        if out and abs(float(v) - float(out[-1])) <= tol * max(1.0, abs(float(v))):
            continue
        out.append(v)
    return out


def _values_of(sop, sets, vocab, max_seq_len, may_be_empty) -> set:
    if isinstance(sop, rasp.TokensType):
        return set(vocab)
    if isinstance(sop, rasp.IndicesType):
        return set(range(max_seq_len))
    if isinstance(sop, rasp.Full):
        return {sop.value}
    if isinstance(sop, rasp.Map):
        return _apply_all(sop, lambda x: sop.f(x), [(x,) for x in sets[sop.inner.label]])
    if isinstance(sop, rasp.SequenceMap):
        pairs = [(a, b) for a in sets[sop.fst.label] for b in sets[sop.snd.label]]
        return _apply_all(sop, sop.f, pairs)
    if isinstance(sop, rasp.SelectorWidth):
        return set(range(max_seq_len + 1))
    if isinstance(sop, rasp.Aggregate):
        inner = sets[sop.sop.label]
        out = set(means(sop, inner, max_seq_len)) if rasp.is_numerical(sop) else set(inner)
        if may_be_empty(sop.selector):
            out.add(sop.default)
        return out
    raise ValueError(f"cannot infer the values of {sop!r}: unsupported expression {type(sop).__name__}")


def _apply_all(sop, f, arg_tuples) -> set:
    out = set()
    for args in arg_tuples:
        try:
            out.add(f(*args))
        except Exception:  # noqa: BLE001, S112 - f is user code; a value it rejects cannot occur at run time
            continue
    return out


def means(sop, values: list, max_seq_len: int) -> set:
    """Every mean of a multiset of 1..max_seq_len elements of ``values``."""
    if any(not isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{sop!r}: numerical Aggregate of non-numeric values {values[:5]}")
    sums, out = {0}, set()
    for n in range(1, max_seq_len + 1):
        sums = {s + v for s in sums for v in values}
        if len(sums) * max_seq_len > 4 * MAX_VALUES:
            raise ValueError(f"{sop!r}: the means of its values {values[:5]}... are too many to tabulate; "
                             f"use fewer distinct values or a lower max_seq_len")
        # integer sums divide to the same float the interpreter's sum(selected) / n gives
        out.update(s / n for s in sums)
    return out


def nullable_sops(graph: ProgramGraph, sets: dict[str, list], may_be_empty) -> set[str]:
    """SOps that can be None at some position: an empty categorical Aggregate without default, a Map
    whose f gives None, and anything computed from those."""
    out: set[str] = set()
    for label in graph.order:
        sop = graph.sop(label)
        reads_null = any(r in out for r in graph.reads[label])
        if isinstance(sop, rasp.Aggregate):
            null = sop.sop.label in out or (sop.default is None and may_be_empty(sop.selector))
        elif isinstance(sop, rasp.Map):
            null = reads_null or None in _apply_all(sop, sop.f, [(x,) for x in sets[sop.inner.label]])
        elif isinstance(sop, rasp.SequenceMap):
            pairs = [(a, b) for a in sets[sop.fst.label] for b in sets[sop.snd.label]]
            null = reads_null or None in _apply_all(sop, sop.f, pairs)
        else:  # SelectorWidth counts, never None; inputs and constants are never None
            null = False
        if null:
            out.add(label)
    return out
