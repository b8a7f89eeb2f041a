"""Stage 3: one component per computed SOp: attention heads, an MLP, or a head feeding an MLP.

Weights are sparse maps between residual dimension keys (``residual``); assembly places them.
1. Aggregate: one head. Score = SCALE * (form - top + 1) between tokens (selected: SCALE, unselected:
   <= 0), SCALE/2 from a token query to BOS, SCALE from BOS to BOS. Softmax with SCALE = 100 puts weight
   e^-50 (~2e-22, below float64's epsilon) on anything but the best keys, so the head averages the selected
   keys exactly, and falls back on BOS when nothing is selected. Values: the sop's one-hot (categorical:
   the mean of equal one-hots is that one-hot) or its number (numerical: the exact mean); BOS carries
   the default (nothing for None, which decodes from an all-zero block). A second head cancels the
   default at the BOS position, so every variable is zero at BOS (a later head falling back on BOS reads
   nothing).
2. SelectorWidth: a head scoring selected keys and BOS alike (SCALE) writes the BOS weight 1/(w+1) into
   a hidden dimension; an MLP turns it into w with clean steps between consecutive 1/(w+1), w = 0..N,
   so every width up to max_seq_len is exact (tracr's reads w - 1 once w >= sqrt(mlp_exactness)).
3. Map/SequenceMap of categorical inputs: one hidden unit per input value (pair), relu(a + b - 1), whose
   output is the encoded f(value): an exact lookup table on the finite input set.
4. Map of a numerical input with sorted value set v1 < ... < vm: a unit gives f(v1); between vi and
   vi+1, two ReLUs of slope L = 4/(vi+1 - vi) make a step that is exactly 0 at vi and 1 at vi+1 and adds
   f(vi+1) - f(vi): exact on the inferred set (which, for means, holds every k/n).
5. LinearSequenceMap of numericals: relu(s) - relu(-s) with s = c1 a + c2 b.
6. Every MLP unit gets -G * bos with G beyond its largest input, so MLPs output zero at BOS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.rasp import rasp
from workbench.rasp.compiler.residual import BOS, ONE, cat_dim, hidden_dim, num_dim
from workbench.rasp.compiler.selectors import score_form

SCALE = 100.0


@dataclass
class Head:
    qk: dict[tuple[tuple, tuple], float]  # (query dim, key dim) -> score weight
    ov: dict[tuple[tuple, tuple], float]  # (key dim read, output dim written) -> weight
    role: str


@dataclass
class MLP:
    w_in: dict[tuple[tuple, int], float] = field(default_factory=dict)
    b_in: list[float] = field(default_factory=list)
    w_out: dict[tuple[int, tuple], float] = field(default_factory=dict)

    def unit(self, inputs: dict[tuple, float], bias: float, outputs: dict[tuple, float], gate: float) -> None:
        if not any(outputs.values()):
            return  # a hidden unit that writes nothing (an input value mapped to 0) only costs width
        h = len(self.b_in)
        self.b_in.append(bias)
        for key, w in {**inputs, BOS: -gate}.items():
            self.w_in[(key, h)] = w
        for key, w in outputs.items():
            if w:
                self.w_out[(h, key)] = w

    @property
    def width(self) -> int:
        return len(self.b_in)


@dataclass
class Component:
    variable: str
    reads: list[str]
    heads: list[Head] = field(default_factory=list)
    mlp: MLP | None = None
    hidden: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "+".join(k for k, on in (("attention", self.heads), ("mlp", self.mlp)) if on)


def encode(sop: rasp.SOp, value, values: list) -> dict[tuple, float]:
    """The residual vector (as a sparse map) of ``value`` in ``sop``'s block."""
    if value is None:
        return {}
    if rasp.is_numerical(sop):
        return {num_dim(sop.label): float(value)} if value else {}
    return {cat_dim(sop.label, value): 1.0} if value in values else {}


def build_components(graph, sets, nullable, max_seq_len: int) -> dict[str, Component]:
    out = {}
    for label in graph.order:
        sop = graph.sop(label)
        if isinstance(sop, (rasp.TokensType, rasp.IndicesType, rasp.Full)):
            continue
        comp = Component(label, list(graph.reads[label]))
        if isinstance(sop, rasp.Aggregate):
            comp.heads = aggregate_heads(sop, sets, nullable)
        elif isinstance(sop, rasp.SelectorWidth):
            comp.heads, comp.mlp = selector_width(sop, sets, nullable, max_seq_len)
            comp.hidden = ["bos_weight"]
        elif isinstance(sop, rasp.Map):
            comp.mlp = map_mlp(sop, sets)
        elif isinstance(sop, rasp.SequenceMap):
            comp.mlp = sequence_map_mlp(sop, sets)
        else:
            raise ValueError(f"cannot compile {sop!r}: unsupported expression {type(sop).__name__}")  # noqa: TRY004
        out[label] = comp
    return out


def _scores(sel, sets, nullable, bos_score: float) -> dict:
    form = score_form(sel, sets, nullable)
    qk = {key: SCALE * w for key, w in form.weights.items()}
    qk[(ONE, ONE)] = qk.get((ONE, ONE), 0.0) - SCALE * (form.top - 1)
    qk[(ONE, BOS)] = bos_score
    qk[(BOS, BOS)] = SCALE
    return qk


def aggregate_heads(sop: rasp.Aggregate, sets, nullable) -> list[Head]:
    inner, values = sop.sop, sets[sop.label]
    if rasp.is_numerical(sop):
        ov = {(num_dim(inner.label), num_dim(sop.label)): 1.0}
    else:
        ov = {(cat_dim(inner.label, v), cat_dim(sop.label, v)): 1.0 for v in sets[inner.label] if v in values}
    default = {(BOS, key): w for key, w in encode(sop, sop.default, values).items()}
    heads = [Head(_scores(sop.selector, sets, nullable, SCALE / 2), {**ov, **default}, "aggregate")]
    if default:
        cancel = {(BOS, key): -w for (_, key), w in default.items()}
        heads.append(Head({(ONE, BOS): -SCALE, (BOS, BOS): SCALE}, cancel, "cancel default at BOS"))
    return heads


def _step(mlp: MLP, x: tuple, lo: float, hi: float, delta: dict[tuple, float]) -> None:
    """Add ``delta`` exactly when x >= hi, nothing when x <= lo (lo < hi are consecutive values)."""
    slope, t = 4.0 / (hi - lo), (lo + hi) / 2
    gate = slope * (abs(t) + 1.0) + 2.0
    mlp.unit({x: slope}, 1.0 - slope * t, delta, gate)
    mlp.unit({x: slope}, -slope * t, {k: -w for k, w in delta.items()}, gate)


def _lookup(mlp: MLP, x: tuple, points: list[float], outs: list[dict[tuple, float]]) -> None:
    """Piecewise-constant map: x = points[i] (ascending) gives outs[i]."""
    mlp.unit({ONE: 1.0}, 0.0, outs[0], 0.0)
    for i in range(1, len(points)):
        keys = set(outs[i]) | set(outs[i - 1])
        delta = {k: outs[i].get(k, 0.0) - outs[i - 1].get(k, 0.0) for k in keys}
        if any(delta.values()):
            _step(mlp, x, points[i - 1], points[i], delta)


def selector_width(sop: rasp.SelectorWidth, sets, nullable, max_seq_len: int) -> tuple[list[Head], MLP]:
    weight = hidden_dim(sop.label, "bos_weight")
    head = Head(_scores(sop.selector, sets, nullable, SCALE), {(BOS, weight): 1.0}, "selector width")
    widths = list(range(max_seq_len, -1, -1))  # ascending BOS weight 1/(w+1)
    mlp = MLP()
    _lookup(mlp, weight, [1.0 / (w + 1) for w in widths], [encode(sop, w, sets[sop.label]) for w in widths])
    return [head], mlp


def _apply(sop, f, *args):
    try:
        return f(*args)
    except Exception:  # noqa: BLE001 - user code; such an input is unreachable (see values.py)
        return None


def map_mlp(sop: rasp.Map, sets) -> MLP:
    inner, mlp = sop.inner, MLP()
    if rasp.is_categorical(inner):
        for v in sets[inner.label]:
            mlp.unit({cat_dim(inner.label, v): 1.0}, 0.0, encode(sop, _apply(sop, sop.f, v), sets[sop.label]), 0.0)
        return mlp
    points = [float(v) for v in sets[inner.label]]
    outs = [encode(sop, _apply(sop, sop.f, v), sets[sop.label]) for v in sets[inner.label]]
    if points:
        _lookup(mlp, num_dim(inner.label), points, outs)
    return mlp


def sequence_map_mlp(sop: rasp.SequenceMap, sets) -> MLP:
    a, b, mlp = sop.fst, sop.snd, MLP()
    if isinstance(sop, rasp.LinearSequenceMap) and rasp.is_numerical(a) and rasp.is_numerical(b):
        if not rasp.is_numerical(sop):
            raise ValueError(f"{sop!r}: a LinearSequenceMap of numerical SOps must be numerical too")
        s = {num_dim(a.label): float(sop.fst_fac), num_dim(b.label): float(sop.snd_fac)}
        mlp.unit(s, 0.0, {num_dim(sop.label): 1.0}, 0.0)
        mlp.unit({k: -w for k, w in s.items()}, 0.0, {num_dim(sop.label): -1.0}, 0.0)
        return mlp
    for x in (a, b):
        if rasp.is_numerical(x):
            raise ValueError(f"cannot compile {sop!r}: its input {x.label!r} is numerical; a SequenceMap is a "
                             f"lookup table over categorical inputs (LinearSequenceMap takes numerical ones)")
    for u in sets[a.label]:
        for v in sets[b.label]:
            out = encode(sop, _apply(sop, sop.f, u, v), sets[sop.label])
            mlp.unit({cat_dim(a.label, u): 1.0, cat_dim(b.label, v): 1.0}, -1.0, out, 0.0)
    return mlp
