"""Mamba's shared-coefficient path (mamba.py, "Shared coefficients"): when dt, B and C are the same for
every batch row (batch 1, or expanded with batch stride 0, as gate freezing feeds them to attribution's
batched forward pass), the scan's kernel is built once and applied as a matmul. It must compute what the
fused scan and the materialised scan compute, values and gradients, and run exactly when it should.
"""

import math

import pytest
import torch
from conftest import TINY_CONFIGS

from workbench.architectures import build_model, mamba, model_config
from workbench.architectures.gate_form import frozen_gates, record_gates

F64 = torch.float64
BATCH, STEPS, D_INNER, D_STATE = 5, 23, 6, 4


def shared_inputs(with_h0: bool, seed: int = 0):
    """Leaves: dt, B, C of batch 1 (expanded to the batch by the caller), x and h0 per row, and A."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.nn.functional.softplus(torch.randn(1, STEPS, D_INNER, generator=g, dtype=F64) - 1)
    x = torch.randn(BATCH, STEPS, D_INNER, generator=g, dtype=F64)
    A = -torch.rand(D_INNER, D_STATE, generator=g, dtype=F64) * 3 - 0.1
    B = torch.randn(1, STEPS, D_STATE, generator=g, dtype=F64)
    C = torch.randn(1, STEPS, D_STATE, generator=g, dtype=F64)
    h0 = torch.randn(BATCH, D_INNER, D_STATE, generator=g, dtype=F64) if with_h0 else None
    return {k: None if t is None else t.requires_grad_() for k, t in
            {"dt": dt, "x": x, "A": A, "B": B, "C": C, "h0": h0}.items()}


def run(fn, leaves: dict, contiguous: bool):
    """Values and the gradients of a random functional of (y, h_last) with respect to every leaf."""
    def coef(t):
        t = t.expand(BATCH, *t.shape[1:])
        return t.contiguous() if contiguous else t

    y, h_last = fn(coef(leaves["dt"]), leaves["x"], leaves["A"], coef(leaves["B"]), coef(leaves["C"]), leaves["h0"])
    g = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=g, dtype=F64)).sum() + \
        (h_last * torch.randn(h_last.shape, generator=g, dtype=F64)).sum()
    present = [t for t in leaves.values() if t is not None]
    return [y, h_last, *torch.autograd.grad(loss, present)]


@pytest.mark.parametrize("rows_at_once", [1, 4, STEPS])
@pytest.mark.parametrize("with_h0", [False, True])
def test_kernel_equals_fused_and_materialised(monkeypatch, with_h0, rows_at_once):
    """float64: y, h_last and the gradients w.r.t. x, dt, A, B, C, h0 agree to 1e-10, however many
    kernel rows are built at once (one chunk, several, one row each)."""
    monkeypatch.setattr(mamba, "KERNEL_BLOCK_ELEMENTS", rows_at_once**2 * D_INNER * D_STATE)
    leaves = shared_inputs(with_h0)
    kernel = run(mamba.shared_kernel_scan, leaves, contiguous=False)
    fused = run(mamba.selective_scan, leaves, contiguous=True)
    materialised = run(mamba._materialised, leaves, contiguous=True)
    for a, b, c in zip(kernel, fused, materialised, strict=True):
        assert a.shape == b.shape == c.shape
        assert torch.allclose(a, b, atol=1e-10, rtol=0) and torch.allclose(a, c, atol=1e-10, rtol=0)


def test_batch_one_coefficients_and_large_decays_stay_finite():
    """Batch-1 (not expanded) coefficients give the same result; dt large enough that the decays
    underflow (and exp(A (S_t - S_s)) above the diagonal would overflow if not masked) stays finite."""
    leaves = shared_inputs(with_h0=True)
    with torch.no_grad():
        leaves["dt"].mul_(50)
    d = {k: None if t is None else t.detach() for k, t in leaves.items()}
    y, h_last = mamba.shared_kernel_scan(d["dt"], d["x"], d["A"], d["B"], d["C"], d["h0"])
    expand = lambda t: t.expand(BATCH, *t.shape[1:]).contiguous()
    y_ref, h_ref = mamba.selective_scan(expand(d["dt"]), d["x"], d["A"], expand(d["B"]), expand(d["C"]), d["h0"])
    assert torch.isfinite(y).all() and torch.isfinite(h_last).all()
    assert torch.allclose(y, y_ref, atol=1e-10, rtol=0) and torch.allclose(h_last, h_ref, atol=1e-10, rtol=0)


def test_float32_agrees_at_benchmark_length():
    """float32, 256 positions: the kernel path matches the fused path to float32 accuracy."""
    g = torch.Generator().manual_seed(0)
    steps, d_inner, d_state, batch = 256, 8, 16, 3
    dt = torch.nn.functional.softplus(torch.randn(1, steps, d_inner, generator=g) - 2).expand(batch, -1, -1)
    B, C = (torch.randn(1, steps, d_state, generator=g).expand(batch, -1, -1) for _ in range(2))
    A = -torch.arange(1, d_state + 1.0).repeat(d_inner, 1)
    x = torch.randn(batch, steps, d_inner, generator=g)
    y, h_last = mamba.shared_kernel_scan(dt, x, A, B, C)
    y_ref, h_ref = mamba.selective_scan(dt, x, A, B, C)
    assert torch.allclose(y, y_ref, atol=1e-4, rtol=1e-4) and torch.allclose(h_last, h_ref, atol=1e-4, rtol=1e-4)


def tiny():
    torch.manual_seed(0)
    return build_model(model_config("mamba", 24, 16, seed=0, **TINY_CONFIGS["mamba"])).to(F64)


def spy(monkeypatch):
    """Count the calls of each scan from SelectiveSSM.forward."""
    calls = {"kernel": 0, "fused": 0}
    real_kernel, real_fused = mamba.shared_kernel_scan, mamba.selective_scan

    def kernel(*args):
        calls["kernel"] += 1
        return real_kernel(*args)

    def fused(*args):
        calls["fused"] += 1
        return real_fused(*args)

    monkeypatch.setattr(mamba, "shared_kernel_scan", kernel)
    monkeypatch.setattr(mamba, "selective_scan", fused)
    return calls


@pytest.mark.parametrize("shared", [True, False])
def test_path_is_taken_exactly_for_shared_coefficients(monkeypatch, shared):
    """Frozen gates expanded from one prompt to a batch (stride 0, as attribution feeds them) take the
    kernel path, and give the same logits and input gradients as the same gates made contiguous per
    row (the fused path)."""
    model = tiny()
    tokens = torch.randint(0, 24, (1, 10), generator=torch.Generator().manual_seed(0))
    gates = record_gates(model, tokens)
    batch = 4
    expanded = {k: v.expand(batch, *v.shape[1:]) for k, v in gates.items()}
    if not shared:
        expanded = {k: v.contiguous() for k, v in expanded.items()}
    embed = torch.randn(batch, 10, model.cfg.d_model, dtype=F64, requires_grad=True)
    calls = spy(monkeypatch)
    with frozen_gates(model, gates=expanded), model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: embed)]):
        logits = model(tokens.expand(batch, -1))
    n_layers = model.cfg.n_layers
    assert calls == ({"kernel": n_layers, "fused": 0} if shared else {"kernel": 0, "fused": n_layers})
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    (grad,) = torch.autograd.grad((logits * weights).sum(), embed)
    monkeypatch.undo()
    contiguous = {k: v.expand(batch, *v.shape[1:]).contiguous() for k, v in gates.items()}
    with frozen_gates(model, gates=contiguous), model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: embed)]):
        reference = model(tokens.expand(batch, -1))
    (grad_ref,) = torch.autograd.grad((reference * weights).sum(), embed)
    assert torch.allclose(logits, reference, atol=1e-10, rtol=0)
    assert torch.allclose(grad, grad_ref, atol=1e-10, rtol=0)


def test_not_taken_for_one_row_or_a_plain_forward(monkeypatch):
    """Batch 1, and ordinary batched runs (coefficients computed per row), keep the fused path."""
    model = tiny()
    calls = spy(monkeypatch)
    model(torch.randint(0, 24, (1, 7)))
    model(torch.randint(0, 24, (3, 7)))
    assert calls == {"kernel": 0, "fused": 2 * model.cfg.n_layers}


def test_choice_weighs_batch_against_length():
    """The kernel costs ~T^2 to build, the scan ~batch * T per pass: the kernel path needs batch >= T / 8
    when a backward pass can follow (x requires grad), batch >= T / 4 for a forward pass alone, and no
    kernel larger than KERNEL_MAX_ELEMENTS."""
    def choice(batch, steps, grad, d_inner=8):
        dt = torch.rand(1, steps, d_inner).expand(batch, -1, -1)
        B = C = torch.rand(1, steps, 4).expand(batch, -1, -1)
        x = torch.rand(batch, steps, d_inner, requires_grad=grad)
        return mamba._use_shared_kernel(dt, x, B, C)

    assert choice(8, 64, grad=True) and not choice(7, 64, grad=True)
    assert choice(16, 64, grad=False) and not choice(15, 64, grad=False)
    with torch.no_grad():
        assert not choice(8, 64, grad=True)
    assert not choice(1, 4, grad=True)
    longest = math.isqrt(mamba.KERNEL_MAX_ELEMENTS // 4096)  # d_inner * T^2 <= KERNEL_MAX_ELEMENTS
    assert choice(longest, longest, grad=True, d_inner=4096)
    assert not choice(longest + 1, longest + 1, grad=True, d_inner=4096)


def test_gradcheck(monkeypatch):
    """Every gradient (through the checkpointed kernel blocks, two rows per block) against finite differences."""
    monkeypatch.setattr(mamba, "KERNEL_BLOCK_ELEMENTS", 4 * 3 * 2)
    g = torch.Generator().manual_seed(0)
    dt = torch.nn.functional.softplus(torch.randn(1, 5, 3, generator=g, dtype=F64)).requires_grad_()
    x = torch.randn(2, 5, 3, generator=g, dtype=F64, requires_grad=True)
    A = (-torch.rand(3, 2, generator=g, dtype=F64) - 0.1).requires_grad_()
    B, C = (torch.randn(1, 5, 2, generator=g, dtype=F64, requires_grad=True) for _ in range(2))
    h0 = torch.randn(2, 3, 2, generator=g, dtype=F64, requires_grad=True)

    def scan(dt, x, A, B, C, h0):
        return mamba.shared_kernel_scan(dt.expand(2, -1, -1), x, A, B.expand(2, -1, -1), C.expand(2, -1, -1), h0)

    assert torch.autograd.gradcheck(scan, (dt, x, A, B, C, h0))
