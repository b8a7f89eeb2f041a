"""Gate form: freeze every data-dependent factor so a model becomes linear between chosen points.

DESIGN.md's rule: every data-dependent multiplicative factor sits behind a hook named ``hook_*_gate``
or ``hook_pattern``, every normaliser's denominator behind ``hook_scale`` / ``hook_*_scale``. Freezing
replaces those hook values by their (detached) values from one forward pass on the prompt. What is
left between two residual points is then a linear (affine, with biases) map, which is what attribution
graphs and the "sum of incoming edges equals the value" identity need.

1. :func:`gate_hook_names` lists the hooks to freeze, by name pattern, for any architecture. A module
   may declare ``derived_gate_hooks``: gates that are a function of its other gates and its parameters
   only (Mamba's decay ``exp(dt A)``). Freezing the gates they derive from already fixes them, so they
   are left unhooked, which lets the module keep its fused fast path under freezing.
2. :func:`record_gates` runs the prompt once and keeps those hooks' values.
3. :func:`frozen_gates` installs hooks that return the recorded values on every later forward pass
   (same prompt shape), for as long as the context is open.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

GATE_SUFFIXES = ("_gate", "_scale", "hook_scale", "hook_pattern")


def batch_shared(t: torch.Tensor) -> bool:
    """Whether every batch row of ``t`` is the same memory: batch 1, or expanded (batch stride 0).
    Frozen gates reach a batch of copies of one prompt this way (attribution expands the recorded
    values), which lets a module build its batch-independent operator once (Mamba's scan kernel,
    the mLSTM's [T, T] weights, the fixed-gate sLSTM's step matrices)."""
    return t.shape[0] == 1 or t.stride(0) == 0


def is_gate_hook(name: str) -> bool:
    return name.endswith(GATE_SUFFIXES)


def derived_gate_names(model) -> set[str]:
    """Gate hooks that modules declare as derived from their other gates (module docstring, step 1)."""
    derived = set()
    for prefix, module in model.named_modules():
        for hook in getattr(module, "derived_gate_hooks", ()):
            derived.add(f"{prefix}.{hook}" if prefix else hook)
    return derived


def gate_hook_names(model) -> list[str]:
    """Native names of every gate/scale/pattern hook point of the model that freezing must fix."""
    derived = derived_gate_names(model)
    return [name for name in model.hook_dict if is_gate_hook(name) and name not in derived]


@torch.no_grad()
def record_gates(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    names = gate_hook_names(model)
    _, cache = model.run_with_cache(tokens, names_filter=names)
    store = cache.cache_dict if hasattr(cache, "cache_dict") else cache
    return {name: store[name].detach().clone() for name in names}


@contextmanager
def frozen_gates(model, tokens: torch.Tensor | None = None, gates: dict[str, torch.Tensor] | None = None) -> Iterator[dict]:
    """Within the context every gate hook returns its recorded value (from ``gates``, or recorded now
    from ``tokens``). Yields the recorded values."""
    if gates is None:
        if tokens is None:
            raise ValueError("frozen_gates needs the prompt's tokens or already recorded gate values")
        gates = record_gates(model, tokens)

    def replace(value: torch.Tensor):
        def hook(activation, hook):
            if activation.shape != value.shape:
                raise ValueError(f"frozen gate {hook.name} was recorded with shape {tuple(value.shape)}, "
                                 f"now sees {tuple(activation.shape)}: freeze on the same prompt shape")
            return value.to(activation.dtype)
        return hook

    with model.hooks(fwd_hooks=[(name, replace(value)) for name, value in gates.items()]):
        yield gates
