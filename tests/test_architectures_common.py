"""What every registered architecture must do: shared hooks, causality, gate-form linearity."""

import pytest
import torch
from conftest import TINY_CONFIGS

from workbench.architectures import architecture_names, build_model, model_config, shared_hook_names
from workbench.architectures.gate_form import frozen_gates, gate_hook_names

VOCAB, CTX = 24, 16


def tiny_model(arch: str, dtype=torch.float32):
    torch.manual_seed(0)
    model = build_model(model_config(arch, VOCAB, CTX, seed=0, **TINY_CONFIGS[arch]))
    return model.to(dtype).eval()


def test_every_architecture_has_a_tiny_config():
    assert sorted(TINY_CONFIGS) == architecture_names()


@pytest.mark.parametrize("arch", architecture_names())
def test_run_with_cache_has_every_shared_hook(arch):
    model = tiny_model(arch)
    _, cache = model.run_with_cache(torch.randint(0, VOCAB, (2, 10)))
    store = cache.cache_dict if hasattr(cache, "cache_dict") else cache
    assert [n for n in shared_hook_names(model.cfg.n_layers) if n not in store] == []
    assert gate_hook_names(model), f"{arch} exposes no gate/scale hooks; it is not in gate form"


@pytest.mark.parametrize("arch", architecture_names())
def test_outputs_are_causal(arch):
    model = tiny_model(arch)
    tokens = torch.randint(0, VOCAB, (2, 12))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def mixer_map(model, layer: int, u: torch.Tensor) -> torch.Tensor:
    """The mixer of ``layer`` applied to ``u`` in place of its input, gates as currently hooked."""
    out = {}

    def put(_, hook):
        return u

    def take(act, hook):
        out["y"] = act

    model.run_with_hooks(torch.zeros(u.shape[:2], dtype=torch.long), fwd_hooks=[
        (f"blocks.{layer}.hook_mixer_in", put), (f"blocks.{layer}.hook_mixer_out", take)])
    return out["y"]


@pytest.mark.parametrize("arch", architecture_names())
def test_gate_form_makes_the_mixer_affine(arch):
    """With every *_gate / *_scale / pattern hook frozen, mixer_in -> mixer_out is affine:
    f(u1 + u2) = f(u1) + f(u2) - f(0), checked in float64 on random inputs."""
    model = tiny_model(arch, torch.float64)
    tokens = torch.randint(0, VOCAB, (2, 10))
    torch.manual_seed(1)
    d = model.cfg.d_model
    u1, u2 = torch.randn(2, 10, d, dtype=torch.float64), torch.randn(2, 10, d, dtype=torch.float64)
    with torch.no_grad(), frozen_gates(model, tokens):
        for layer in range(model.cfg.n_layers):
            f = lambda u, layer=layer: mixer_map(model, layer, u)
            zero = f(torch.zeros_like(u1))
            assert torch.allclose(f(u1 + u2), f(u1) + f(u2) - zero, atol=1e-9), f"{arch} layer {layer}"
            assert not torch.allclose(f(2 * u1) - zero, f(u1) - zero)  # and not trivially constant
