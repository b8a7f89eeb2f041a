"""RWKV-4: the parallel stabilised WKV equals the official recurrence and the defining sum, stays finite
for any keys, carries state across calls, and its states patch forward."""

from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_CONFIGS
from transformer_lens.hook_points import HookPoint

from workbench.architectures import build_model, model_config
from workbench.architectures.gate_form import frozen_gates
from workbench.architectures.recurrence import running_max, running_max_sequential
from workbench.architectures.wkv import WKV_HOOKS, wkv_naive, wkv_parallel, wkv_recurrent

F64 = torch.float64
VOCAB = 24


def operands(batch=2, steps=13, channels=5, key_scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.randn(channels, generator=g, dtype=F64))
    u = torch.randn(channels, generator=g, dtype=F64)
    k = torch.randn(batch, steps, channels, generator=g, dtype=F64) * key_scale
    v = torch.randn(batch, steps, channels, generator=g, dtype=F64)
    return w, u, k, v


def some_state(batch=2, channels=5, seed=9):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, generator=g, dtype=F64), torch.rand(batch, channels, generator=g,
            dtype=F64) + 0.5, torch.randn(batch, channels, generator=g, dtype=F64))


def tiny_rwkv():
    torch.manual_seed(0)
    model = build_model(model_config("rwkv", VOCAB, 32, **TINY_CONFIGS["rwkv"])).to(F64).eval()
    return model


def test_running_max_equals_its_sequential_form():
    g = torch.Generator().manual_seed(3)
    a, b, m0 = torch.randn(2, 37, 4, generator=g), torch.randn(2, 37, 4, generator=g), torch.randn(2, 4, generator=g)
    # Equal up to the order of float32 sums of decays.
    assert torch.allclose(running_max(a, b, m0), running_max_sequential(a, b, m0), atol=1e-5)
    assert torch.allclose(running_max(a[:1, :1], b), running_max_sequential(a[:1, :1], b), atol=1e-5)


@pytest.mark.parametrize("with_state", [False, True])
def test_parallel_equals_recurrent_values_and_gradients(with_state):
    w, u, k, v = (x.requires_grad_() for x in operands())
    state = some_state() if with_state else None
    fast, fast_state = wkv_parallel(w, u, k, v, state)
    slow, slow_state, _ = wkv_recurrent(w, u, k, v, state)
    assert torch.allclose(fast, slow, atol=1e-9, rtol=0)
    for x, y in zip(fast_state, slow_state, strict=True):
        assert torch.allclose(x, y, atol=1e-9, rtol=0)
    weights = torch.randn(fast.shape, dtype=F64)
    g_fast = torch.autograd.grad((fast * weights).sum(), (w, u, k, v))
    g_slow = torch.autograd.grad((slow * weights).sum(), (w, u, k, v))
    for x, y in zip(g_fast, g_slow, strict=True):
        assert torch.allclose(x, y, atol=1e-9, rtol=0)


def test_stabilised_equals_naive_where_naive_does_not_overflow():
    w, u, k, v = operands(steps=17)
    assert torch.allclose(wkv_parallel(w, u, k, v)[0], wkv_naive(w, u, k, v), atol=1e-9, rtol=0)


@pytest.mark.parametrize("shift", [80.0, 1000.0, -1000.0])
def test_extreme_keys_stay_finite_and_exact(shift):
    """WKV is invariant to adding a constant to every key; the stabilised forms keep that, exactly,
    where raw exponentials overflow (e^1000) or vanish (e^-1000, 0/0)."""
    w, u, k, v = operands()
    k_shifted = (k + shift).requires_grad_()
    fast = wkv_parallel(w, u, k_shifted, v)[0]
    assert torch.isfinite(fast).all()
    assert torch.allclose(fast, wkv_parallel(w, u, k, v)[0], atol=1e-9)
    assert torch.allclose(fast, wkv_recurrent(w, u, k_shifted, v)[0], atol=1e-9)
    assert torch.isfinite(torch.autograd.grad(fast.sum(), k_shifted)[0]).all()
    if abs(shift) >= 1000:
        assert not torch.isfinite(wkv_naive(w, u, k_shifted.detach(), v)).all()


def test_large_keys_in_float32_match_float64():
    w, u, k, v = operands()
    k = k + 100.0  # e^100 overflows float32
    f32 = wkv_parallel(*(x.float() for x in (w, u, k, v)))[0]
    assert torch.isfinite(f32).all()
    assert not torch.isfinite(wkv_naive(*(x.float() for x in (w, u, k, v)))).all()
    assert torch.allclose(f32.double(), wkv_parallel(w, u, k, v)[0], atol=1e-4)


def test_patched_state_carries_forward():
    """Setting (p, q, o) at position t makes later positions continue from that state, exactly as the
    recurrence started from it would; earlier positions and t itself are untouched."""
    w, u, k, v = operands(steps=12)
    t, (P, Q, O) = 5, some_state()
    hooks = SimpleNamespace(**{f"hook_{name}": HookPoint() for name in WKV_HOOKS})
    for name, value in (("state_num", P), ("state_den", Q), ("state_max", O)):
        def patch(act, hook, value=value):
            act[:, t] = value
            return act
        getattr(hooks, f"hook_{name}").add_hook(patch)
    clean = wkv_parallel(w, u, k, v)[0]
    patched, final = wkv_parallel(w, u, k, v, hooks=hooks)
    assert torch.equal(patched[:, :t + 1], clean[:, :t + 1])
    expected, expected_final, _ = wkv_recurrent(w, u, k[:, t + 1:], v[:, t + 1:], (P, Q, O))
    assert torch.allclose(patched[:, t + 1:], expected, atol=1e-9)
    assert all(torch.allclose(x, y, atol=1e-9) for x, y in zip(final, expected_final, strict=True))


def test_cache_has_rwkv_hooks_and_mlp_in_is_position_wise():
    model, tokens = tiny_rwkv(), torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    own = [f"blocks.1.time_mix.hook_{n}" for n in ("r", "k", "v", "wkv", "decay", "r_gate", *WKV_HOOKS)]
    own += [f"blocks.1.channel_mix.hook_{n}" for n in ("k", "k_gate", "hidden", "r", "r_gate")]
    assert [name for name in own if name not in getattr(cache, "cache_dict", cache)] == []
    assert (cache["blocks.0.time_mix.hook_decay"] < 0).all()
    d = model.cfg.d_model
    mlp_in, normalised = cache["blocks.1.hook_mlp_in"], cache["blocks.1.ln2.hook_normalized"]
    assert mlp_in.shape[-1] == 2 * d  # [x_t, x_{t-1}]
    assert torch.equal(mlp_in[..., :d], normalised)
    assert torch.equal(mlp_in[:, 1:, d:], normalised[:, :-1]) and (mlp_in[:, 0, d:] == 0).all()
    with torch.no_grad():  # the channel-mix is a function of hook_mlp_in alone: a transcoder can replace it
        again = model.blocks[1].channel_mix(mlp_in[:, 3:5])
    assert torch.allclose(again, cache["blocks.1.hook_mlp_out"][:, 3:5], atol=1e-12)


def test_frozen_gates_make_the_channel_mix_affine():
    model, tokens = tiny_rwkv(), torch.randint(0, VOCAB, (2, 8))
    mix = model.blocks[0].channel_mix
    u1, u2 = torch.randn(2, 8, 2 * model.cfg.d_model, dtype=F64), torch.randn(2, 8, 2 * model.cfg.d_model, dtype=F64)
    with torch.no_grad(), frozen_gates(model, tokens):
        f = lambda x: mix(x) - mix(torch.zeros_like(x))
        assert torch.allclose(f(u1 + u2), f(u1) + f(u2), atol=1e-10)
        assert not torch.allclose(f(2 * u1), f(u1))


def test_reference_initialisation_spreads_decays_by_layer():
    torch.manual_seed(0)
    model = build_model(model_config("rwkv", VOCAB, 32, n_layers=3, d_model=16, d_mlp=32))
    first, last = (model.blocks[i].time_mix for i in (0, 2))
    assert first.time_decay[0] == -5 and first.time_decay[-1] == 3  # -5 + 8 (h/(d-1))^p
    assert (last.time_decay[1:-1] < first.time_decay[1:-1]).all()  # slower decays higher up
    assert first.mu_k[0] == 0 and torch.allclose(last.mu_r, (torch.arange(16) / 16) ** (0.5 * (1 - 2 / 3)))
