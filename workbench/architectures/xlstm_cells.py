"""The xLSTM cells ("xLSTM: Extended Long Short-Term Memory", Beck et al. 2024), stabilised, in gate form.

mLSTM (matrix memory, per head of width d; q, k, v [B, T, H, d], i~, f~ [B, T, H] scalar per head):

    C_t = f_t C_{t-1} + i_t v_t k_t^T      n_t = f_t n_{t-1} + i_t k_t      k scaled by 1/sqrt(d)
    h~_t = C_t q_t / max(|n_t^T q_t|, 1)    i = exp(i~), f = sigmoid(f~)   (the reference's choice)

Stabilised (paper, appendix; reference ``parallel_stabilized_simple`` / ``recurrent_step_stabilized_simple``):
m_t = max(log f_t + m_{t-1}, i~_t), i'_t = exp(i~_t - m_t), f'_t = exp(log f_t + m_{t-1} - m_t), and C, n
are kept scaled by e^{-m_t}, so the normaliser becomes max(|n_t^T q_t|, e^{-m_t}). Three forms, which
agree (tests), each continuing from a carried state (C, n, m):
- :func:`mlstm_scan`: m by the (max, +) scan of recurrence.py, then C and n by linear scans with
  factors in [0, 1] (scan.py). C per position is materialised ([B, T, H, d, d]) because ``hook_C``
  exposes it and a patch of it must carry forward; every hook of the cell acts here.
- :func:`mlstm_parallel`: the attention-like form, log D_tj = sum_{l=j+1..t} log f_l + i~_j (j <= t),
  m_t = max_j log D_tj (row-wise), h~ = ((q k^T / sqrt d) * e^{log D - m}) v / max(|row sum|, e^{-m});
  memory [B, H, T, T], about 20x faster than the scan on CPU at the default sizes.
- :func:`mlstm_recurrent`: one step at a time, the reference's step.
:class:`MLSTMCell` runs the scan form when a hook is attached to any of its hook points (caching,
freezing, patching) and the parallel form otherwise (training, plain inference).
Choices: the empty state has m = -inf (the reference's step starts from m = 0, which puts a phantom
e^0 term into the first maxima and makes its recurrent form differ from its parallel one); no eps is
added to the normaliser (the reference adds 1e-6, which changes h~ whenever e^{-m} is small); we only
floor it at the dtype's smallest normal number so that 0/0 cannot occur when e^{-m} underflows.
C is stored as the paper writes it, [.., d_v, d_k] (the reference stores k v^T).

sLSTM (scalar memory, heads = block-diagonal recurrent matrices; pre-activations [B, T, 4, H, d] for
i, f, z, o from the input projections, plus R h_{t-1} per head and a bias):

    m_t = max(log sigmoid(f~) + m_{t-1}, i~)   i' = exp(i~ - m_t)   f' = exp(log sigmoid(f~) + m_{t-1} - m_t)
    c_t = f' c_{t-1} + i' z~ * tanh_ratio(z~)  n_t = f' n_{t-1} + i'   h_t = sigmoid(o~) * c_t / n_t

(forget gate sigmoid, as the reference's vanilla backend; tanh(z~) = z~ * tanh_ratio(z~) in gate form.)
Not parallelisable (the gates read h_{t-1}); vectorised over batch and heads, sequential over time
through :func:`~recurrence.hooked_recurrence` (gate hooks fix gates, state hooks patch states).

Hooks (``cell.``): mLSTM ``hook_q_gate`` (q), ``hook_k_gate`` (k / sqrt d), ``hook_v``, ``hook_i_gate``,
``hook_f_gate`` (i', f'), ``hook_m``, ``hook_C`` [B, T, H, d, d], ``hook_n`` [B, T, H, d],
``hook_norm_scale`` (the denominator, [B, T, H, 1]), ``hook_h`` (h~); sLSTM ``hook_i_gate``,
``hook_f_gate``, ``hook_z_gate``, ``hook_o_gate``, ``hook_norm_scale`` (n, the denominator of c / n),
``hook_c``, ``hook_n``, ``hook_m``, ``hook_h``.

Gate form. sLSTM: frozen i', f', o, tanh ratio and n leave c and h linear in z~, which is affine in x
and h_{t-1}. mLSTM: C q is trilinear in (v, k, q), so besides the gates and the normaliser, q and k
are gates too: they address the memory (where v is written, what is read), as the attention pattern
does in a Transformer, and freezing them is the same cut (attribution through the value path,
addressing fixed); with them frozen, C is linear in v and h~ in C.

Patching: a state hook (C, n, m; sLSTM c, n, m, h) changing position t makes every later state follow
from the patched value (scan.py's reset scan; a rerun of the loop for sLSTM), so outputs before t are
unchanged and outputs from t on change. The true states are C e^m, n e^m: patch C, n and m together
when taking states from another run (m alone only changes the representation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from workbench.architectures.components import tanh_ratio
from workbench.architectures.recurrence import (
    any_hooked,
    hooked_recurrence,
    identity_hooks,
    patchable_scan,
    patched_running_max,
    running_max,
    shift_in,
)
from workbench.architectures.scan import hook_patch_mask

__all__ = ["MLSTMCell", "SLSTMCell", "mlstm_parallel", "mlstm_recurrent", "mlstm_scan"]


def _safe_denominator(overlap: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """max(|n^T q|, e^{-m}), floored at the smallest normal number (see the module docstring)."""
    return torch.maximum(overlap.abs(), torch.exp(-m)).clamp_min(torch.finfo(overlap.dtype).tiny)


def _mlstm_empty(q: torch.Tensor, d_v: int) -> tuple:
    batch, _, heads, d_k = q.shape
    m0 = q.new_full((batch, heads), float("-inf"))
    return q.new_zeros(batch, heads, d_v, d_k), q.new_zeros(batch, heads, d_k), m0


MLSTM_HOOKS = ("q_gate", "k_gate", "v", "i_gate", "f_gate", "m", "C", "n", "norm_scale", "h")


class MLSTMCell(nn.Module):
    """q, k, v [B, T, H, d], i~, f~ [B, T, H] -> h~ [B, T, H, d] and the state (C, n, m) after T.

    With a hook attached to any of its hook points the cell runs :func:`mlstm_scan`, where every hook
    acts; with none it runs :func:`mlstm_parallel`, the same function (tests) at a fraction of the cost
    (no C per position: [B, H, T, T] instead of [B, T, H, d, d]).
    """

    def __init__(self):
        super().__init__()
        for name in MLSTM_HOOKS:
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, q, k, v, i_pre, f_pre, state: tuple | None = None):
        if any_hooked(getattr(self, f"hook_{name}") for name in MLSTM_HOOKS):
            return mlstm_scan(q, k, v, i_pre, f_pre, state, hooks=self)
        return mlstm_parallel(q, k, v, i_pre, f_pre, state)


def mlstm_scan(q, k, v, i_pre, f_pre, state: tuple | None = None, hooks=None):
    """The scan form, C per position (module docstring); ``hooks``: an object with the ``hook_*`` points
    of MLSTM_HOOKS (the cell), or None. Returns h~ and the state (C, n, m) after the last token."""
    hooks = hooks if hooks is not None else identity_hooks(MLSTM_HOOKS)
    C0, n0, m0 = state if state is not None else _mlstm_empty(q, v.shape[-1])
    q = hooks.hook_q_gate(q)
    k = hooks.hook_k_gate(k / math.sqrt(k.shape[-1]))
    v = hooks.hook_v(v)
    log_f = F.logsigmoid(f_pre)
    m = running_max(log_f.detach(), i_pre.detach(), m0)
    hooked, mask = hook_patch_mask(hooks.hook_m, m)
    m = patched_running_max(log_f.detach(), i_pre.detach(), m0, hooked, mask).detach()
    f_gate = hooks.hook_f_gate(torch.exp(log_f + shift_in(m, m0) - m))
    i_gate = hooks.hook_i_gate(torch.exp(i_pre - m))
    write = (i_gate[..., None, None] * v.unsqueeze(-1)) * k.unsqueeze(-2)  # i' v k^T [B, T, H, dv, dk]
    C = patchable_scan(hooks.hook_C, f_gate[..., None, None], write, C0)
    n = patchable_scan(hooks.hook_n, f_gate.unsqueeze(-1), i_gate.unsqueeze(-1) * k, n0)
    scale = hooks.hook_norm_scale(_safe_denominator((n * q).sum(-1, keepdim=True), m.unsqueeze(-1)))
    h = hooks.hook_h(torch.einsum("bthvk,bthk->bthv", C, q) / scale)
    return h, (C[:, -1], n[:, -1], m[:, -1])


def mlstm_parallel(q, k, v, i_pre, f_pre, state: tuple | None = None):
    """The stabilised parallel form (module docstring), continuing from ``state`` (C0, n0, m0): the
    carried state enters as one more term with log-weight sum_{l<=t} log f_l + m0. Returns h~ and the
    state after the last token."""
    C0, n0, m0 = state if state is not None else _mlstm_empty(q, v.shape[-1])
    q, k, v = (x.transpose(1, 2) for x in (q, k / math.sqrt(k.shape[-1]), v))  # [B, H, T, d]
    log_f, i_pre = F.logsigmoid(f_pre).transpose(1, 2), i_pre.transpose(1, 2)  # [B, H, T]
    steps = q.shape[2]
    cum = torch.cumsum(log_f, dim=-1)
    causal = torch.ones(steps, steps, dtype=torch.bool, device=q.device).tril()
    log_d = (cum.unsqueeze(-1) - cum.unsqueeze(-2) + i_pre.unsqueeze(-2)).masked_fill(~causal, float("-inf"))
    log_carried = cum + m0.unsqueeze(-1)  # [B, H, T]
    m = torch.maximum(log_d.amax(-1), log_carried).detach()
    decay, carried = torch.exp(log_d - m.unsqueeze(-1)), torch.exp(log_carried - m)
    weights = (q @ k.transpose(-1, -2)) * decay  # [B, H, t, j]
    num = weights @ v + carried.unsqueeze(-1) * torch.einsum("bhvk,bhtk->bhtv", C0, q)
    overlap = weights.sum(-1) + carried * torch.einsum("bhk,bhtk->bht", n0, q)
    h = num / _safe_denominator(overlap, m).unsqueeze(-1)
    last = decay[:, :, -1]  # the last row gives the final state
    C_T = torch.einsum("bhj,bhjv,bhjk->bhvk", last, v, k) + carried[..., -1, None, None] * C0
    n_T = torch.einsum("bhj,bhjk->bhk", last, k) + carried[..., -1, None] * n0
    return h.transpose(1, 2), (C_T, n_T, m[..., -1])


def mlstm_recurrent(q, k, v, i_pre, f_pre, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
    """One step at a time (the reference's stabilised step, from m = -inf): the test reference."""
    C, n, m = state if state is not None else _mlstm_empty(q, v.shape[-1])
    k = k / math.sqrt(k.shape[-1])
    outputs = []
    for t in range(q.shape[1]):
        log_f = F.logsigmoid(f_pre[:, t])
        m_new = torch.maximum(log_f + m, i_pre[:, t])
        f_gate, i_gate = torch.exp(log_f + m - m_new), torch.exp(i_pre[:, t] - m_new)
        write = v[:, t].unsqueeze(-1) * k[:, t].unsqueeze(-2)  # v k^T
        C = f_gate[..., None, None] * C + i_gate[..., None, None] * write
        n = f_gate[..., None] * n + i_gate[..., None] * k[:, t]
        m = m_new
        scale = _safe_denominator((n * q[:, t]).sum(-1, keepdim=True), m.unsqueeze(-1))
        outputs.append(torch.einsum("bhvk,bhk->bhv", C, q[:, t]) / scale)
    return torch.stack(outputs, dim=1), (C, n, m)


SLSTM_GATES = ("i_gate", "f_gate", "z_gate", "o_gate", "norm_scale")
SLSTM_STATES = ("m", "c", "n", "h")


class SLSTMCell(nn.Module):
    """Pre-activations W x [B, T, 4, H, d] (i, f, z, o) -> h [B, T, H, d] and the state (c, n, m, h)."""

    def __init__(self, d_model: int, n_heads: int, layer: int, n_layers: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"sLSTM width d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        # Block-diagonal recurrence: head h's gates read only head h's h_{t-1}. Zero at the start, as
        # the reference's default ("recurrent_weight_init: zeros").
        self.R = nn.Parameter(torch.zeros(n_heads, self.d_head, 4 * self.d_head))
        self.bias = nn.Parameter(self._reference_bias(layer, n_layers))
        for name in SLSTM_GATES + SLSTM_STATES:
            setattr(self, f"hook_{name}", HookPoint())

    def _reference_bias(self, layer: int, n_layers: int) -> torch.Tensor:
        """The reference's "powerlaw_blockdependent" forget-gate bias, 0 for i, z, o: per head channel j,
        -(-5 + 12 (j/(d-1))^(0.3 + 1.3 r)), r = layer/(L-1), so forget rates spread, more with depth."""
        bias = torch.zeros(4, self.n_heads, self.d_head)
        ratio = layer / (n_layers - 1) if n_layers > 1 else 0.0
        ramp = torch.arange(self.d_head, dtype=torch.float32) / max(self.d_head - 1, 1)
        bias[1] = 5.0 - 12.0 * ramp ** (0.3 + 1.3 * ratio)
        return bias

    def empty_state(self, wx: torch.Tensor) -> tuple:
        zeros = wx.new_zeros(wx.shape[0], self.n_heads, self.d_head)
        return zeros, zeros, torch.full_like(zeros, float("-inf")), zeros

    def _step(self, wx: torch.Tensor):
        def step(t, carry, fixed, substitute):
            c, n, m, h = carry
            recurrent = torch.einsum("bhd,hde->bhe", h, self.R).unflatten(-1, (4, self.d_head))
            recurrent = recurrent.transpose(1, 2)  # [B, 4, H, d] as wx[:, t]
            i_pre, f_pre, z_pre, o_pre = (wx[:, t] + recurrent + self.bias).unbind(1)
            log_f = F.logsigmoid(f_pre)
            m_new = substitute("m", torch.maximum(i_pre, log_f + m).detach())
            gate = fixed if fixed is not None else {
                "i_gate": torch.exp(i_pre - m_new), "f_gate": torch.exp(log_f + m - m_new),
                "z_gate": tanh_ratio(z_pre), "o_gate": torch.sigmoid(o_pre)}
            c_new = substitute("c", gate["f_gate"] * c + gate["i_gate"] * (z_pre * gate["z_gate"]))
            n_new = substitute("n", gate["f_gate"] * n + gate["i_gate"])
            scale = n_new if fixed is None else fixed["norm_scale"]
            h_new = substitute("h", gate["o_gate"] * c_new / scale)
            record = {**{name: gate[name] for name in SLSTM_GATES[:-1]}, "norm_scale": scale,
                      "m": m_new, "c": c_new, "n": n_new, "h": h_new}
            return (c_new, n_new, m_new, h_new), record
        return step

    def forward(self, wx: torch.Tensor, state: tuple | None = None):
        carry = state if state is not None else self.empty_state(wx)
        run = hooked_recurrence(self._step(wx), wx.shape[1], carry,
                                {name: getattr(self, f"hook_{name}") for name in SLSTM_GATES},
                                {name: getattr(self, f"hook_{name}") for name in SLSTM_STATES})
        return run["h"], tuple(run[name][:, -1] for name in ("c", "n", "m", "h"))
