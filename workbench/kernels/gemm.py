"""Tiled GEMM ``C = A @ B``: the teaching example the other kernels' docstrings refer to.

Why tiles (the scaling lecture's argument). A GPU's global memory (HBM) is large and slow; each block
of threads has a small, fast on-chip memory (shared memory / registers). A kernel is usually limited by
how many elements it reads from global memory, not by its arithmetic, so the design question is how
often each element of ``A`` and ``B`` crosses from global memory to the chip.

What is counted: element reads of ``A`` and ``B`` from global memory (one read = one element of ``A``
or ``B`` loaded from global memory; writes of ``C`` and reads from shared memory are not counted).
``A`` is ``M x K``, ``B`` is ``K x N``.

1. Naive: one thread per output ``C[i, j]`` reads row ``i`` of ``A`` (``K`` elements) and column
   ``j`` of ``B`` (``K`` elements) straight from global memory: ``2K`` reads per output, ``2MNK`` in
   all. The lecture's 3x3 example (``M = N = K = 3``): ``2 * 3 * 3 * 3 = 54`` reads; every element of
   ``A`` is read ``N = 3`` times and every element of ``B`` ``M = 3`` times.
2. Tiled with tile ``T``: the block computing a ``T x T`` tile of ``C`` walks over ``K`` in steps of
   ``T``; at each step it copies one ``T x T`` tile of ``A`` and one of ``B`` into shared memory (each
   element read once from global memory) and does all ``T^3`` multiply-adds from there. With ``M, N, K``
   multiples of ``T`` that is ``(M/T)(N/T)(K/T)`` steps of ``2T^2`` reads: ``2MNK / T``, a ``T``-fold
   cut. The 3x3 example with ``T = 3`` (one tile holds the whole matrix): ``2 * 27 / 3 = 18`` reads,
   each of the 9 + 9 elements of ``A`` and ``B`` read exactly once. With ragged edges (sizes not a
   multiple of ``T``) only in-bounds elements are read (masked loads), so
   ``reads = N_tiles * M * K + M_tiles * K * N`` with ``M_tiles = ceil(M/T)``, ``N_tiles = ceil(N/T)``;
   ``T = 1`` gives back the naive ``2MNK``.

:func:`tiled_matmul_model` executes step 2 in plain Python/torch, counting every global read, and
:func:`count_reads` gives both counts in closed form (tests check the two agree). :func:`matmul_triton`
is the same algorithm as a Triton kernel: one program per output tile, ``tl.load`` of an ``A`` and a
``B`` tile per step of ``K`` (the loads are the global reads, the tiles live on chip), ``tl.dot`` on
the tiles, accumulation in float32. Triton needs power-of-two tiles of at least 16, so the 3x3
example's ``T = 3`` lives in the teaching model only. The other kernels in this package follow the same
pattern: choose what one program keeps on chip, and count what it must read from global memory.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


class ReadCounts(NamedTuple):
    naive: int  # element reads of A and B from global memory, one thread per output (step 1)
    tiled: int  # the same with T x T tiles staged in shared memory (step 2)


def count_reads(M: int, N: int, K: int, tile: int) -> ReadCounts:
    """Global-memory element reads of ``A`` (M x K) and ``B`` (K x N), naive and tiled (module docstring)."""
    if min(M, N, K, tile) < 1:
        raise ValueError(f"count_reads needs positive sizes and tile; got M={M}, N={N}, K={K}, tile={tile}")
    naive = 2 * M * N * K
    tiled = math.ceil(N / tile) * M * K + math.ceil(M / tile) * K * N
    return ReadCounts(naive, tiled)


def tiled_matmul_model(a: torch.Tensor, b: torch.Tensor, tile: int) -> tuple[torch.Tensor, int]:
    """Step 2 of the module docstring run in Python: returns ``(A @ B, global element reads)``."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"tiled_matmul_model needs A [M, K] and B [K, N]; got {tuple(a.shape)}, {tuple(b.shape)}")
    M, K = a.shape
    N = b.shape[1]
    c = torch.zeros(M, N, dtype=torch.float32)
    reads = 0
    for i0 in range(0, M, tile):
        for j0 in range(0, N, tile):
            for k0 in range(0, K, tile):
                shared_a = a[i0 : i0 + tile, k0 : k0 + tile].float()  # global -> shared memory
                shared_b = b[k0 : k0 + tile, j0 : j0 + tile].float()
                reads += shared_a.numel() + shared_b.numel()
                c[i0 : i0 + tile, j0 : j0 + tile] += shared_a @ shared_b  # reads shared memory only
    return c.to(a.dtype), reads


# triton.jit reads TRITON_INTERPRET when a function is *defined* (decorated): triton's own library
# functions (tl.max, tl.argmax...) when triton is first imported (transformer_lens imports it, for one),
# this package's kernels when it is imported. Interpreted kernels work only if both saw TRITON_INTERPRET=1,
# so the mode is recorded once here, from both, rather than re-read from the environment at launch.
INTERPRETED = bool(triton.knobs.runtime.interpret) and isinstance(tl.max, InterpretedFunction)


def interpreted() -> bool:
    """Whether the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1`` before triton's import)."""
    return INTERPRETED


@triton.jit
def tile_dot(a, b, UPCAST: tl.constexpr):
    """``a @ b`` of two on-chip tiles, float32 accumulation; ``UPCAST`` casts bf16 tiles to float32 first.

    ``UPCAST`` is set in interpreter mode only: Triton 3.9's interpreter gets ``tl.dot`` of bfloat16
    tiles wrong (values near 1e10 on a 16x16 product), while on a GPU the bf16 tensor-core dot is the
    point. ``ieee``: float32 inputs are not rounded to tf32, so results match the float32 reference.
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def load_tile(ptr, rows, cols, n_rows, n_cols, s_row, s_col):
    """One global-memory read of the ``rows x cols`` tile of a strided 2-D tensor ``[n_rows, n_cols]``;
    the mask keeps ragged edges in bounds (out-of-range elements read as 0)."""
    return tl.load(ptr + rows[:, None] * s_row + cols[None, :] * s_col,
                   mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)


@triton.jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        # The two tile loads are this step's global reads.
        a = load_tile(a_ptr, rm, rk, M, K, s_am, s_ak)
        b = load_tile(b_ptr, rk, rn, K, N, s_bk, s_bn)
        acc += tile_dot(a, b, UPCAST)
    tl.store(c_ptr + rm[:, None] * s_cm + rn[None, :] * s_cn, acc.to(c_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def _matmul_launch(a: torch.Tensor, b: torch.Tensor, block: int = 32) -> torch.Tensor:
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty(M, N, dtype=a.dtype, device=a.device)
    grid = (triton.cdiv(M, block), triton.cdiv(N, block))
    _matmul_kernel[grid](a, b, c, M, N, K, *a.stride(), *b.stride(), *c.stride(),
                         BLOCK_M=block, BLOCK_N=block, BLOCK_K=block, UPCAST=interpreted())
    return c


class _MatmulTriton(torch.autograd.Function):
    # Both gradients are GEMMs themselves (dA = dC B^T, dB = A^T dC), so the kernel serves all three;
    # transposes are stride swaps, not copies.
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _matmul_launch(a, b)

    @staticmethod
    def backward(ctx, grad_c):
        a, b = ctx.saved_tensors
        grad_a = _matmul_launch(grad_c, b.t()) if ctx.needs_input_grad[0] else None
        grad_b = _matmul_launch(a.t(), grad_c) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def matmul_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``A @ B`` (2-D, same dtype) by the tiled Triton kernel, with gradients; float32 accumulation."""
    return _MatmulTriton.apply(a, b)


def matmul_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The pure-torch reference: float32 product, cast back to the inputs' dtype."""
    return (a.float() @ b.float()).to(a.dtype)


def matmul_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The fastest torch path (the BLAS GEMM in the inputs' dtype)."""
    return a @ b
