"""xLSTM under frozen gates: the mLSTM's gated form and the sLSTM's fixed-gate path equal the forms
they replace (the scan form; the hooked recurrence), in value, in what every gate hook sees and in
gradients, with gates recorded on one prompt and expanded to a batch (stride 0, as attribution does);
and the cells take them exactly when only gate hooks are attached."""

import pytest
import torch

from workbench.architectures import build_model, model_config, xlstm_cells
from workbench.architectures.gate_form import frozen_gates, record_gates
from workbench.architectures.hooked import hook_name
from workbench.architectures.xlstm_cells import MLSTMCell, SLSTMCell, mlstm_gated, mlstm_recurrent, mlstm_scan

F64 = torch.float64
BATCH = 4
MLSTM_GATES = ("q_gate", "k_gate", "i_gate", "f_gate", "norm_scale")
SLSTM_GATES = ("i_gate", "f_gate", "z_gate", "o_gate", "norm_scale")


def mlstm_operands(batch=1, steps=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, steps, 3, 4, generator=g, dtype=F64) for _ in range(3))
    i_pre = torch.randn(batch, steps, 3, generator=g, dtype=F64) * 3
    f_pre = torch.randn(batch, steps, 3, generator=g, dtype=F64) * 3
    return [q, k, v, i_pre, f_pre]


def record(cell, names, run):
    """The values ``cell``'s hooks ``names`` see during ``run()``."""
    seen = {}
    for name in names:
        getattr(cell, f"hook_{name}").add_hook(lambda act, hook, name=name: seen.__setitem__(name, act.detach().clone()))
    run()
    for name in names:
        getattr(cell, f"hook_{name}").remove_hooks()
    return seen


def freeze(cell, gates, batch, seen):
    """Hooks returning the recorded gates expanded to ``batch`` (stride 0); ``seen`` gets the live values."""
    for name, value in gates.items():
        def hook(act, hook, name=name, value=value):
            seen[name] = act.detach().clone()
            return value.expand(batch, *value.shape[1:])
        getattr(cell, f"hook_{name}").add_hook(hook)


def observe(point):
    point.add_hook(lambda act, hook: None)


def batch_of(ops, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(x.expand(batch, *x.shape[1:]) + 0.5 * torch.randn(batch, *x.shape[1:], generator=g, dtype=F64))
            .requires_grad_() for x in ops]


@pytest.mark.parametrize("carried", [False, True])
def test_mlstm_gated_form_equals_scan_form_under_frozen_gates(carried):
    cell, prompt = MLSTMCell(), mlstm_operands()
    gates = record(cell, MLSTM_GATES, lambda: cell(*prompt))
    ops = batch_of(prompt, BATCH)
    state = mlstm_recurrent(*mlstm_operands(BATCH, 3, seed=2))[1] if carried else None
    outputs = []
    for form in ("gated", "scan"):
        seen = {}
        freeze(cell, gates, BATCH, seen)
        if form == "scan":
            observe(cell.hook_C)  # a state hook: the scan form
        h, final = cell(*ops, state)
        weights = torch.randn(h.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
        grads = torch.autograd.grad((h * weights).sum(), ops, allow_unused=True)
        outputs.append((h, final, seen, grads))
        for name in xlstm_cells.MLSTM_HOOKS:
            getattr(cell, f"hook_{name}").remove_hooks()
    (h1, s1, seen1, g1), (h2, s2, seen2, g2) = outputs
    assert torch.allclose(h1, h2, atol=1e-10)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(s1, s2, strict=True))
    assert seen1.keys() == seen2.keys() == set(MLSTM_GATES)
    for name in MLSTM_GATES:  # the hooks see the same live values, in the same shapes
        assert seen1[name].shape == seen2[name].shape == (BATCH, *gates[name].shape[1:])
        assert torch.allclose(seen1[name], seen2[name], atol=1e-10), name
    assert g1[2].abs().sum() > 0  # v: the value path is live
    for a, b in zip(g1, g2, strict=True):  # q, k, i~, f~ reach h only through frozen gates: no gradient
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("shift", [0.0, 1000.0])
def test_mlstm_gated_form_equals_scan_form_with_live_gates(shift):
    """Gates only observed (batch rows differ, no stride 0); shift: an input gate 1000 above the rest
    makes f' underflow to 0 mid-sequence: log f' = -inf there, and the gradients stay finite."""
    ops = mlstm_operands(batch=2, steps=9)
    ops[3][:, 5] += shift
    ops = [x.requires_grad_() for x in ops]
    state = mlstm_recurrent(*mlstm_operands(2, 3, seed=2))[1]
    for carried in (None, state):
        (h1, s1), (h2, s2) = mlstm_gated(*ops, carried), mlstm_scan(*ops, carried)
        assert torch.allclose(h1, h2, atol=1e-10)
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(s1, s2, strict=True))
        weights = torch.randn(h1.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
        g1, g2 = (torch.autograd.grad((h * weights).sum(), ops) for h in (h1, h2))
        for a, b in zip(g1, g2, strict=True):
            assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-9)


def test_the_mlstm_cell_takes_the_gated_form_exactly_when_only_gates_are_hooked(monkeypatch):
    calls = []
    for form in ("mlstm_scan", "mlstm_gated", "mlstm_parallel"):
        original = getattr(xlstm_cells, form)
        monkeypatch.setattr(xlstm_cells, form, lambda *a, _f=original, _n=form, **kw: calls.append(_n) or _f(*a, **kw))
    cell, ops = MLSTMCell(), mlstm_operands()
    cell(*ops)
    for name in MLSTM_GATES + ("v", "h"):
        observe(getattr(cell, f"hook_{name}"))
    cell(*ops)
    observe(cell.hook_C)
    cell(*ops)
    assert calls == ["mlstm_parallel", "mlstm_gated", "mlstm_scan"]
    for state in ("m", "n"):
        cell = MLSTMCell()
        observe(cell.hook_q_gate)
        observe(getattr(cell, f"hook_{state}"))
        cell(*ops)
    assert calls[3:] == ["mlstm_scan", "mlstm_scan"]


def slstm_setup(seed=0, heads=2, d=6, steps=9):
    torch.manual_seed(seed)
    cell = SLSTMCell(heads * d, heads, layer=0, n_layers=2).to(F64)
    with torch.no_grad():
        cell.R.normal_(0, 0.3)
    wx = torch.randn(1, steps, 4, heads, d, dtype=F64)
    return cell, wx


@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("frozen", [True, False])
def test_slstm_fixed_gate_path_equals_the_hooked_recurrence(carried, frozen):
    cell, prompt = slstm_setup()
    gates = record(cell, SLSTM_GATES, lambda: cell(prompt))
    wx = (prompt.expand(BATCH, -1, -1, -1, -1) + 0.3 * torch.randn(BATCH, *prompt.shape[1:], dtype=F64)).requires_grad_()
    state = tuple(s.detach() for s in cell(torch.randn(BATCH, 3, *prompt.shape[2:], dtype=F64))[1]) if carried else None
    outputs = []
    for path in ("fixed", "recurrence"):
        seen = {}
        if frozen:
            freeze(cell, gates, BATCH, seen)
        else:  # observed only: the gates stay live (and differentiable), one per batch row
            observe(cell.hook_i_gate)
        if path == "recurrence":
            observe(cell.hook_c)  # a state hook: hooked_recurrence
        h, final = cell(wx, state)
        weights = torch.randn(h.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
        grads = torch.autograd.grad((h * weights).sum(), [wx, cell.R])
        outputs.append((h, final, seen, grads))
        for name in SLSTM_GATES + ("c",):
            getattr(cell, f"hook_{name}").remove_hooks()
    (h1, s1, seen1, g1), (h2, s2, seen2, g2) = outputs
    assert torch.allclose(h1, h2, atol=1e-10)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(s1, s2, strict=True))  # (c, n, m, h)
    assert seen1.keys() == seen2.keys()
    assert all(torch.allclose(seen1[name], seen2[name], atol=1e-10) for name in seen1)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(g1, g2, strict=True))


def test_the_slstm_cell_takes_the_fixed_gate_path_exactly_when_only_gates_are_hooked(monkeypatch):
    calls = []
    original = SLSTMCell._fixed_gates_forward
    monkeypatch.setattr(SLSTMCell, "_fixed_gates_forward",
                        lambda self, *a: calls.append("fixed") or original(self, *a))
    cell, wx = slstm_setup()
    cell(wx)
    observe(cell.hook_o_gate)
    cell(wx)
    observe(cell.hook_h)
    cell(wx)
    assert calls == ["fixed"]


def tiny_xlstm():
    torch.manual_seed(0)
    model = build_model(model_config("xlstm", 24, 16, n_layers=2, d_model=16, n_heads=2, d_mlp=32,
                                     slstm_at=[1])).to(F64)
    with torch.no_grad():  # off the reference's zero gate weights and zero recurrence
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_frozen_model_matches_the_scan_forms():
    """The whole model frozen as attribution freezes it (gates of one prompt expanded to a batch whose
    embeddings differ): logits and gradients to the embeddings equal with the state hooks observed
    (which forces the scan form and the hooked recurrence)."""
    model, tokens = tiny_xlstm(), torch.randint(0, 24, (1, 10))
    gates = {k: v.expand(BATCH, *v.shape[1:]) for k, v in record_gates(model, tokens).items()}
    shift = torch.randn(BATCH, 10, model.cfg.d_model, dtype=F64, requires_grad=True)
    results = []
    for observed in ([], ["blocks.0.mixer.cell.hook_C", "blocks.1.mixer.cell.hook_c"]):
        hooks = [(hook_name("embed"), lambda act, hook: act + shift)]
        hooks += [(name, lambda act, hook: None) for name in observed]
        with frozen_gates(model, gates=gates), model.hooks(fwd_hooks=hooks):
            logits = model(tokens.expand(BATCH, -1))
        results.append((logits, torch.autograd.grad(logits.pow(2).sum(), shift)[0]))
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, atol=1e-10) and torch.allclose(g1, g2, atol=1e-10)
