"""xLSTM: the mLSTM's scan, parallel and step forms agree; both cells equal their unstabilised
definitions where those do not overflow and stay finite where they do; state carries across calls and
patched states carry forward."""

import math

import pytest
import torch
from conftest import TINY_CONFIGS
from test_architectures_common import mixer_map

from workbench.architectures import build_model, model_config
from workbench.architectures.gate_form import frozen_gates
from workbench.architectures.xlstm_cells import (
    MLSTMCell,
    SLSTMCell,
    mlstm_parallel,
    mlstm_recurrent,
    mlstm_scan,
)

F64 = torch.float64
VOCAB = 24


def mlstm_operands(steps=11, gate_shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, steps, 3, 4, generator=g, dtype=F64) for _ in range(3))
    i_pre = torch.randn(2, steps, 3, generator=g, dtype=F64) * 3 + gate_shift
    f_pre = torch.randn(2, steps, 3, generator=g, dtype=F64) * 3
    return q, k, v, i_pre, f_pre


def mlstm_naive(q, k, v, i_pre, f_pre):
    """The definition with raw exponentials: C = f C + e^{i~} v k^T, h = C q / max(|n^T q|, 1)."""
    k = k / math.sqrt(k.shape[-1])
    C = torch.zeros(*q.shape[:1], q.shape[2], v.shape[-1], k.shape[-1], dtype=q.dtype)
    n, out = torch.zeros(*q.shape[:1], q.shape[2], k.shape[-1], dtype=q.dtype), []
    for t in range(q.shape[1]):
        i, f = torch.exp(i_pre[:, t]), torch.sigmoid(f_pre[:, t])
        C = f[..., None, None] * C + i[..., None, None] * v[:, t].unsqueeze(-1) * k[:, t].unsqueeze(-2)
        n = f[..., None] * n + i[..., None] * k[:, t]
        den = torch.maximum((n * q[:, t]).sum(-1, keepdim=True).abs(), torch.ones(()))
        out.append(torch.einsum("bhvk,bhk->bhv", C, q[:, t]) / den)
    return torch.stack(out, dim=1)


def slstm_cell(seed=0, heads=2, d=6):
    torch.manual_seed(seed)
    cell = SLSTMCell(heads * d, heads, layer=0, n_layers=2).to(F64)
    with torch.no_grad():
        cell.R.normal_(0, 0.3)  # the reference starts R at 0; exercise the recurrence
    return cell


def slstm_naive(cell, wx):
    """sLSTM with raw exponentials: i = e^{i~}, f = sigmoid(f~), c = f c + i tanh(z~), n = f n + i."""
    batch, steps = wx.shape[:2]
    c = n = h = torch.zeros(batch, cell.n_heads, cell.d_head, dtype=wx.dtype)
    out = []
    for t in range(steps):
        rec = torch.einsum("bhd,hde->bhe", h, cell.R).unflatten(-1, (4, cell.d_head)).transpose(1, 2)
        i_pre, f_pre, z_pre, o_pre = (wx[:, t] + rec + cell.bias).unbind(1)
        i, f = torch.exp(i_pre), torch.sigmoid(f_pre)
        c, n = f * c + i * torch.tanh(z_pre), f * n + i
        h = torch.sigmoid(o_pre) * c / n
        out.append(h)
    return torch.stack(out, dim=1)


def tiny_xlstm(**overrides):
    torch.manual_seed(0)
    model = build_model(model_config("xlstm", VOCAB, 32, **(TINY_CONFIGS["xlstm"] | overrides))).to(F64)
    with torch.no_grad():  # move off the reference's zero gate weights and zero recurrence
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_mlstm_scan_parallel_and_step_forms_agree():
    ops = [x.requires_grad_() for x in mlstm_operands()]
    (scan, scan_state), (parallel, parallel_state) = mlstm_scan(*ops), mlstm_parallel(*ops)
    step, step_state = mlstm_recurrent(*ops)
    assert torch.allclose(scan, parallel, atol=1e-9) and torch.allclose(scan, step, atol=1e-9)
    for a, b, c in zip(scan_state, parallel_state, step_state, strict=True):
        assert torch.allclose(a, c, atol=1e-9) and torch.allclose(b, c, atol=1e-9)
    weights = torch.randn(scan.shape, dtype=F64)
    grads = [torch.autograd.grad((out * weights).sum(), ops) for out in (scan, parallel)]
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("form", [mlstm_scan, mlstm_parallel, mlstm_recurrent])
def test_mlstm_carried_state_equals_one_pass(form):
    ops = mlstm_operands(steps=12)
    full = mlstm_recurrent(*ops)[0]
    first, state = form(*(x[:, :5] for x in ops))
    rest, _ = form(*(x[:, 5:] for x in ops), state)
    assert torch.allclose(torch.cat([first, rest], dim=1), full, atol=1e-9)


def test_the_cell_takes_the_scan_form_exactly_when_hooked():
    ops, cell = mlstm_operands(), MLSTMCell()
    assert torch.equal(cell(*ops)[0], mlstm_parallel(*ops)[0])
    cell.hook_n.add_hook(lambda act, hook: None)  # only observing: same values, through the scan
    assert torch.equal(cell(*ops)[0], mlstm_scan(*ops)[0])


@pytest.mark.parametrize("shift", [0.0, -1000.0])
def test_mlstm_stabilised_equals_naive(shift):
    ops = mlstm_operands(gate_shift=shift)
    for form in (mlstm_scan, mlstm_parallel):
        assert torch.allclose(form(*ops)[0], mlstm_naive(*ops), atol=1e-9)


@pytest.mark.parametrize("shift", [80.0, 1000.0])
def test_mlstm_large_input_gates_stay_finite(shift):
    """With every i~ shifted by s the true C and n grow by e^s, so |n^T q| >> 1 and h~ no longer
    depends on s: the stabilised forms must give the s = 30 answer (where raw exponentials are fine)."""
    ops = mlstm_operands()
    big = (*ops[:3], (ops[3] + shift).requires_grad_(), ops[4])
    reference = mlstm_naive(*ops[:3], ops[3] + 30.0, ops[4])
    for out in (mlstm_scan(*big)[0], mlstm_parallel(*big)[0], mlstm_recurrent(*big)[0]):
        assert torch.isfinite(out).all()
        assert torch.allclose(out, reference, atol=1e-6)
        assert torch.isfinite(torch.autograd.grad(out.sum(), big[3])[0]).all()
    if shift >= 1000:
        assert not torch.isfinite(mlstm_naive(*big)).all()


@pytest.mark.parametrize("shift", [0.0, 1000.0, -1000.0])
def test_slstm_stabilised_equals_naive_and_stays_finite(shift):
    cell = slstm_cell()
    wx = torch.randn(2, 9, 4, cell.n_heads, cell.d_head, dtype=F64)
    wx[:, :, 0] += shift
    wx.requires_grad_()
    out = cell(wx)[0]
    assert torch.isfinite(out).all() and torch.isfinite(torch.autograd.grad(out.sum(), wx)[0]).all()
    if shift == 0.0:
        assert torch.allclose(out, slstm_naive(cell, wx), atol=1e-9)
    else:  # h = o c / n is invariant to a common shift of every i~ (c and n both scale by e^s)
        unshifted = wx.detach().clone()
        unshifted[:, :, 0] -= shift
        assert torch.allclose(out, slstm_naive(cell, unshifted), atol=1e-8)
        assert not torch.isfinite(slstm_naive(cell, wx.detach())).all()  # e^1000 = inf; e^-1000: 0/0


def test_mlstm_patched_state_carries_forward():
    q, k, v, i_pre, f_pre = mlstm_operands(steps=10)
    t, cell = 4, MLSTMCell()
    _, other = mlstm_recurrent(*mlstm_operands(steps=3, seed=5))  # a state (C, n, m) of another run
    for name, value in zip(("C", "n", "m"), other, strict=True):
        def patch(act, hook, value=value):
            act[:, t] = value
            return act
        getattr(cell, f"hook_{name}").add_hook(patch)
    clean = mlstm_scan(q, k, v, i_pre, f_pre)[0]
    patched = cell(q, k, v, i_pre, f_pre)[0]
    assert torch.equal(patched[:, :t], clean[:, :t])
    ops_after = (x[:, t + 1:] for x in (q, k, v, i_pre, f_pre))
    assert torch.allclose(patched[:, t + 1:], mlstm_recurrent(*ops_after, other)[0], atol=1e-9)


def test_slstm_patched_state_carries_forward():
    cell = slstm_cell()
    wx, t = torch.randn(2, 9, 4, cell.n_heads, cell.d_head, dtype=F64), 3
    _, other = cell(torch.randn(2, 4, 4, cell.n_heads, cell.d_head, dtype=F64))  # (c, n, m, h)
    for name, value in zip(("c", "n", "m", "h"), other, strict=True):
        def patch(act, hook, value=value):
            act[:, t] = value
            return act
        getattr(cell, f"hook_{name}").add_hook(patch)
    patched = cell(wx)[0]
    for name in ("c", "n", "m", "h"):
        getattr(cell, f"hook_{name}").remove_hooks()
    clean, continued = cell(wx)[0], cell(wx[:, t + 1:], other)[0]
    assert torch.equal(patched[:, :t], clean[:, :t])
    assert torch.allclose(patched[:, t], other[3]) and torch.allclose(patched[:, t + 1:], continued, atol=1e-12)


@pytest.mark.parametrize("hook", ["blocks.1.mixer.cell.hook_h"])
def test_patching_a_state_changes_only_outputs_from_t_on(hook):
    """The sLSTM's hidden state reaches later positions only through R h_{t-1}, which this model has
    live (test_recurrent_basic covers C, c and every other architecture's states)."""
    model, tokens, t = tiny_xlstm(), torch.randint(0, VOCAB, (2, 9)), 4

    def patch(act, hook):
        act[:, t] = act[:, t] * 3.0 + 1.0
        return act

    with torch.no_grad():
        clean = model(tokens)
        patched = model.run_with_hooks(tokens, fwd_hooks=[(hook, patch)])
    assert torch.allclose(patched[:, :t], clean[:, :t], atol=1e-12)
    assert not torch.allclose(patched[:, t], clean[:, t]) and not torch.allclose(patched[:, -1], clean[:, -1])


@pytest.mark.parametrize("layer", [0, 1])
def test_frozen_gates_make_the_mixer_affine_with_the_recurrence_live(layer):
    """As the common test, on a model whose sLSTM recurrence R and gate weights are not zero."""
    model, tokens = tiny_xlstm(), torch.randint(0, VOCAB, (2, 8))
    u1, u2 = (torch.randn(2, 8, model.cfg.d_model, dtype=F64) for _ in range(2))
    with torch.no_grad(), frozen_gates(model, tokens):
        f = lambda u: mixer_map(model, layer, u) - mixer_map(model, layer, torch.zeros_like(u))
        assert torch.allclose(f(u1 + u2), f(u1) + f(u2), atol=1e-9)
        assert not torch.allclose(f(2 * u1), f(u1))


def test_cache_has_the_cell_hooks():
    model = tiny_xlstm()
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.randint(0, VOCAB, (2, 7)))
    store = getattr(cache, "cache_dict", cache)
    mlstm = [f"blocks.0.mixer.cell.hook_{n}" for n in ("C", "n", "m", "i_gate", "f_gate", "q_gate", "k_gate",
                                                      "norm_scale", "h")]
    mlstm += ["blocks.0.mixer.hook_o_gate", "blocks.0.mixer.hook_conv_gate", "blocks.0.mixer.outnorm.hook_scale"]
    slstm = [f"blocks.1.mixer.cell.hook_{n}" for n in ("c", "n", "m", "h", "i_gate", "f_gate", "z_gate",
                                                      "o_gate", "norm_scale")]
    slstm += ["blocks.1.mixer.hook_conv_gate", "blocks.1.mlp.hook_act_gate"]
    assert [name for name in mlstm + slstm if name not in store] == []
    assert store["blocks.0.mixer.cell.hook_C"].shape == (2, 7, 2, 16, 16)  # [B, T, H, d_v, d_k]


def test_block_pattern():
    model = build_model(model_config("xlstm", VOCAB, 16, n_layers=8, d_model=16, n_heads=2, slstm_at=[3]))
    kinds = [type(block.mixer).__name__ for block in model.blocks]
    assert kinds == ["MLSTMLayer"] * 3 + ["SLSTMLayer"] + ["MLSTMLayer"] * 4  # xLSTM[7:1]
    with pytest.raises(ValueError, match="slstm_at"):
        build_model(model_config("xlstm", VOCAB, 16, n_layers=2, slstm_at=[2]))
