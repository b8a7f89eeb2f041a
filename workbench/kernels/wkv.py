"""RWKV-4's WKV in the stabilised form: the per-token reference, the parallel torch path, Triton kernels.

Per channel, with decay ``w < 0`` and bonus ``u`` (both ``[C]``), keys and values ``k, v [B, T, C]``:
``wkv_t = (sum_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (sum_{i<t} e^{(t-1-i)w + k_i} + e^{u+k_t})``.
The numerator and denominator overflow, so the state is kept as ``(p, q, o)`` with the true state
``(e^o p, e^o q)`` and ``o`` the running maximum exponent (the official kernel's update), per token t:

1. output: ``no = max(o_{t-1}, u + k_t)``, ``a = e^{o_{t-1} - no}``, ``b = e^{u + k_t - no}``,
   ``wkv_t = (a p_{t-1} + b v_t) / (a q_{t-1} + b)`` (the denominator is >= 1 once a token is seen);
2. update: ``o_t = max(w + o_{t-1}, k_t)``, ``alpha = e^{w + o_{t-1} - o_t}``, ``beta = e^{k_t - o_t}``,
   ``p_t = alpha p_{t-1} + beta v_t``, ``q_t = alpha q_{t-1} + beta``.

The empty state is ``(0, 0, -inf)``. ``o`` is a constant for differentiation (the function does not depend
on it; the official kernels do the same), so the state after the last token carries no gradient in ``o``,
and an initial ``o_0`` gets ``p_0 dL/dp_0 + q_0 dL/dq_0`` (the true state is ``e^{o_0} (p_0, q_0)``).

Backward (the reverse-time recurrence the Triton kernel runs; ``gp, gq`` = dL/dp_t, dL/dq_t, starting
from the gradient of the final state): at t, with ``d = a q_{t-1} + b`` and ``y = wkv_t``,

3. ``dv_t = b gy / d + beta gp``, ``dk_t = b (v_t - y) gy / d + beta (v_t gp + gq)``,
   ``du += b (v_t - y) gy / d``, ``dw += alpha (p_{t-1} gp + q_{t-1} gq)``;
4. ``gp <- a gy / d + alpha gp``, ``gq <- -a y gy / d + alpha gq`` (now dL/dp_{t-1}, dL/dq_{t-1}).

Every factor is an exponential of something <= 0, so nothing overflows forward or backward.

Paths (callers go through :mod:`.dispatch`):

- :func:`wkv_reference`: steps 1-2 one token at a time, autograd through the loop (the definition).
- :func:`wkv_torch`: the parallel form, the fastest CPU path: ``o`` for all positions at once (the
  (max, +) scan :func:`~.linear_scan.running_max`), then ``p`` and ``q`` as two linear scans with factors
  in [0, 1] (:func:`~.linear_scan.linear_scan`), then step 1 for all positions. It is the model's unhooked
  WKV; ``workbench/architectures/wkv.py`` keeps the hooked, patchable form of the same computation, op
  for op, so that a hooked run that patches nothing reproduces an unhooked one bit for bit.
- :func:`wkv_triton`: one program per (batch row, block of ``BLOCK_C`` channels) walks time with
  ``(p, q, o)`` in registers; each step reads ``k_t, v_t`` and writes ``wkv_t`` once (the global traffic
  of the :mod:`.gemm` argument: every element crosses once, nothing is staged twice). The forward saves
  the per-position states (``[3, B, T + 1, C]``, the input's size: cheap for WKV) when a gradient is
  wanted, and a second kernel walks time backwards with ``(gp, gq)`` in registers (steps 3-4).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .linear_scan import linear_scan, running_max

BLOCK_C = 32


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types (their exponentials and sums lose too much), the input's dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def empty_state(k: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
    """(p, q, o) before any token: ``[B, C]`` each, ``o = -inf``."""
    zeros = k.new_zeros(k.shape[0], k.shape[2], dtype=dtype or k.dtype)
    return zeros, zeros, torch.full_like(zeros, float("-inf"))


def _shift_in(states: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``[first, s_0, ..., s_{T-2}]``: the state each position reads before its own update."""
    return torch.cat([first.unsqueeze(1).expand_as(states[:, :1]), states[:, :-1]], dim=1)


def wkv_reference(w, u, k, v, state=None):
    """Steps 1-2 of the module docstring one token at a time (the official kernel's loop, verbatim).
    Returns ``wkv [B, T, C]``, the final ``(p, q, o)`` and the per-position states ``(P, Q, O)`` (the
    state after each token, ``[B, T, C]`` each), all in ``k``'s dtype."""
    dtype, out = compute_dtype(k.dtype), k.dtype
    w, u, k, v = (t.to(dtype) for t in (w, u, k, v))
    p, q, o = (s.to(dtype) for s in state) if state is not None else empty_state(k)
    outputs, states = [], []
    for t in range(k.shape[1]):
        kk, vv = k[:, t], v[:, t]
        no = torch.maximum(o, u + kk)
        e1, e2 = torch.exp(o - no), torch.exp(u + kk - no)
        outputs.append((e1 * p + e2 * vv) / (e1 * q + e2))
        no = torch.maximum(w + o, kk)
        e1, e2 = torch.exp(w + o - no), torch.exp(kk - no)
        p, q, o = e1 * p + e2 * vv, e1 * q + e2, no
        states.append((p, q, o))
    per_position = tuple(torch.stack(s, dim=1).to(out) for s in zip(*states, strict=True))
    return torch.stack(outputs, dim=1).to(out), tuple(s.to(out) for s in (p, q, o)), per_position


def wkv_torch(w, u, k, v, state=None):
    """The parallel form (module docstring): returns ``wkv [B, T, C]`` and the final ``(p, q, o)``."""
    dtype, out = compute_dtype(k.dtype), k.dtype
    w, u, k, v = (t.to(dtype) for t in (w, u, k, v))
    p0, q0, o0 = (s.to(dtype) for s in state) if state is not None else empty_state(k)
    o = running_max(w.detach().view(1, 1, -1), k.detach(), o0)
    o_prev = _shift_in(o, o0)
    decay = torch.exp(w.view(1, 1, -1) + o_prev - o)  # alpha: gradients reach w (and o0 at the first position)
    key = torch.exp(k - o)  # beta
    p = linear_scan(decay, key * v, p0)
    q = linear_scan(decay, key, q0)
    no = torch.maximum(o_prev, u + k).detach()  # the output's stabiliser: a constant, as o is
    past, bonus = torch.exp(o_prev - no), torch.exp(u + k - no)
    wkv = (past * _shift_in(p, p0) + bonus * v) / (past * _shift_in(q, q0) + bonus)
    return wkv.to(out), (p[:, -1].to(out), q[:, -1].to(out), o[:, -1].to(out))


# ---- Triton kernels ----

@triton.jit
def _wkv_forward_kernel(w_ptr, u_ptr, k_ptr, v_ptr, s0_ptr, y_ptr, last_ptr, states_ptr, B, T, C,
                        SAVE: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = c < C
    w = tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + c, mask=m, other=0.0).to(tl.float32)
    p = tl.load(s0_ptr + b * C + c, mask=m, other=0.0)  # s0: [3, B, C] float32 (p, q, o)
    q = tl.load(s0_ptr + (B + b) * C + c, mask=m, other=0.0)
    o = tl.load(s0_ptr + (2 * B + b) * C + c, mask=m, other=0.0)
    plane = B * (T + 1) * C  # states: [3, B, T + 1, C], slot 0 the initial state (written by the host)
    for t in range(T):  # the state stays in registers; each step reads k_t, v_t and writes wkv_t once
        off = (b * T + t) * C + c
        kk = tl.load(k_ptr + off, mask=m, other=0.0).to(tl.float32)
        vv = tl.load(v_ptr + off, mask=m, other=0.0).to(tl.float32)
        no = tl.maximum(o, u + kk)
        e1 = tl.exp(o - no)
        e2 = tl.exp(u + kk - no)
        tl.store(y_ptr + off, (e1 * p + e2 * vv) / (e1 * q + e2), mask=m)
        no = tl.maximum(w + o, kk)
        e1 = tl.exp(w + o - no)
        e2 = tl.exp(kk - no)
        p = e1 * p + e2 * vv
        q = e1 * q + e2
        o = no
        if SAVE:
            slot = (b * (T + 1) + t + 1) * C + c
            tl.store(states_ptr + slot, p, mask=m)
            tl.store(states_ptr + plane + slot, q, mask=m)
            tl.store(states_ptr + 2 * plane + slot, o, mask=m)
    tl.store(last_ptr + b * C + c, p, mask=m)
    tl.store(last_ptr + (B + b) * C + c, q, mask=m)
    tl.store(last_ptr + (2 * B + b) * C + c, o, mask=m)


@triton.jit
def _wkv_backward_kernel(w_ptr, u_ptr, k_ptr, v_ptr, states_ptr, gy_ptr, glast_ptr, gk_ptr, gv_ptr,
                         gw_ptr, gu_ptr, gs0_ptr, B, T, C, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = c < C
    w = tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + c, mask=m, other=0.0).to(tl.float32)
    gp = tl.load(glast_ptr + b * C + c, mask=m, other=0.0)  # dL/dp, dL/dq after the last token
    gq = tl.load(glast_ptr + (B + b) * C + c, mask=m, other=0.0)
    gw = tl.zeros((BLOCK_C,), tl.float32)
    gu = tl.zeros((BLOCK_C,), tl.float32)
    plane = B * (T + 1) * C
    for i in range(T):  # reverse time: steps 3-4 of the module docstring
        t = T - 1 - i
        off = (b * T + t) * C + c
        prev = (b * (T + 1) + t) * C + c  # slot t holds the state before token t
        p = tl.load(states_ptr + prev, mask=m, other=0.0)
        q = tl.load(states_ptr + plane + prev, mask=m, other=0.0)
        o = tl.load(states_ptr + 2 * plane + prev, mask=m, other=0.0)
        o_t = tl.load(states_ptr + 2 * plane + prev + C, mask=m, other=0.0)
        kk = tl.load(k_ptr + off, mask=m, other=0.0).to(tl.float32)
        vv = tl.load(v_ptr + off, mask=m, other=0.0).to(tl.float32)
        gy = tl.load(gy_ptr + off, mask=m, other=0.0).to(tl.float32)
        no = tl.maximum(o, u + kk)
        a = tl.exp(o - no)
        bonus = tl.exp(u + kk - no)
        g_den = gy / (a * q + bonus)
        y = (a * p + bonus * vv) / (a * q + bonus)
        alpha = tl.exp(w + o - o_t)
        beta = tl.exp(kk - o_t)
        g_bonus = bonus * (vv - y) * g_den
        tl.store(gv_ptr + off, bonus * g_den + beta * gp, mask=m)
        tl.store(gk_ptr + off, g_bonus + beta * (vv * gp + gq), mask=m)
        gu += g_bonus
        gw += alpha * (p * gp + q * gq)
        gp = a * g_den + alpha * gp
        gq = -a * y * g_den + alpha * gq
    p0 = tl.load(states_ptr + b * (T + 1) * C + c, mask=m, other=0.0)
    q0 = tl.load(states_ptr + plane + b * (T + 1) * C + c, mask=m, other=0.0)
    tl.store(gw_ptr + b * C + c, gw, mask=m)  # per batch row; the host sums over rows
    tl.store(gu_ptr + b * C + c, gu, mask=m)
    tl.store(gs0_ptr + b * C + c, gp, mask=m)
    tl.store(gs0_ptr + (B + b) * C + c, gq, mask=m)
    # o_0 is a true input: the state is e^{o_0} (p_0, q_0). Where p_0 = q_0 = 0 (the empty state) the
    # product is 0, not nan: o_0 itself is never multiplied in.
    tl.store(gs0_ptr + (2 * B + b) * C + c, p0 * gp + q0 * gq, mask=m)


class _WKVTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, u, k, v, p0, q0, o0):
        batch, steps, channels = k.shape
        k, v = k.contiguous(), v.contiguous()
        s0 = torch.stack([p0, q0, o0]).float().expand(3, batch, channels).contiguous()
        y = torch.empty(batch, steps, channels, dtype=torch.float32, device=k.device)
        last = torch.empty_like(s0)
        save = any(ctx.needs_input_grad)
        states = k.new_empty(3, batch, steps + 1, channels, dtype=torch.float32) if save else last
        if save:
            states[:, :, 0] = s0
        grid = (batch, triton.cdiv(channels, BLOCK_C))
        _wkv_forward_kernel[grid](w.contiguous(), u.contiguous(), k, v, s0, y, last, states, batch, steps,
                                  channels, SAVE=save, BLOCK_C=BLOCK_C)
        if save:
            ctx.save_for_backward(w, u, k, v, states)
        ctx.shapes = (p0.shape, q0.shape, o0.shape)
        out = k.dtype
        o_last = last[2].to(out)
        ctx.mark_non_differentiable(o_last)
        return y.to(out), last[0].to(out), last[1].to(out), o_last

    @staticmethod
    @once_differentiable  # the kernels' outputs carry no graph: double backward raises
    def backward(ctx, grad_y, grad_p, grad_q, _grad_o):
        w, u, k, v, states = ctx.saved_tensors
        batch, steps, channels = k.shape
        zeros = k.new_zeros(batch, channels, dtype=torch.float32)
        glast = torch.stack([zeros if g is None else g.float() for g in (grad_p, grad_q)]).contiguous()
        gy = zeros.new_zeros(k.shape) if grad_y is None else grad_y.contiguous()
        gk, gv = (torch.empty(k.shape, dtype=torch.float32, device=k.device) for _ in range(2))
        gw, gu = (torch.empty(batch, channels, dtype=torch.float32, device=k.device) for _ in range(2))
        gs0 = torch.empty(3, batch, channels, dtype=torch.float32, device=k.device)
        grid = (batch, triton.cdiv(channels, BLOCK_C))
        _wkv_backward_kernel[grid](w.contiguous(), u.contiguous(), k, v, states, gy, glast, gk, gv, gw, gu, gs0,
                                   batch, steps, channels, BLOCK_C=BLOCK_C)
        g_state = [g.sum_to_size(shape).to(k.dtype) for g, shape in zip(gs0, ctx.shapes, strict=True)]
        return (gw.sum(0).to(w.dtype), gu.sum(0).to(u.dtype), gk.to(k.dtype), gv.to(v.dtype), *g_state)


def wkv_triton(w, u, k, v, state=None):
    """The Triton kernels (module docstring): returns ``wkv [B, T, C]`` and the final ``(p, q, o)``."""
    p0, q0, o0 = state if state is not None else empty_state(k)
    y, p, q, o = _WKVTriton.apply(w, u, k, v, p0, q0, o0)
    return y, (p, q, o)
