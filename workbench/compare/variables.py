"""A RASP program's variables, evaluated per position by the interpreter: the ground truth the
comparisons score a model against.

The program is read through tracr's interface (``expr.label``, ``expr.children``, ``rasp.walk``,
``rasp.is_numerical``, the interpreter), which ``workbench.rasp.rasp`` keeps, so a tracr program works here too.

Algorithm:

1. Walk the program's graph from its output through ``children`` (``rasp.walk``, children first), keep
   one expression per label, and split the expressions into SOps and selectors.
2. For each input sequence, evaluate the program once with the interpreter (``evaluate_each``), which
   gives every SOp's value: a list with one value per position.
   Values are collected per variable into one flat list over (input, position), in input order.
3. Categorical values become class indices (classes sorted by their ``repr``, so ``None`` from an
   aggregate that selects nothing is a class of its own); numerical values become floats.
4. Selectors evaluate to a query x key boolean matrix per input (``matrix[q][k]``: query ``q``
   attends to key ``k``), the matrix a compiled attention head realises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _rasp():
    # Imported late: the language module is optional for the parts of compare that take plain arrays.
    from workbench.rasp import rasp

    return rasp


def program_graph(program) -> list:
    """Every expression the program depends on, children first, one per label (step 1).

    ``.named()`` returns a copy of a node, so a program can hold the same node twice; the label is
    what the compiler allocates, so it is what identifies a variable here.
    """
    by_label: dict[str, object] = {}
    for expr in _rasp().walk(program):
        by_label.setdefault(expr.label, expr)
    return list(by_label.values())


def is_selector(expr) -> bool:
    rasp = _rasp()
    return isinstance(expr, rasp.Selector)


def is_numerical(expr) -> bool:
    rasp = _rasp()
    return bool(rasp.is_numerical(expr))


@dataclass
class Variable:
    """One SOp's values over every (input, position), flattened in input order."""

    name: str
    numerical: bool
    values: list  # raw values, one per (input, position)
    classes: list = field(default_factory=list)  # categorical: the sorted distinct values

    def codes(self) -> np.ndarray:
        """Categorical: int class indices; numerical: float values (step 3)."""
        if self.numerical:
            return np.array([float(v) if v is not None else np.nan for v in self.values], dtype=np.float64)
        index = {repr(c): i for i, c in enumerate(self.classes)}
        return np.array([index[repr(v)] for v in self.values], dtype=np.int64)


def categorical_classes(values: list) -> list:
    """The distinct values, sorted by ``repr`` (a total order even with ``None`` and mixed types)."""
    distinct = {repr(v): v for v in values}
    return [distinct[k] for k in sorted(distinct)]


def evaluate_variables(program, inputs: list[list], include_inputs: bool = True) -> dict[str, Variable]:
    """Every named SOp of ``program`` evaluated on every input (steps 1-3), keyed by label.

    ``include_inputs=False`` leaves out the primitives ``tokens`` and ``indices``, which any model
    reads off its embedding and so say nothing about computation.
    """
    sops = [e for e in program_graph(program) if not is_selector(e)]
    if not include_inputs:
        sops = [e for e in sops if e.label not in ("tokens", "indices")]
    per_input = _evaluate_inputs(program, inputs)
    out: dict[str, Variable] = {}
    for sop in sops:
        values: list = []
        for evaluated in per_input:
            values.extend(evaluated[sop.label])
        numerical = is_numerical(sop)
        var = Variable(sop.label, numerical, values)
        if not numerical:
            var.classes = categorical_classes(values)
        out[sop.label] = var
    return out


def _evaluate_inputs(program, inputs: list[list]) -> list[dict]:
    """Every expression's value, by label, per input: one interpreter pass over the program each."""
    from workbench.rasp.interpreter import evaluate_each

    return [evaluate_each(program, list(xs)) for xs in inputs]


@dataclass
class AttentionSelector:
    """A selector that an attention head realises: the one an Aggregate or SelectorWidth reads."""

    selector: str  # the selector's label
    consumer: str  # the Aggregate / SelectorWidth that uses it (the variable the head computes)
    matrices: list[np.ndarray]  # one bool [query, key] matrix per input


def selector_matrices(program, inputs: list[list]) -> list[AttentionSelector]:
    """Every selector that feeds an Aggregate or SelectorWidth, evaluated per input (step 4).

    A selector used only inside ``SelectorAnd``/``Or``/``Not`` is no head of its own, so the
    consumers' direct selectors are the ones listed.
    """
    per_input = _evaluate_inputs(program, inputs)
    out: list[AttentionSelector] = []
    for expr in program_graph(program):
        selector = getattr(expr, "selector", None)
        if selector is None or is_selector(expr) or not is_selector(selector):
            continue
        mats = [np.asarray(evaluated[selector.label], dtype=bool) for evaluated in per_input]
        out.append(AttentionSelector(selector.label, expr.label, mats))
    return out
