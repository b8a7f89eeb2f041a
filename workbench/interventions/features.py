"""Feature interventions through the dictionaries: set, scale, add or ablate features, two ways.

A replacement set (per-layer transcoders, skip transcoders or a CLT; ``load_replacement_set``) reads
``blocks.{l}.hook_mlp_in`` and writes ``blocks.{l}.hook_mlp_out``. An edit (:class:`FeatureEdit`)
changes one feature's activation at chosen positions (all when ``positions`` is None). Algorithm:

1. Clean pass on the tokens (``[B, T]``): record every replaced layer's ``hook_mlp_in`` and
   ``hook_mlp_out``, encode every read layer's features with the dictionary's own nonlinearity, and
   decode every written layer (``recon``). The error term ``mlp_out - recon`` is held fixed from here on.
2. Intervened pass, one forward pass for all rows. At ``hook_mlp_in`` of a read layer the live input
   is encoded:
   - LIVE (circuit-tracer's way): the dictionary's nonlinearity on the live pre-activations, and the
     model's gates, attention patterns and norm scales live, so they respond to the edit;
   - FROZEN (the local replacement model of ``attribution/replacement.py``): every gate, scale and
     pattern hook frozen at the clean pass's values (``gate_form.frozen_gates``) and each feature's
     nonlinearity frozen as a gate: activation = live pre-activation x the clean ``act / pre`` (0 for
     features inactive on the prompt). The model is then linear between features.
   Then the edits apply: ``ablate`` sets 0, ``set`` sets ``value``, ``scale`` multiplies by ``value``,
   ``add`` adds ``value``. (A BatchTopK set keeps its top activations over all rows and positions of
   the pass, as ``LocalReplacement`` does over one prompt's positions; convert it to JumpReLU for
   features that do not depend on the batch.)
3. At ``hook_mlp_out`` of a written layer the pass writes ``mlp_out_clean + (decode(activations) -
   recon)``, i.e. the features' reconstruction plus the held error. With no edit the difference is
   exactly 0, so a zero-change intervention reproduces the clean logits bit for bit.
4. Frozen mode is what an attribution graph describes: :func:`graph_prediction` propagates an edit
   through the graph's adjacency (per unit of a source's activation, ``adjacency[t, s] / a_s``), layer
   by layer, each downstream feature moving by its frozen gain x its pre-activation's change, and
   reads the logit targets; the frozen pass gives the same changes to float tolerance.
5. Swapping (:func:`swap_edits`): ablate one group of features and set another group to the
   activations it has on a donor prompt (times a strength): the Biology paper's Texas -> California.
6. Generation (:func:`generate_with_features`): the live intervention at every step of
   ``generate.generate``, steps 1-3 rerun on the grown sequence (the error terms follow each step's
   clean run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.architectures.gate_form import frozen_gates, record_gates
from workbench.architectures.hooked import hook_name
from workbench.attribution.graph import Graph
from workbench.attribution.replacement import _assign_layers, hook_layer
from workbench.interventions.generate import generate
from workbench.interventions.hooks import check_indices, check_positions

EDIT_OPS = ("ablate", "set", "scale", "add")
MODES = ("live", "frozen")


@dataclass(frozen=True)
class FeatureEdit:
    """One feature's change: ``op`` on feature ``index`` of the dictionary reading ``layer``, at
    ``positions`` (None: every position, including those generation adds), in batch ``rows`` (None:
    every row; a sweep puts one edit per row and runs them all in one pass)."""

    layer: int
    index: int
    op: str = "ablate"
    value: float = 0.0
    positions: tuple[int, ...] | None = None
    rows: tuple[int, ...] | None = None

    def apply(self, acts: torch.Tensor) -> torch.Tensor:
        """``acts [B, T, F]`` with this edit applied (a new tensor)."""
        rows = torch.arange(acts.shape[0]) if self.rows is None else torch.tensor(self.rows)
        pos = torch.arange(acts.shape[1]) if self.positions is None else torch.tensor(self.positions)
        r, p = rows[:, None], pos[None, :]
        column = acts[r, p, self.index]
        new = {"ablate": lambda: torch.zeros_like(column), "set": lambda: torch.full_like(column, self.value),
               "scale": lambda: column * self.value, "add": lambda: column + self.value}[self.op]()
        acts = acts.clone()
        acts[r, p, self.index] = new
        return acts


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


class FeatureSplice:
    """A model with its replacement set spliced in on a batch of tokens (module docstring, steps 1-3)."""

    def __init__(self, model, dictionaries, tokens: torch.Tensor):
        tokens = tokens.reshape(1, -1) if tokens.dim() == 1 else tokens
        self.model, self.dictionaries, self.tokens = model, list(dictionaries), tokens
        writers, readers = _assign_layers(model, self.dictionaries)
        self.read_layers = sorted(readers)
        self.readers = readers  # layer -> (dictionary, its input index)
        self.write_layers = sorted(writers)
        self.writers = {l: (p.dictionary, p.target) for l, p in writers.items()}
        self._clean_pass()

    # --- step 1 ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _clean_pass(self) -> None:
        names = [hook_name(k, l) for l in self.write_layers for k in ("mlp_in", "mlp_out")]
        names += [hook_name("mlp_in", l) for l in self.read_layers]
        logits, cache = self.model.run_with_cache(self.tokens, names_filter=sorted(set(names)))
        self.clean_logits = logits
        self.mlp_in = {l: cache[hook_name("mlp_in", l)] for l in set(self.read_layers) | set(self.write_layers)}
        self.mlp_out = {l: cache[hook_name("mlp_out", l)] for l in self.write_layers}
        self.pre, self.clean_acts = {}, {}
        for layer in self.read_layers:
            self.pre[layer], self.clean_acts[layer] = self._encode(layer, self.mlp_in[layer])
        self.recon = {l: self._decode(l, self.clean_acts, self.mlp_in[l]) for l in self.write_layers}
        # the frozen nonlinearity: act / pre where a feature fires on the prompt, 0 elsewhere
        self.gain = {l: torch.where(a != 0, a / torch.where(a != 0, self.pre[l], 1), 0)
                     for l, a in self.clean_acts.items()}
        self._gates = None

    def _encode(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pre, acts)`` ``[B, T, F]`` of the dictionary reading ``layer`` on its input ``x``."""
        d, i = self.readers[layer]
        x_n = x.to(d.W_enc.dtype) * d.input_scale[i]
        pre = x_n @ d.W_enc[i] + d.b_enc[i]
        # the nonlinearity is per layer (thresholds, TopK rows): run it with only this layer filled
        full = pre.new_zeros(*pre.shape[:-1], d.config.n_layers, pre.shape[-1])
        full[..., i, :] = pre
        acts = d.activation(full.reshape(-1, *full.shape[-2:]))[:, i].reshape(pre.shape)
        return pre, acts

    def _decode(self, layer: int, acts: dict[int, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``hook_mlp_out`` at ``layer`` from the activations of every layer the
        writing dictionary reads at or before it (decoder bias and skip term included)."""
        d, t = self.writers[layer]
        y = d.b_dec[t].expand(*x.shape[:-1], -1)
        for i, hook in enumerate(d.config.input_hooks[:t + 1]):
            y = y + acts[hook_layer(hook, "in")] @ d.W_dec[i][:, t - i]
        if d.W_skip is not None:
            y = y + (x.to(d.W_enc.dtype) * d.input_scale[t]) @ d.W_skip[t]
        return y / d.output_scale[t]

    # --- edits ----------------------------------------------------------------------------------
    def check_edits(self, edits: list[FeatureEdit]) -> None:
        """Errors name the bad layer, feature, position or op and the choices."""
        n_pos = self.tokens.shape[1]
        for e in edits:
            _check_choice(e.op, EDIT_OPS, "feature edit op")
            if e.layer not in self.readers:
                raise ValueError(f"no dictionary reads layer {e.layer}; features live at layers {self.read_layers}")
            n_features = self.readers[e.layer][0].config.n_features
            if not 0 <= e.index < n_features:
                raise ValueError(f"feature index {e.index} out of range for layer {e.layer}: the dictionary has "
                                 f"{n_features} features (0..{n_features - 1})")
            if e.positions is not None:
                check_positions(list(e.positions), n_pos)
            if e.rows is not None:
                check_indices(list(e.rows), self.tokens.shape[0], "batch row")

    # --- steps 2-3 ------------------------------------------------------------------------------
    def hooks(self, edits: list[FeatureEdit], mode: str = "live") -> list[tuple[str, callable]]:
        """The fwd hooks of an intervened pass on ``self.tokens`` (frozen mode also needs the gates
        frozen: use :meth:`run`). ``self.last_acts`` holds the pass's activations afterwards."""
        _check_choice(mode, MODES, "intervention mode")
        self.check_edits(edits)
        acts: dict[int, torch.Tensor] = {}
        self.last_acts = acts
        live_in: dict[int, torch.Tensor] = {}

        def read(layer: int):
            def hook(x, hook):
                live_in[layer] = x
                if layer in self.readers:
                    pre, a = self._encode(layer, x)
                    a = a if mode == "live" else pre * self.gain[layer]
                    for e in edits:
                        if e.layer == layer:
                            a = e.apply(a)
                    acts[layer] = a
            return hook

        def write(layer: int):
            def hook(out, hook):
                delta = self._decode(layer, acts, live_in[layer]) - self.recon[layer]
                return (self.mlp_out[layer] + delta.to(out.dtype)).reshape(out.shape)
            return hook

        layers_in = sorted(set(self.read_layers) | set(self.write_layers))
        return [(hook_name("mlp_in", l), read(l)) for l in layers_in] + \
               [(hook_name("mlp_out", l), write(l)) for l in self.write_layers]

    @torch.no_grad()
    def run(self, edits: list[FeatureEdit], mode: str = "live") -> torch.Tensor:
        """Logits ``[B, T, V]`` of the intervened pass (module docstring, steps 2-3)."""
        hooks = self.hooks(edits, mode)
        if mode == "live":
            return self.model.run_with_hooks(self.tokens, fwd_hooks=hooks)
        if self._gates is None:
            self._gates = record_gates(self.model, self.tokens)
        with frozen_gates(self.model, gates=self._gates):
            return self.model.run_with_hooks(self.tokens, fwd_hooks=hooks)

    def activations(self, layer: int) -> torch.Tensor:
        """The clean activations ``[B, T, F]`` of the features reading ``layer``."""
        if layer not in self.clean_acts:
            raise ValueError(f"no dictionary reads layer {layer}; features live at layers {self.read_layers}")
        return self.clean_acts[layer]


def run_features(model, dictionaries, tokens: torch.Tensor, edits: list[FeatureEdit],
                 mode: str = "live") -> tuple[torch.Tensor, torch.Tensor]:
    """``(clean logits, intervened logits)`` of ``edits`` on ``tokens`` (one call, steps 1-3)."""
    splice = FeatureSplice(model, dictionaries, tokens)
    return splice.clean_logits, splice.run(edits, mode)


# --- step 4: what the graph predicts ----------------------------------------------------------------
def _edited_delta(edit: FeatureEdit, a: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Change of a feature's activation ``a`` under ``edit``, its frozen response to upstream changes
    being ``response``."""
    return {"ablate": lambda: -a, "set": lambda: edit.value - a, "scale": lambda: edit.value * (a + response) - a,
            "add": lambda: response + edit.value}[_check_choice(edit.op, EDIT_OPS, "feature edit op")]()


def graph_prediction(graph: Graph, edits: list[FeatureEdit]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(feature pre-activation changes [n_features], logit target changes [n_logits])`` that the
    graph's linear model predicts for ``edits`` (module docstring, step 4; float64)."""
    visited = graph.metadata.get("n_visited_features", graph.n_features)
    if visited < graph.metadata.get("n_active_features", visited):
        raise ValueError(f"the graph visited {visited} of {graph.metadata['n_active_features']} active features "
                         "(max_feature_nodes): its rows cannot predict interventions; build it without a cap")
    n_f = graph.n_features
    A = graph.dense_adjacency().double()
    a = graph.activations.double()
    gain = torch.where(a != 0, a / graph.values[:n_f].double(), 0)
    per_unit = A[:, :n_f] / torch.where(a != 0, a, 1)  # change of each target per unit of a source's activation
    node = {tuple(int(v) for v in row): i for i, row in enumerate(graph.active_features)}
    edit_of: dict[int, FeatureEdit] = {}
    for e in edits:
        hits = [i for (l, p, f), i in node.items() if l == e.layer and f == e.index
                and (e.positions is None or p in {q % graph.n_pos for q in e.positions})]
        if not hits and e.op in ("set", "add"):
            raise ValueError(f"feature L{e.layer} F{e.index} is not a node of the graph at those positions: the "
                             "graph has no edges to predict what setting it does")
        edit_of.update({i: e for i in hits})
    d_pre, d_act = torch.zeros(n_f, dtype=torch.float64), torch.zeros(n_f, dtype=torch.float64)
    layers = graph.active_features[:, 0] if n_f else torch.zeros(0, dtype=torch.long)
    for layer in layers.unique().tolist():  # features read only earlier layers' writes
        rows = (layers == layer).nonzero().flatten()
        d_pre[rows] = per_unit[rows] @ d_act
        d_act[rows] = gain[rows] * d_pre[rows]
        for r in (r for r in rows.tolist() if r in edit_of):
            d_act[r] = _edited_delta(edit_of[r], a[r], d_act[r])
    d_logit = per_unit[graph.logit_start:] @ d_act
    return d_pre, d_logit


def logit_targets(graph: Graph, logits: torch.Tensor) -> torch.Tensor:
    """``[B, n_logits]``: the graph's logit targets (demeaned token logits) read off model logits
    ``[B, T, V]`` at the last position; graphs with custom directions need ``hook_final`` instead."""
    if bool((graph.logit_tokens < 0).any()):
        raise ValueError("this graph has custom logit targets; read them from hook_final with its logit_directions")
    last = logits[:, -1].double()
    return last[:, graph.logit_tokens] - last.mean(-1, keepdim=True)


# --- step 5: swapping -------------------------------------------------------------------------------
def swap_edits(remove: list[tuple[int, int, int]], add: list[tuple[int, int, int]], donor: FeatureSplice,
               strength: float = 1.0, at_position: int | None = None) -> list[FeatureEdit]:
    """Edits that ablate ``remove`` ``(layer, pos, index)`` and set ``add`` ``(layer, pos, index)`` to
    ``strength`` x their activations on ``donor``'s prompt (its first row), at the same position or at
    ``at_position``."""
    edits = [FeatureEdit(l, f, "ablate", positions=(p,)) for l, p, f in remove]
    for layer, pos, index in add:
        value = float(donor.activations(layer)[0, pos, index]) * strength
        edits.append(FeatureEdit(layer, index, "set", value, positions=(pos if at_position is None else at_position,)))
    return edits


# --- step 6: generation -----------------------------------------------------------------------------
def generate_with_features(model, dictionaries, tokens: torch.Tensor, edits: list[FeatureEdit],
                           max_new_tokens: int, **sampling) -> torch.Tensor:
    """Tokens ``[B, T + max_new_tokens]`` generated with the live intervention at every step (step 6)."""
    FeatureSplice(model, dictionaries, tokens).check_edits(edits)  # fail before generating anything

    def hooks_for(current: torch.Tensor):
        return FeatureSplice(model, dictionaries, current).hooks(edits, "live")

    return generate(model, tokens, max_new_tokens, hooks=hooks_for, **sampling)


__all__ = ["EDIT_OPS", "MODES", "FeatureEdit", "FeatureSplice", "generate_with_features", "graph_prediction",
           "logit_targets", "run_features", "swap_edits"]
