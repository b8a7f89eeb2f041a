"""Mamba's fused selective scan (mamba.py, "Fused selective scan") against the materialised path.

The fused path is what training and generation run (no hook reads the decays or states); the
materialised path is what caching, gate freezing and state patching run. Both must compute the same
function, gradients included, for any chunking; tests/test_recurrent_basic.py holds them to the
one-token-at-a-time recurrence.
"""

import pytest
import torch
from conftest import TINY_CONFIGS

from workbench.architectures import build_model, mamba, model_config
from workbench.architectures.gate_form import frozen_gates

F64 = torch.float64
VOCAB, CTX = 24, 16


def ssm_inputs(batch=2, steps=13, d_inner=6, d_state=4, h0=True, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    dt = torch.nn.functional.softplus(torch.randn(batch, steps, d_inner, generator=g, dtype=dtype) - 1)
    x = torch.randn(batch, steps, d_inner, generator=g, dtype=dtype)
    A = -torch.rand(d_state, d_inner, generator=g, dtype=dtype).t() * 3 - 0.1
    B = torch.randn(batch, steps, d_state, generator=g, dtype=dtype)
    C = torch.randn(batch, steps, d_state, generator=g, dtype=dtype)
    state = torch.randn(batch, d_inner, d_state, generator=g, dtype=dtype) if h0 else None
    return [t if t is None else t.requires_grad_() for t in (dt, x, A, B, C, state)]


def chunked(monkeypatch, chunk, batch, d_inner, d_state):
    """Make selective_scan use chunks of ``chunk`` positions (one thread)."""
    monkeypatch.setattr(mamba, "CHUNK_ELEMENTS", chunk * batch * d_inner * d_state)


def values_and_grads(fn, inputs):
    y, h_last = fn(*inputs)
    g = torch.Generator().manual_seed(1)
    w_y = torch.randn(y.shape, generator=g, dtype=y.dtype)
    w_h = torch.randn(h_last.shape, generator=g, dtype=y.dtype)
    leaves = [t for t in inputs if t is not None]
    grads = torch.autograd.grad((y * w_y).sum() + (h_last * w_h).sum(), leaves)
    return [y, h_last, *grads]


@pytest.mark.parametrize("chunk", [1, 3, 5, 13, 40])
@pytest.mark.parametrize("with_h0", [False, True])
def test_fused_equals_materialised_values_and_every_gradient(monkeypatch, chunk, with_h0):
    inputs = ssm_inputs(h0=with_h0)
    chunked(monkeypatch, chunk, 2, 6, 4)
    fused = values_and_grads(mamba.selective_scan, inputs)
    reference = values_and_grads(mamba._materialised, inputs)
    for a, b in zip(fused, reference, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)


def test_gradcheck_and_double_backward(monkeypatch):
    chunked(monkeypatch, 2, 1, 3, 2)
    inputs = tuple(ssm_inputs(batch=1, steps=5, d_inner=3, d_state=2))
    assert torch.autograd.gradcheck(mamba.selective_scan, inputs)
    assert torch.autograd.gradgradcheck(mamba.selective_scan, inputs)


def test_decays_that_underflow_stay_finite_in_float32():
    """Large dt A: decays reach 0 in float32 (exp2 included); states and gradients stay finite and
    agree with the materialised path over a long sequence."""
    dt, x, A, B, C, _ = ssm_inputs(batch=2, steps=600, d_inner=8, d_state=4, h0=False, dtype=torch.float32)
    with torch.no_grad():
        dt.mul_(40)
    fused = values_and_grads(mamba.selective_scan, [dt, x, A, B, C, None])
    reference = values_and_grads(mamba._materialised, [dt, x, A, B, C, None])
    for a, b in zip(fused, reference, strict=True):
        assert torch.isfinite(a).all()
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def tiny():
    torch.manual_seed(0)
    return build_model(model_config("mamba", VOCAB, CTX, seed=0, **TINY_CONFIGS["mamba"])).to(F64)


def observe(act, hook):
    return None  # attached, so the SSM takes the materialised path; changes nothing


def count_fused(monkeypatch):
    calls = []
    real = mamba.selective_scan

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(mamba, "selective_scan", counting)
    return calls


@pytest.mark.parametrize("hook", [None, "ssm.hook_state", "ssm.hook_decay_gate"])
def test_which_path_runs(monkeypatch, hook):
    model, calls = tiny(), count_fused(monkeypatch)
    toks = torch.randint(0, VOCAB, (2, 9))
    hooks = [] if hook is None else [(f"blocks.{layer}.mixer.{hook}", observe) for layer in range(2)]
    with model.hooks(fwd_hooks=hooks):
        model(toks)
    assert len(calls) == (2 if hook is None else 0)


def test_model_paths_agree_on_logits_and_every_parameter_gradient(monkeypatch):
    """Whole model, float64: the fused path (no hooks) and the materialised one (an observer on each
    state hook) give the same logits and parameter gradients, for several chunkings."""
    model = tiny()
    toks = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(0))

    def run():
        model.zero_grad()
        logits = model(toks)
        logits.pow(2).mean().backward()
        return [logits.detach(), *(p.grad.clone() for p in model.parameters())]

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.mixer.ssm.hook_state", observe) for layer in range(2)]):
        reference = run()
    d_inner, d_state = 2 * TINY_CONFIGS["mamba"]["d_model"], TINY_CONFIGS["mamba"]["d_state"]
    for chunk in (1, 4, 11):
        chunked(monkeypatch, chunk, 3, d_inner, d_state)
        for a, b in zip(run(), reference, strict=True):
            assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)


def test_hooks_on_dt_B_C_are_used_by_the_fused_path(monkeypatch):
    """Patching dt, B or C (not the decay or states) keeps the fused path, and it uses the patched
    values: the same output as the materialised path under the same patch."""
    model, calls = tiny(), count_fused(monkeypatch)
    toks = torch.randint(0, VOCAB, (2, 9))
    patches = [("blocks.0.mixer.ssm.hook_dt_gate", lambda act, hook: act * 1.5),
               ("blocks.1.mixer.ssm.hook_B_gate", lambda act, hook: act.flip(1)),
               ("blocks.1.mixer.ssm.hook_C_gate", lambda act, hook: act + 0.25)]
    with torch.no_grad(), model.hooks(fwd_hooks=patches):
        fused = model(toks)
        assert len(calls) == 2
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.mixer.ssm.hook_state", observe) for layer in range(2)]):
            reference = model(toks)
        assert len(calls) == 2
    assert torch.allclose(fused, reference, atol=1e-12)
    with torch.no_grad():
        assert not torch.allclose(model(toks), fused)


def test_frozen_gates_match_the_fused_forward():
    """Freezing hooks dt, B and C but not the derived decay, so the frozen run stays on an unhooked
    scan path; at the prompt's own gate values it reproduces the live logits."""
    model = tiny()
    toks = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        live = model(toks)
        with frozen_gates(model, toks):
            frozen = model(toks)
    assert torch.allclose(live, frozen, atol=1e-12)


def test_no_state_sized_tensor_is_saved_for_backward():
    """The fused path keeps nothing of size [B, T, d_inner, N] for the backward pass."""
    batch, steps, d_inner, d_state = 2, 64, 8, 4
    inputs = ssm_inputs(batch=batch, steps=steps, d_inner=d_inner, d_state=d_state, dtype=torch.float32)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mamba.selective_scan(*inputs)
    assert max(sizes) < batch * steps * d_inner * d_state
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mamba._materialised(*inputs)
    assert max(sizes) >= batch * steps * d_inner * d_state  # the check can see a state-sized tensor
