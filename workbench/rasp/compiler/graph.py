"""Stage 1: the program's dependency graph.

1. Walk the program from its output, children first, and give every expression one node, keyed by its
   label (``.named`` copies share a node only when they are the same expression).
2. Record, for every SOp, the SOps it reads directly or through its selector: those are the edges of the
   compiled circuit (a selector is not a residual variable; it lives inside the head that uses it).
3. Order the SOps topologically, inputs first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.rasp import rasp


@dataclass
class ProgramGraph:
    output: str
    exprs: dict[str, rasp.RASPExpr] = field(default_factory=dict)
    reads: dict[str, list[str]] = field(default_factory=dict)  # SOp label -> SOp labels it reads
    order: list[str] = field(default_factory=list)  # SOp labels, inputs first

    def sop(self, label: str) -> rasp.SOp:
        return self.exprs[label]

    def users(self, label: str) -> list[str]:
        return [other for other in self.order if label in self.reads[other]]


def selector_sops(selector: rasp.Selector) -> tuple[list[rasp.SOp], list[rasp.SOp]]:
    """The key-side and query-side SOps of a selector, each listed once."""
    keys: dict[str, rasp.SOp] = {}
    queries: dict[str, rasp.SOp] = {}
    stack = [selector]
    while stack:  # the selector tree only: an SOp below a Select is an input, not part of the selector
        expr = stack.pop()
        if isinstance(expr, rasp.Select):
            keys.setdefault(expr.keys.label, expr.keys)
            queries.setdefault(expr.queries.label, expr.queries)
        else:
            stack.extend(reversed(expr.children))
    return list(keys.values()), list(queries.values())


def sop_inputs(sop: rasp.SOp) -> list[rasp.SOp]:
    """The SOps an SOp's component reads."""
    if isinstance(sop, rasp.Map):
        return [sop.inner]
    if isinstance(sop, rasp.SequenceMap):
        return [sop.fst, sop.snd]
    if isinstance(sop, (rasp.Aggregate, rasp.SelectorWidth)):
        keys, queries = selector_sops(sop.selector)
        value = [sop.sop] if isinstance(sop, rasp.Aggregate) else []
        seen: dict[str, rasp.SOp] = {}
        for s in [*queries, *keys, *value]:
            seen.setdefault(s.label, s)
        return list(seen.values())
    return []


def build_graph(program: rasp.SOp) -> ProgramGraph:
    if not isinstance(program, rasp.SOp):
        raise ValueError(f"the program must be an SOp (a sequence), got {type(program).__name__} {program!r}")  # noqa: TRY004
    rasp.validate(program)
    graph = ProgramGraph(output=program.label)
    for expr in rasp.walk(program):
        graph.exprs.setdefault(expr.label, expr)
        if isinstance(expr, rasp.SOp) and expr.label not in graph.reads:
            graph.reads[expr.label] = [s.label for s in sop_inputs(expr)]
            graph.order.append(expr.label)
    return graph
