"""One dispatcher per operation: callers use these and never call a kernel directly.

Operations: :func:`sparse_encode`, :func:`sparse_decode` (:mod:`.sparse`), :func:`matmul` (:mod:`.gemm`),
:func:`mlstm` (:mod:`.mlstm`),
:func:`wkv` (:mod:`.wkv`), :func:`selective_scan` (:mod:`.selective_scan`).
Every one takes ``backend=`` and picks its path in this order:

1. the ``backend`` argument, if given;
2. else the environment variable ``WORKBENCH_KERNELS`` (for example ``WORKBENCH_KERNELS=reference`` to
   force the pure-torch references everywhere, when checking that a result does not depend on a kernel);
3. else ``auto``: ``triton`` for CUDA tensors, ``torch`` (the fastest CPU torch path) otherwise.

Backends: ``auto``, ``triton`` (the Triton kernels: a GPU, or the CPU with ``TRITON_INTERPRET=1`` set before
triton is first imported),
``torch`` (fastest torch path) and ``reference`` (the dense pure-torch definition). All paths return
the same values and gradients up to float rounding (tests/test_kernels.py). Inputs may carry leading
batch dimensions; they are flattened for the kernels and restored on the way out.
"""

from __future__ import annotations

import os

import torch

from . import gemm, sparse
from . import mlstm as mlstm_kernels
from . import selective_scan as scan_kernels
from . import wkv as wkv_kernels
from .gemm import interpreted

BACKENDS = ("auto", "triton", "torch", "reference")
ENV_VAR = "WORKBENCH_KERNELS"


def resolve_backend(tensor: torch.Tensor, backend: str | None = None) -> str:
    """The concrete backend (``triton``, ``torch`` or ``reference``) for an operation on ``tensor``."""
    choice = (backend or os.environ.get(ENV_VAR) or "auto").lower()
    if choice not in BACKENDS:
        source = "backend" if backend else ENV_VAR
        raise ValueError(f"unknown kernel backend '{choice}' (from {source}); choose one of: {', '.join(BACKENDS)}")
    if choice == "auto":
        return "triton" if tensor.is_cuda else "torch"
    if choice == "triton" and not tensor.is_cuda and not interpreted():
        raise ValueError(f"kernel backend 'triton' needs CUDA tensors (got device '{tensor.device}') or "
                         "TRITON_INTERPRET=1 set before triton is first imported; choose one of: torch, reference")
    return choice


def sparse_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, *,
                  threshold: torch.Tensor | None = None, relu: bool = True,
                  backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``x @ W_enc + b_enc`` then TopK (``threshold=None``) or JumpReLU; returns ``(indices, values)``.

    ``x [..., d]``, ``W_enc [d, F]``, ``b_enc [F]``, ``threshold [F]`` (JumpReLU: ``k`` is the capacity
    per row, unused slots hold value 0). ``relu`` applies to TopK only. Outputs are ``[..., k]``:
    int64 feature indices and values in ``x``'s dtype. Gradients reach ``x``, ``W_enc`` and ``b_enc``
    (not the threshold; see :mod:`.sparse`).
    """
    d, F = W_enc.shape
    if x.shape[-1] != d or b_enc.shape != (F,):
        raise ValueError(f"sparse_encode needs x [..., {d}] and b_enc [{F}] for W_enc [{d}, {F}]; "
                         f"got x {tuple(x.shape)}, b_enc {tuple(b_enc.shape)}")
    if not 1 <= k <= F:
        raise ValueError(f"sparse_encode needs 1 <= k <= {F} (the number of features); got k={k}")
    if threshold is not None and threshold.shape != (F,):
        raise ValueError(f"sparse_encode needs threshold [{F}]; got {tuple(threshold.shape)}")
    path = {"triton": sparse.encode_triton, "torch": sparse.encode_torch,
            "reference": sparse.encode_reference}[resolve_backend(x, backend)]
    indices, values = path(x.reshape(-1, d), W_enc, b_enc, k, threshold, relu)
    lead = x.shape[:-1]
    return indices.reshape(*lead, k), values.reshape(*lead, k)


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor, *,
                  backend: str | None = None) -> torch.Tensor:
    """``y[..., :] = sum_j values[..., j] * W_dec[indices[..., j]]``; gradients reach values and ``W_dec``.

    ``indices`` (int64) and ``values`` are ``[..., k]``, ``W_dec`` is ``[F, d_out]``; returns
    ``[..., d_out]`` in ``values``'s dtype. Add the decoder bias outside. The backward reads and writes
    only the active rows of ``W_dec`` (``torch`` and ``triton`` paths).
    """
    if indices.shape != values.shape or indices.dtype != torch.int64:
        raise ValueError(f"sparse_decode needs int64 indices shaped like values; got {indices.dtype} "
                         f"{tuple(indices.shape)} and {tuple(values.shape)}")
    path = {"triton": sparse.decode_triton, "torch": sparse.decode_torch,
            "reference": sparse.decode_reference}[resolve_backend(values, backend)]
    k = indices.shape[-1]
    y = path(indices.reshape(-1, k), values.reshape(-1, k), W_dec)
    return y.reshape(*indices.shape[:-1], W_dec.shape[1])


def matmul(a: torch.Tensor, b: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``a @ b`` for 2-D ``a [M, K]`` and ``b [K, N]`` of one dtype, with gradients (:mod:`.gemm`)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul needs a [M, K] and b [K, N]; got {tuple(a.shape)} and {tuple(b.shape)}")
    path = {"triton": gemm.matmul_triton, "torch": gemm.matmul_torch,
            "reference": gemm.matmul_reference}[resolve_backend(a, backend)]
    return path(a, b)


def mlstm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor,
          state: tuple | None = None, *, backend: str | None = None) -> tuple[torch.Tensor, tuple]:
    """The stabilised mLSTM over a sequence (:mod:`.mlstm`): returns ``h~ [B, T, H, d_v]`` and the state
    ``(C [B, H, d_v, d_k], n [B, H, d_k], m [B, H])`` after the last token, continuing from ``state``.

    ``q, k [B, T, H, d_k]``, ``v [B, T, H, d_v]``, gate pre-activations ``i_pre, f_pre [B, T, H]``.
    Gradients reach every input and the carried ``C``, ``n`` (not ``m``, the stabiliser).
    """
    _check_mlstm_shapes(q, k, v, i_pre, f_pre, state)
    path = {"triton": mlstm_kernels.mlstm_triton, "torch": mlstm_kernels.mlstm_torch,
            "reference": mlstm_kernels.mlstm_reference}[resolve_backend(q, backend)]
    return path(q, k, v, i_pre, f_pre, state)


def wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: tuple | None = None, *,
        backend: str | None = None) -> tuple[torch.Tensor, tuple]:
    """RWKV-4's stabilised WKV (:mod:`.wkv`): returns ``wkv [B, T, C]`` and the state after the last token.

    ``w`` (the decay, < 0) and ``u`` (the bonus) are ``[C]``; ``k``, ``v`` are ``[B, T, C]``; ``state`` is
    ``(p, q, o)``, ``[B, C]`` each, or None for the empty state. The returned ``o`` carries no gradient
    (a stabiliser; the initial ``o`` gets one). Which caller uses which path: the RWKV model
    (``workbench/architectures/wkv.py``) calls this when none of its WKV hooks (``hook_state_*``, the
    gates, ``hook_wkv_scale``) has a hook attached (training, generation, plain runs); when one has
    (caching, gate freezing, state patching) the model runs its own hooked parallel form, which builds
    every per-position state and gate behind its hook point, so the hooks' semantics do not depend on the
    backend. Double backward: torch and reference paths (the Triton backward is once-differentiable).
    """
    if k.dim() != 3 or v.shape != k.shape or w.shape != (k.shape[2],) or u.shape != w.shape:
        raise ValueError(f"wkv needs k, v [B, T, C] and w, u [C]; got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, w {tuple(w.shape)}, u {tuple(u.shape)}")
    if state is not None and (len(state) != 3 or any(s.shape != (k.shape[0], k.shape[2]) for s in state)):
        raise ValueError(f"wkv needs state (p, q, o) of [{k.shape[0]}, {k.shape[2]}] each, or None; got "
                         f"{[tuple(s.shape) for s in state]}")
    backend = resolve_backend(k, backend)
    if backend == "reference":
        y, last, _ = wkv_kernels.wkv_reference(w, u, k, v, state)
        return y, last
    path = wkv_kernels.wkv_triton if backend == "triton" else wkv_kernels.wkv_torch
    return path(w, u, k, v, state)


def selective_scan(dt: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   h0: torch.Tensor | None = None, *, chunk: int | None = None,
                   backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's selective scan (:mod:`.selective_scan`): ``(y [B, T, D], h_T [B, D, N])``.

    ``dt``, ``x`` ``[B, T, D]``; ``A [D, N]``; ``B``, ``C`` ``[B, T, N]``; ``h0 [B, D, N]`` or None;
    ``y_t = sum_n C_t[n] h_t[:, n]`` with ``h_t = exp(dt_t A) h_{t-1} + (dt_t x_t) B_t`` (no skip ``D x``).
    ``chunk``: positions per chunk (torch path) or between checkpoints (Triton path); None picks each
    path's default. Which caller uses which path: the Mamba model (``workbench/architectures/mamba.py``)
    calls this when neither ``ssm.hook_decay_gate`` nor ``ssm.hook_state`` has a hook attached (training,
    generation, gate freezing, hooks on dt/B/C, which it applies before the call); when one has
    (caching or patching decays or states per position) it materialises the ``[B, T, D, N]`` decays and
    states behind those hooks and scans them itself, so state patching keeps its semantics on every
    backend. When dt, B and C are shared by every batch row (attribution's frozen batches) the model
    may take its own shared-coefficient path instead (mamba.py, "Shared coefficients"). Double backward:
    torch and reference paths (the Triton backward is once-differentiable).
    """
    batch, steps, d_inner = x.shape if x.dim() == 3 else (None, None, None)
    if batch is None or dt.shape != x.shape or A.dim() != 2 or A.shape[0] != d_inner or \
            B.shape != (batch, steps, A.shape[1]) or C.shape != B.shape:
        raise ValueError(f"selective_scan needs dt, x [B, T, D], A [D, N], B, C [B, T, N]; got dt "
                         f"{tuple(dt.shape)}, x {tuple(x.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, "
                         f"C {tuple(C.shape)}")
    path = {"triton": scan_kernels.selective_scan_triton, "torch": scan_kernels.selective_scan_torch,
            "reference": scan_kernels.selective_scan_reference}[resolve_backend(x, backend)]
    if path is scan_kernels.selective_scan_reference:
        return path(dt, x, A, B, C, h0)
    return path(dt, x, A, B, C, h0, chunk=chunk)


def _check_mlstm_shapes(q, k, v, i_pre, f_pre, state) -> None:
    B, T, H, d_k = q.shape if q.dim() == 4 else (-1,) * 4
    d_v = v.shape[-1]
    ok = (q.dim() == 4 and k.shape == q.shape and v.shape == (B, T, H, d_v) and i_pre.shape == f_pre.shape == (B, T, H)
          and (state is None or (len(state) == 3 and [tuple(s.shape) for s in state]
                                 == [(B, H, d_v, d_k), (B, H, d_k), (B, H)])))
    if not ok:
        got = ", ".join(f"{name} {tuple(x.shape)}" for name, x in zip(["q", "k", "v", "i_pre", "f_pre"],
                                                                      (q, k, v, i_pre, f_pre), strict=True))
        got += "" if state is None else f", state {[tuple(s.shape) for s in state]}"
        raise ValueError(f"mlstm needs q, k [B, T, H, d_k], v [B, T, H, d_v], i_pre, f_pre [B, T, H] and a state "
                         f"(C [B, H, d_v, d_k], n [B, H, d_k], m [B, H]) or None; got {got}")
