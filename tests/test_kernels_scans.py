"""The recurrent-scan kernels (RWKV-4 WKV, Mamba's selective scan) against their per-token references,
values and gradients, and the models' call sites through the dispatcher.

Triton runs in its CPU interpreter, set up as in tests/test_kernels.py: ``TRITON_INTERPRET=1`` is set
before the kernels are imported (tests/triton_interpreted.py); when another test module imported triton first (a whole-suite run), the Triton tests
are skipped in-process and :func:`test_interpreted_scan_kernels_in_a_child_process` runs them (``-k
triton``) in a child process. Shapes are tiny and ragged: channel counts not a multiple of the 32-wide
blocks, lengths not a multiple of the scan's chunk, a state size that is not a power of two.
"""

import pytest
import torch
from conftest import TINY_CONFIGS
from triton_interpreted import TRITON, in_child_only, run_triton_tests_in_child

from workbench.architectures import build_model, mamba, model_config
from workbench.kernels import dispatch

DTYPES = [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)]  # (dtype, relative tolerance)
WKV_CASES = [(2, 7, 5, False, 3.0), (1, 13, 37, True, 3.0), (2, 9, 33, True, 30.0)]  # B, T, C, state, key scale
SCAN_CASES = [(2, 13, 6, 4, True, 4), (1, 9, 37, 5, False, None), (2, 5, 33, 16, True, 2)]  # B, T, D, N, h0, chunk
VOCAB = 24


def close(got, want, rtol):
    got, want = got.float(), want.float()
    assert torch.allclose(got, want, rtol=rtol, atol=rtol * max(1.0, want.abs().max().item())), \
        (got - want).abs().max()


def weighted_loss(outputs, seed=1):
    """A random linear functional of the outputs, so every output's gradient is exercised."""
    g = torch.Generator().manual_seed(seed)
    return sum((t.float() * torch.randn(t.shape, generator=g)).sum() for t in outputs)


def wkv_inputs(batch, steps, channels, with_state, key_scale, dtype):
    g = torch.Generator().manual_seed(0)
    w = -torch.exp(torch.randn(channels, generator=g))
    u = torch.randn(channels, generator=g)
    k = torch.randn(batch, steps, channels, generator=g) * key_scale
    v = torch.randn(batch, steps, channels, generator=g)
    state = (torch.randn(batch, channels, generator=g), torch.rand(batch, channels, generator=g) + 0.5,
             torch.randn(batch, channels, generator=g)) if with_state else ()
    return [t.to(dtype) for t in (w, u, k, v, *state)]


def run_wkv(backend, inputs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    y, (p, q, o) = dispatch.wkv(*leaves[:4], tuple(leaves[4:]) or None, backend=backend)
    # The final state through its true value e^o (p, q) (over a constant e^M, so that it cannot overflow):
    # the reference differentiates through o, the fast paths treat o as the constant it cancels to.
    scale = (o.float() - o.detach().float().max()).exp()
    loss = weighted_loss([y, scale * p.float(), scale * q.float()])
    return [y, p, q, o, *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("batch,steps,channels,with_state,key_scale", WKV_CASES)
@pytest.mark.parametrize("backend", [TRITON, "torch"])
def test_wkv_matches_reference(backend, batch, steps, channels, with_state, key_scale, dtype, rtol):
    inputs = wkv_inputs(batch, steps, channels, with_state, key_scale, dtype)
    want = run_wkv("reference", inputs)
    got = run_wkv(backend, inputs)
    assert got[0].shape == (batch, steps, channels) and got[0].dtype == dtype
    for a, b in zip(got, want, strict=True):
        assert torch.isfinite(a.float()).all() and b.abs().sum() > 0  # not vacuous; large keys stay finite
        close(a, b, rtol)


def scan_inputs(batch, steps, d_inner, d_state, with_h0, dtype):
    g = torch.Generator().manual_seed(0)
    dt = torch.nn.functional.softplus(torch.randn(batch, steps, d_inner, generator=g) - 1)
    x = torch.randn(batch, steps, d_inner, generator=g)
    A = -torch.rand(d_inner, d_state, generator=g) * 3 - 0.1
    B, C = (torch.randn(batch, steps, d_state, generator=g) for _ in range(2))
    h0 = [torch.randn(batch, d_inner, d_state, generator=g)] if with_h0 else []
    return [t.to(dtype) for t in (dt, x, A, B, C, *h0)]


def run_scan(backend, inputs, chunk):
    leaves = [t.clone().requires_grad_() for t in inputs]
    h0 = leaves[5] if len(leaves) == 6 else None
    y, h_last = dispatch.selective_scan(*leaves[:5], h0, chunk=chunk, backend=backend)
    return [y, h_last, *torch.autograd.grad(weighted_loss([y, h_last]), leaves)]


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("batch,steps,d_inner,d_state,with_h0,chunk", SCAN_CASES)
@pytest.mark.parametrize("backend", [TRITON, "torch"])
def test_selective_scan_matches_reference(backend, batch, steps, d_inner, d_state, with_h0, chunk, dtype, rtol):
    inputs = scan_inputs(batch, steps, d_inner, d_state, with_h0, dtype)
    want = run_scan("reference", inputs, chunk)
    got = run_scan(backend, inputs, chunk)
    assert got[0].shape == (batch, steps, d_inner) and got[1].shape == (batch, d_inner, d_state)
    assert got[0].dtype == dtype
    for a, b in zip(got, want, strict=True):
        assert b.abs().sum() > 0
        close(a, b, rtol)


def test_reference_paths_match_their_definitions():
    """The references are the definitions: WKV against the defining sum, the scan against its
    materialised form (every state built, a linear scan); float64."""
    from workbench.architectures.wkv import wkv_naive
    from workbench.kernels.selective_scan import selective_scan_materialised

    w, u, k, v = (t.double() for t in wkv_inputs(2, 6, 3, False, 1.0, torch.float32))
    assert torch.allclose(dispatch.wkv(w, u, k, v, backend="reference")[0], wkv_naive(w, u, k, v), atol=1e-12)
    dt, x, A, B, C, h0 = (t.double() for t in scan_inputs(2, 7, 3, 2, True, torch.float32))
    for a, b in zip(dispatch.selective_scan(dt, x, A, B, C, h0, backend="reference"),
                    selective_scan_materialised(dt, x, A, B, C, h0), strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_dispatcher_rejects_bad_scan_shapes():
    w, u, k, v = wkv_inputs(2, 3, 4, False, 1.0, torch.float32)
    with pytest.raises(ValueError, match=r"wkv needs k, v \[B, T, C\] and w, u \[C\]"):
        dispatch.wkv(w[:3], u, k, v)
    with pytest.raises(ValueError, match=r"state \(p, q, o\) of \[2, 4\]"):
        dispatch.wkv(w, u, k, v, (w, w, w))
    dt, x, A, B, C = scan_inputs(2, 3, 4, 5, False, torch.float32)
    with pytest.raises(ValueError, match=r"selective_scan needs dt, x \[B, T, D\], A \[D, N\]"):
        dispatch.selective_scan(dt, x, A, B[..., :3], C)


def observe(act, hook):
    return None  # attached: the model takes its hooked path; changes nothing


def count_calls(monkeypatch, name):
    calls = []
    real = getattr(dispatch, name)
    monkeypatch.setattr(dispatch, name, lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    return calls


@pytest.mark.parametrize("arch,op,hook", [("rwkv", "wkv", "time_mix.hook_state_num"),
                                          ("mamba", "selective_scan", "mixer.ssm.hook_state")])
def test_models_call_the_dispatcher_unhooked_and_their_hooked_form_otherwise(monkeypatch, arch, op, hook):
    """Unhooked, each block's scan goes through the dispatcher, and every backend gives the same logits
    and gradients; with a state hook attached the model runs its hooked form (same logits), so caching
    and patching states per position keep their semantics whatever the backend."""
    torch.manual_seed(0)
    model = build_model(model_config(arch, VOCAB, 16, seed=0, **TINY_CONFIGS[arch])).double()
    tokens = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    calls = count_calls(monkeypatch, op)

    def logits_and_grads():
        model.zero_grad()
        logits = model(tokens)
        logits.pow(2).mean().backward()
        return [logits.detach(), *(p.grad.clone() for p in model.parameters())]

    results = {}
    for backend in ("torch", "reference"):
        monkeypatch.setenv(dispatch.ENV_VAR, backend)
        results[backend] = logits_and_grads()
    assert len(calls) == 2 * model.cfg.n_layers
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.{hook}", observe) for layer in range(model.cfg.n_layers)]):
        hooked = logits_and_grads()
    assert len(calls) == 2 * model.cfg.n_layers  # the hooked run did not call the dispatcher
    for a, b, c in zip(results["torch"], results["reference"], hooked, strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-8) and torch.allclose(a, c, atol=1e-10, rtol=1e-8)


def test_mamba_scan_chunking_reaches_the_dispatcher(monkeypatch):
    """mamba.selective_scan sizes the torch path's chunks (CHUNK_ELEMENTS) and hands them on."""
    seen = []
    real = dispatch.selective_scan
    monkeypatch.setattr(dispatch, "selective_scan", lambda *a, chunk=None, **kw: seen.append(chunk) or real(*a, chunk=chunk, **kw))
    monkeypatch.setattr(mamba, "CHUNK_ELEMENTS", 3 * 2 * 4 * 5)  # 3 positions at batch 2, d_inner 4, N 5
    dt, x, A, B, C = scan_inputs(2, 10, 4, 5, False, torch.float64)
    y, _ = mamba.selective_scan(dt, x, A, B, C)
    assert seen == [3 * torch.get_num_threads()]
    assert torch.allclose(y, dispatch.selective_scan(dt, x, A, B, C, backend="reference")[0], atol=1e-12)


@in_child_only
def test_interpreted_scan_kernels_in_a_child_process():
    run_triton_tests_in_child(__file__, 12)
