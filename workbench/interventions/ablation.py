"""Ablation of heads, mixers, MLPs and recurrent state channels: zero, mean and resample, batched.

A :class:`Component` is a slice of one or more hooks: a Transformer head (``blocks.{l}.attn.hook_z``,
head axis), a whole mixer (``hook_mixer_out``) or MLP (``hook_mlp_out``), or a channel of a recurrent
state (:data:`STATE_FAMILIES`): an RWKV WKV channel (numerator, denominator and stabiliser), a Mamba
state dimension (the N axis) or inner channel (the d_inner axis), an mLSTM or sLSTM head, a minGRU or
LSTM unit. The state hooks make every later position follow from the ablated state
(architectures/scan.py, "Patchable states"), so an ablated state channel carries nothing forward.

Algorithm (``ablate``):

1. Clean run of the prompts ``[B, T]`` (the clean metrics) and one run of the reference prompts
   (the prompts themselves when none is given) caching every hook the components touch.
2. Replacement values per component and hook:
   - zero: 0 on the hooks that carry the content (the stabiliser of a scaled state is left alone:
     with numerator and denominator 0 the channel holds nothing whatever its scale);
   - mean: the mean over the reference prompts' rows, per position (``mean_positions`` also over
     positions, for references of another length). States kept as ``x e^-m`` with a stabiliser m
     (RWKV's p, q with o; xLSTM's C, n with m) are averaged as true states: ``m* = max m`` over rows,
     ``x* = mean(x e^(m - m*))``, so ``x* e^m* = mean(x e^m)`` exactly;
   - resample: the values of another prompt, every hook of the component from the same one, drawn per
     (component, prompt) from a ``torch.Generator`` seeded with ``seed`` (the reference, or the other
     prompts of the batch when there is none).
3. Sweep: components in chunks of ``chunk_size``; a chunk is ONE forward pass on the prompts stacked
   ``chunk_size`` times, rows ``[k B, (k + 1) B)`` carrying component k's ablation, each hook of the
   chunk writing its components' values into their rows (at ``positions``, all when None).
4. Metrics (``metrics.py``) at each prompt's answer position, averaged over the prompts; a tidy
   DataFrame, one row per component and metric:
   ``component, layer, index, label, method, metric, clean, ablated, change``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from workbench.architectures.hooked import hook_name
from workbench.interventions.hooks import (
    check_indices,
    check_layers,
    check_positions,
    hook_shapes,
    resolve_hook,
)
from workbench.interventions.metrics import METRICS, logits_at, metric

METHODS = ("zero", "mean", "resample")
PLAIN, SCALED, LOG_SCALE = "plain", "scaled", "log_scale"

# kind -> (hook suffixes under blocks.{l}, roles, hooks zeroed by zero ablation, axis of the index)
STATE_FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int]] = {
    "rwkv_channel": (("time_mix.hook_state_num", "time_mix.hook_state_den", "time_mix.hook_state_max"),
                     (SCALED, SCALED, LOG_SCALE), ("time_mix.hook_state_num", "time_mix.hook_state_den"), 2),
    "mamba_state_n": (("mixer.ssm.hook_state",), (PLAIN,), ("mixer.ssm.hook_state",), 3),
    "mamba_state_d": (("mixer.ssm.hook_state",), (PLAIN,), ("mixer.ssm.hook_state",), 2),
    "mlstm_head": (("mixer.cell.hook_C", "mixer.cell.hook_n", "mixer.cell.hook_m"), (SCALED, SCALED, LOG_SCALE),
                   ("mixer.cell.hook_C", "mixer.cell.hook_n"), 2),
    # h = o c / n: zeroing c and h empties the head (zeroing n would divide 0 by 0)
    "slstm_head": (("mixer.cell.hook_c", "mixer.cell.hook_n", "mixer.cell.hook_m", "mixer.cell.hook_h"),
                   (SCALED, SCALED, LOG_SCALE, PLAIN), ("mixer.cell.hook_c", "mixer.cell.hook_h"), 2),
    "lstm_unit": (("mixer.hook_state", "mixer.hook_hidden"), (PLAIN, PLAIN), ("mixer.hook_state", "mixer.hook_hidden"), 2),
    "mingru_unit": (("mixer.hook_state",), (PLAIN,), ("mixer.hook_state",), 2),
}
# kind -> (hook kind or native suffix, axis); whole-output components have no axis
OUTPUT_KINDS = {"head": ("attn.hook_z", 2), "mixer": ("mixer_out", None), "mlp": ("mlp_out", None)}


@dataclass(frozen=True)
class Component:
    """What one ablation removes: ``index`` along ``axis`` of every hook in ``hooks`` (native names)."""

    kind: str
    layer: int
    index: int | None
    hooks: tuple[str, ...]
    roles: tuple[str, ...]
    zero_hooks: tuple[str, ...]
    axis: int | None

    @property
    def label(self) -> str:
        return f"L{self.layer} {self.kind}" + ("" if self.index is None else f" {self.index}")


def _family_hooks(model, kind: str, layer: int) -> Component | None:
    """The component family ``kind`` at ``layer`` (index None), or None where the model lacks it."""
    if kind in OUTPUT_KINDS:
        suffix, axis = OUTPUT_KINDS[kind]
        name = f"blocks.{layer}.{suffix}" if "." in suffix else hook_name(suffix, layer)
        if name not in model.hook_dict and name not in getattr(model, "hook_aliases", {}):
            return None
        native = resolve_hook(model, name)
        return Component(kind, layer, None, (native,), (PLAIN,), (native,), axis)
    suffixes, roles, zero, axis = STATE_FAMILIES[kind]
    names = tuple(f"blocks.{layer}.{s}" for s in suffixes)
    if not all(n in model.hook_dict for n in names):
        return None
    if kind == "mingru_unit" and f"blocks.{layer}.mixer.hook_hidden" in model.hook_dict:
        return None  # an LSTM: its unit is c and h together
    return Component(kind, layer, None, names, roles, tuple(f"blocks.{layer}.{s}" for s in zero), axis)


def available_kinds(model) -> list[str]:
    """Component kinds this model has in at least one layer."""
    kinds = list(OUTPUT_KINDS) + list(STATE_FAMILIES)
    return [k for k in kinds if any(_family_hooks(model, k, l) for l in range(model.cfg.n_layers))]


def components(model, tokens: torch.Tensor, kinds: list[str] | None = None, layers: list[int] | None = None,
               indices: list[int] | None = None) -> list[Component]:
    """Every component of ``kinds`` ("state": every state family the model has) at ``layers`` (all
    when None), one per index along its axis (or only ``indices``); errors name the choices."""
    choices = available_kinds(model)
    known = list(OUTPUT_KINDS) + list(STATE_FAMILIES) + ["state"]
    kinds = list(kinds) if kinds else [k for k in ("head", "mixer", "mlp") if k in choices] + ["state"]
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown component kind(s) {unknown}; choose from: {', '.join(known)}")
    missing = [k for k in kinds if k != "state" and k not in choices]
    if missing:
        raise ValueError(f"this model has no {', '.join(missing)} components; it has: {', '.join(choices)}")
    if "state" in kinds:
        kinds = [k for k in kinds if k != "state"] + [k for k in choices if k in STATE_FAMILIES]
    families = [f for k in kinds for l in check_layers(layers, model.cfg.n_layers)
                if (f := _family_hooks(model, k, l)) is not None]
    sized = sorted({f.hooks[0] for f in families if f.axis is not None})
    sizes = hook_shapes(model, tokens[:1], sized) if sized else {}
    out = []
    for f in families:
        if f.axis is None:
            out.append(f)
            continue
        what = "head" if f.kind.endswith("head") else "channel"
        for i in check_indices(indices, sizes[f.hooks[0]][f.axis], what):
            out.append(Component(f.kind, f.layer, i, f.hooks, f.roles, f.zero_hooks, f.axis))
    return out


# --- step 2: replacement values ---------------------------------------------------------------------
def _stabilised_mean(values: dict[str, torch.Tensor], c: Component, dims: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Means over ``dims`` of every hook of ``c``, scaled states averaged as true states (docstring)."""
    means = {}
    log_name = next((h for h, r in zip(c.hooks, c.roles) if r == LOG_SCALE), None)
    if log_name is not None:
        m = values[log_name]
        top = m.amax(dim=dims, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        weight = torch.exp(m - top)
        means[log_name] = top
    for h, role in zip(c.hooks, c.roles):
        x = values[h]
        if role == SCALED and log_name is not None:
            w = weight.reshape(*weight.shape, *(1,) * (x.dim() - weight.dim()))
            means[h] = (x * w).mean(dim=dims, keepdim=True)
        elif role != LOG_SCALE:
            means[h] = x.mean(dim=dims, keepdim=True)
    return means


def _values(c: Component, method: str, ref: dict[str, torch.Tensor], mean_positions: bool, pick: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Hook -> value broadcastable to ``[B, T, ...]`` for component ``c``."""
    if method == "zero":
        return {h: torch.zeros(()) for h in c.zero_hooks}
    if method == "mean":
        return _stabilised_mean(ref, c, (0, 1) if mean_positions else (0,))
    return {h: ref[h][pick] for h in c.hooks}  # resample: one reference row per prompt


def _resample_rows(n_prompts: int, n_ref: int | None, gen: torch.Generator) -> torch.Tensor:
    if n_ref is None:  # the prompts are their own reference: another prompt's row
        if n_prompts < 2:
            raise ValueError("resample ablation with no reference needs at least 2 prompts to draw from")
        return (torch.arange(n_prompts) + 1 + torch.randint(0, n_prompts - 1, (n_prompts,), generator=gen)) % n_prompts
    return torch.randint(0, n_ref, (n_prompts,), generator=gen)


# --- step 3: batched sweep --------------------------------------------------------------------------
def _writer(entries: list[tuple[int, Component, torch.Tensor]], n_prompts: int, positions):
    """A hook writing each entry's value into its block of rows (only its index, only ``positions``)."""
    def hook(act, hook):
        out = act.clone()
        for k, c, value in entries:
            view, value = out[k * n_prompts:(k + 1) * n_prompts], value.to(act.dtype)
            if c.axis is not None:
                view = view.narrow(c.axis, c.index, 1)
                value = value.narrow(c.axis, c.index, 1) if value.dim() else value
            full = value.expand_as(view)
            if positions is None:
                view.copy_(full)
            else:
                view[:, positions] = full[:, positions]
        return out
    return hook


@torch.no_grad()
def ablated_logits(model, tokens: torch.Tensor, comps: list[Component], method: str = "zero",
                   reference: torch.Tensor | None = None, positions: list[int] | None = None,
                   mean_positions: bool = False, seed: int = 0, chunk_size: int = 16):
    """Yields ``(chunk of components, logits [len(chunk), B, T, V])`` (steps 2-3)."""
    if method not in METHODS:
        raise ValueError(f"unknown ablation method {method!r}; choose one of: {', '.join(METHODS)}")
    B, T = tokens.shape
    positions = None if positions is None else check_positions(positions, T)
    ref_tokens = tokens if reference is None else reference
    per_position = method == "resample" or (method == "mean" and not mean_positions)
    if per_position and ref_tokens.shape[1] != T:
        raise ValueError(f"{method} ablation per position needs reference prompts as long as the prompts: "
                         f"prompts have {T} tokens, the reference {ref_tokens.shape[1]}"
                         + ("" if method == "resample" else "; or set mean_positions"))
    ref = {}
    if method != "zero":
        names = sorted({h for c in comps for h in c.hooks})
        _, cache = model.run_with_cache(ref_tokens, names_filter=names)
        ref = {n: cache[n] for n in names}
    gen = torch.Generator().manual_seed(seed)
    n_ref = None if reference is None else reference.shape[0]
    for start in range(0, len(comps), chunk_size):
        chunk = comps[start:start + chunk_size]
        by_hook: dict[str, list] = {}
        for k, c in enumerate(chunk):
            pick = _resample_rows(B, n_ref, gen) if method == "resample" else None
            for h, value in _values(c, method, ref, mean_positions, pick).items():
                by_hook.setdefault(h, []).append((k, c, value))
        hooks = [(h, _writer(entries, B, positions)) for h, entries in by_hook.items()]
        logits = model.run_with_hooks(tokens.repeat(len(chunk), 1), fwd_hooks=hooks)
        yield chunk, logits.reshape(len(chunk), B, *logits.shape[1:])


def _metric_fns(metrics) -> dict:
    """Names (``metrics.METRICS``) or ``{name: fn}`` with ``metrics``' signature."""
    if isinstance(metrics, dict):
        return dict(metrics)
    return {name: metric(name) for name in ([metrics] if isinstance(metrics, str) else metrics)}


@torch.no_grad()
def ablate(model, tokens: torch.Tensor, comps: list[Component], answer: torch.Tensor,
           contrast: torch.Tensor | None = None, metrics=("logit_diff",), answer_positions: torch.Tensor | None = None,
           method: str = "zero", reference: torch.Tensor | None = None, positions: list[int] | None = None,
           mean_positions: bool = False, seed: int = 0, chunk_size: int = 16) -> pd.DataFrame:
    """Steps 1-4. ``answer`` / ``contrast`` ``[B]`` token ids read at ``answer_positions`` ``[B]`` (the
    last position when None); ``metrics``: names from ``metrics.METRICS`` or ``{name: fn}`` with their
    signature ``(logits [..., B, V], answer, contrast, clean_logits [B, V]) -> [..., B]``."""
    fns = _metric_fns(metrics)
    if not fns:
        raise ValueError(f"ablate needs at least one metric; choose from: {', '.join(METRICS)}")
    if contrast is None and "logit_diff" in fns:
        raise ValueError("the 'logit_diff' metric needs contrast tokens; pass contrast or another metric")
    B, T = tokens.shape
    at = torch.full((B,), T - 1) if answer_positions is None else torch.as_tensor(answer_positions)
    clean_logits = logits_at(model(tokens), at)
    clean = {name: float(fn(clean_logits, answer, contrast, clean_logits).double().mean()) for name, fn in fns.items()}
    rows = []
    for chunk, logits in ablated_logits(model, tokens, comps, method, reference, positions, mean_positions,
                                        seed, chunk_size):
        picked = logits_at(logits, at)  # [chunk, B, V]
        values = {name: fn(picked, answer, contrast, clean_logits).double().mean(-1) for name, fn in fns.items()}
        for k, c in enumerate(chunk):
            for name in fns:
                value = float(values[name][k])
                rows.append({"component": c.kind, "layer": c.layer, "index": c.index, "label": c.label,
                             "method": method, "metric": name, "clean": clean[name], "ablated": value,
                             "change": value - clean[name]})
    table = pd.DataFrame(rows, columns=["component", "layer", "index", "label", "method", "metric", "clean",
                                        "ablated", "change"])
    return table.astype({"index": "Int64"})  # whole mixers and MLPs have no index


__all__ = ["METHODS", "OUTPUT_KINDS", "STATE_FAMILIES", "Component", "ablate", "ablated_logits",
           "available_kinds", "components"]
