"""Mamba's selective scan: the per-token reference, the chunked torch path, Triton kernels.

Shapes: ``dt, x [B, T, D]`` (D = d_inner), ``A [D, N]`` (negative), ``B, C [B, T, N]``, optional
``h0 [B, D, N]``. Per position t (the reference implementation's selective_scan_ref, Euler for B):

1. ``decay_t = exp(dt_t A)`` ``[B, D, N]``; ``h_t = decay_t h_{t-1} + (dt_t x_t) B_t``;
2. ``y_t = sum_n C_t[n] h_t[:, n]``; returned: ``y [B, T, D]`` and the last state ``h_T [B, D, N]``.

The state is N times the size of the layer's activations, so the fast paths never write the states of
all positions to memory (read :mod:`.gemm` first: the design question is what crosses to global
memory). They keep the state of one position on chip, walk time in chunks, and keep only the state
entering each chunk (a checkpoint). Backward:

3. per chunk, last chunk first: recompute the chunk's states from its checkpoint;
4. walk the chunk backwards with ``g_t = dL/dh_t = C_t dL/dy_t + decay_{t+1} g_{t+1}`` (``g`` entering
   from the gradient of ``h_T``), and contract: ``dC_t = sum_D dy_t h_t``, ``d(dt x)_t = sum_N B_t g_t``,
   ``dB_t = sum_D (dt x)_t g_t``, ``dlog_t = g_t decay_t h_{t-1}`` (dL/d(dt_t A)), ``dA += dlog_t dt_t``,
   ``d dt_t = sum_N dlog_t A + d(dt x)_t x_t``, ``dx_t = d(dt x)_t dt_t``; after the first chunk,
   ``dh0 = decay_0 g_0``.

Paths (callers go through :mod:`.dispatch`):

- :func:`selective_scan_reference`: steps 1-2 one token at a time, autograd through the loop.
- :func:`selective_scan_torch`: the fastest CPU path (moved here from the Mamba model): time-major
  tensors, a chunk's decays and states in two reused ``[chunk, B, N, D]`` buffers that stay in cache,
  the recurrence run in place through the chunk, ``y = C h`` contracted at once per chunk, and the
  backward of steps 3-4 by torch ops (:class:`_SelectiveScan`). Double backward differentiates
  :func:`selective_scan_materialised` (every ``[B, T, D, N]`` tensor built, :mod:`.linear_scan`).
- :func:`selective_scan_triton`: one program per (batch row, block of ``BLOCK_D`` channels) keeps the
  state ``[BLOCK_D, N]`` in registers and walks time in chunks of ``chunk`` positions, storing a
  checkpoint at each chunk's start; each step reads ``dt_t, x_t`` (``BLOCK_D`` each) and ``B_t, C_t``
  (``N`` each) and writes ``y_t`` once. The backward kernel runs steps 3-4 with ``g`` in registers; a
  chunk's recomputed states go to a per-program scratch buffer of ``chunk + 1`` states (global memory,
  but small enough to stay in cache) because registers cannot be indexed by time. Sums over D
  (``dB``, ``dC``) are written per block of D and summed by the host (deterministic, no atomics);
  ``dA`` per batch row likewise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .linear_scan import linear_scan
from .wkv import compute_dtype

# Positions per chunk of the torch path: about this many state elements per thread (so that the chunk's
# few [chunk, B, N, D] buffers stay near the core's 1 MiB L2 cache on the machines we time on).
CHUNK_ELEMENTS = 1 << 18
TRITON_CHUNK = 64  # positions between the Triton path's checkpoints
BLOCK_D = 32
LOG2_E = 1.4426950408889634


def default_chunk(x: torch.Tensor, d_state: int) -> int:
    """The torch path's chunk length for ``x [B, T, D]`` (``CHUNK_ELEMENTS`` state elements per thread)."""
    batch, steps, d_inner = x.shape
    per_position = batch * d_inner * d_state
    return max(1, min(steps, CHUNK_ELEMENTS * torch.get_num_threads() // per_position))


def selective_scan_reference(dt, x, A, B, C, h0=None):
    """Steps 1-2 of the module docstring one token at a time: ``(y [B, T, D], h_T [B, D, N])``."""
    dtype, out = compute_dtype(x.dtype), x.dtype
    dt, x, A, B, C = (t.to(dtype) for t in (dt, x, A, B, C))
    h = x.new_zeros(x.shape[0], *A.shape) if h0 is None else h0.to(dtype).expand(x.shape[0], *A.shape)
    outputs = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        outputs.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(x.shape)
    return y.to(out), h.to(out)


def selective_scan_materialised(dt, x, A, B, C, h0=None):
    """The scan with every ``[B, T, D, N]`` decay and state in memory (as the model's hooked path)."""
    states = linear_scan(torch.exp(dt.unsqueeze(-1) * A), (dt * x).unsqueeze(-1) * B.unsqueeze(2), h0)
    return (states * C.unsqueeze(2)).sum(-1), states[:, -1]


def _time_major(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.transpose(0, 1).contiguous() for t in tensors]


def _chunk_states(decay, states, dt, dtx, A2, B, h):
    """One chunk's decays ``exp(dt A) = 2^(dt A log2 e)`` and states, written into the buffers
    ``decay``, ``states`` ``[n, B, N, d_inner]``, continuing from the state ``h`` ``[B, N, d_inner]``."""
    torch.mul(dt[:, :, None, :], A2, out=decay).exp2_()  # exp2: the same value, 3x cheaper than exp here
    torch.mul(B[:, :, :, None], dtx[:, :, None, :], out=states)  # the inputs, made the states in place
    for h_t, decay_t in zip(states.unbind(0), decay.unbind(0), strict=True):
        h = h_t.addcmul_(decay_t, h)


class _SelectiveScan(torch.autograd.Function):
    """``y_t = sum_n C_t[n] h_t[n]`` with ``h_t = exp(dt_t A) h_{t-1} + B_t (dt_t x_t)``, chunk by chunk.

    Inside, tensors are time-major with d_inner last (states ``[T, B, N, d_inner]``), so that one
    position's state is one contiguous slice and the contractions over N are vector adds. The chunk's
    decays and states live in two reused ``[chunk, B, N, d_inner]`` buffers; the forward pass keeps only
    the state entering each chunk (``[B, N, d_inner]``), and the backward pass recomputes a chunk's decays
    and states from it, runs the reverse recurrence ``g_t = C_t dL/dy_t + exp(dt_{t+1} A) g_{t+1}``
    (g_t = dL/dh_t) over the chunk, and contracts (module docstring, the torch path).
    """

    @staticmethod
    def forward(ctx, dt, x, A, B, C, h0, chunk):
        batch, steps, d_inner = x.shape
        d_state = A.shape[1]
        A2 = A.t() * LOG2_E  # [N, d_inner]
        dt_t, dtx_t, B_t, C_t = _time_major(dt, dt * x, B, C)  # [T, B, d_inner] / [T, B, N]
        if h0 is None:
            h = x.new_zeros(batch, d_state, d_inner)
        else:
            h = h0.transpose(-1, -2).expand(batch, d_state, d_inner)
        decay, states = (x.new_empty(chunk, batch, d_state, d_inner) for _ in range(2))
        y, starts = x.new_empty(steps, batch, d_inner), []
        for s in range(0, steps, chunk):
            e = min(s + chunk, steps)
            starts.append(h)
            _chunk_states(decay[:e - s], states[:e - s], dt_t[s:e], dtx_t[s:e], A2, B_t[s:e], h)
            torch.matmul(C_t[s:e, :, None, :], states[:e - s], out=y[s:e, :, None, :])
            h = states[e - s - 1].clone()
        ctx.save_for_backward(dt, x, A, B, C, h0)
        ctx.chunk, ctx.starts = chunk, starts
        return y.transpose(0, 1), h.transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad_y, grad_h):
        dt, x, A, B, C, h0 = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: differentiate the materialised form instead
            inputs = [t for t in (dt, x, A, B, C, h0) if t is not None]
            with torch.enable_grad():
                grads = iter(torch.autograd.grad(selective_scan_materialised(dt, x, A, B, C, h0), inputs, (grad_y, grad_h),
                                                 create_graph=True, allow_unused=True))
            return (*(None if t is None else next(grads) for t in (dt, x, A, B, C, h0)), None)
        chunk, starts = ctx.chunk, ctx.starts
        batch, steps, d_inner = x.shape
        A_t = A.t().contiguous()
        A2 = A_t * LOG2_E
        dt_t, dtx_t, B_t, C_t, gy_t = _time_major(dt, dt * x, B, C, grad_y)
        g_dt, g_dtx, g_B, g_C = (torch.empty_like(t) for t in (dt_t, dtx_t, B_t, C_t))
        decay, states, g, g_A = (x.new_empty(chunk, batch, A.shape[1], d_inner) for _ in range(4))
        g_A.zero_()  # dL/dA summed over the chunks, per chunk position and batch row until the end
        carry = grad_h.transpose(-1, -2).contiguous()  # dL/dh_{e-1} from everything after the chunk
        for k in range(len(starts) - 1, -1, -1):
            s = k * chunk
            e = min(s + chunk, steps)
            a, h, gk = decay[:e - s], states[:e - s], g[:e - s]
            _chunk_states(a, h, dt_t[s:e], dtx_t[s:e], A2, B_t[s:e], starts[k])
            torch.mul(C_t[s:e, :, :, None], gy_t[s:e, :, None, :], out=gk)  # made dL/dh_t in place
            g_next = gk[-1].add_(carry)
            g_rows, a_rows = gk.unbind(0), a.unbind(0)
            for i in range(e - s - 2, -1, -1):
                g_next = g_rows[i].addcmul_(a_rows[i + 1], g_next)
            torch.mul(a[0], gk[0], out=carry)
            torch.matmul(gy_t[s:e, :, None, :], h.transpose(-1, -2), out=g_C[s:e, :, None, :])
            torch.matmul(B_t[s:e, :, None, :], gk, out=g_dtx[s:e, :, None, :])
            torch.matmul(dtx_t[s:e, :, None, :], gk.transpose(-1, -2), out=g_B[s:e, :, None, :])
            g_log = gk.mul_(a)  # dL/d(dt_t A) = g_t exp(dt_t A) h_{t-1}
            g_log[1:].mul_(h[:-1])
            g_log[0].mul_(starts[k])
            g_A[:e - s].addcmul_(g_log, dt_t[s:e, :, None, :])
            torch.sum(g_log.mul_(A_t), -2, out=g_dt[s:e])
        g_dt, g_dtx = g_dt.transpose(0, 1), g_dtx.transpose(0, 1)
        g_h0 = carry.transpose(-1, -2).sum_to_size(h0.shape) if h0 is not None and ctx.needs_input_grad[5] else None
        return (g_dt + g_dtx * x, g_dtx * dt, g_A.sum((0, 1)).t(), g_B.transpose(0, 1), g_C.transpose(0, 1),
                g_h0, None)


def selective_scan_torch(dt, x, A, B, C, h0=None, chunk: int | None = None):
    """The chunked torch path (module docstring); ``chunk`` positions per chunk (None: cache-sized)."""
    chunk = default_chunk(x, A.shape[1]) if chunk is None else max(1, min(chunk, x.shape[1]))
    dtype, out = compute_dtype(x.dtype), x.dtype
    if dtype == out:
        return _SelectiveScan.apply(dt, x, A, B, C, h0, chunk)
    # half types: float32 inside, as the other paths (the casts are differentiable)
    y, h_last = _SelectiveScan.apply(*(None if t is None else t.to(dtype) for t in (dt, x, A, B, C, h0)), chunk)
    return y.to(out), h_last.to(out)


# ---- Triton kernels ----

@triton.jit
def _load_step(dt_ptr, x_ptr, B_ptr, C_ptr, b, t, T, D, N, rd, rn):
    """dt_t, x_t ``[BLOCK_D]`` and B_t, C_t ``[BLOCK_N]`` of batch row b; zeros past T (such a step
    leaves the state unchanged: decay 1, input 0) and in the padding lanes."""
    dm = (rd < D) & (rd * 0 + t < T)  # masks as tensors: the interpreter rejects a Python bool
    nm = (rn < N) & (rn * 0 + t < T)
    dtv = tl.load(dt_ptr + (b * T + t) * D + rd, mask=dm, other=0.0).to(tl.float32)
    xv = tl.load(x_ptr + (b * T + t) * D + rd, mask=dm, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + (b * T + t) * N + rn, mask=nm, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + (b * T + t) * N + rn, mask=nm, other=0.0).to(tl.float32)
    return dtv, xv, Bv, Cv


@triton.jit
def _scan_forward_kernel(dt_ptr, x_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, y_ptr, ckpt_ptr, last_ptr,
                         T, D, N, n_chunks, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0)
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rn = tl.arange(0, BLOCK_N)
    m2 = (rd[:, None] < D) & (rn[None, :] < N)
    tile = rd[:, None] * N + rn[None, :]  # offsets of this block's [BLOCK_D, N] in a [D, N] state
    A2 = tl.load(A_ptr + tile, mask=m2, other=0.0).to(tl.float32) * 1.4426950408889634  # exp = exp2(. log2 e)
    h = tl.load(h0_ptr + b * D * N + tile, mask=m2, other=0.0)  # float32 [B, D, N]
    for ci in range(n_chunks):
        tl.store(ckpt_ptr + (b * n_chunks + ci) * D * N + tile, h, mask=m2)  # the state entering the chunk
        for i in range(CHUNK):
            t = ci * CHUNK + i
            dtv, xv, Bv, Cv = _load_step(dt_ptr, x_ptr, B_ptr, C_ptr, b, t, T, D, N, rd, rn)
            h = tl.exp2(dtv[:, None] * A2) * h + (dtv * xv)[:, None] * Bv[None, :]
            tl.store(y_ptr + (b * T + t) * D + rd, tl.sum(h * Cv[None, :], axis=1), mask=(rd < D) & (rd * 0 + t < T))
    tl.store(last_ptr + b * D * N + tile, h, mask=m2)


@triton.jit
def _scan_backward_kernel(dt_ptr, x_ptr, A_ptr, B_ptr, C_ptr, gy_ptr, ckpt_ptr, glast_ptr, scratch_ptr,
                          gdt_ptr, gx_ptr, gA_ptr, gB_ptr, gC_ptr, gh0_ptr, Bsz, T, D, N, n_chunks,
                          CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0)
    pd = tl.program_id(1)
    rd = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    rn = tl.arange(0, BLOCK_N)
    dm = rd < D
    m2 = dm[:, None] & (rn[None, :] < N)
    tile = rd[:, None] * N + rn[None, :]
    A = tl.load(A_ptr + tile, mask=m2, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    g = tl.load(glast_ptr + b * D * N + tile, mask=m2, other=0.0)  # dL/dh after the last position
    gA = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    # This program's scratch: chunk + 1 states [BLOCK_D, BLOCK_N], slot i = the state before step i.
    slot = BLOCK_D * BLOCK_N
    scratch = scratch_ptr + (b * tl.num_programs(1) + pd) * (CHUNK + 1) * slot
    local = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + rn[None, :]
    part = (pd * Bsz + b) * T  # this block's rows of the per-block partial sums dB, dC [blocks, B, T, N]
    for cr in range(n_chunks):
        ci = n_chunks - 1 - cr
        h = tl.load(ckpt_ptr + (b * n_chunks + ci) * D * N + tile, mask=m2, other=0.0)
        tl.store(scratch + local, h)
        for i in range(CHUNK):  # step 3: recompute the chunk's states
            dtv, xv, Bv, Cv = _load_step(dt_ptr, x_ptr, B_ptr, C_ptr, b, ci * CHUNK + i, T, D, N, rd, rn)
            h = tl.exp2(dtv[:, None] * A2) * h + (dtv * xv)[:, None] * Bv[None, :]
            tl.store(scratch + (i + 1) * slot + local, h)
        tl.debug_barrier()  # the stores above are read back below, possibly by other threads
        for j in range(CHUNK):  # step 4, backwards through the chunk
            i = CHUNK - 1 - j
            t = ci * CHUNK + i
            dtv, xv, Bv, Cv = _load_step(dt_ptr, x_ptr, B_ptr, C_ptr, b, t, T, D, N, rd, rn)
            gy = tl.load(gy_ptr + (b * T + t) * D + rd, mask=dm & (rd * 0 + t < T), other=0.0).to(tl.float32)
            h_prev = tl.load(scratch + i * slot + local)
            h_t = tl.load(scratch + (i + 1) * slot + local)
            decay = tl.exp2(dtv[:, None] * A2)
            g += Cv[None, :] * gy[:, None]  # g is now dL/dh_t
            g_dtx = tl.sum(g * Bv[None, :], axis=1)
            g_log = g * decay * h_prev
            gA += g_log * dtv[:, None]
            nm = (rn < N) & (rn * 0 + t < T)
            tl.store(gC_ptr + (part + t) * N + rn, tl.sum(h_t * gy[:, None], axis=0), mask=nm)
            tl.store(gB_ptr + (part + t) * N + rn, tl.sum(g * (dtv * xv)[:, None], axis=0), mask=nm)
            tl.store(gdt_ptr + (b * T + t) * D + rd, tl.sum(g_log * A, axis=1) + g_dtx * xv, mask=dm & (rd * 0 + t < T))
            tl.store(gx_ptr + (b * T + t) * D + rd, g_dtx * dtv, mask=dm & (rd * 0 + t < T))
            g = decay * g  # the part of dL/dh_{t-1} that flows through h_t
        tl.debug_barrier()  # before the next chunk overwrites the scratch
    tl.store(gh0_ptr + b * D * N + tile, g, mask=m2)
    tl.store(gA_ptr + b * D * N + tile, gA, mask=m2)  # per batch row; the host sums over rows


def _float_contiguous(*tensors):
    return [t.contiguous() for t in tensors]


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dt, x, A, B, C, h0, chunk):
        batch, steps, d_inner = x.shape
        d_state = A.shape[1]
        dt_c, x_c, A_c, B_c, C_c = _float_contiguous(dt, x, A, B, C)
        h_start = (x.new_zeros(batch, d_inner, d_state, dtype=torch.float32) if h0 is None
                   else h0.float().expand(batch, d_inner, d_state).contiguous())
        n_chunks = triton.cdiv(steps, chunk)
        y = torch.empty(batch, steps, d_inner, dtype=torch.float32, device=x.device)
        ckpt = torch.empty(batch, n_chunks, d_inner, d_state, dtype=torch.float32, device=x.device)
        last = torch.empty_like(h_start)
        grid = (batch, triton.cdiv(d_inner, BLOCK_D))
        _scan_forward_kernel[grid](dt_c, x_c, A_c, B_c, C_c, h_start, y, ckpt, last, steps, d_inner, d_state,
                                   n_chunks, CHUNK=chunk, BLOCK_D=BLOCK_D, BLOCK_N=triton.next_power_of_2(d_state))
        ctx.save_for_backward(dt_c, x_c, A_c, B_c, C_c, ckpt)
        ctx.chunk, ctx.h0_shape = chunk, None if h0 is None else h0.shape
        return y.to(x.dtype), last.to(x.dtype)

    @staticmethod
    @once_differentiable  # the kernels' outputs carry no graph: double backward raises
    def backward(ctx, grad_y, grad_h):
        dt, x, A, B, C, ckpt = ctx.saved_tensors
        batch, steps, d_inner = x.shape
        d_state, n_chunks, chunk = A.shape[1], ckpt.shape[1], ctx.chunk
        block_n, blocks = triton.next_power_of_2(d_state), triton.cdiv(d_inner, BLOCK_D)
        f32 = {"dtype": torch.float32, "device": x.device}
        gy = torch.zeros(x.shape, **f32) if grad_y is None else grad_y.contiguous()
        glast = torch.zeros(batch, d_inner, d_state, **f32) if grad_h is None else grad_h.float().contiguous()
        scratch = torch.empty(batch * blocks * (chunk + 1) * BLOCK_D * block_n, **f32)
        gdt, gx = torch.empty(x.shape, **f32), torch.empty(x.shape, **f32)
        gB, gC = (torch.empty(blocks, batch, steps, d_state, **f32) for _ in range(2))
        gA, gh0 = (torch.empty(batch, d_inner, d_state, **f32) for _ in range(2))
        _scan_backward_kernel[(batch, blocks)](dt, x, A, B, C, gy, ckpt, glast, scratch, gdt, gx, gA, gB, gC, gh0,
                                               batch, steps, d_inner, d_state, n_chunks, CHUNK=chunk,
                                               BLOCK_D=BLOCK_D, BLOCK_N=block_n)
        g_h0 = None if ctx.h0_shape is None else gh0.sum_to_size(ctx.h0_shape).to(x.dtype)
        return (gdt.to(dt.dtype), gx.to(x.dtype), gA.sum(0).to(A.dtype), gB.sum(0).to(B.dtype),
                gC.sum(0).to(C.dtype), g_h0, None)


def selective_scan_triton(dt, x, A, B, C, h0=None, chunk: int | None = None):
    """The Triton kernels (module docstring); a checkpoint every ``chunk`` positions (None: 64)."""
    chunk = max(1, min(TRITON_CHUNK if chunk is None else chunk, x.shape[1]))
    return _SelectiveScanTriton.apply(dt, x, A, B, C, h0, chunk)
