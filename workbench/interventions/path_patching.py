"""Path patching (Wang et al. 2022, "Interpretability in the Wild", IOI): a sender's effect through chosen
receivers only, on every architecture.

Components are what writes into the residual stream additively: the embedding (``hook_embed``), per
layer the mixer (``hook_mixer_out``; on a Transformer each attention head, a slice of ``attn.hook_z``)
and the MLP (``hook_mlp_out``). Every architecture's block adds those outputs to the residual, so
freezing an output at its clean value freezes that component's whole contribution, state included.
Receivers are hooks that read the residual: ``blocks.{l}.hook_mixer_in``, ``blocks.{l}.hook_mlp_in``,
``hook_final`` (the logits' input), or any other hook (``blocks.{l}.attn.hook_q``, optionally one head:
``(name, head)``).

Algorithm (:func:`path_patch`), for senders ``s_1..s_K`` batched (row ``k N + n`` = sender k, pair n):

1. Clean and corrupted passes: the metric on each, every component output of the clean run (the
   frozen values) and each sender's corrupted value.
2. Sender pass on the clean prompts: the sender takes its corrupted value; every other component
   output (``hook_mixer_out`` / ``hook_mlp_out`` of every layer, except the one holding the sender)
   is frozen at its clean value, so a change reaches a receiver only directly from the sender (norms
   are recomputed, as in IOI). The receivers' values in this pass are recorded.
3. Receiver pass on the clean prompts: the receivers take the values recorded in step 2; everything
   else is computed freely. The metric at each answer position, averaged over the pairs, beside the
   clean and corrupted values: ``effect = patched - clean`` and ``normalised = (patched - corrupted) /
   (clean - corrupted)`` (1 = no effect). With no receivers, step 3 is the clean run (effect 0); with
   ``hook_final`` as the only receiver and the last MLP as sender it is that MLP's activation patch.
   As in IOI, all receivers are patched at once: with ``hook_final`` among them, the logits read the
   step-2 value and the other receivers' downstream effects are overwritten (direct effects only).

Senders are chunked so a pass has at most ``max_rows`` rows: two forward passes per chunk.
:func:`senders` lists the components of a model (the same graph that ``attribution_patching`` uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from workbench.architectures.hooked import hook_name
from workbench.interventions.ablation import PLAIN, Component, available_kinds, components
from workbench.interventions.hooks import check_index, hook_shapes, resolve_hook
from workbench.interventions.metrics import logits_at, metric
from workbench.interventions.pairs import PromptPairs

SENDER_KINDS = ("embed", "head", "mixer", "mlp")
RECEIVER_KINDS = ("mixer_in", "mlp_in", "logits")
EMBED = Component("embed", -1, None, ("hook_embed",), (PLAIN,), ("hook_embed",), None)


def node_label(c: Component) -> str:
    return "embed" if c.kind == "embed" else c.label


def sender_order(c: Component) -> tuple[int, int]:
    """Where a sender writes: (layer, 0 for the mixer or a head, 1 for the MLP); the embedding first."""
    return (c.layer, 0 if c.kind in ("head", "mixer") else 1)


def senders(model, tokens: torch.Tensor, heads: bool | None = None, embed: bool = True) -> list[Component]:
    """Every component in forward order: the embedding, then per layer the mixer (or, with ``heads``,
    each head; default: heads where the model has them) and the MLP."""
    kinds = available_kinds(model)
    if heads and "head" not in kinds:
        raise ValueError(f"this model has no attention heads; its components are: {', '.join(kinds)}")
    use_heads = "head" in kinds if heads is None else heads
    found = components(model, tokens[:1], kinds=["head" if use_heads else "mixer", "mlp"])
    ordered = sorted(found, key=lambda c: (*sender_order(c), -1 if c.index is None else c.index))
    return ([EMBED] if embed else []) + ordered


@dataclass(frozen=True)
class Receiver:
    """A component input: the mixer's or the MLP's input at ``layer``, or the logits (``layer`` = n_layers)."""

    kind: str
    layer: int

    def __post_init__(self):
        if self.kind not in RECEIVER_KINDS:
            raise ValueError(f"unknown receiver kind {self.kind!r}; choose one of: {', '.join(RECEIVER_KINDS)}")

    @property
    def label(self) -> str:
        return "logits" if self.kind == "logits" else f"L{self.layer} {self.kind}"

    @property
    def order(self) -> tuple[int, int]:
        return (self.layer, 1 if self.kind == "mlp_in" else 0)

    @property
    def hook(self) -> str:
        """The shared hook holding what the receiver reads."""
        return "hook_final" if self.kind == "logits" else hook_name(self.kind, self.layer)

    def reads(self, sender: Component) -> bool:
        """Whether ``sender`` writes before this receiver reads (an edge of the component graph)."""
        return sender_order(sender) < self.order


def receivers(model) -> list[Receiver]:
    """Every receiver in forward order: per layer the mixer and MLP inputs, then the logits."""
    n = model.cfg.n_layers
    return [Receiver(k, l) for l in range(n) for k in ("mixer_in", "mlp_in")] + [Receiver("logits", n)]


def output_hook(model, c: Component) -> str | None:
    """The native component-output hook that holds sender ``c`` (a head lives in its layer's mixer_out)."""
    if c.kind == "embed":
        return None
    return resolve_hook(model, hook_name("mlp_out" if c.kind == "mlp" else "mixer_out", c.layer))


def _receiver_sites(model, tokens, items) -> list[tuple[str, int | None]]:
    """``(native hook, head or None)`` per receiver given as a name, ``(name, head)`` or :class:`Receiver`."""
    sites = []
    for item in items:
        name, head = (item.hook, None) if isinstance(item, Receiver) else (
            item if isinstance(item, tuple) else (item, None))
        sites.append((resolve_hook(model, name), head))
    headed = sorted({n for n, h in sites if h is not None})
    shapes = hook_shapes(model, tokens[:1], headed) if headed else {}
    for name, head in sites:
        if head is not None:
            if len(shapes[name]) < 4:
                raise ValueError(f"receiver {name!r} has no head dimension (value shape {list(shapes[name])})")
            check_index(head, shapes[name][2], "head")
    return [(n, None if h is None else h % shapes[n][2]) for n, h in sites]


def _write(out: torch.Tensor, rows: slice, value: torch.Tensor, index: int | None) -> None:
    """``out[rows] = value`` (only head ``index`` of dim 2 when given)."""
    if index is None:
        out[rows] = value.to(out.dtype)
    else:
        out[rows, :, index] = value[:, :, index].to(out.dtype)


def _sender_pass(model, pairs, chunk, frozen, corrupted, sites) -> dict[tuple[str, int | None], torch.Tensor]:
    """Step 2 for a chunk of senders: receiver values ``[K N, ...]`` recorded under freezing."""
    n, k = len(pairs), len(chunk)
    own = [output_hook(model, c) for c in chunk]
    hooks = []
    for name, clean in frozen.items():
        def freeze(act, hook, name=name, clean=clean):
            out = act.clone()
            for i in range(k):
                if own[i] != name:
                    out[i * n:(i + 1) * n] = clean.to(act.dtype)
            return out
        hooks.append((name, freeze))
    for i, c in enumerate(chunk):
        def patch(act, hook, i=i, c=c):
            out = act.clone()
            _write(out, slice(i * n, (i + 1) * n), corrupted[c.hooks[0]], c.index)
            return out
        hooks.append((c.hooks[0], patch))
    recorded = {}
    for name, head in dict.fromkeys(sites):
        hooks.append((name, lambda act, hook, key=(name, head): recorded.__setitem__(key, act.detach())))
    model.run_with_hooks(pairs.clean.repeat(k, 1), fwd_hooks=hooks)
    return recorded


def _receiver_pass(model, pairs, k, recorded) -> torch.Tensor:
    """Step 3: logits ``[K N, T, V]`` of the clean prompts with the receivers' values from step 2."""
    hooks = []
    for (name, head), value in recorded.items():
        def patch(act, hook, value=value, head=head):
            out = act.clone()
            _write(out, slice(None), value, head)
            return out
        hooks.append((name, patch))
    return model.run_with_hooks(pairs.clean.repeat(k, 1), fwd_hooks=hooks)


@torch.no_grad()
def path_patch(model, pairs: PromptPairs, sender_list: Sequence[Component], receiver_list: Sequence,
               metric_name: str = "logit_diff", max_rows: int = 512) -> pd.DataFrame:
    """Steps 1-3: one row per sender, ``sender, kind, layer, index, metric, clean, corrupted, patched,
    effect, normalised``. ``sender_list``: components (:func:`senders`); ``receiver_list``: hook names,
    ``(name, head)`` or :class:`Receiver` (empty: nothing is patched in step 3)."""
    score = metric(metric_name)
    if not sender_list:
        raise ValueError("path patching needs at least one sender; list them with senders(model, tokens)")
    bad = [c for c in sender_list if not isinstance(c, Component) or c.kind not in SENDER_KINDS]
    if bad:
        raise ValueError(f"senders must be components of kinds {', '.join(SENDER_KINDS)}; got {bad[:3]}")
    sites = _receiver_sites(model, pairs.clean, receiver_list)
    frozen_names = [resolve_hook(model, hook_name(k, l)) for l in range(model.cfg.n_layers)
                    for k in ("mixer_out", "mlp_out")]
    sender_names = sorted({c.hooks[0] for c in sender_list})
    clean_logits, clean_cache = model.run_with_cache(pairs.clean, names_filter=frozen_names + sender_names)
    corrupted_logits, corrupted_cache = model.run_with_cache(pairs.corrupted, names_filter=sender_names)
    at = lambda logits: logits_at(logits, pairs.positions)
    args = (pairs.answer, pairs.contrast, at(clean_logits))
    clean, corrupted = (float(score(at(x), *args).double().mean()) for x in (clean_logits, corrupted_logits))
    frozen = {name: clean_cache[name] for name in frozen_names}
    sources = {name: corrupted_cache[name] for name in sender_names}
    n, per_chunk, rows = len(pairs), max(1, max_rows // max(len(pairs), 1)), []
    for start in range(0, len(sender_list), per_chunk):
        chunk = list(sender_list[start:start + per_chunk])
        if sites:
            recorded = _sender_pass(model, pairs, chunk, frozen, sources, sites)
            logits = _receiver_pass(model, pairs, len(chunk), recorded)
        else:
            logits = clean_logits.repeat(len(chunk), 1, 1)
        picked = at(logits.reshape(len(chunk), n, *logits.shape[1:]))
        values = score(picked, *args).double().mean(-1)
        for c, value in zip(chunk, values.tolist(), strict=True):
            span = clean - corrupted
            rows.append({"sender": node_label(c), "kind": c.kind, "layer": c.layer, "index": c.index,
                         "metric": metric_name, "clean": clean, "corrupted": corrupted, "patched": value,
                         "effect": value - clean, "normalised": (value - corrupted) / span if span else float("nan")})
    return pd.DataFrame(rows)


__all__ = [
    "EMBED",
    "RECEIVER_KINDS",
    "SENDER_KINDS",
    "Receiver",
    "node_label",
    "output_hook",
    "path_patch",
    "receivers",
    "sender_order",
    "senders",
]
