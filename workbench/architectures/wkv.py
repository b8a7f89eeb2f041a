"""RWKV-4's WKV operator: the parallel stabilised form the model runs, and its references.

Per channel, with decay w = -exp(time_decay) < 0 and bonus u (SEEDS.md):

    wkv_t = (sum_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (sum_{i<t} e^{(t-1-i)w + k_i} + e^{u+k_t})

As a recurrence on the numerator S and denominator Z (state after token t):
``S_t = e^w S_{t-1} + e^{k_t} v_t``, ``Z_t = e^w Z_{t-1} + e^{k_t}``, and
``wkv_t = (S_{t-1} + e^{u+k_t} v_t) / (Z_{t-1} + e^{u+k_t})``. S and Z overflow (keys of 100 do in
float32), so the official kernel keeps ``(p, q, o)`` with ``S = e^o p``, ``Z = e^o q`` and ``o`` the
running maximum exponent. Its exact update (SEEDS.md), per position t:

    output:  no = max(o_{t-1}, u + k_t);   wkv_t = (e^{o_{t-1}-no} p_{t-1} + e^{u+k_t-no} v_t)
                                                   / (e^{o_{t-1}-no} q_{t-1} + e^{u+k_t-no})
    update:  o_t = max(w + o_{t-1}, k_t);  p_t = e^{w+o_{t-1}-o_t} p_{t-1} + e^{k_t-o_t} v_t;
                                           q_t = e^{w+o_{t-1}-o_t} q_{t-1} + e^{k_t-o_t}

Two paths compute it. When none of the hooks below has a hook attached (training, generation, plain
runs), :func:`wkv_parallel` calls the kernel dispatcher (``workbench.kernels.dispatch.wkv``: the parallel
torch form on the CPU, the Triton kernel on a GPU; ``workbench/kernels/wkv.py`` has both and the
one-token-at-a-time reference, :func:`wkv_recurrent` here). When one has (caching, gate freezing, state
patching), it runs the hooked form below, which builds every gate and per-position state behind its hook,
so the hooks' semantics do not depend on the backend.

The hooked parallel form computes exactly these quantities for all positions at once,
and never overflows: ``o`` first, as a (max, +) scan (recurrence.py: sums and maxima only), then every
factor is an exponential of something <= 0 and p, q are linear scans with factors in [0, 1]
(scan.py). No chunking is needed: nothing grows with the sequence. The empty state is
``(p, q, o) = (0, 0, -inf)`` (the kernel uses -1e38; -inf is exact and survives float16).

Gate form. Each data-dependent factor above sits behind a hook of the time-mix module (``hooks``):

    hook_state_max    o_t                               (the stabiliser; a state, not a gate)
    hook_decay_gate   e^{w + o_{t-1} - o_t}             (the decay, rescaled by the stabiliser)
    hook_key_gate     e^{k_t - o_t}                     (the key's weight as written into the state)
    hook_state_num    p_t,  hook_state_den  q_t         (state after token t, per position)
    hook_past_gate    e^{o_{t-1} - no_t}                (weight of the carried state in the output)
    hook_bonus_gate   e^{u + k_t - no_t}                (weight of the current token, bonus u)
    hook_wkv_scale    past_gate * q_{t-1} + bonus_gate  (the denominator; >= 1 once a token is seen)

Frozen, p is a linear scan of v, and wkv = (past_gate p_{t-1} + bonus_gate v_t) / scale is linear in v:
the keys act only through gates, as the paper says ("position-weighting, not content matching").

States are patchable: a hook changing p, q or o at position t makes every later state continue from
the patched value (scan.py's reset scan; :func:`~recurrence.patched_running_max` for o). The state at t
is the one *after* token t, so a patch there changes outputs from t + 1 on (output t reads the state
after t - 1 and token t itself through the bonus). The true state is ``(e^o p, e^o q)``: patching states
from another run means patching p, q and o together; patching o alone changes nothing but the
representation (the next factors are recomputed from it).
"""

from __future__ import annotations

import torch

from workbench.architectures.recurrence import (
    patchable_scan,
    patched_running_max,
    running_max,
    shift_in,
)
from workbench.architectures.scan import hook_patch_mask
from workbench.kernels import dispatch
from workbench.kernels.wkv import empty_state, wkv_reference

WKV_HOOKS = ("state_max", "decay_gate", "key_gate", "state_num", "state_den", "past_gate", "bonus_gate",
             "wkv_scale")

__all__ = ["WKV_HOOKS", "empty_state", "wkv_naive", "wkv_parallel", "wkv_recurrent"]


def wkv_parallel(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 state: tuple | None = None, hooks=None) -> tuple[torch.Tensor, tuple]:
    """wkv for all positions. ``w``, ``u``: [C]; ``k``, ``v``: [B, T, C]; ``state``: (p, q, o) [B, C]
    each, or None; ``hooks``: an object with the ``hook_*`` points of :data:`WKV_HOOKS` (the time-mix
    module), or None for none. Returns wkv [B, T, C] and the state after the last token. Unhooked, the
    kernel dispatcher computes it (module docstring)."""
    if hooks is None or not any(_attached(getattr(hooks, f"hook_{name}")) for name in WKV_HOOKS):
        return dispatch.wkv(w, u, k, v, state)
    p0, q0, o0 = state if state is not None else empty_state(k)
    decay = w.view(1, 1, -1)
    o = running_max(decay.detach(), k.detach(), o0)
    hooked, mask = hook_patch_mask(hooks.hook_state_max, o)
    o = patched_running_max(decay.detach(), k.detach(), o0, hooked, mask).detach()
    o_prev = shift_in(o, o0)
    decay_gate = hooks.hook_decay_gate(torch.exp(decay + o_prev - o))
    key_gate = hooks.hook_key_gate(torch.exp(k - o))
    p = patchable_scan(hooks.hook_state_num, decay_gate, key_gate * v, p0)
    q = patchable_scan(hooks.hook_state_den, decay_gate, key_gate, q0)
    no = torch.maximum(o_prev, u + k).detach()  # the output's stabiliser: a constant, as o is
    past_gate = hooks.hook_past_gate(torch.exp(o_prev - no))
    bonus_gate = hooks.hook_bonus_gate(torch.exp(u + k - no))
    scale = hooks.hook_wkv_scale(past_gate * shift_in(q, q0) + bonus_gate)
    wkv = (past_gate * shift_in(p, p0) + bonus_gate * v) / scale
    return wkv, (p[:, -1], q[:, -1], o[:, -1])


def _attached(hook) -> bool:
    """Whether anything can read or change the hook's value (as scan.hook_patch_mask asks)."""
    return bool(hook._forward_hooks or hook._backward_hooks)


# The official kernel's loop, one token at a time (the SEEDS.md update, verbatim): the reference the
# parallel forms are tested against. Returns wkv [B, T, C], the final (p, q, o) and the per-position
# states (P, Q, O) [B, T, C] each.
wkv_recurrent = wkv_reference


def wkv_naive(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The defining sum with raw exponentials (no stabiliser; overflows for large keys): the reference
    for the stabilised forms where it does not overflow. O(T^2) memory."""
    T = k.shape[1]
    t = torch.arange(T, dtype=k.dtype, device=k.device)
    lag = (t.view(T, 1) - 1 - t.view(1, T))  # t - 1 - i
    past = t.view(T, 1) > t.view(1, T)
    exponent = lag.unsqueeze(-1) * w + k.unsqueeze(1)  # [B, T(t), T(i), C]
    weight = torch.where(past.unsqueeze(-1), torch.exp(exponent), torch.zeros_like(exponent))
    weight = weight + torch.diag_embed(torch.exp(u + k).transpose(1, 2)).permute(0, 2, 3, 1)
    return (weight * v.unsqueeze(1)).sum(2) / weight.sum(2)
