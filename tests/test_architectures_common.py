"""What every registered architecture must do: the conformance kit's checks (shared hooks, causality,
gate-form linearity, carried state, state patching) on each one's tiny test config. The checks live in
workbench.architectures.conformance (`wb arch check` runs the same ones on a user's architecture)."""

import pytest
import torch
from conftest import TINY_CONFIGS

from workbench.architectures import architecture_names, build_model, model_config
from workbench.architectures.conformance import (
    check_carried_state,
    check_causality,
    check_gate_form,
    check_hooks,
    check_state_patching,
)

VOCAB, CTX = 24, 16


def tiny_model(arch: str, dtype=torch.float32):
    torch.manual_seed(0)
    model = build_model(model_config(arch, VOCAB, CTX, seed=0, **TINY_CONFIGS[arch]))
    return model.to(dtype).eval()


def mixer_map(model, layer: int, u: torch.Tensor) -> torch.Tensor:
    """The mixer of ``layer`` applied to ``u`` in place of its input, gates as currently hooked (used by
    the xLSTM tests' frozen-gate checks)."""
    out = {}

    def put(_, hook):
        return u

    def take(act, hook):
        out["y"] = act

    model.run_with_hooks(torch.zeros(u.shape[:2], dtype=torch.long), fwd_hooks=[
        (f"blocks.{layer}.hook_mixer_in", put), (f"blocks.{layer}.hook_mixer_out", take)])
    return out["y"]


def test_every_architecture_has_a_tiny_config():
    assert sorted(TINY_CONFIGS) == architecture_names()


@pytest.mark.parametrize("arch", architecture_names())
def test_run_with_cache_has_every_shared_hook_and_gate_hooks(arch):
    result = check_hooks(tiny_model(arch))
    assert result.status == "passed", result.detail


@pytest.mark.parametrize("arch", architecture_names())
def test_outputs_are_causal(arch):
    result = check_causality(tiny_model(arch, torch.float64))
    assert result.status == "passed", result.detail


@pytest.mark.parametrize("arch", architecture_names())
def test_gate_form_makes_resid_pre_to_logits_affine(arch):
    """With every *_gate / *_scale / pattern hook frozen and the MLP outputs held, every layer's
    resid_pre -> logits is affine (float64); "approximate" only where the model declares it."""
    result = check_gate_form(tiny_model(arch, torch.float64))
    assert result.passed, result.detail


@pytest.mark.parametrize("arch", architecture_names())
def test_carried_state_and_state_patching(arch):
    """Generation with carried state equals the full forward (where the model carries state), and a
    patch of any per-position hook at t changes nothing before t."""
    model = tiny_model(arch, torch.float64)
    for result in (check_carried_state(model), check_state_patching(model)):
        assert result.passed, f"{result.name}: {result.detail}"
