"""The parallel linear scan equals the step-by-step recurrence, values and gradients."""

import pytest
import torch
from transformer_lens.hook_points import HookPoint

from workbench.architectures.scan import (
    hook_patch_mask,
    linear_scan,
    linear_scan_sequential,
    patched_linear_scan,
)

F64 = torch.float64


def operands(a_shape, b_shape, h0_shape=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(a_shape, generator=g, dtype=F64).mul(1.6).sub(0.8).requires_grad_()  # any sign
    b = torch.randn(b_shape, generator=g, dtype=F64).requires_grad_()
    h0 = None if h0_shape is None else torch.randn(h0_shape, generator=g, dtype=F64).requires_grad_()
    return a, b, h0


CASES = [  # a shape, b shape, h0 shape
    ((2, 1, 3), (2, 1, 3), None),
    ((2, 7, 3), (2, 7, 3), None),
    ((3, 13, 4, 5), (3, 13, 4, 5), (3, 4, 5)),
    ((2, 16, 4), (2, 16, 4), (2, 4)),
    ((2, 37, 4, 1), (2, 37, 4, 3), (2, 4, 3)),  # decay broadcast over the state dim (as Mamba's dt A)
    ((1, 1, 6), (2, 21, 6), (1, 6)),  # time-invariant decay, h0 broadcast over the batch
    ((2, 100, 3), (2, 100, 3), (2, 3)),
]


@pytest.mark.parametrize("a_shape,b_shape,h0_shape", CASES)
def test_parallel_equals_sequential_values_and_gradients(a_shape, b_shape, h0_shape):
    a, b, h0 = operands(a_shape, b_shape, h0_shape)
    fast, slow = linear_scan(a, b, h0), linear_scan_sequential(a, b, h0)
    assert fast.shape == slow.shape
    assert torch.allclose(fast, slow, atol=1e-10, rtol=0)
    weights = torch.randn(fast.shape, dtype=F64)
    inputs = [t for t in (a, b, h0) if t is not None]
    g_fast = torch.autograd.grad((fast * weights).sum(), inputs)
    g_slow = torch.autograd.grad((slow * weights).sum(), inputs)
    for x, y in zip(g_fast, g_slow, strict=True):
        assert x.shape == y.shape
        assert torch.allclose(x, y, atol=1e-10, rtol=0)


def test_gradcheck_and_double_backward():
    a, b, h0 = operands((2, 5, 3), (2, 5, 3), (2, 3))
    assert torch.autograd.gradcheck(linear_scan, (a, b, h0))
    assert torch.autograd.gradgradcheck(linear_scan, (a, b, h0))


def test_decays_in_unit_interval_over_long_sequences_stay_finite():
    """The minGRU/Mamba regime: a in (0, 1), products underflow to 0 without harm."""
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 1000, 8, generator=g) * 0.5
    b = torch.randn(2, 1000, 8, generator=g)
    fast = linear_scan(a, b)
    assert torch.isfinite(fast).all()
    assert torch.allclose(fast, linear_scan_sequential(a, b), atol=1e-5)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="broadcast"):
        linear_scan(torch.rand(2, 4, 3), torch.rand(2, 5, 3))
    with pytest.raises(ValueError, match="as many dims"):
        linear_scan(torch.rand(4, 3), torch.rand(2, 4, 3))


def test_patch_carries_forward_and_leaves_the_past_alone():
    a, b, h0 = operands((2, 12, 3), (2, 12, 3), (2, 3))
    hook = HookPoint()
    states = linear_scan(a, b, h0)
    assert hook_patch_mask(hook, states)[1] is None  # no hook attached: nothing patched

    def patch(act, hook):
        act[:, 5] = 0.0  # an in-place edit, the way patching code usually writes it
        return act

    hook.add_hook(patch)
    hooked, mask = hook_patch_mask(hook, states)
    new = patched_linear_scan(a, b, h0, hooked, mask)
    expected = linear_scan_sequential(a[:, 6:], b[:, 6:], torch.zeros(2, 3, dtype=F64))
    assert torch.equal(new[:, :5], states[:, :5])
    assert torch.equal(new[:, 5], torch.zeros(2, 3, dtype=F64))
    assert torch.allclose(new[:, 6:], expected, atol=1e-12)
    new.sum().backward()  # the saved states were not edited in place
