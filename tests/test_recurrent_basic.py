"""minGRU, LSTM and Mamba: parallel form vs recurrence, carried state, patchable states, own hooks.

The cross-architecture checks (shared hooks, causality, gate-form affinity, carried state, state
patching) are the conformance kit's (workbench/architectures/conformance.py), run on every architecture
by tests/test_architectures_common.py; this file checks what recurrence adds.
"""

import pytest
import torch
from conftest import TINY_CONFIGS

from workbench.architectures import build_model, model_config
from workbench.architectures.conformance import check_carried_state, check_state_patching, state_hook_names
from workbench.architectures.gate_form import derived_gate_names, frozen_gates, gate_hook_names

VOCAB, CTX = 24, 16
F64 = torch.float64
RECURRENT = ["mingru", "lstm", "mamba"]
EVERY_RECURRENT = [*RECURRENT, "rwkv", "xlstm"]  # for the tests every stateful architecture shares

OWN_HOOKS = {  # per block, under blocks.{l}.
    "mingru": ["mixer.hook_z_gate", "mixer.hook_state"],
    "lstm": ["mixer.hook_i_gate", "mixer.hook_f_gate", "mixer.hook_z_gate", "mixer.hook_o_gate",
             "mixer.hook_c_gate", "mixer.hook_state", "mixer.hook_hidden"],
    "mamba": ["mixer.hook_conv_gate", "mixer.hook_out_gate", "mixer.ssm.hook_dt_gate",
              "mixer.ssm.hook_B_gate",
              "mixer.ssm.hook_C_gate", "mixer.ssm.hook_decay_gate", "mixer.ssm.hook_state"],
}
# The state hook whose value is (part of) the carried state, per architecture.
CARRIED = [("mingru", "mixer.hook_state"), ("lstm", "mixer.hook_hidden"), ("mamba", "mixer.ssm.hook_state")]
STATE_HOOKS = {"mingru": ["mixer.hook_state"], "lstm": ["mixer.hook_state", "mixer.hook_hidden"],
               "mamba": ["mixer.ssm.hook_state"]}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation (10-100x slower on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(arch: str):
    torch.manual_seed(0)
    return build_model(model_config(arch, VOCAB, CTX, seed=0, **TINY_CONFIGS[arch])).to(F64).eval()


def tokens(batch=2, length=11, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def random_state(arch, mixer, batch, d_model):
    """A non-zero carried state for the mixer, to check that the initial state enters right."""
    x = torch.randn(batch, 3, d_model, dtype=F64)
    return mixer(x)[1]


@pytest.mark.parametrize("arch", ["mingru", "mamba"])
def test_parallel_form_equals_the_recurrence(arch):
    mixer = tiny(arch).blocks[0].mixer
    d = TINY_CONFIGS[arch]["d_model"]
    x = torch.randn(2, 13, d, dtype=F64, requires_grad=True)
    for state in (None, random_state(arch, mixer, 2, d)):
        (fast, fast_state), (slow, slow_state) = mixer(x, state), mixer.forward_sequential(x, state)
        assert torch.allclose(fast, slow, atol=1e-6)
        leaves = torch.utils._pytree.tree_leaves
        for a, b in zip(leaves(fast_state), leaves(slow_state), strict=True):
            assert torch.allclose(a, b, atol=1e-6)
        g_fast, = torch.autograd.grad(fast.pow(2).sum(), x)
        g_slow, = torch.autograd.grad(slow.pow(2).sum(), x)
        assert torch.allclose(g_fast, g_slow, atol=1e-6)


def test_lstm_equals_torch_lstm_with_live_and_with_hooked_gates():
    """Live gates (one pass) and hooked gates (the second, gate-form pass) both give torch's LSTM."""
    model = tiny("lstm")
    mixer = model.blocks[0].mixer
    x = torch.randn(2, 13, TINY_CONFIGS["lstm"]["d_model"], dtype=F64)
    h0, c0 = torch.randn(2, mixer.d_hidden, dtype=F64), torch.randn(2, mixer.d_hidden, dtype=F64)
    expected, (h_n, c_n) = mixer.as_torch_lstm()(x, (h0[None], c0[None]))
    observe = [(f"blocks.0.mixer.hook_{g}_gate", lambda act, hook: act.clone()) for g in "ifzoc"]
    for fwd_hooks in ([], observe):
        with model.hooks(fwd_hooks=fwd_hooks):
            y, (h, c) = mixer(x, (h0, c0))
        assert torch.allclose(y, expected, atol=1e-10)
        assert torch.allclose(h, h_n[0], atol=1e-10) and torch.allclose(c, c_n[0], atol=1e-10)


@pytest.mark.parametrize("arch", EVERY_RECURRENT)
def test_generation_with_carried_state_equals_the_full_forward(arch):
    """The conformance kit's check (pieces and token by token); a stateful model must not be n/a."""
    result = check_carried_state(tiny(arch))
    assert result.status == "passed", result.detail


@pytest.mark.parametrize("arch,hook", [(a, f"blocks.0.{h}") for a in RECURRENT for h in STATE_HOOKS[a] if h.endswith("state")]
                         + [("rwkv", "blocks.0.time_mix.hook_state_num"), ("xlstm", "blocks.1.mixer.cell.hook_c")])
def test_the_kit_knows_the_recurrent_states(arch, hook):
    """The kit's state-patching check requires these hooks' patches to carry to every later position."""
    model = tiny(arch)
    assert hook in state_hook_names(model)
    assert check_state_patching(model).status == "passed"


def replace_state(arch, state, value):
    """A layer's carried state with its recurrent state (minGRU h, LSTM h, Mamba's SSM h) replaced."""
    replace = {"mingru": lambda s: value, "lstm": lambda s: (value, s[1]), "mamba": lambda s: (s[0], value)}
    return replace[arch](state)


def patch_at(t, value):
    def hook(act, hook):
        act[:, t] = value  # in place, the way patching code usually writes it
        return act
    return hook


# (architecture, state hook, first output a patch at t changes: t + offset, tolerance on earlier outputs).
# RWKV's state at t is the one after token t, and output t reads the state after t - 1, so its outputs
# move from t + 1. The sLSTM reruns its loop, so its earlier outputs agree to 1e-12, not bit for bit.
STATE_PATCHES = [(a, f"blocks.0.{h}", 0, 0.0) for a in RECURRENT for h in STATE_HOOKS[a]] + [
    ("rwkv", "blocks.0.time_mix.hook_state_num", 1, 0.0), ("rwkv", "blocks.1.time_mix.hook_state_den", 1, 0.0),
    ("xlstm", "blocks.0.mixer.cell.hook_C", 0, 0.0),  # mLSTM block
    ("xlstm", "blocks.1.mixer.cell.hook_c", 0, 1e-12),  # sLSTM block
]


@pytest.mark.parametrize("arch,hook,offset,atol", STATE_PATCHES)
def test_patching_a_state_changes_only_that_position_and_later(arch, hook, offset, atol):
    model, toks, t = tiny(arch), tokens(), 5
    with torch.no_grad():
        clean, cache = model.run_with_cache(toks)
        value = torch.randn_like(cache[hook][:, t])
        patched = model.run_with_hooks(toks, fwd_hooks=[(hook, patch_at(t, value))])
    assert torch.allclose(patched[:, :t + offset], clean[:, :t + offset], rtol=0, atol=atol)
    changed = (patched - clean).abs().amax(dim=(0, 2))
    assert (changed[t + offset:] > 1e-6).all(), f"every position from {t + offset} on must change: {changed}"


@pytest.mark.parametrize("arch,hook", CARRIED)
def test_patched_state_carries_forward_like_a_carried_state(arch, hook):
    """Patching layer 0's state at t equals stopping after t, replacing that layer's carried state by
    the patched value, and continuing: the patch propagates exactly as the recurrence would. (Compared
    at layer 0's mixer output: later layers also see the patched output at t itself.)"""
    model, toks, t, out = tiny(arch), tokens(), 5, "blocks.0.hook_mixer_out"
    with torch.no_grad():
        _, cache = model.run_with_cache(toks)
        value = torch.randn_like(cache[f"blocks.0.{hook}"][:, t])
        with model.hooks(fwd_hooks=[(f"blocks.0.{hook}", patch_at(t, value))]):
            _, patched = model.run_with_cache(toks, names_filter=[out])
        _, state = model(toks[:, :t + 1], return_state=True)
        state[0] = replace_state(arch, state[0], value)
        _, continued = model.run_with_cache(toks[:, t + 1:], state=state, names_filter=[out])
    assert not torch.allclose(patched[out][:, t + 1:], cache[out][:, t + 1:])
    assert torch.allclose(patched[out][:, t + 1:], continued[out], atol=1e-10)


@pytest.mark.parametrize("arch,hook", CARRIED)
def test_gradient_at_a_state_hook_is_the_total_derivative(arch, hook):
    """The gradient a backward hook sees at h_t is dL/dh_t through every later position, the same as
    the gradient with respect to a carried state continued from t."""
    model, toks, t, out = tiny(arch), tokens(), 5, "blocks.0.hook_mixer_out"
    weights = torch.randn(2, toks.shape[1] - t - 1, model.cfg.d_model, dtype=F64)
    seen = {}
    with model.hooks(fwd_hooks=[(out, lambda act, hook: seen.update(y=act))],
                     bwd_hooks=[(f"blocks.0.{hook}", lambda grad, hook: seen.update(grad=grad))]):
        model(toks)
        (seen["y"][:, t + 1:] * weights).sum().backward()
    with torch.no_grad():
        _, state = model(toks[:, :t + 1], return_state=True)
    leaf = {"mingru": lambda s: s, "lstm": lambda s: s[0], "mamba": lambda s: s[1]}[arch](state[0])
    leaf = leaf.clone().requires_grad_()
    state[0] = replace_state(arch, state[0], leaf)
    with model.hooks(fwd_hooks=[(out, lambda act, hook: seen.update(y=act))]):
        model(toks[:, t + 1:], state=state)
    expected, = torch.autograd.grad((seen["y"] * weights).sum(), leaf)
    assert torch.allclose(seen["grad"][:, t], expected, atol=1e-10)
    assert seen["grad"][:, t].abs().max() > 1e-8


@pytest.mark.parametrize("arch", RECURRENT)
def test_hooks_leave_parameter_gradients_alone(arch):
    model, toks = tiny(arch), tokens(length=8)

    def grads():
        model.zero_grad()
        model(toks).pow(2).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    observe = [(name, lambda act, hook: act * 1.0) for name in model.hook_dict if ".mixer." in name]
    with model.hooks(fwd_hooks=observe, bwd_hooks=[(n, lambda grad, hook: None) for n, _ in observe]):
        hooked = grads()
    for a, b in zip(plain, hooked, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("arch", RECURRENT)
def test_run_with_cache_has_the_architecture_hooks(arch):
    model = tiny(arch)
    _, cache = model.run_with_cache(tokens(length=7))
    for layer in range(model.cfg.n_layers):
        for name in OWN_HOOKS[arch]:
            assert f"blocks.{layer}.{name}" in cache, name
    assert cache[f"blocks.0.{STATE_HOOKS[arch][0]}"].shape[:2] == (2, 7)
    gates = {n.split(".", 2)[2] for n in gate_hook_names(model) if ".mixer." in n}
    derived = {n.split(".", 2)[2] for n in derived_gate_names(model)}  # fixed by the gates they derive from
    assert gates | derived == {n for n in OWN_HOOKS[arch] if n.endswith("_gate")} and not gates & derived
    assert derived == ({"mixer.ssm.hook_decay_gate"} if arch == "mamba" else set())


@pytest.mark.parametrize("arch", RECURRENT)
def test_freezing_gates_on_the_prompt_keeps_its_logits(arch):
    """Frozen at their own values the gates change nothing (the LSTM then takes its gate-form pass)."""
    model, toks = tiny(arch), tokens()
    with torch.no_grad():
        live = model(toks)
        with frozen_gates(model, toks):
            frozen = model(toks)
    assert torch.allclose(live, frozen, atol=1e-10)


@pytest.mark.parametrize("arch", RECURRENT)
def test_trains_gradients_are_finite(arch):
    model = tiny(arch).train()
    toks = tokens(length=9)
    logits = model(toks)
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), toks[:, 1:].reshape(-1)).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
