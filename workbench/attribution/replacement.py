"""The local replacement model: a model made exactly linear on one prompt, for any architecture.

Given a model (any architecture in gate form), a replacement set of dictionaries (per-layer
transcoders, skip transcoders or one cross-layer transcoder, reading ``blocks.{l}.hook_mlp_in`` and
writing ``blocks.{l}.hook_mlp_out``) and a prompt:

1. Run the prompt once. Record every gate, scale and attention-pattern hook (``gate_form``), every
   layer's ``hook_mlp_in`` / ``hook_mlp_out``, the token embeddings and the logits.
2. Encode: each dictionary's features on its recorded inputs; the non-zero ones are the graph's
   feature nodes ``(layer, pos, index, activation)`` (a CLT feature's layer is the layer it reads).
3. Split each layer's MLP output ``mlp_out[l] = features' writes + decoder bias + skip(mlp_in[l]) +
   error[l]``: the error node holds the exact remainder, so the replacement model's output on the
   prompt equals the original's. A layer no dictionary writes keeps its whole MLP output as its error.
4. :meth:`LocalReplacement.linear_forward` reruns the model with every gate frozen at its recorded value
   and every ``hook_mlp_out`` overwritten by a given *write* tensor (plus the skip term, which stays live:
   it is linear in ``mlp_in``). MLPs no longer pass gradient, so the map from (token embeddings, writes)
   to (every ``hook_mlp_in``, ``hook_final``) is affine: the direct-effect graph of the replacement model.

Feature pre-activations and logit targets are linear readouts of that map
(:meth:`readouts`, ``targets.py``), which is what ``attribute.py`` differentiates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from workbench.architectures.gate_form import frozen_gates, record_gates
from workbench.architectures.hooked import hook_name
from workbench.dictionaries.models import Dictionary

_LAYER = re.compile(r"^blocks\.(\d+)\.hook_mlp_(in|out)$")


class ReplacementMismatch(ValueError):
    """The dictionaries do not fit the model (hook names, layers or widths disagree)."""


def hook_layer(name: str, kind: str) -> int:
    match = _LAYER.match(name)
    if not match or match.group(2) != kind:
        raise ReplacementMismatch(f"dictionary hook {name!r} is not a blocks.<layer>.hook_mlp_{kind} hook; "
                                  "attribution graphs replace MLPs, so dictionaries must read hook_mlp_in "
                                  "and write hook_mlp_out")
    return int(match.group(1))


def unembedding(model) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_U [d_model, d_vocab], b_U [d_vocab])`` mapping ``hook_final`` to the logits, for a
    transformer_lens model or a BlockLM.

    transformer_lens applies the final norm's weight and bias *after* ``ln_final.hook_normalized``
    (our ``hook_final``), so they are folded in here: ``logits = hook_final @ (w * W_U) + (b @ W_U + b_U)``.
    Without the fold the graph's logit targets were not the model's logits wherever ``w != 1``."""
    if hasattr(model, "W_U"):
        W_U, b_U = model.W_U, model.b_U
        ln = getattr(model, "ln_final", None)
        if ln is not None and hasattr(ln, "w"):
            b_U = b_U + (ln.b @ W_U if hasattr(ln, "b") else 0)
            W_U = ln.w[:, None] * W_U
        return W_U, b_U
    weight = model.unembed.weight
    bias = model.unembed.bias if model.unembed.bias is not None else weight.new_zeros(weight.shape[0])
    return weight.T, bias


@dataclass
class LayerPart:
    """One dictionary's role at one output layer."""

    dictionary: Dictionary
    target: int  # index of this layer among the dictionary's output hooks


def _assign_layers(model, dictionaries: list[Dictionary]) -> tuple[dict[int, LayerPart], dict[int, tuple[Dictionary, int]]]:
    """``(writers, readers)``: which dictionary writes each layer's mlp_out, and which reads each
    layer's mlp_in (with its encoder index)."""
    n_layers = model.cfg.n_layers
    writers: dict[int, LayerPart] = {}
    readers: dict[int, tuple[Dictionary, int]] = {}
    for d in dictionaries:
        c = d.config
        if c.kind == "sae":
            raise ReplacementMismatch("an SAE reconstructs its own input; attribution graphs need transcoders "
                                      "(kind transcoder, skip_transcoder or clt) that replace MLPs")
        if not c.input_hooks or not c.output_hooks:
            raise ReplacementMismatch(f"a {c.kind} without input_hooks/output_hooks cannot replace an MLP")
        for index, (hook_in, hook_out) in enumerate(zip(c.input_hooks, c.output_hooks, strict=True)):
            lin, lout = hook_layer(hook_in, "in"), hook_layer(hook_out, "out")
            if lin >= n_layers or lout >= n_layers:
                raise ReplacementMismatch(f"dictionary hook {hook_in!r}/{hook_out!r} names a layer the model "
                                          f"lacks (it has {n_layers} layers)")
            if lin != lout:
                raise ReplacementMismatch(f"dictionary reads layer {lin} ({hook_in}) but writes layer {lout} "
                                          f"({hook_out}); a replacement reads and writes the same layer")
            if lout in writers or lin in readers:
                raise ReplacementMismatch(f"layer {lout} is replaced by more than one dictionary")
            writers[lout] = LayerPart(d, index)
            readers[lin] = (d, index)
    return writers, readers


class LocalReplacement:
    """The prompt's local replacement model (module docstring, steps 1-4)."""

    def __init__(self, model, dictionaries: list[Dictionary], tokens: torch.Tensor):
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.shape[0] != 1:
            raise ValueError(f"a local replacement model is built on one prompt; got {tokens.shape[0]} rows")
        self.model, self.dictionaries, self.tokens = model, dictionaries, tokens
        self.n_layers, self.n_pos = model.cfg.n_layers, tokens.shape[1]
        self.writers, self.readers = _assign_layers(model, dictionaries)
        self.W_U, self.b_U = unembedding(model)
        self._record()
        self._encode()

    # --- steps 1-3 ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _record(self) -> None:
        names = [hook_name("embed"), hook_name("final")] + [hook_name(k, l) for l in range(self.n_layers) for k in ("mlp_in", "mlp_out")]
        logits, cache = self.model.run_with_cache(self.tokens, names_filter=names)
        self.logits = logits[0]
        self.embed = cache[hook_name("embed")][0].detach().clone()
        self.final = cache[hook_name("final")][0].detach().clone()
        self.mlp_in = [cache[hook_name("mlp_in", l)][0].detach().clone() for l in range(self.n_layers)]
        self.mlp_out = [cache[hook_name("mlp_out", l)][0].detach().clone() for l in range(self.n_layers)]
        self.gates = record_gates(self.model, self.tokens)
        for layer, (d, index) in self.readers.items():
            if self.mlp_in[layer].shape[-1] != d.config.d_in:
                raise ReplacementMismatch(
                    f"dictionary for layer {layer} reads width {d.config.d_in} but the model's "
                    f"{hook_name('mlp_in', layer)} is {self.mlp_in[layer].shape[-1]} wide: it was trained on "
                    "another model")
            if self.mlp_in[layer].shape[-1] != self.mlp_in[0].shape[-1]:
                raise ReplacementMismatch("hook_mlp_in widths differ across layers; attribution assumes one width")
            if self.mlp_out[layer].shape[-1] != d.config.d_out:
                raise ReplacementMismatch(
                    f"dictionary for layer {layer} writes width {d.config.d_out} but the model's "
                    f"{hook_name('mlp_out', layer)} is {self.mlp_out[layer].shape[-1]} wide: it was trained "
                    "on another model")

    def _dictionary_inputs(self, d: Dictionary) -> torch.Tensor:
        layers = [hook_layer(h, "in") for h in d.config.input_hooks]
        return torch.stack([self.mlp_in[l] for l in layers], dim=1).to(d.W_enc.dtype)  # [T, n_in, d_in]

    @torch.no_grad()
    def _encode(self) -> None:
        """Feature nodes, their writes per output layer, decoder biases, skip terms and errors."""
        feats, acts, pres, writes = [], [], [], []
        dtype = self.mlp_out[0].dtype
        self.bias_writes = torch.zeros(self.n_layers, self.n_pos, self._d_out(), dtype=dtype)
        self.errors = torch.stack(self.mlp_out).clone()  # what no node explains, per layer
        for d in self.dictionaries:
            c = d.config
            x_n = d.normalize_input(self._dictionary_inputs(d))
            recon, act, pre = d.forward_normalized(x_n)  # [T, n_out, d_out], [T, n_in, F] x 2; dispatcher
            recon = recon / d.output_scale[:, None]
            out_layers = [hook_layer(h, "out") for h in c.output_hooks]
            in_layers = [hook_layer(h, "in") for h in c.input_hooks]
            for t, layer in enumerate(out_layers):
                self.errors[layer] -= recon[:, t]
                self.bias_writes[layer] = (d.b_dec[t] / d.output_scale[t]).expand(self.n_pos, -1)
            pos, src, idx = (act != 0).nonzero(as_tuple=True)
            for s, layer in enumerate(in_layers):
                keep = src == s
                p, f = pos[keep], idx[keep]
                feats.append(torch.stack([torch.full_like(p, layer), p, f], dim=1))
                acts.append(act[p, s, f])
                pres.append(pre[p, s, f])
                # decoder rows to every output layer, in model units, scaled by the activation
                dec = d.W_dec[s][f] / d.output_scale[s:, None]  # [n, n_out - s, d_out]
                full = torch.zeros(len(f), self.n_layers, self._d_out(), dtype=dtype)
                full[:, out_layers[s:]] = dec
                writes.append(full * act[p, s, f][:, None, None])
        self.active_features = torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long)
        self.activations = torch.cat(acts) if acts else torch.zeros(0, dtype=dtype)
        self.pre_activations = torch.cat(pres) if pres else torch.zeros(0, dtype=dtype)
        self.feature_writes = torch.cat(writes) if writes else torch.zeros(0, self.n_layers, self._d_out(), dtype=dtype)
        # node order: by layer, then position, then feature index (so target batches share a layer)
        f = self.active_features
        order = torch.argsort((f[:, 0] * self.n_pos + f[:, 1]) * (f[:, 2].max() + 1 if len(f) else 1) + f[:, 2])
        for name in ("active_features", "activations", "pre_activations", "feature_writes"):
            setattr(self, name, getattr(self, name)[order])

    def _d_out(self) -> int:
        return self.mlp_out[0].shape[-1]

    def constant_writes(self) -> torch.Tensor:
        """``[n_layers, T, d_out]``: every layer's MLP output less its live skip term (what step 4 writes
        to reproduce the prompt): features' writes + decoder bias + error."""
        writes = self.bias_writes + self.errors
        if self.feature_writes.shape[0]:
            layer_pos = self.active_features[:, 1]
            writes = writes.index_add(1, layer_pos, self.feature_writes.transpose(0, 1))
        return writes

    # --- step 4 -------------------------------------------------------------------------------------
    def _skip(self, layer: int, mlp_in: torch.Tensor) -> torch.Tensor | None:
        part = self.writers.get(layer)
        if part is None or part.dictionary.W_skip is None:
            return None
        d, t = part.dictionary, part.target
        return (mlp_in * d.input_scale[t]) @ d.W_skip[t] / d.output_scale[t]

    def linear_forward(self, embed: torch.Tensor, writes: torch.Tensor, logits: bool = False) -> dict:
        """Run the frozen model on a batch: ``embed [B, T, d_model]`` replaces the token embeddings and
        ``writes [B, n_layers, T, d_out]`` every MLP output (plus the live skip term). Returns
        ``{"mlp_in": [per layer [B, T, d_in]], "final": [B, T, d_model]}`` (and ``"logits"``), with the
        autograd graph to ``embed`` and ``writes`` intact."""
        batch = embed.shape[0]
        captured: dict = {"mlp_in": [None] * self.n_layers}

        def put_embed(act, hook):
            return embed.to(act.dtype)

        def read_in(layer):
            def hook(act, hook):
                captured["mlp_in"][layer] = act
            return hook

        def write_out(layer):
            def hook(act, hook):
                out = writes[:, layer].to(act.dtype)
                skip = self._skip(layer, captured["mlp_in"][layer])
                return out if skip is None else out + skip
            return hook

        def read_final(act, hook):
            captured["final"] = act

        hooks = [(hook_name("embed"), put_embed), (hook_name("final"), read_final)]
        for layer in range(self.n_layers):
            hooks += [(hook_name("mlp_in", layer), read_in(layer)), (hook_name("mlp_out", layer), write_out(layer))]
        gates = {k: v.expand(batch, *v.shape[1:]) for k, v in self.gates.items()}
        tokens = self.tokens.expand(batch, -1)
        with frozen_gates(self.model, gates=gates), self.model.hooks(fwd_hooks=hooks):
            out = self.model(tokens)
        if logits:
            captured["logits"] = out
        return captured

    def readouts(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w [n, d_in], b [n])`` for rows ``(layer, pos, index)`` of ``features``, vectorised per layer."""
        n = len(features)
        width = self.mlp_in[0].shape[-1]
        w = torch.zeros(n, width, dtype=self.mlp_in[0].dtype)
        b = torch.zeros(n, dtype=self.mlp_in[0].dtype)
        for layer, (d, s) in self.readers.items():
            rows = (features[:, 0] == layer).nonzero().flatten() if n else features.new_zeros(0)
            if len(rows):
                idx = features[rows, 2]
                w[rows] = (d.W_enc[s][:, idx] * d.input_scale[s]).T.to(w.dtype)
                b[rows] = d.b_enc[s, idx].to(b.dtype)
        return w, b

    def read_features(self, mlp_in: list[torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        """``[B, n]``: the pre-activations of ``features`` (rows ``(layer, pos, index)``) read from a
        ``linear_forward`` batch's ``mlp_in``."""
        w, b = self.readouts(features)
        stacked = torch.stack(mlp_in, dim=1)  # [B, L, T, d_in]
        return (stacked[:, features[:, 0], features[:, 1]] * w).sum(-1) + b


__all__ = ["LocalReplacement", "ReplacementMismatch", "hook_layer", "unembedding"]
