"""The mLSTM kernel paths (workbench/kernels/mlstm.py) against the per-step reference: values and gradients.

Triton runs in its CPU interpreter; as in tests/test_kernels.py, ``TRITON_INTERPRET`` is set before the
kernels are imported (tests/triton_interpreted.py), and in a whole-suite run (triton already imported without it) the Triton tests run in a child
process (:func:`test_interpreted_mlstm_in_a_child_process`). Shapes are ragged: sequence lengths not a
multiple of the 16-token chunk, head widths not powers of two (the kernel pads them to 16).
"""

import pytest
import torch
from triton_interpreted import TRITON, in_child_only, run_triton_tests_in_child

from workbench.kernels import dispatch
from workbench.kernels import mlstm as mlstm_kernels

SHAPES = [  # (batch, steps, heads, d_k, d_v)
    (2, 37, 3, 5, 7),  # three chunks, the last one ragged; d_k != d_v, neither a power of two
    (1, 16, 2, 16, 16),  # exactly one chunk
    (2, 9, 1, 3, 20),  # shorter than one chunk; d_v above 16 (padded to 32)
]
GATE_SPREAD = 3.0  # i~ up to about +-9: the stabiliser matters
N_TRITON_TESTS = 2 * len(SHAPES) * 2  # the (dtype x shape x carried) cases that -k triton selects


def operands(batch, steps, heads, d_k, d_v, carried=False, seed=0):
    """Float64 operands; with ``carried`` also a state as a previous call leaves it."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, steps, heads, d_k, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(batch, steps, heads, d_v, generator=g, dtype=torch.float64)
    i_pre = GATE_SPREAD * torch.randn(batch, steps, heads, generator=g, dtype=torch.float64)
    f_pre = GATE_SPREAD * torch.randn(batch, steps, heads, generator=g, dtype=torch.float64) + 1
    state = None
    if carried:  # a state as a previous call leaves it: C, n scaled by e^{-m}
        state = (torch.randn(batch, heads, d_v, d_k, generator=g, dtype=torch.float64),
                 torch.randn(batch, heads, d_k, generator=g, dtype=torch.float64),
                 torch.randn(batch, heads, generator=g, dtype=torch.float64))
    return [q, k, v, i_pre, f_pre], state


def run(backend, ops, state, dtype):
    """h~, the final state and the gradients of a weighted sum of h~, C and n to every input."""
    leaves = [x.to(dtype).requires_grad_() for x in ops]
    state_leaves = None if state is None else [s.to(dtype).requires_grad_(i < 2) for i, s in enumerate(state)]
    h, (C, n, m) = dispatch.mlstm(*leaves, None if state is None else tuple(state_leaves), backend=backend)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in (h, C, n)]
    loss = sum((x.double() * w).sum() for x, w in zip((h, C, n), weights, strict=True))
    inputs = leaves + ([] if state is None else state_leaves[:2])
    return (h, C, n, m), torch.autograd.grad(loss, inputs)


def close(got, want, rtol):
    got, want = got.double(), want.double()
    scale = max(1.0, want.abs().max().item())
    assert torch.allclose(got, want, rtol=rtol, atol=rtol * scale), (got - want).abs().max() / scale


@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("backend", [TRITON])
def test_triton_mlstm_matches_reference(backend, dtype, rtol, shape, carried):
    ops, state = operands(*shape, carried=carried)
    rounded = [x.to(dtype).double() for x in ops]  # the reference sees the same rounded inputs
    rounded_state = None if state is None else [s.to(dtype).double() for s in state]
    want, want_grads = run("reference", rounded, rounded_state, torch.float64)
    got, got_grads = run(backend, ops, state, dtype)
    assert got[0].dtype == dtype and got[0].shape == want[0].shape
    for a, b in zip(got, want, strict=True):
        close(a, b, rtol)
    for a, b in zip(got_grads, want_grads, strict=True):
        assert b.abs().sum() > 0 and a.dtype == dtype  # the comparison is not vacuous
        close(a, b, rtol)


@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("steps", [9, 37, 2 * mlstm_kernels.TORCH_CHUNK + 3])
def test_torch_mlstm_matches_reference(steps, carried):
    ops, state = operands(2, steps, 2, 5, 4, carried=carried)
    want, want_grads = run("reference", ops, state, torch.float64)
    got, got_grads = run("torch", ops, state, torch.float64)
    for a, b in zip((*got, *got_grads), (*want, *want_grads), strict=True):
        close(a, b, 1e-10)


@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_chunkwise_form_equals_the_parallel_form(chunk):
    ops, state = operands(2, 23, 2, 3, 5, carried=True)
    (h1, s1), (h2, s2) = mlstm_kernels.mlstm_chunkwise(*ops, state, chunk=chunk), mlstm_kernels.mlstm_parallel(*ops, state)
    for a, b in zip((h1, *s1), (h2, *s2), strict=True):
        close(a, b, 1e-10)


def test_dispatcher_names_bad_mlstm_shapes():
    ops, _ = operands(1, 4, 2, 3, 3)
    with pytest.raises(ValueError, match=r"mlstm needs q, k \[B, T, H, d_k\].*got q \(1, 4, 2, 3\), k \(1, 4, 2, 2\)"):
        dispatch.mlstm(ops[0], ops[1][..., :2], *ops[2:])
    with pytest.raises(ValueError, match="state"):
        dispatch.mlstm(*ops, (torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3), torch.zeros(2)))
    with pytest.raises(ValueError, match="unknown kernel backend 'fast'"):
        dispatch.mlstm(*ops, backend="fast")


@in_child_only
def test_interpreted_mlstm_in_a_child_process():
    run_triton_tests_in_child(__file__, N_TRITON_TESTS)
