"""Stage 5: the residual stream's named dimensions.

Every dimension has a key and a label:
1. ``("one",)`` "one": 1 at every token position, 0 at BOS (constants and biases read it);
   ``("bos",)`` "bos": 1 at BOS only (attention falls back on it; MLPs are switched off by it).
2. A categorical SOp owns one dimension per value, key ``(label, value)``, label "label:value"; it holds
   the value's one-hot (all zero means None).
3. A numerical SOp owns one dimension, key ``(label,)``, label "label".
4. Hidden numerical dimensions a component needs (the selector-width head's BOS weight) have 3-tuple keys
   ``(label, "hidden", name)``, label "label.name".
Order: one, bos, then SOps inputs first, each with its hidden dimensions before its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.rasp import rasp

ONE = ("one",)
BOS = ("bos",)


def cat_dim(label: str, value) -> tuple:
    return (label, value)


def num_dim(label: str) -> tuple:
    return (label,)


def hidden_dim(label: str, name: str) -> tuple:
    return (label, "hidden", name)


def dim_label(key: tuple) -> str:
    if len(key) == 1:
        return key[0]
    if len(key) == 3:
        return f"{key[0]}.{key[2]}"
    return f"{key[0]}:{key[1]}"


@dataclass
class Residual:
    keys: list[tuple] = field(default_factory=list)
    index: dict[tuple, int] = field(default_factory=dict)
    blocks: dict[str, list[int]] = field(default_factory=dict)  # SOp label -> its dimensions
    encodings: dict[str, rasp.Encoding] = field(default_factory=dict)
    values: dict[str, list] = field(default_factory=dict)  # SOp label -> value of each block dim

    @property
    def labels(self) -> list[str]:
        return [dim_label(k) for k in self.keys]

    @property
    def d_model(self) -> int:
        return len(self.keys)

    def add(self, key: tuple) -> int:
        if key not in self.index:
            self.index[key] = len(self.keys)
            self.keys.append(key)
        return self.index[key]


def allocate_residual(graph, sets: dict[str, list], hidden: dict[str, list[str]]) -> Residual:
    """One-hot blocks for categorical SOps, one dimension for numerical ones, hidden dims where asked."""
    res = Residual()
    res.add(ONE)
    res.add(BOS)
    for label in graph.order:
        for name in hidden.get(label, []):
            res.add(hidden_dim(label, name))
        sop = graph.sop(label)
        res.encodings[label] = rasp.get_encoding(sop)
        if rasp.is_numerical(sop):
            res.blocks[label] = [res.add(num_dim(label))]
            res.values[label] = [None]
        else:
            res.blocks[label] = [res.add(cat_dim(label, v)) for v in sets[label]]
            res.values[label] = list(sets[label])
    return res
