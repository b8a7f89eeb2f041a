"""Machinery of exponential-gated recurrences (RWKV's WKV, xLSTM's sLSTM and mLSTM).

1. The running-max stabiliser. Recurrences with exponential gates, ``S_t = e^{a_t} S_{t-1} + e^{b_t} x_t``,
   overflow when kept as such. The official kernels keep ``S_t = e^{m_t} s_t`` with the running maximum
   exponent ``m_t = max(a_t + m_{t-1}, b_t)`` (RWKV's ``o``, xLSTM's ``m``); every factor then is
   ``exp(something <= 0)``: ``s_t = e^{a_t + m_{t-1} - m_t} s_{t-1} + e^{b_t - m_t} x_t``. That maximum is
   itself a recurrence, linear in the (max, +) semiring, so it has a parallel form:
   :func:`running_max` is the Hillis-Steele inclusive scan of ``(a1, b1) o (a2, b2) = (a1 + a2,
   max(a2 + b1, b2))``, ceil(log2 T) steps of sums and maxima (no exponentials, nothing to overflow; an
   empty state is ``-inf``, which sums and maxima carry exactly). Given ``m``, the stabilised ``s`` is a
   plain linear scan with factors in [0, 1] (scan.py).

   The stabiliser is computed without autograd: the function of the inputs does not depend on it (it
   cancels between numerator and denominator), so treating it as a constant gives the exact gradient
   (the official CUDA kernels do the same), and no ``-inf`` ever enters a backward pass.

2. Patching the stabiliser. :func:`patched_running_max` continues the maximum from patched elements
   exactly as scan.py's reset scan does for linear states (a reset is ``a = -inf, b = patched``).

3. Hook plumbing shared by the cells: :func:`patchable_scan` (a linear scan whose states pass through
   a hook and continue from patched elements, scan.py), :func:`any_hooked` (whether any hook is
   attached, so a cell may take a faster equivalent path when nothing can observe its internals) and
   :func:`identity_hooks` (stand-ins for the pure functional forms).

4. The two-pass hooked recurrence for cells that are sequential by nature (sLSTM: the gates at t read
   h_{t-1}). :func:`hooked_recurrence` runs the loop once with live gates; passes the per-position gates
   and scales through their hooks and, if any of those hooks has a hook attached (frozen, patched or
   only cached), runs the loop again with the hooked values fixed at every position and the value path
   live; then passes each state through its hook and, where a hook changed elements (scan.py's
   ``hook_patch_mask``), runs the loop again with those elements substituted, so later positions follow
   from the patched state. These are the semantics of the LSTM mixer (lstm.py), written once here.
   (A backward hook on a gate also takes the second pass, so that the gradient flows through the
   hooked gates; one on a state fires only when the state was patched, as in lstm.py.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import SimpleNamespace

import torch
from transformer_lens.hook_points import HookPoint

from workbench.architectures.scan import hook_patch_mask, linear_scan, patch_values, patched_linear_scan
from workbench.kernels.linear_scan import expand_along_time as _expand_time
from workbench.kernels.linear_scan import running_max, running_max_sequential

__all__ = ["any_hooked", "hooked_recurrence", "identity_hooks", "patchable_scan", "patched_running_max",
           "running_max", "running_max_sequential", "shift_in"]


def patched_running_max(a: torch.Tensor, b: torch.Tensor, m0: torch.Tensor | None,
                        patched: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The maxima once the elements in ``mask`` are set to ``patched`` and later ones continue from
    them (``mask=None`` returns ``patched``)."""
    if mask is None:
        return patched
    a = _expand_time(a, patched)
    # A reset: nothing carried into a patched element (a = -inf), its value is the patched one.
    reset_a, reset_b = a.masked_fill(mask, float("-inf")), torch.where(mask, patched, b.expand_as(patched))
    return running_max(reset_a, reset_b, m0)


def shift_in(states: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``[first, s_0, ..., s_{T-2}]``: the state each position reads before its own update."""
    return torch.cat([first.unsqueeze(1).expand_as(states[:, :1]), states[:, :-1]], dim=1)


def patchable_scan(hook: HookPoint, a: torch.Tensor, b: torch.Tensor,
                   h0: torch.Tensor | None) -> torch.Tensor:
    """All states of ``h_t = a_t h_{t-1} + b_t``, passed through ``hook``; later states continue from
    the elements the hook changed."""
    states = linear_scan(a, b, h0)
    hooked, mask = hook_patch_mask(hook, states)
    return patched_linear_scan(a, b, h0, hooked, mask)


def any_hooked(points: Iterable[HookPoint]) -> bool:
    """Whether a forward or backward hook is attached to any of the hook points."""
    return any(point.fwd_hooks or point.bwd_hooks for point in points)


def identity_hooks(names: Iterable[str]) -> SimpleNamespace:
    """``hook_<name>`` identity hook points, for calling a hooked form as a pure function."""
    return SimpleNamespace(**{f"hook_{name}": HookPoint() for name in names})


# A step of a sequential cell: (t, carry, fixed values at t or None, substitute) -> (carry, record at t).
# ``substitute(name, value)`` returns ``value`` with the patched elements of state ``name`` at t put in.
Step = Callable[[int, tuple, dict | None, Callable], tuple[tuple, dict]]


def _loop(step: Step, length: int, carry: tuple, fixed: dict | None, patches: dict) -> dict:
    def substitute_at(t: int):
        def substitute(name: str, value: torch.Tensor) -> torch.Tensor:
            if name not in patches:
                return value
            mask, values = patches[name]
            return patch_values(value, values[:, t], mask[:, t])  # gradient reaches the hook: scan.py
        return substitute

    records: dict[str, list] = {}
    for t in range(length):
        fixed_t = None if fixed is None else {name: value[:, t] for name, value in fixed.items()}
        carry, record = step(t, carry, fixed_t, substitute_at(t))
        for name, value in record.items():
            records.setdefault(name, []).append(value)
    return {name: torch.stack(values, dim=1) for name, values in records.items()}


def hooked_recurrence(step: Step, length: int, carry: tuple, gate_hooks: dict, state_hooks: dict) -> dict:
    """Run a sequential cell with its gate hooks fixing gates and its state hooks patching states.

    ``gate_hooks`` / ``state_hooks``: record name -> HookPoint. Returns every record per position
    (``[B, T, ...]``) of the final pass. See the module docstring for the passes.
    """
    run = _loop(step, length, carry, None, {})
    hooked = {name: hook(run[name]) for name, hook in gate_hooks.items()}
    fixed = hooked if any_hooked(gate_hooks.values()) else None
    if fixed is not None:
        run = _loop(step, length, carry, fixed, {})
    patches: dict = {}
    for name, hook in state_hooks.items():  # in order: a later hook sees states following earlier patches
        values, mask = hook_patch_mask(hook, run[name])
        if mask is not None:
            patches[name] = (mask, values)
            run = _loop(step, length, carry, fixed, patches)
    return run
