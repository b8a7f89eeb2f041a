"""RASP, the language, with tracr's names, and its reference interpreter.

A tracr program runs here after changing its import::

    from workbench.rasp import rasp

    same_tok = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)
    hist = rasp.SelectorWidth(same_tok).named("hist")
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    is_x = rasp.numerical(rasp.Map(lambda t: 1 if t == "x" else 0, rasp.tokens))
    frac = rasp.numerical(rasp.Aggregate(prevs, is_x, default=0)).named("frac_prevs")
    rasp.evaluate(hist, ["a", "b", "a"])      # [2, 1, 2]
    rasp.evaluate(frac, ["x", "y", "x"])      # [1.0, 0.5, 0.666...]
    rasp.validate(frac)                       # raises ValueError naming a bad expression

Semantics (tracr's):
1. An SOp is a sequence of values, one per position; ``tokens`` and ``indices`` are the inputs.
2. ``Select(keys, queries, predicate)`` is a selector: entry [q][k] is ``predicate(keys[k], queries[q])``,
   so ``Comparison.LT`` selects keys whose value is below the query's.
3. ``Aggregate(selector, sop, default)`` at query q: the mean of the selected values for a numerical
   aggregate, the common selected value for a categorical one (several different values is an error),
   ``default`` where nothing is selected.
4. ``SelectorWidth(selector)`` at q counts the selected keys.
5. Encodings: every SOp is categorical unless annotated ``numerical``.
6. ``None`` (an empty categorical aggregate without default) flows through Map/SequenceMap as ``None``,
   which is what the compiled model computes too (an all-zero one-hot).

``Map(f, Map(g, x))`` is fused into one Map (tracr's ``simplify=True``) only when the inner Map still has
its default label, so every variable a user named stays a variable of the compiled circuit.
"""

from __future__ import annotations

import copy
import enum
import itertools
from collections.abc import Callable
from typing import Any

_ids = itertools.count(1)


class Encoding(enum.Enum):
    CATEGORICAL = "categorical"
    NUMERICAL = "numerical"


class Comparison(enum.Enum):
    """Select predicates, called as predicate(key, query) like tracr's."""

    EQ = "EQ"
    LT = "LT"
    LEQ = "LEQ"
    GT = "GT"
    GEQ = "GEQ"
    NEQ = "NEQ"
    TRUE = "TRUE"
    FALSE = "FALSE"

    def __call__(self, key: Any, query: Any) -> bool:
        if self is Comparison.TRUE:
            return True
        if self is Comparison.FALSE:
            return False
        if key is None or query is None:
            return False
        return bool(_COMPARE[self](key, query))


_COMPARE = {
    Comparison.EQ: lambda k, q: k == q,
    Comparison.LT: lambda k, q: k < q,
    Comparison.LEQ: lambda k, q: k <= q,
    Comparison.GT: lambda k, q: k > q,
    Comparison.GEQ: lambda k, q: k >= q,
    Comparison.NEQ: lambda k, q: k != q,
}


class RASPExpr:
    """A node of a RASP program; ``label`` names it (unique default, or set by ``.named``)."""

    def __init__(self):
        self.unique_id = next(_ids)
        self._annotations: dict[str, Any] = {"name": f"{type(self).__name__.lower()}_{self.unique_id}"}

    __hash__ = object.__hash__

    @property
    def annotations(self) -> dict[str, Any]:
        return dict(self._annotations)

    @property
    def label(self) -> str:
        return self._annotations["name"]

    name = label

    @property
    def children(self) -> list[RASPExpr]:
        return []

    def named(self, name: str) -> RASPExpr:
        return annotate(self, name=name)

    def annotated(self, **annotations) -> RASPExpr:
        return annotate(self, **annotations)

    def has_default_name(self) -> bool:
        return self.label == f"{type(self).__name__.lower()}_{self.unique_id}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"


def annotate(expr: RASPExpr, **annotations) -> RASPExpr:
    """A shallow copy of ``expr`` with extra annotations (tracr's ``rasp.annotate``)."""
    if "encoding" in annotations and not isinstance(annotations["encoding"], Encoding):
        raise ValueError(f"{expr!r}: encoding must be one of {[e.value for e in Encoding]}, "
                         f"got {annotations['encoding']!r}")
    new = copy.copy(expr)
    new._annotations = {**expr._annotations, **annotations}
    return new


# ---------------------------------------------------------------- SOps


def _lift(other: Any, self_: SOp, f2: Callable, name: str) -> SOp:
    if isinstance(other, SOp):
        return SequenceMap(f2, self_, other)
    return Map(lambda x: f2(x, other), self_)


class SOp(RASPExpr):
    """A sequence operation. Arithmetic and comparisons build Maps/SequenceMaps, as in tracr."""

    def __add__(self, o): return _lift(o, self, lambda x, y: x + y, "add")
    def __radd__(self, o): return Map(lambda x: o + x, self)
    def __sub__(self, o): return _lift(o, self, lambda x, y: x - y, "sub")
    def __rsub__(self, o): return Map(lambda x: o - x, self)
    def __mul__(self, o): return _lift(o, self, lambda x, y: x * y, "mul")
    def __rmul__(self, o): return Map(lambda x: o * x, self)
    def __truediv__(self, o): return _lift(o, self, lambda x, y: x / y, "div")
    def __rtruediv__(self, o): return Map(lambda x: o / x, self)
    def __lt__(self, o): return _lift(o, self, lambda x, y: x < y, "lt")
    def __le__(self, o): return _lift(o, self, lambda x, y: x <= y, "le")
    def __gt__(self, o): return _lift(o, self, lambda x, y: x > y, "gt")
    def __ge__(self, o): return _lift(o, self, lambda x, y: x >= y, "ge")
    def __eq__(self, o): return _lift(o, self, lambda x, y: x == y, "eq")  # type: ignore[override]
    def __ne__(self, o): return _lift(o, self, lambda x, y: x != y, "ne")  # type: ignore[override]
    def __and__(self, o): return _lift(o, self, lambda x, y: x and y, "and")
    def __or__(self, o): return _lift(o, self, lambda x, y: x or y, "or")
    def __rand__(self, o): return Map(lambda x: o and x, self)
    def __ror__(self, o): return Map(lambda x: o or x, self)
    def __invert__(self): return Map(lambda x: not x, self)
    def __neg__(self): return Map(lambda x: -x, self)

    __hash__ = RASPExpr.__hash__


class TokensType(SOp):
    @property
    def label(self) -> str:
        return "tokens"

    name = label


class IndicesType(SOp):
    @property
    def label(self) -> str:
        return "indices"

    name = label


tokens = TokensType()
indices = IndicesType()


def _need(kind: type, value: Any, what: str, where: str) -> None:
    if not isinstance(value, kind):
        got = value.label if isinstance(value, RASPExpr) else repr(value)
        raise ValueError(f"{where}: {what} must be a {kind.__name__}, got {type(value).__name__} {got}")  # noqa: TRY004


class Map(SOp):
    """``Map(f, sop)``: f applied at every position."""

    def __init__(self, f: Callable[[Any], Any], inner: SOp, simplify: bool = True):
        super().__init__()
        if not callable(f):
            raise ValueError(f"Map: f must be callable, got {f!r}")  # noqa: TRY004 - ValueError by convention
        _need(SOp, inner, "its input", "Map")
        if simplify and isinstance(inner, Map) and inner.has_default_name():
            inner_f, outer_f = inner.f, f
            f, inner = (lambda x: outer_f(inner_f(x))), inner.inner
        self.f, self.inner = f, inner

    @property
    def children(self):
        return [self.inner]


class SequenceMap(SOp):
    """``SequenceMap(f, a, b)``: f(a[i], b[i]) at every position."""

    def __init__(self, f: Callable[[Any, Any], Any], fst: SOp, snd: SOp):
        super().__init__()
        if not callable(f):
            raise ValueError(f"{type(self).__name__}: f must be callable, got {f!r}")  # noqa: TRY004 - ValueError by convention
        _need(SOp, fst, "its first input", type(self).__name__)
        _need(SOp, snd, "its second input", type(self).__name__)
        self.f, self.fst, self.snd = f, fst, snd

    @property
    def children(self):
        return [self.fst, self.snd]


class LinearSequenceMap(SequenceMap):
    """``fst_fac * a + snd_fac * b``; compiles without a lookup table when numerical."""

    def __init__(self, fst: SOp, snd: SOp, fst_fac: float, snd_fac: float):
        super().__init__(lambda x, y: fst_fac * x + snd_fac * y, fst, snd)
        self.fst_fac, self.snd_fac = fst_fac, snd_fac


class Full(SOp):
    """The constant SOp: ``value`` at every position."""

    def __init__(self, value: Any):
        super().__init__()
        self.value = value


ConstantSOp = Full


class Aggregate(SOp):
    """``Aggregate(selector, sop, default=None)``: mean (numerical) or the selected value (categorical)."""

    def __init__(self, selector: Selector, sop: SOp, default: Any = None):
        super().__init__()
        _need(Selector, selector, "its selector", "Aggregate")
        _need(SOp, sop, "its sop", "Aggregate")
        self.selector, self.sop, self.default = selector, sop, default

    @property
    def children(self):
        return [self.selector, self.sop]


class SelectorWidth(SOp):
    """How many keys the selector selects at each query."""

    def __init__(self, selector: Selector):
        super().__init__()
        _need(Selector, selector, "its selector", "SelectorWidth")
        self.selector = selector

    @property
    def children(self):
        return [self.selector]


# ---------------------------------------------------------------- selectors


class Selector(RASPExpr):
    def __and__(self, other): return SelectorAnd(self, other)
    def __or__(self, other): return SelectorOr(self, other)
    def __invert__(self): return SelectorNot(self)


class Select(Selector):
    def __init__(self, keys: SOp, queries: SOp, predicate: Comparison):
        super().__init__()
        _need(SOp, keys, "its keys", "Select")
        _need(SOp, queries, "its queries", "Select")
        _need(Comparison, predicate, "its predicate", "Select")
        self.keys, self.queries, self.predicate = keys, queries, predicate

    @property
    def children(self):
        return [self.keys, self.queries]


class SelectorAnd(Selector):
    def __init__(self, fst: Selector, snd: Selector):
        super().__init__()
        _need(Selector, fst, "its first input", type(self).__name__)
        _need(Selector, snd, "its second input", type(self).__name__)
        self.fst, self.snd = fst, snd

    @property
    def children(self):
        return [self.fst, self.snd]


class SelectorOr(SelectorAnd):
    pass


class SelectorNot(Selector):
    def __init__(self, inner: Selector):
        super().__init__()
        _need(Selector, inner, "its input", "SelectorNot")
        self.inner = inner

    @property
    def children(self):
        return [self.inner]


# ---------------------------------------------------------------- annotations


def numerical(sop: SOp) -> SOp:
    return annotate(sop, encoding=Encoding.NUMERICAL)


def categorical(sop: SOp) -> SOp:
    return annotate(sop, encoding=Encoding.CATEGORICAL)


def get_encoding(expr: RASPExpr) -> Encoding:
    return expr._annotations.get("encoding", Encoding.CATEGORICAL)


def is_numerical(expr: RASPExpr) -> bool:
    return get_encoding(expr) is Encoding.NUMERICAL


def is_categorical(expr: RASPExpr) -> bool:
    return get_encoding(expr) is Encoding.CATEGORICAL


# ---------------------------------------------------------------- traversal and validation


def walk(program: RASPExpr) -> list[RASPExpr]:
    """Every expression of the program once, children before parents."""
    seen: dict[int, RASPExpr] = {}

    def visit(expr: RASPExpr) -> None:
        if id(expr) in seen:
            return
        for child in expr.children:
            visit(child)
        seen[id(expr)] = expr

    visit(program)
    return list(seen.values())


def validate(program: RASPExpr) -> None:
    """Raise ValueError naming the first expression that is not a well-formed RASP program."""
    labels: dict[str, RASPExpr] = {}
    for expr in walk(program):
        other = labels.setdefault(expr.label, expr)
        if other is not expr and not _same_node(other, expr):
            raise ValueError(f"two different expressions are named {expr.label!r}; names must be unique")
        if not isinstance(expr._annotations.get("encoding", Encoding.CATEGORICAL), Encoding):
            raise ValueError(f"{expr!r}: encoding annotation must be an Encoding")  # noqa: TRY004 - ValueError by convention
        if isinstance(expr, Selector) and "encoding" in expr._annotations:
            raise ValueError(f"{expr!r}: a selector has no encoding; annotate SOps only")
        if isinstance(expr, Aggregate):
            if is_numerical(expr) and not is_numerical(expr.sop):
                raise ValueError(f"{expr!r}: numerical Aggregate of categorical sop {expr.sop.label!r}; "
                                 f"annotate it rasp.numerical(...) or make the aggregate categorical")
            if is_categorical(expr) and is_numerical(expr.sop):
                raise ValueError(f"{expr!r}: categorical Aggregate of numerical sop {expr.sop.label!r}; "
                                 f"wrap the aggregate in rasp.numerical(...)")
        if isinstance(expr, Select):
            for role, sop in (("keys", expr.keys), ("queries", expr.queries)):
                if is_numerical(sop):
                    raise ValueError(f"{expr!r}: its {role} {sop.label!r} are numerical; "
                                     f"Select compares categorical SOps only")
        if isinstance(expr, SequenceMap) and not isinstance(expr, LinearSequenceMap) and expr.fst is expr.snd:
            raise ValueError(f"{expr!r}: both inputs are {expr.fst.label!r}; use a Map")


def _same_node(a: RASPExpr, b: RASPExpr) -> bool:
    # .named() and numerical() return shallow copies; a copy of a node is the same node
    return a.unique_id == b.unique_id and type(a) is type(b)


# The interpreter lives in its own module; tracr calls it rasp.evaluate, so it is re-exported here.
from workbench.rasp.interpreter import evaluate  # noqa: F401 - re-export

