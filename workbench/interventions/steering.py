"""Steering: add a direction at a hook, times a coefficient, at chosen positions or all; with generation.

Algorithm:

1. A direction, one of
   - :func:`feature_direction`: a dictionary feature's decoder row in model units (``W_dec / output_scale``),
     as the feature writes it to ``hook_mlp_out`` of the layer it reads (or, for a cross-layer
     transcoder, of a later layer it writes);
   - :func:`mean_difference`: the mean of a hook's value over one prompt set minus its mean over
     another, at chosen positions (all when None; sets of different lengths are fine then), one run of
     each set with only that hook cached.
2. :func:`steering_hooks`: one fwd hook at the named hook (shared, native or state names) that returns
   ``act + coef * direction`` at ``positions`` (every position when None, which in generation includes
   the new ones). The direction's shape must be the hook's value shape after ``[batch, pos]``.
3. :func:`steer` runs the model with the hook (logits); :func:`steer_generate` generates with it at
   every step (``generate.generate``).
"""

from __future__ import annotations

import torch

from workbench.attribution.replacement import hook_layer
from workbench.interventions.generate import Hooks, generate
from workbench.interventions.hooks import check_positions, resolve_hook


def feature_direction(dictionary, layer: int, index: int, write_layer: int | None = None) -> torch.Tensor:
    """``[d_out]``: feature ``index`` of ``dictionary`` reading ``blocks.{layer}.hook_mlp_in``, as it
    writes ``blocks.{write_layer}.hook_mlp_out`` (default: ``layer``), in model units."""
    c = dictionary.config
    in_layers = [hook_layer(h, "in") for h in c.input_hooks]
    out_layers = [hook_layer(h, "out") for h in c.output_hooks]
    if layer not in in_layers:
        raise ValueError(f"the {c.kind} does not read layer {layer}; it reads layers {in_layers}")
    if not 0 <= index < c.n_features:
        raise ValueError(f"feature index {index} out of range: the {c.kind} has {c.n_features} features "
                         f"per layer (0..{c.n_features - 1})")
    source = in_layers.index(layer)
    write_layer = layer if write_layer is None else write_layer
    reachable = out_layers[source:]
    if write_layer not in reachable:
        raise ValueError(f"feature of layer {layer} writes layers {reachable}, not {write_layer}")
    target = out_layers.index(write_layer)
    return (dictionary.W_dec[source][index, target - source] / dictionary.output_scale[target]).detach().clone()


@torch.no_grad()
def hook_mean(model, tokens: torch.Tensor, hook: str, positions: list[int] | None = None) -> torch.Tensor:
    """The mean of ``hook``'s value over the rows of ``tokens`` and ``positions`` (all when None)."""
    name = resolve_hook(model, hook)
    _, cache = model.run_with_cache(tokens, names_filter=[name])
    value = cache[name]
    if positions is not None:
        value = value[:, check_positions(positions, value.shape[1])]
    return value.flatten(0, 1).mean(0)


def mean_difference(model, tokens_a: torch.Tensor, tokens_b: torch.Tensor, hook: str,
                    positions: list[int] | None = None) -> torch.Tensor:
    """Step 1: mean of ``hook`` over set A minus its mean over set B (same positions in both)."""
    return hook_mean(model, tokens_a, hook, positions) - hook_mean(model, tokens_b, hook, positions)


def steering_hooks(model, hook: str, direction: torch.Tensor, coef: float = 1.0,
                   positions: list[int] | None = None) -> Hooks:
    """Step 2: ``[(hook, fn)]`` adding ``coef * direction`` at ``positions`` (all when None)."""
    name = resolve_hook(model, hook)
    direction = torch.as_tensor(direction)

    def add(act, hook):
        if tuple(act.shape[2:]) != tuple(direction.shape):
            raise ValueError(f"steering direction has shape {tuple(direction.shape)} but {name} carries "
                             f"{tuple(act.shape[2:])} per position")
        shift = (coef * direction).to(act.dtype).to(act.device)
        if positions is None:
            return act + shift
        out = act.clone()
        out[:, check_positions(positions, act.shape[1])] += shift
        return out

    return [(name, add)]


@torch.no_grad()
def steer(model, tokens: torch.Tensor, hook: str, direction: torch.Tensor, coef: float = 1.0,
          positions: list[int] | None = None) -> torch.Tensor:
    """Step 3: logits ``[B, T, V]`` with the direction added."""
    return model.run_with_hooks(tokens, fwd_hooks=steering_hooks(model, hook, direction, coef, positions))


def steer_generate(model, tokens: torch.Tensor, hook: str, direction: torch.Tensor, coef: float,
                   max_new_tokens: int, positions: list[int] | None = None, **sampling) -> torch.Tensor:
    """Step 3: tokens generated with the direction added at every step."""
    hooks = steering_hooks(model, hook, direction, coef, positions)
    return generate(model, tokens, max_new_tokens, hooks=hooks, **sampling)


__all__ = ["feature_direction", "hook_mean", "mean_difference", "steer", "steer_generate", "steering_hooks"]
