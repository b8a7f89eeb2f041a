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
  memory [B, H, T, T], about 20x faster than the scan on CPU at the default sizes. It lives in
  workbench/kernels/mlstm.py and runs through the dispatcher (``workbench.kernels.dispatch.mlstm``: chunkwise
  beyond 64 tokens on the CPU, the chunkwise Triton kernel on a GPU, the per-step recurrence under
  ``WORKBENCH_KERNELS=reference``); it materialises no per-step state.
- :func:`mlstm_gated`: the gated form, for frozen gates. Attribution freezes the gate hooks (q, k, i',
  f', normaliser), which in the scan form builds C per position for a batch of 64 copies of the prompt
  and pays for it on every backward pass. This form computes m, i', f' exactly as the scan form does
  and passes q, k, v, i', f', the normaliser and h~ through the same hooks (same values, same shapes,
  so gates recorded in one form replay in the other), then combines them as attention:
  h~_t = sum_{j<=t} [prod_{l=j+1..t} f'_l] i'_j (q_t . k_j) v_j / scale_t, with n_t^T q_t the row sum and
  a carried state (C0, n0, m0) entering with weight prod_{l<=t} f'_l. The products are summed in log
  space from a masked [T, T] matrix (never a difference of cumulative sums: f'_0 = 0 from the empty
  state gives log f' = -inf, which must not meet another -inf; its gradient is taken as 0, not 0 * inf).
  When the hooked q, k, i', f' are one row shared by the batch (frozen gates are expanded views, stride
  0) the [H, T, T] weights, the normaliser folded in, are built once and applied to the whole batch's v
  as one [T, T] @ [T, B d] matmul per head. Measured (1 thread, H = 4, d = 32, frozen gates at batch
  64): backward to v 2.8 ms against the scan's 920 ms at T = 64, 12.5 ms against 4.5 s at T = 256;
  forward 20 ms against 1.7 s at T = 64.
- :func:`mlstm_recurrent`: one step at a time, the reference's step (workbench/kernels/mlstm.py's reference).
:class:`MLSTMCell` runs the scan form when a hook is attached to a state hook point (``hook_m``,
``hook_C``, ``hook_n``: caching or patching the states), the gated form when hooks are attached only
to the others (gates, scale, v, h: freezing, caching the gates) and the parallel form otherwise
(training, plain inference).
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

Fixed-gate sLSTM (:meth:`SLSTMCell._fixed_gates_forward`): when a gate hook is hooked and no state
hook is (freezing), the cell runs the live loop once for the values the gate hooks see, as
hooked_recurrence does, and then, instead of rerunning the full step with the hooked gates fixed,
the recurrence those gates leave: with a = o / scale, b = i' * tanh_ratio, h_t = a_t c_t and

    c_t = c_{t-1} N_t + u_t      N_t = diag(f'_t) + diag(a_{t-1}) R_z diag(b_t)      u_t = b_t (W_z x_t + bias_z)

(row vectors per head; R_z the z block of R). When the gates are one row shared by the batch (frozen,
expanded) the N_t are [H, d, d], built once for all t; the loop keeps one batched matmul-add per step
(one autograd node instead of about fifteen), and only z~'s projection enters the backward pass (the
layer passes the four pre-activation parts unstacked). n and the stabiliser m, which no longer
affect h, follow in parallel (a linear scan; m by the running max of the pre-activations rebuilt
from h). Measured (1 thread, H = 4, d = 16, frozen gates at batch 64): backward to z~ 2.7 ms against
26.5 ms for the hooked recurrence at T = 64, 6.8 ms against 76.5 ms at T = 256; the forward pass,
which still runs the live loop once, 57 ms against 112 ms at T = 64.

Attribution with both paths (``OMP_NUM_THREADS=1 benchmarks/attribution.py --archs xlstm``: xLSTM[1:1]
at the zoo's sizes, batch 64 against one backward pass per row, on a shared 2-core machine whose load
moves single runs by 2x): before, 0.9-3.7x at 16 tokens, 1.2-2.3x at 64 (ours 18 s), 256 did not
finish in 900 s; after, over four runs, 16 tokens 0.11-0.24 s against 0.6-1.1 s (2.9-7.0x, median
about 6x), 64 tokens 0.9-1.4 s against 4.7-7.2 s (4.7-6.1x, and one run at 1.9x beside a job that
saturated the memory bus), 256 tokens 15-18 s against 77-94 s (4.5-5.4x). What is left at batch 64 is
the layers' memory-bound work on [64, T, 128] tensors (causal conv, projections, norms), which grows
with the batch while one row's backward pass stays in cache.

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
from workbench.architectures.gate_form import batch_shared
from workbench.architectures.recurrence import (
    any_hooked,
    hooked_recurrence,
    identity_hooks,
    patchable_scan,
    patched_running_max,
    running_max,
    shift_in,
)
from workbench.architectures.scan import hook_patch_mask, linear_scan
from workbench.kernels import dispatch
from workbench.kernels import mlstm as mlstm_kernels

__all__ = ["MLSTMCell", "SLSTMCell", "mlstm_gated", "mlstm_parallel", "mlstm_recurrent", "mlstm_scan"]


_safe_denominator = mlstm_kernels.safe_denominator  # max(|n^T q|, e^{-m}), floored (module docstring)
_mlstm_empty = mlstm_kernels.empty_state  # C = 0, n = 0, m = -inf


MLSTM_HOOKS = ("q_gate", "k_gate", "v", "i_gate", "f_gate", "m", "C", "n", "norm_scale", "h")
MLSTM_STATES = ("m", "C", "n")  # the hooks only the scan form runs (their patches must carry forward)


class MLSTMCell(nn.Module):
    """q, k, v [B, T, H, d], i~, f~ [B, T, H] -> h~ [B, T, H, d] and the state (C, n, m) after T.

    With a hook attached to a state hook point (m, C, n) the cell runs :func:`mlstm_scan`, where every
    hook acts; with hooks on the others only (gates, scale, v, h: freezing) it runs
    :func:`mlstm_gated`, where those act as in the scan form; with none it runs :func:`mlstm_parallel`.
    All three are the same function (tests); the last two at a fraction of the scan's cost (no C per
    position: [B, H, T, T] instead of [B, T, H, d, d]).
    """

    def __init__(self):
        super().__init__()
        for name in MLSTM_HOOKS:
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, q, k, v, i_pre, f_pre, state: tuple | None = None):
        if any_hooked(getattr(self, f"hook_{name}") for name in MLSTM_STATES):
            return mlstm_scan(q, k, v, i_pre, f_pre, state, hooks=self)
        if any_hooked(getattr(self, f"hook_{name}") for name in MLSTM_HOOKS):
            return mlstm_gated(q, k, v, i_pre, f_pre, state, hooks=self)
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


def _log_gate(f_gate: torch.Tensor) -> torch.Tensor:
    """log f', -inf where f' = 0 (the first position from an empty state), with gradient 0 there
    instead of 0 * inf."""
    positive = f_gate > 0
    return torch.where(positive, torch.log(torch.where(positive, f_gate, torch.ones_like(f_gate))),
                       torch.full_like(f_gate, float("-inf")))


def _segment_sums(x: torch.Tensor) -> torch.Tensor:
    """``[..., T] -> [..., T, T]``: entry (t, j) is sum_{l=j+1..t} x_l for j <= t (0 on the diagonal),
    -inf above it. Summed along t from the masked matrix, never as a difference of cumulative sums, so
    -inf terms stay -inf (no -inf - -inf) and nothing cancels."""
    steps = x.shape[-1]
    below = torch.ones(steps, steps, dtype=torch.bool, device=x.device).tril(-1)
    sums = torch.cumsum(x.unsqueeze(-1).expand(*x.shape, steps).masked_fill(~below, 0.0), dim=-2)
    return sums.masked_fill(~below.logical_or(torch.eye(steps, dtype=torch.bool, device=x.device)),
                            float("-inf"))


def mlstm_gated(q, k, v, i_pre, f_pre, state: tuple | None = None, hooks=None):
    """The gated form (module docstring): the scan form's gates, through the same hooks, combined as
    attention, h~_t = sum_{j<=t} [prod_{l=j+1..t} f'_l] i'_j (q_t . k_j) v_j / scale_t, without C.

    ``hooks``: as :func:`mlstm_scan`'s; ``hook_m``, ``hook_C``, ``hook_n`` are not run (the cell takes
    the scan form when they are hooked). When the hooked q, k, i', f' are one row shared by the batch
    (frozen gates are expanded views, stride 0) the [H, T, T] weights are built once and applied to
    the whole batch's v in one matmul (with the normaliser folded in when it is shared too). Returns
    h~ and the state (C, n, m) after the last token."""
    hooks = hooks if hooks is not None else identity_hooks(MLSTM_HOOKS)
    batch = q.shape[0]
    q = hooks.hook_q_gate(q)
    k = hooks.hook_k_gate(k / math.sqrt(k.shape[-1]))
    v = hooks.hook_v(v)
    log_f = F.logsigmoid(f_pre)
    m0 = state[2] if state is not None else q.new_full((batch, q.shape[2]), float("-inf"))
    m = running_max(log_f.detach(), i_pre.detach(), m0).detach()
    f_gate = hooks.hook_f_gate(torch.exp(log_f + shift_in(m, m0) - m))
    i_gate = hooks.hook_i_gate(torch.exp(i_pre - m))
    gates = (q, k, i_gate, f_gate)
    if all(batch_shared(x) for x in gates):
        gates = tuple(x[:1] for x in gates)
    qh, kh, i_h, log_fh = (x.transpose(1, 2) for x in (*gates[:3], _log_gate(gates[3])))  # [b, H, T(, d)]
    decay = torch.exp(_segment_sums(log_fh)) * i_h.unsqueeze(-2)  # [b, H, t, j]: prod f' * i'_j
    weights = (qh @ kh.transpose(-1, -2)) * decay
    overlap = weights.sum(-1)  # n_t . q_t, [b, H, T]
    vh = v.transpose(1, 2)  # [B, H, T, d_v]
    last = decay[:, :, -1].unsqueeze(-1)  # [b, H, T, 1]: the last row gives the final state
    C_T = (last * vh).transpose(-1, -2) @ kh
    n_T = (last * kh).sum(-2).expand(batch, -1, -1)
    carried_read = None
    if state is not None:  # the carried state's weight at t: prod_{l<=t} f'_l
        C0, n0 = state[0], state[1]
        carried = torch.exp(torch.cumsum(log_fh, dim=-1))  # [b, H, T]
        carried_read = carried.unsqueeze(-1) * torch.einsum("bhvk,bhtk->bhtv", C0, qh)
        overlap = overlap + carried * torch.einsum("bhk,bhtk->bht", n0, qh)
        C_T = C_T + carried[..., -1, None, None] * C0
        n_T = n_T + carried[..., -1, None] * n0
    scale = hooks.hook_norm_scale(_safe_denominator(overlap.transpose(1, 2).unsqueeze(-1), m.unsqueeze(-1)))
    if weights.shape[0] == 1 and batch > 1 and batch_shared(scale):
        # one [T, T] @ [T, B d_v] per head, the normaliser folded into the weights
        heads, steps, d_v = vh.shape[1], vh.shape[2], vh.shape[3]
        flat = vh.permute(1, 2, 0, 3).reshape(heads, steps, batch * d_v)
        h = ((weights[0] / scale[0].transpose(0, 1)) @ flat).reshape(heads, steps, batch, d_v).permute(2, 1, 0, 3)
        if carried_read is not None:
            h = h + carried_read.transpose(1, 2) / scale
    else:
        num = weights @ vh
        num = num if carried_read is None else num + carried_read
        h = num.transpose(1, 2) / scale
    return hooks.hook_h(h), (C_T, n_T, m[:, -1])


def mlstm_parallel(q, k, v, i_pre, f_pre, state: tuple | None = None):
    """The unhooked path (training, plain inference): the dispatcher's mLSTM, continuing from ``state``
    (C0, n0, m0); returns h~ and the state after the last token. On the CPU that is the stabilised
    parallel form of the module docstring, chunked beyond ``TORCH_CHUNK`` tokens (workbench/kernels/mlstm.py);
    on a GPU the chunkwise Triton kernel; with ``WORKBENCH_KERNELS=reference`` the per-step recurrence.
    No per-step state is materialised here: the hooks that need one (``hook_C``, ``hook_n``,
    ``hook_m``) make the cell take :func:`mlstm_scan` instead."""
    return dispatch.mlstm(q, k, v, i_pre, f_pre, state)


mlstm_recurrent = mlstm_kernels.mlstm_reference  # one step at a time (from m = -inf): the test reference


SLSTM_GATES = ("i_gate", "f_gate", "z_gate", "o_gate", "norm_scale")
SLSTM_STATES = ("m", "c", "n", "h")


class SLSTMCell(nn.Module):
    """Pre-activations W x [B, T, 4, H, d] (i, f, z, o; or the four parts [B, T, H, d]) -> h [B, T, H, d]
    and the state (c, n, m, h)."""

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
        wx_t = wx.unbind(1)  # one backward node for all steps (wx[:, t] would fill a zero wx per step)

        def step(t, carry, fixed, substitute):
            c, n, m, h = carry
            recurrent = torch.einsum("bhd,hde->bhe", h, self.R).unflatten(-1, (4, self.d_head))
            recurrent = recurrent.transpose(1, 2)  # [B, 4, H, d] as wx[:, t]
            i_pre, f_pre, z_pre, o_pre = (wx_t[t] + recurrent + self.bias).unbind(1)
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

    def forward(self, wx: torch.Tensor | tuple, state: tuple | None = None):
        """``wx``: the pre-activations [B, T, 4, H, d], or their four parts (i, f, z, o) [B, T, H, d]
        (what the layer passes, so that a backward pass through the fixed-gate path, which reads only
        z, does not run the other three projections' backward on zeros)."""
        parts = tuple(wx) if isinstance(wx, tuple | list) else None
        stacked = torch.stack(parts, dim=2) if parts is not None else wx
        carry = state if state is not None else self.empty_state(stacked)
        gate_hooks = {name: getattr(self, f"hook_{name}") for name in SLSTM_GATES}
        state_hooks = {name: getattr(self, f"hook_{name}") for name in SLSTM_STATES}
        if any_hooked(gate_hooks.values()) and not any_hooked(state_hooks.values()):
            return self._fixed_gates_forward(stacked, carry, gate_hooks, parts)
        run = hooked_recurrence(self._step(stacked), stacked.shape[1], carry, gate_hooks, state_hooks)
        return run["h"], tuple(run[name][:, -1] for name in ("c", "n", "m", "h"))

    def _fixed_gates_forward(self, wx: torch.Tensor, carry: tuple, gate_hooks: dict, parts: tuple | None = None):
        """:func:`~recurrence.hooked_recurrence` when a gate hook is hooked and no state hook is (module
        docstring, "fixed-gate sLSTM"): the live loop gives the values the gate hooks see; with the
        hooked gates fixed, c follows c_t = c_{t-1} N_t + u_t (row vectors, per head), N_t = diag(f'_t)
        + diag(a_{t-1}) R_z diag(b_t), a = o / scale, b = i' * tanh_ratio, u_t = b_t (W_z x_t + bias_z),
        a linear recurrence whose matrices N_t, when the gates are one row shared by the batch (frozen,
        expanded), are [H, d, d] and built once: one batched matmul per step is all the loop keeps."""
        steps, d = wx.shape[1], self.d_head
        step, live, state = self._step(wx), {name: [] for name in gate_hooks}, carry
        for t in range(steps):
            state, record = step(t, state, None, lambda name, value: value)
            for name in gate_hooks:
                live[name].append(record[name])
        gates = {name: hook(torch.stack(live[name], dim=1)) for name, hook in gate_hooks.items()}
        c0, n0, m0, h0 = carry
        i_gate, f_gate, z_gate, o_gate, scale = (gates[name] for name in SLSTM_GATES)  # [B, T, H, d]
        batch = wx.shape[0]
        shared = all(batch_shared(g) for g in gates.values())
        if shared:
            i_gate, f_gate, z_gate, o_gate, scale = (g[:1] for g in (i_gate, f_gate, z_gate, o_gate, scale))
        a, b = o_gate / scale, i_gate * z_gate  # h_t = a_t c_t; c_t gains b_t z~_t
        R_z = self.R[:, :, 2 * d:3 * d]  # [H, d_in, d_out]: z~ reads h_{t-1} R_z
        u = b * ((parts[2] if parts is not None else wx[:, :, 2]) + self.bias[2])  # [B, T, H, d]
        u0 = u[:, 0] + b[:, 0] * torch.einsum("bhd,hde->bhe", h0, R_z) + f_gate[:, 0] * c0  # c_0
        # N_t for t >= 1: [b, T - 1, H, d, d]
        N = torch.diag_embed(f_gate[:, 1:]) + a[:, :-1].unsqueeze(-1) * R_z * b[:, 1:].unsqueeze(-2)
        if shared:  # states [H, B, d], N_t [H, d, d]
            rows = batch
            N_t = N[0].unbind(0)
            u_t = u.permute(1, 2, 0, 3).unbind(0)  # per t [H, B, d]
            c = u0.transpose(0, 1)
        else:  # states [B H, 1, d], N_t [B H, d, d]
            groups, rows = batch * N.shape[2], 1
            N_t = N.expand(batch, *N.shape[1:]).transpose(0, 1).reshape(steps - 1, groups, d, d).unbind(0)
            u_t = u.transpose(0, 1).reshape(steps, groups, 1, d).unbind(0)
            c = u0.reshape(groups, 1, d)
        cs = [c]
        for t in range(1, steps):
            c = torch.baddbmm(u_t[t], c, N_t[t - 1])
            cs.append(c)
        c = torch.stack(cs, dim=0).reshape(steps, -1, rows, d)  # [T, H or B H, B or 1, d]
        c = c.permute(2, 0, 1, 3) if shared else c.reshape(steps, batch, -1, d).transpose(0, 1)
        h = a * c  # [B, T, H, d]
        n = linear_scan(f_gate.expand(batch, -1, -1, -1), i_gate.expand(batch, -1, -1, -1), n0)
        with torch.no_grad():  # the stabiliser of the live pre-activations (it leaves h unchanged)
            h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)
            R_if = self.R[:, :, :2 * d].unflatten(-1, (2, d))
            pre = wx[:, :, :2] + torch.einsum("bthd,hdge->btghe", h_prev, R_if) + self.bias[:2]
            m = running_max(F.logsigmoid(pre[:, :, 1]), pre[:, :, 0], m0)
        return h, (c[:, -1], n[:, -1], m[:, -1], h[:, -1])
