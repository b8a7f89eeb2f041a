"""The mLSTM cell (xLSTM, Beck et al. 2024), stabilised: per-step reference, parallel / chunkwise torch
paths and a chunkwise Triton kernel, all continuing from a carried state ``(C, n, m)``.

Shapes: ``q, k [B, T, H, d_k]``, ``v [B, T, H, d_v]``, the gate pre-activations ``i~, f~ [B, T, H]``;
the state is ``C [B, H, d_v, d_k]``, ``n [B, H, d_k]``, ``m [B, H]`` (the empty state: zeros and
``m = -inf``). Returns ``h~ [B, T, H, d_v]`` and the state after the last token. The recurrence, with
``k`` scaled by ``1 / sqrt(d_k)``, ``log f = logsigmoid(f~)``:

    m_t = max(log f_t + m_{t-1}, i~_t)     f'_t = exp(log f_t + m_{t-1} - m_t)     i'_t = exp(i~_t - m_t)
    C_t = f'_t C_{t-1} + i'_t v_t k_t^T    n_t = f'_t n_{t-1} + i'_t k_t
    h~_t = C_t q_t / max(|n_t . q_t|, e^{-m_t})

(C and n are kept scaled by e^{-m_t}, so nothing overflows; the denominator is floored at the dtype's
smallest normal number, so 0/0 cannot occur when e^{-m} underflows.) The forms:

1. :func:`mlstm_reference`: that recurrence one step at a time (the definition).
2. :func:`mlstm_parallel`: the whole sequence at once. With ``b_t = sum_{l<=t} log f_l``, entry ``(t, j)``
   of the log gate matrix is ``log D_tj = b_t - b_j + i~_j`` (``j <= t``), the carried state enters with
   log-weight ``b_t + m_0``, ``m_t`` is the row maximum of both, and
   ``h~_t = [sum_j (q_t . k_j) e^{log D_tj - m_t} v_j + e^{b_t + m_0 - m_t} C_0 q_t] / max(|row sum|, e^{-m_t})``.
   The last row gives the state after the sequence. Memory ``[B, H, T, T]``.
3. :func:`mlstm_chunkwise`: the chunkwise-parallel form: step 2 within chunks of ``L`` tokens, each
   chunk continuing from the state the previous one left (across chunks only ``(C, n, m)`` travels).
   Memory ``[B, H, L, L]`` per chunk; the same function as step 2 up to rounding.
4. :func:`mlstm_torch` (the fastest CPU torch path): step 3 with ``L = TORCH_CHUNK``; a sequence no
   longer than that is exactly one call of step 2 (what the model used before kernels existed).
5. :func:`mlstm_triton`: step 3 as one Triton program per (batch, head) walking its chunks in order,
   the state ``C [d_v, d_k]``, ``n``, ``m`` kept on chip (registers) for the whole sequence. Per chunk
   it reads the chunk's q, k, v and gates once from global memory and writes h~ once: the ``L x L``
   gate matrix, ``q k^T`` and the state never leave the chip (the tiling argument of :mod:`.gemm`:
   choose what stays on chip, count what crosses). Tiles: ``L = 16`` and head widths padded to a
   power of two of at least 16 (``tl.dot``'s minimum; padded lanes load as 0 and are never stored);
   a ragged last chunk masks its missing tokens (``log f = 0``, ``i~ = -inf``: they add nothing and
   decay nothing). Everything is computed in float32 and h~ returned in the inputs' dtype.
6. Backward (Triton too): when gradients are wanted the forward kernel also writes the state entering
   each chunk (``[B H, T / L, d_v, d_k]``, float32: the only extra memory). The backward kernel, one
   program per (batch, head), walks the chunks in reverse carrying ``dC, dn`` (the gradient of the
   state leaving the chunk); per chunk it recomputes the chunk's forward on chip from its entering
   state, then: ``dnum = dh / den``; ``d overlap = -sum(dh * num) / den^2 * sign(overlap)`` where
   ``|overlap|`` beats the floor ``e^{-m}`` (else 0: m carries no gradient); ``dW = dnum v^T + d overlap``
   gives ``dq, dk`` through ``q k^T`` and the log-gate gradients ``dW * W``; the carried state's and the
   chunk-end terms add theirs; the log-space gradients collect into ``d b`` and ``d i~``, ``d log f_l``
   is the reverse cumulative sum of ``d b`` plus the chunk-end term, and
   ``d f~ = d log f * sigmoid(-f~)``; the state entering the chunk gets ``keep * dC + sum_t c_t dnum_t q_t^T``
   (and the same for n), which the previous chunk carries on.

The stabiliser ``m`` carries no gradient (it is detached; ``h~`` does not depend on it mathematically).
Callers go through :func:`workbench.kernels.dispatch.mlstm`; the model's hooked forms (per-position
states for ``hook_C``, frozen gates) stay in ``workbench/architectures/xlstm_cells.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .gemm import interpreted, load_tile, tile_dot

TORCH_CHUNK = 64  # chunk of the CPU torch path (quadratic within, linear across); fastest at T = 256, 1024
TRITON_CHUNK = 16  # tl.dot's smallest tile
FLOAT32_TINY = torch.finfo(torch.float32).tiny


def safe_denominator(overlap: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """max(|n^T q|, e^{-m}), floored at the smallest normal number (module docstring)."""
    return torch.maximum(overlap.abs(), torch.exp(-m)).clamp_min(torch.finfo(overlap.dtype).tiny)


def empty_state(q: torch.Tensor, d_v: int) -> tuple:
    """The state before the first token: C = 0, n = 0, m = -inf, in ``q``'s dtype and device."""
    batch, _, heads, d_k = q.shape
    m0 = q.new_full((batch, heads), float("-inf"))
    return q.new_zeros(batch, heads, d_v, d_k), q.new_zeros(batch, heads, d_k), m0


def mlstm_reference(q, k, v, i_pre, f_pre, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
    """Step 1: the stabilised recurrence one token at a time, from ``state`` (empty: m = -inf)."""
    C, n, m = state if state is not None else empty_state(q, v.shape[-1])
    k = k / math.sqrt(k.shape[-1])
    outputs = []
    for t in range(q.shape[1]):
        log_f = F.logsigmoid(f_pre[:, t])
        m_new = torch.maximum(log_f + m, i_pre[:, t]).detach()  # the stabiliser: no gradient, as every form
        f_gate, i_gate = torch.exp(log_f + m - m_new), torch.exp(i_pre[:, t] - m_new)
        write = v[:, t].unsqueeze(-1) * k[:, t].unsqueeze(-2)  # v k^T
        C = f_gate[..., None, None] * C + i_gate[..., None, None] * write
        n = f_gate[..., None] * n + i_gate[..., None] * k[:, t]
        m = m_new
        scale = safe_denominator((n * q[:, t]).sum(-1, keepdim=True), m.unsqueeze(-1))
        outputs.append(torch.einsum("bhvk,bhk->bhv", C, q[:, t]) / scale)
    return torch.stack(outputs, dim=1), (C, n, m)


def mlstm_parallel(q, k, v, i_pre, f_pre, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
    """Step 2: the stabilised parallel form over the whole sequence, continuing from ``state``."""
    C0, n0, m0 = state if state is not None else empty_state(q, v.shape[-1])
    q, k, v = (x.transpose(1, 2) for x in (q, k / math.sqrt(k.shape[-1]), v))  # [B, H, T, d]
    log_f, i_pre = F.logsigmoid(f_pre).transpose(1, 2), i_pre.transpose(1, 2)  # [B, H, T]
    steps = q.shape[2]
    cum = torch.cumsum(log_f, dim=-1)
    causal = torch.ones(steps, steps, dtype=torch.bool, device=q.device).tril()
    log_d = (cum.unsqueeze(-1) - cum.unsqueeze(-2) + i_pre.unsqueeze(-2)).masked_fill(~causal, float("-inf"))
    log_carried = cum + m0.unsqueeze(-1)  # [B, H, T]
    m = torch.maximum(log_d.amax(-1), log_carried).detach()
    decay, carried = torch.exp(log_d - m.unsqueeze(-1)), torch.exp(log_carried - m)
    weights = (q @ k.transpose(-1, -2)) * decay  # [B, H, t, j]
    num = weights @ v + carried.unsqueeze(-1) * torch.einsum("bhvk,bhtk->bhtv", C0, q)
    overlap = weights.sum(-1) + carried * torch.einsum("bhk,bhtk->bht", n0, q)
    h = num / safe_denominator(overlap, m).unsqueeze(-1)
    last = decay[:, :, -1]  # the last row gives the final state
    C_T = torch.einsum("bhj,bhjv,bhjk->bhvk", last, v, k) + carried[..., -1, None, None] * C0
    n_T = torch.einsum("bhj,bhjk->bhk", last, k) + carried[..., -1, None] * n0
    return h.transpose(1, 2), (C_T, n_T, m[..., -1])


def mlstm_chunkwise(q, k, v, i_pre, f_pre, state: tuple | None = None, chunk: int = TORCH_CHUNK):
    """Step 3: :func:`mlstm_parallel` within chunks of ``chunk`` tokens, the state carried across."""
    if q.shape[1] <= chunk:
        return mlstm_parallel(q, k, v, i_pre, f_pre, state)
    outputs = []
    for start in range(0, q.shape[1], chunk):
        part = slice(start, start + chunk)
        h, state = mlstm_parallel(q[:, part], k[:, part], v[:, part], i_pre[:, part], f_pre[:, part], state)
        outputs.append(h)
    return torch.cat(outputs, dim=1), state


def mlstm_torch(q, k, v, i_pre, f_pre, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
    """Step 4, the fastest CPU torch path: chunkwise with ``TORCH_CHUNK`` tokens per chunk."""
    return mlstm_chunkwise(q, k, v, i_pre, f_pre, state, TORCH_CHUNK)


# ---- Triton ----

@triton.jit
def _load_chunk(q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, bh, start, T, DK, DV, k_scale,
                L: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr):
    """One chunk's global reads (q, k / sqrt d, v tiles, gates) and its in-chunk log decays ``b``."""
    rk, rv, rl = tl.arange(0, DK_PAD), tl.arange(0, DV_PAD), start + tl.arange(0, L)
    valid = rl < T
    qc = load_tile(q_ptr + bh * T * DK, rl, rk, T, DK, DK, 1).to(tl.float32)
    kc = load_tile(k_ptr + bh * T * DK, rl, rk, T, DK, DK, 1).to(tl.float32) * k_scale
    vc = load_tile(v_ptr + bh * T * DV, rl, rv, T, DV, DV, 1).to(tl.float32)
    f_pre = tl.load(f_ptr + bh * T + rl, mask=valid, other=0.0).to(tl.float32)
    i_pre = tl.load(i_ptr + bh * T + rl, mask=valid, other=0.0).to(tl.float32)
    # logsigmoid; missing tokens of a ragged chunk decay nothing and write nothing
    log_f = tl.where(valid, tl.minimum(f_pre, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f_pre))), 0.0)
    i_pre = tl.where(valid, i_pre, float("-inf"))
    causal = tl.arange(0, L)[:, None] >= tl.arange(0, L)[None, :]
    b = tl.sum(tl.where(causal, log_f[None, :], 0.0), axis=1)  # inclusive cumulative sum within the chunk
    return qc, kc, vc, f_pre, log_f, i_pre, b, causal, valid


@triton.jit
def _chunk_gates(b, i_pre, log_f, m, causal):
    """Step 2's stabilised weights within a chunk entered with stabiliser ``m``: the gate matrix D,
    the carried state's weight c, m per row; and the chunk's end: the weight of each write, of the
    carried state, and the new m."""
    log_d = tl.where(causal, b[:, None] - b[None, :] + i_pre[None, :], float("-inf"))
    m_t = tl.maximum(tl.max(log_d, axis=1), b + m)
    b_last = tl.sum(log_f, axis=0)
    m_new = tl.maximum(b_last + m, tl.max(b_last - b + i_pre, axis=0))
    return (tl.exp(log_d - m_t[:, None]), tl.exp(b + m - m_t), m_t,
            tl.exp(b_last - b + i_pre - m_new), tl.exp(b_last + m - m_new), m_new)


@triton.jit
def _mlstm_forward_kernel(q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, c_ptr, n_ptr, m_ptr, h_ptr, cs_ptr, ns_ptr, ms_ptr,
                          T, DK, DV, NC, k_scale, L: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr,
                          STORE_STATES: tl.constexpr, UPCAST: tl.constexpr):
    bh = tl.program_id(0)  # one program per (batch, head); inputs are [BH, T, d] and [BH, T], contiguous
    rk, rv, rl = tl.arange(0, DK_PAD), tl.arange(0, DV_PAD), tl.arange(0, L)
    state_at = rv[:, None] * DK + rk[None, :]
    state_mask = (rv[:, None] < DV) & (rk[None, :] < DK)
    C = tl.load(c_ptr + bh * DV * DK + state_at, mask=state_mask, other=0.0)
    n = tl.load(n_ptr + bh * DK + rk, mask=rk < DK, other=0.0)  # the state: on chip for the whole sequence
    m = tl.load(m_ptr + bh)
    for chunk in range(NC):
        if STORE_STATES:  # the state entering each chunk, for the backward kernel
            tl.store(cs_ptr + (bh * NC + chunk) * DV * DK + state_at, C, mask=state_mask)
            tl.store(ns_ptr + (bh * NC + chunk) * DK + rk, n, mask=rk < DK)
            tl.store(ms_ptr + bh * NC + chunk, m)
        qc, kc, vc, _, log_f, i_pre, b, causal, valid = _load_chunk(
            q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, bh, chunk * L, T, DK, DV, k_scale, L, DK_PAD, DV_PAD)
        D, carried, m_t, write, keep, m_new = _chunk_gates(b, i_pre, log_f, m, causal)
        weights = tile_dot(qc, tl.trans(kc), UPCAST) * D  # [L, L]: never leaves the chip
        num = tile_dot(weights, vc, UPCAST) + carried[:, None] * tile_dot(qc, tl.trans(C), UPCAST)
        overlap = tl.sum(weights, axis=1) + carried * tl.sum(qc * n[None, :], axis=1)
        den = tl.maximum(tl.maximum(tl.abs(overlap), tl.exp(-m_t)), 1.1754943508222875e-38)
        rt = chunk * L + rl
        tl.store(h_ptr + bh * T * DV + rt[:, None] * DV + rv[None, :], num / den[:, None],
                 mask=valid[:, None] & (rv[None, :] < DV))
        C = keep * C + tile_dot(tl.trans(vc * write[:, None]), kc, UPCAST)  # the state after the chunk
        n = keep * n + tl.sum(kc * write[:, None], axis=0)
        m = m_new
    tl.store(c_ptr + bh * DV * DK + state_at, C, mask=state_mask)
    tl.store(n_ptr + bh * DK + rk, n, mask=rk < DK)
    tl.store(m_ptr + bh, m)


@triton.jit
def _mlstm_backward_kernel(q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, cs_ptr, ns_ptr, ms_ptr, dh_ptr, dc_ptr, dn_ptr,
                           dq_ptr, dk_ptr, dv_ptr, di_ptr, df_ptr, T, DK, DV, NC, k_scale, L: tl.constexpr,
                           DK_PAD: tl.constexpr, DV_PAD: tl.constexpr, UPCAST: tl.constexpr):
    bh = tl.program_id(0)
    rk, rv, rl = tl.arange(0, DK_PAD), tl.arange(0, DV_PAD), tl.arange(0, L)
    state_at = rv[:, None] * DK + rk[None, :]
    state_mask = (rv[:, None] < DV) & (rk[None, :] < DK)
    dC = tl.load(dc_ptr + bh * DV * DK + state_at, mask=state_mask, other=0.0)  # d loss / d state after chunk
    dn = tl.load(dn_ptr + bh * DK + rk, mask=rk < DK, other=0.0)
    for step in range(NC):
        chunk = NC - 1 - step
        qc, kc, vc, f_pre, log_f, i_pre, b, causal, valid = _load_chunk(
            q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, bh, chunk * L, T, DK, DV, k_scale, L, DK_PAD, DV_PAD)
        C0 = tl.load(cs_ptr + (bh * NC + chunk) * DV * DK + state_at, mask=state_mask, other=0.0)
        n0 = tl.load(ns_ptr + (bh * NC + chunk) * DK + rk, mask=rk < DK, other=0.0)
        D, carried, m_t, write, keep, _ = _chunk_gates(b, i_pre, log_f, tl.load(ms_ptr + bh * NC + chunk), causal)
        # recompute the forward chunk
        W = tile_dot(qc, tl.trans(kc), UPCAST) * D
        Cq = tile_dot(qc, tl.trans(C0), UPCAST)  # [L, DV]
        nq = tl.sum(qc * n0[None, :], axis=1)
        num = tile_dot(W, vc, UPCAST) + carried[:, None] * Cq
        overlap = tl.sum(W, axis=1) + carried * nq
        floor = tl.exp(-m_t)
        den = tl.maximum(tl.maximum(tl.abs(overlap), floor), 1.1754943508222875e-38)
        rt = chunk * L + rl
        out = valid[:, None] & (rv[None, :] < DV)
        gh = tl.load(dh_ptr + bh * T * DV + rt[:, None] * DV + rv[None, :], mask=out, other=0.0).to(tl.float32)
        # h = num / den; den = |overlap| where that beats the floor (m carries no gradient)
        dnum = gh / den[:, None]
        sign = tl.where(overlap > 0, 1.0, tl.where(overlap < 0, -1.0, 0.0))
        dov = tl.where(tl.abs(overlap) > floor, -tl.sum(gh * num, axis=1) / (den * den) * sign, 0.0)
        dW = tl.where(causal, tile_dot(dnum, tl.trans(vc), UPCAST) + dov[:, None], 0.0)
        dS = dW * D
        dlog_d = dW * W
        dq = tile_dot(dS, kc, UPCAST) + carried[:, None] * tile_dot(dnum, C0, UPCAST) + (carried * dov)[:, None] * n0[None, :]
        dk = tile_dot(tl.trans(dS), qc, UPCAST)
        dv = tile_dot(tl.trans(W), dnum, UPCAST)
        dlog_carried = carried * (tl.sum(dnum * Cq, axis=1) + dov * nq)
        # the state after the chunk: keep * (C0, n0) + sum_j write_j (v_j k_j^T, k_j)
        dCk = tile_dot(kc, tl.trans(dC), UPCAST)  # [L, DV]: dC k_j
        dlog_write = write * (tl.sum(vc * dCk, axis=1) + tl.sum(kc * dn[None, :], axis=1))
        dv += write[:, None] * dCk
        dk += write[:, None] * (tile_dot(vc, dC, UPCAST) + dn[None, :])
        dlog_keep = keep * (tl.sum(tl.sum(dC * C0, axis=1), axis=0) + tl.sum(dn * n0, axis=0))
        # log space: log D_tj = b_t - b_j + i_j, log c_t = b_t + m0, log write_j = b_L - b_j + i_j, log keep = b_L + m0
        d_col = tl.sum(dlog_d, axis=0)
        db = tl.sum(dlog_d, axis=1) - d_col + dlog_carried - dlog_write
        db_last = tl.sum(dlog_write, axis=0) + dlog_keep
        dlog_f = tl.sum(tl.where(causal, db[:, None], 0.0), axis=0) + db_last  # b_t sums log f_l for l <= t
        tl.store(dq_ptr + bh * T * DK + rt[:, None] * DK + rk[None, :], dq, mask=valid[:, None] & (rk[None, :] < DK))
        tl.store(dk_ptr + bh * T * DK + rt[:, None] * DK + rk[None, :], dk * k_scale,
                 mask=valid[:, None] & (rk[None, :] < DK))
        tl.store(dv_ptr + bh * T * DV + rt[:, None] * DV + rv[None, :], dv, mask=out)
        tl.store(di_ptr + bh * T + rt, d_col + dlog_write, mask=valid)
        tl.store(df_ptr + bh * T + rt, dlog_f / (1.0 + tl.exp(f_pre)), mask=valid)  # d logsigmoid = sigmoid(-f)
        # to the previous chunk: the gradient of the state entering this one
        dC = keep * dC + tile_dot(tl.trans(carried[:, None] * dnum), qc, UPCAST)
        dn = keep * dn + tl.sum((carried * dov)[:, None] * qc, axis=0)
    tl.store(dc_ptr + bh * DV * DK + state_at, dC, mask=state_mask)
    tl.store(dn_ptr + bh * DK + rk, dn, mask=rk < DK)


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, ...] -> [B H, T, ...]`` contiguous (the kernels' layout; they read any float dtype)."""
    x = x.transpose(1, 2)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]).contiguous()


def _heads_last(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B H, T, ...] -> [B, T, H, ...]``, the inverse of :func:`_heads_first`."""
    return x.reshape(batch, -1, *x.shape[1:]).transpose(1, 2)


def _sizes(q, v) -> dict:
    d_k, d_v = q.shape[-1], v.shape[-1]
    return {"T": q.shape[1], "DK": d_k, "DV": d_v, "NC": triton.cdiv(q.shape[1], TRITON_CHUNK),
            "k_scale": 1.0 / math.sqrt(d_k), "L": TRITON_CHUNK, "DK_PAD": max(16, triton.next_power_of_2(d_k)),
            "DV_PAD": max(16, triton.next_power_of_2(d_v)), "UPCAST": interpreted()}


def _forward_launch(inputs, C0, n0, m0, store_states: bool):
    """Run the forward kernel on ``inputs`` (q, k, v, i~, f~ heads first); returns h~ [B H, T, d_v], the
    final state and, with ``store_states``, the states entering each chunk (all float32)."""
    q, v = inputs[0], inputs[2]
    sizes, rows = _sizes(q, v), q.shape[0]
    C = C0.float().reshape(rows, *C0.shape[2:]).contiguous().clone()  # updated in place
    n = n0.float().reshape(rows, -1).contiguous().clone()
    m = m0.float().reshape(rows).contiguous().clone()
    h = torch.empty(rows, q.shape[1], v.shape[-1], dtype=torch.float32, device=q.device)
    chunks = sizes["NC"] if store_states else 1
    states = (torch.empty(rows, chunks, *C.shape[1:], device=q.device), torch.empty(rows, chunks, n.shape[1], device=q.device),
              torch.empty(rows, chunks, device=q.device))
    _mlstm_forward_kernel[(rows,)](*inputs, C, n, m, h, *states, **sizes, STORE_STATES=store_states)
    return h, (C, n, m), states


class _MLSTMTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i_pre, f_pre, C0, n0, m0):
        batch, heads = q.shape[0], q.shape[2]
        inputs = [_heads_first(x) for x in (q, k, v, i_pre, f_pre)]
        h, (C, n, m), states = _forward_launch(inputs, C0, n0, m0, store_states=any(ctx.needs_input_grad))
        ctx.save_for_backward(*inputs, *states)
        ctx.dtypes, ctx.batch = [x.dtype for x in (q, k, v, i_pre, f_pre, C0, n0)], batch
        ctx.mark_non_differentiable(m)
        h = _heads_last(h, batch).to(q.dtype)
        return h, C.reshape(batch, heads, *C.shape[1:]).to(C0.dtype), n.reshape(batch, heads, -1).to(n0.dtype), \
            m.reshape(batch, heads).to(m0.dtype)

    @staticmethod
    def backward(ctx, grad_h, grad_C, grad_n, _grad_m):
        inputs, states = ctx.saved_tensors[:5], ctx.saved_tensors[5:]
        q, v = inputs[0], inputs[2]
        dC = grad_C.float().reshape(q.shape[0], *grad_C.shape[2:]).contiguous().clone()  # becomes d C0
        dn = grad_n.float().reshape(q.shape[0], -1).contiguous().clone()
        grads = [torch.empty(x.shape, dtype=torch.float32, device=x.device) for x in inputs]
        _mlstm_backward_kernel[(q.shape[0],)](*inputs, *states, _heads_first(grad_h), dC, dn, *grads,
                                              **_sizes(q, v))
        grads = [_heads_last(g, ctx.batch).to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=False)]
        dC0 = dC.reshape(ctx.batch, -1, *dC.shape[1:]).to(ctx.dtypes[5])
        return (*grads, dC0, dn.reshape(ctx.batch, -1, dn.shape[1]).to(ctx.dtypes[6]), None)


def mlstm_triton(q, k, v, i_pre, f_pre, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
    """Steps 5-6: the chunkwise Triton kernels, forward and backward (module docstring)."""
    C0, n0, m0 = state if state is not None else empty_state(q, v.shape[-1])
    h, C, n, m = _MLSTMTriton.apply(q, k, v, i_pre, f_pre, C0, n0, m0)
    return h, (C, n, m)
