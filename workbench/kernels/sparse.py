"""Sparse dictionary encode and decode: Triton kernels, pure-torch references, fast CPU torch paths.

Shapes: ``x [N, d]``, ``W_enc [d, F]``, ``b_enc [F]``, ``W_dec [F, d_out]``; the sparse form of ``N``
rows is ``(indices [N, k] int64, values [N, k])``. Every path computes in float32 and returns values in
the inputs' dtype. Read :mod:`.gemm` first: the same tiling argument decides what stays on chip here.

Encode (fused matmul + TopK / JumpReLU):

1. ``pre = x @ W_enc + b_enc`` (float32).
2. The selection key is ``pre`` (TopK) or ``pre`` where ``pre > threshold`` and ``-inf`` elsewhere
   (JumpReLU, a threshold per feature; ``k`` is then a capacity: rows with fewer than ``k`` active
   features fill the rest with value 0 and an arbitrary valid index).
3. Keep the ``k`` largest keys of each row: ``indices``; ``values = pre[indices] * gate``, the gate
   being ``key > 0`` for TopK with ReLU (the workbench's default), ``key > -inf`` for JumpReLU and 1
   for plain TopK.
4. Backward: with ``g = grad_values * gate``, ``grad_x = decode(indices, g, W_enc^T)``,
   ``grad_W_enc^T[indices] += g x`` and ``grad_b_enc[indices] += g``: only the ``k`` active columns
   of ``W_enc`` are read or written (the same primitives as the decode below). The JumpReLU threshold
   gets no gradient here (its straight-through estimator needs the pre-activations *near* the
   threshold, which the sparse form drops): train thresholds on the dense path.

The Triton encode never writes ``pre`` to global memory: one program owns ``BLOCK_N`` rows, walks the
features in tiles of ``BLOCK_F`` (each tile a small GEMM over ``d``, as in :mod:`.gemm`), and merges
each tile into a running top-``k`` kept on chip (``k`` rounds of "take the larger of the two maxima,
knock it out"), so global traffic is ``x``, ``W_enc`` and the ``N k`` outputs instead of ``N F``.

Decode (the sum of the active features' decoder rows):

1. Forward: ``y[n] = sum_j values[n, j] * W_dec[indices[n, j]]``; equal to ``dense(acts) @ W_dec``.
2. Backward to values: ``grad_values[n, j] = <grad_y[n], W_dec[indices[n, j]]>``.
3. Backward to the weights: ``grad_W_dec[indices[n, j]] += values[n, j] * grad_y[n]``; rows of
   inactive features are never read or written (float32 accumulation, atomics on the GPU).

Paths: ``*_reference`` is plain dense torch with autograd (the definition); ``*_torch`` is the fastest
CPU path (``embedding_bag`` gathers, ``index_add_`` scatters, sparse backward); ``*_triton`` runs the
kernels (a GPU, or the CPU under ``TRITON_INTERPRET=1``). Callers go through :mod:`.dispatch`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F_nn
import triton
import triton.language as tl

from .gemm import interpreted, load_tile, tile_dot

BLOCK_N, BLOCK_F, BLOCK_D = 16, 32, 32  # tl.dot needs tiles of at least 16


def select_topk(pre: torch.Tensor, k: int, threshold: torch.Tensor | None, relu: bool):
    """Steps 2-3 of encode on a dense float32 ``pre``: returns ``(indices, gate)``, shared by the torch paths."""
    key = pre if threshold is None else pre.masked_fill(pre <= threshold.float(), float("-inf"))
    top, indices = key.topk(k, dim=-1)
    if threshold is not None:
        gate = top > float("-inf")
    else:
        gate = top > 0 if relu else torch.ones_like(top, dtype=torch.bool)
    return indices, gate


def encode_reference(x, W_enc, b_enc, k: int, threshold=None, relu: bool = True):
    """The definition: dense ``pre``, ``topk``, ``gather``; gradients by autograd through dense ops."""
    pre = x.float() @ W_enc.float() + b_enc.float()
    indices, gate = select_topk(pre.detach(), k, threshold, relu)
    values = pre.gather(-1, indices) * gate
    return indices, values.to(x.dtype)


def decode_reference(indices, values, W_dec):
    """The definition: scatter to dense activations, then ``acts @ W_dec``."""
    dense = torch.zeros(*indices.shape[:-1], W_dec.shape[0], dtype=torch.float32, device=values.device)
    dense = dense.scatter_add(-1, indices, values.float())
    return (dense @ W_dec.float()).to(values.dtype)


# ---- the primitives each fast path provides (torch on the CPU, Triton kernels) ----

def _decode_torch(indices, values, W):
    return F_nn.embedding_bag(indices, W.float(), per_sample_weights=values.float(), mode="sum")


def _value_grad_torch(indices, grad_y, W):
    return torch.bmm(W.float()[indices], grad_y.float().unsqueeze(-1)).squeeze(-1)


def _weight_grad_torch(indices, values, grad_y, n_rows: int):
    rows = (values.float().unsqueeze(-1) * grad_y.float().unsqueeze(1)).flatten(0, 1)
    out = torch.zeros(n_rows, grad_y.shape[-1], dtype=torch.float32, device=grad_y.device)
    return out.index_add_(0, indices.flatten(), rows)


def _select_torch(x, W_enc, b_enc, k, threshold, relu):
    pre = torch.addmm(b_enc.float(), x.float(), W_enc.float())
    indices, gate = select_topk(pre, k, threshold, relu)
    return indices, pre.gather(-1, indices) * gate


class _TorchOps:
    select, decode = staticmethod(_select_torch), staticmethod(_decode_torch)
    value_grad, weight_grad = staticmethod(_value_grad_torch), staticmethod(_weight_grad_torch)


class _SparseEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, threshold, k, relu, ops):
        indices, values = ops.select(x, W_enc, b_enc, k, threshold, relu)
        gate = values != 0 if (threshold is not None or relu) else torch.ones_like(values, dtype=torch.bool)
        ctx.save_for_backward(x, W_enc, indices, gate)
        ctx.ops = ops
        ctx.mark_non_differentiable(indices)
        return indices, values.to(x.dtype)

    @staticmethod
    def backward(ctx, _grad_indices, grad_values):
        x, W_enc, indices, gate = ctx.saved_tensors
        g = grad_values.float() * gate
        grad_x = ctx.ops.decode(indices, g, W_enc.t()).to(x.dtype)  # rows of W_enc^T = columns of W_enc
        grad_W = ctx.ops.weight_grad(indices, g, x, W_enc.shape[1]).t().to(W_enc.dtype)
        grad_b = torch.zeros(W_enc.shape[1], dtype=torch.float32, device=x.device)
        grad_b = grad_b.index_add_(0, indices.flatten(), g.flatten()).to(W_enc.dtype)
        return grad_x, grad_W, grad_b, None, None, None, None


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, indices, values, W_dec, ops):
        ctx.save_for_backward(indices, values, W_dec)
        ctx.ops = ops
        return ops.decode(indices, values, W_dec).to(values.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        indices, values, W_dec = ctx.saved_tensors
        grad_values = ctx.ops.value_grad(indices, grad_y, W_dec).to(values.dtype)
        grad_W = ctx.ops.weight_grad(indices, values, grad_y, W_dec.shape[0]).to(W_dec.dtype)
        return None, grad_values, grad_W, None


def encode_torch(x, W_enc, b_enc, k: int, threshold=None, relu: bool = True):
    """Fastest CPU path: BLAS ``addmm`` + ``topk``, sparse backward (module docstring, encode step 4)."""
    return _SparseEncode.apply(x, W_enc, b_enc, threshold, k, relu, _TorchOps)


def decode_torch(indices, values, W_dec):
    """Fastest CPU path: ``embedding_bag`` forward, gather/``index_add_`` backward on active rows only."""
    return _SparseDecode.apply(indices, values, W_dec, _TorchOps)


def encode_triton(x, W_enc, b_enc, k: int, threshold=None, relu: bool = True):
    """The fused Triton encode (pre-activations never leave the chip) with the Triton sparse backward."""
    return _SparseEncode.apply(x, W_enc, b_enc, threshold, k, relu, _TritonOps)


def decode_triton(indices, values, W_dec):
    """The Triton decode: forward, value gradient and active-row weight gradient are kernels."""
    return _SparseDecode.apply(indices, values, W_dec, _TritonOps)


# ---- Triton kernels ----

@triton.jit
def _encode_kernel(x_ptr, w_ptr, b_ptr, th_ptr, idx_ptr, val_ptr, N, D, F, s_xn, s_xd, s_wd, s_wf,
                   K: tl.constexpr, K_PAD: tl.constexpr, USE_THRESHOLD: tl.constexpr, RELU: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    slots = tl.arange(0, K_PAD)
    lanes = tl.arange(0, BLOCK_F)
    best_v = tl.full((BLOCK_N, K_PAD), float("-inf"), tl.float32)  # the running top-k, kept on chip
    best_i = tl.zeros((BLOCK_N, K_PAD), tl.int32)
    for f0 in range(0, F, BLOCK_F):
        rf = f0 + lanes
        pre = tl.zeros((BLOCK_N, BLOCK_F), tl.float32)
        for d0 in range(0, D, BLOCK_D):  # one GEMM tile, as in gemm.py
            rd = d0 + tl.arange(0, BLOCK_D)
            xt = load_tile(x_ptr, rn, rd, N, D, s_xn, s_xd)
            wt = load_tile(w_ptr, rd, rf, D, F, s_wd, s_wf)
            pre += tile_dot(xt, wt, UPCAST)
        pre += tl.load(b_ptr + rf, mask=rf < F, other=0.0).to(tl.float32)[None, :]
        key = tl.where(rf[None, :] < F, pre, float("-inf"))  # ragged edge: never selected
        if USE_THRESHOLD:
            th = tl.load(th_ptr + rf, mask=rf < F, other=0.0).to(tl.float32)
            key = tl.where(pre > th[None, :], key, float("-inf"))
        new_v = tl.full((BLOCK_N, K_PAD), float("-inf"), tl.float32)
        new_i = tl.zeros((BLOCK_N, K_PAD), tl.int32)
        for r in tl.static_range(K):  # merge: k rounds of "larger of the two maxima, knock it out"
            mb = tl.max(best_v, axis=1)
            pb = tl.argmax(best_v, axis=1)
            mt = tl.max(key, axis=1)
            pt = tl.argmax(key, axis=1)
            take = mt > mb
            from_best = tl.sum(tl.where(slots[None, :] == pb[:, None], best_i, 0), axis=1)
            new_v = tl.where(slots[None, :] == r, tl.where(take, mt, mb)[:, None], new_v)
            new_i = tl.where(slots[None, :] == r, tl.where(take, f0 + pt, from_best)[:, None], new_i)
            key = tl.where(take[:, None] & (lanes[None, :] == pt[:, None]), float("-inf"), key)
            best_v = tl.where(~take[:, None] & (slots[None, :] == pb[:, None]), float("-inf"), best_v)
        best_v = new_v
        best_i = new_i
    if RELU:
        vals = tl.where(best_v > 0, best_v, 0.0)
    else:
        vals = tl.where(best_v > float("-inf"), best_v, 0.0)
    out = rn[:, None] * K + slots[None, :]
    keep = (rn[:, None] < N) & (slots[None, :] < K)
    tl.store(idx_ptr + out, best_i.to(tl.int64), mask=keep)
    tl.store(val_ptr + out, vals, mask=keep)


@triton.jit
def _decode_kernel(idx_ptr, val_ptr, w_ptr, y_ptr, N, D, s_wf, s_wd, K: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rn < N
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for j in range(K):  # only the k active rows of W are read
        idx = tl.load(idx_ptr + rn * K + j, mask=row_ok, other=0)
        v = tl.load(val_ptr + rn * K + j, mask=row_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + idx[:, None] * s_wf + rd[None, :] * s_wd,
                    mask=row_ok[:, None] & (rd[None, :] < D), other=0.0)
        acc += v[:, None] * w.to(tl.float32)
    tl.store(y_ptr + rn[:, None] * D + rd[None, :], acc, mask=row_ok[:, None] & (rd[None, :] < D))


@triton.jit
def _value_grad_kernel(idx_ptr, g_ptr, w_ptr, gv_ptr, N, D, s_wf, s_wd, K: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    j = tl.program_id(1)
    row_ok = rn < N
    idx = tl.load(idx_ptr + rn * K + j, mask=row_ok, other=0)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        m = row_ok[:, None] & (rd[None, :] < D)
        g = tl.load(g_ptr + rn[:, None] * D + rd[None, :], mask=m, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + idx[:, None] * s_wf + rd[None, :] * s_wd, mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(g * w, axis=1)
    tl.store(gv_ptr + rn * K + j, acc, mask=row_ok)


@triton.jit
def _weight_grad_kernel(idx_ptr, val_ptr, g_ptr, gw_ptr, N, D, K: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = (rn[:, None] < N) & (rd[None, :] < D)
    g = tl.load(g_ptr + rn[:, None] * D + rd[None, :], mask=m, other=0.0).to(tl.float32)
    for j in range(K):  # atomics: two rows may name the same feature
        idx = tl.load(idx_ptr + rn * K + j, mask=rn < N, other=0)
        v = tl.load(val_ptr + rn * K + j, mask=rn < N, other=0.0).to(tl.float32)
        tl.atomic_add(gw_ptr + idx[:, None] * D + rd[None, :], v[:, None] * g, mask=m)


def _encode_launch(x, W_enc, b_enc, k, threshold, relu):
    N, D = x.shape
    F = W_enc.shape[1]
    indices = torch.empty(N, k, dtype=torch.int64, device=x.device)
    values = torch.empty(N, k, dtype=torch.float32, device=x.device)
    th = threshold if threshold is not None else b_enc  # any pointer; unused without USE_THRESHOLD
    _encode_kernel[(triton.cdiv(N, BLOCK_N),)](
        x, W_enc, b_enc.contiguous(), th.contiguous(), indices, values, N, D, F, *x.stride(), *W_enc.stride(),
        K=k, K_PAD=triton.next_power_of_2(k), USE_THRESHOLD=threshold is not None,
        RELU=relu and threshold is None, BLOCK_N=BLOCK_N, BLOCK_F=BLOCK_F, BLOCK_D=BLOCK_D, UPCAST=interpreted())
    return indices, values


def _decode_launch(indices, values, W):
    N, K = indices.shape
    D = W.shape[1]
    y = torch.empty(N, D, dtype=torch.float32, device=values.device)
    grid = (triton.cdiv(N, BLOCK_N), triton.cdiv(D, BLOCK_D))
    _decode_kernel[grid](indices.contiguous(), values.contiguous(), W, y, N, D, *W.stride(),
                         K=K, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D)
    return y


def _value_grad_launch(indices, grad_y, W):
    N, K = indices.shape
    gv = torch.empty(N, K, dtype=torch.float32, device=grad_y.device)
    _value_grad_kernel[(triton.cdiv(N, BLOCK_N), K)](indices.contiguous(), grad_y.contiguous(), W, gv,
                                                      N, W.shape[1], *W.stride(), K=K,
                                                      BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D)
    return gv


def _weight_grad_launch(indices, values, grad_y, n_rows: int):
    N, K = indices.shape
    D = grad_y.shape[1]
    gw = torch.zeros(n_rows, D, dtype=torch.float32, device=grad_y.device)  # float32: atomics, accuracy
    grid = (triton.cdiv(N, BLOCK_N), triton.cdiv(D, BLOCK_D))
    _weight_grad_kernel[grid](indices.contiguous(), values.contiguous(), grad_y.contiguous(), gw, N, D,
                              K=K, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D)
    return gw


class _TritonOps:  # the same primitives as _TorchOps, as kernel launches
    select, decode = staticmethod(_encode_launch), staticmethod(_decode_launch)
    value_grad, weight_grad = staticmethod(_value_grad_launch), staticmethod(_weight_grad_launch)
