"""Stage 4: layer allocation.

A layer is an attention sublayer then an MLP sublayer; number them 0 (layer 0 attention), 1 (layer 0
MLP), 2, ... Embedded SOps (tokens, indices, Full) sit at -1.
1. Visit SOps inputs first. A head-only component goes to the first attention sublayer after every SOp
   it reads; an MLP-only one to the first MLP sublayer after them; a head-feeding-MLP component (selector
   width) puts its head at the first attention sublayer after its inputs and its MLP right after.
2. This as-soon-as-possible placement gives each SOp the depth of its longest dependency chain, so the
   model has the fewest layers any placement can have, and components that do not depend on each other
   share a layer (heads side by side, MLPs merged into one wider MLP).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LayerPlan:
    sublayer: dict[str, int] = field(default_factory=dict)  # SOp label -> sublayer where it is complete
    head_sublayer: dict[str, int] = field(default_factory=dict)  # component label -> its heads' sublayer
    n_layers: int = 0

    def heads_in(self, layer: int) -> list[str]:
        return [lab for lab, s in self.head_sublayer.items() if s == 2 * layer]

    def mlps_in(self, layer: int, components) -> list[str]:
        return [lab for lab, c in components.items() if c.mlp is not None and self.sublayer[lab] == 2 * layer + 1]


def _next(after: int, parity: int) -> int:
    s = after + 1
    return s if s % 2 == parity else s + 1


def allocate_layers(graph, components) -> LayerPlan:
    plan = LayerPlan()
    for label in graph.order:
        comp = components.get(label)
        if comp is None:
            plan.sublayer[label] = -1
            continue
        ready = max((plan.sublayer[r] for r in comp.reads), default=-1)
        if comp.heads:
            plan.head_sublayer[label] = _next(ready, 0)
            plan.sublayer[label] = plan.head_sublayer[label] + (1 if comp.mlp is not None else 0)
        else:
            plan.sublayer[label] = _next(ready, 1)
    plan.n_layers = max([s // 2 + 1 for s in plan.sublayer.values()] + [1])
    return plan
