"""One dispatcher per operation: callers use these and never call a kernel directly.

Operations: :func:`sparse_encode`, :func:`sparse_decode` (:mod:`.sparse`), :func:`matmul` (:mod:`.gemm`).
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
