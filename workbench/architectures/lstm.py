"""The classic LSTM (Hochreiter & Schmidhuber 1997, with forget gate) as a mixer: the baseline.

    [i~, f~, z~, o~] = W x_t + b + R h_{t-1}          (gate order as torch.nn.LSTM: i, f, g, o)
    i, f, o = sigmoid(i~), sigmoid(f~), sigmoid(o~)    behind mixer.hook_i_gate / hook_f_gate / hook_o_gate
    c_t = f * c_{t-1} + i * (z~ * g_z)                 g_z = tanh(z~)/z~ behind mixer.hook_z_gate
    h_t = o * (c_t * g_c)                              g_c = tanh(c_t)/c_t behind mixer.hook_c_gate
    y_t = W_o h_t                                      (only when d_hidden = expand * d_model != d_model)

Option ``conv_kernel`` (default 0, none): a short causal convolution in front of the cell
(components.ShortConv, issue #16's recall sweep); the carried state is then ``(conv window, (h, c))``.

States: ``mixer.hook_state`` is c per position, ``mixer.hook_hidden`` is h per position, both
``[B, T, d_hidden]``; the carried state is ``(h_T, c_T)``.

Gate form, exactly. The two tanh are written as value x gate (:func:`tanh_ratio`), so the five
data-dependent factors are i, f, o, g_z, g_c. Freeze those five and what is left is
    c_t = f_t c_{t-1} + i_t g_z,t (W_z x_t + b_z + R_z h_{t-1}),     h_t = o_t g_c,t c_t,
a linear recurrence in (c, h) driven affinely by x: the hidden-to-hidden matrix R still acts, but
only through the candidate's value z~; its contributions to i~, f~, o~ reach the output only through
the frozen gates. So mixer_in -> mixer_out is affine once the gates are frozen.

How the gate hooks act (recurrence.py's ``hooked_recurrence``, shared with xLSTM's sLSTM). The LSTM
is sequential (the gates at t read h_{t-1}), so gates exist for all positions only after a first pass
over time. The mixer therefore runs the recurrence once with live gates, passes the gates through
their hooks, and, if any gate hook has a hook attached, runs the recurrence again with the hooked
gates fixed at every position and the value path (c, h, z~) live. With nothing attached the first
pass is the answer. So a gate hook fixes gate values: patching i at t changes c_t and everything after
it through the value path, while later gates keep the values hooked.

How state patching propagates. Patching ``hook_state`` (c) or ``hook_hidden`` (h) at position t
reruns the recurrence with the patched elements substituted at their positions: c_t, h_t and every
later position follow from them, gates included (recomputed live from the patched h, unless gate
hooks fix them as above); positions before t are recomputed bit-identically. "Patched" means the
elements a hook changed (scan.py, ``hook_patch_mask``). Hooks on the gates see the first pass's values.
A backward hook on ``hook_state`` / ``hook_hidden`` sees the total derivative dL/dc_t / dL/dh_t, through
every later position (scan.py, "Gradients at a state hook").

Choices: forget-gate bias initialised to 1 (Jozefowicz et al. 2015; torch.nn.LSTM uses 0), weights
uniform in +-1/sqrt(d_hidden) as torch.nn.LSTM; one bias (torch.nn.LSTM's two add up to one). An
MLP sub-block follows the mixer (BlockLM's default): the classic LSTM language model stacks LSTM layers
only; we add it because transcoders replace a position-wise map, and so that every architecture's
blocks differ in the mixer alone. :meth:`LSTMMixer.as_torch_lstm` gives the same cell as
``torch.nn.LSTM``, the reference the tests compare with.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from workbench.architectures.components import BLOCK_DEFAULTS, ArchConfig, BlockLM, ShortConv, tanh_ratio
from workbench.architectures.recurrence import hooked_recurrence

DEFAULTS = {
    **BLOCK_DEFAULTS,
    "expand": 1,  # d_hidden = expand * d_model
    "conv_kernel": 0,  # a short causal conv before the cell; 0: none
}

GATES = ("i", "f", "z", "o", "c")


class LSTMMixer(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.d_hidden = d_hidden = int(cfg.expand * cfg.d_model)
        self.W = nn.Linear(cfg.d_model, 4 * d_hidden)
        self.R = nn.Linear(d_hidden, 4 * d_hidden, bias=False)
        self.W_o = nn.Linear(d_hidden, cfg.d_model, bias=False) if d_hidden != cfg.d_model else nn.Identity()
        bound = 1 / math.sqrt(d_hidden)
        with torch.no_grad():
            for weight in (self.W.weight, self.W.bias, self.R.weight):
                weight.uniform_(-bound, bound)
            self.W.bias[d_hidden:2 * d_hidden] = 1.0  # forget gate open at the start: gradients flow
        for name in GATES:
            setattr(self, f"hook_{name}_gate", HookPoint())
        self.hook_state = HookPoint()  # c per position
        self.hook_hidden = HookPoint()  # h per position
        self.short_conv = ShortConv(cfg.d_model, cfg.get("conv_kernel", 0))

    def _step(self, xw: torch.Tensor):
        """One time step for :func:`hooked_recurrence`: live gates, or the hooked ones when fixed;
        ``substitute`` puts patched state elements in (recurrence.py)."""
        def step(t: int, carry: tuple, fixed: dict | None, substitute):
            h, c = carry
            pre_i, pre_f, pre_z, pre_o = (xw[:, t] + self.R(h)).chunk(4, dim=-1)
            if fixed is None:
                gate = {"i": torch.sigmoid(pre_i), "f": torch.sigmoid(pre_f), "z": tanh_ratio(pre_z),
                        "o": torch.sigmoid(pre_o)}
            else:
                gate = dict(fixed)
            c = substitute("state", gate["f"] * c + gate["i"] * (pre_z * gate["z"]))
            if fixed is None:
                gate["c"] = tanh_ratio(c)
            h = substitute("hidden", gate["o"] * (c * gate["c"]))
            return (h, c), {**gate, "state": c, "hidden": h}
        return step

    def forward(self, x: torch.Tensor, state: tuple | None = None):
        x, window, state = self.short_conv.split(x, state)
        carry = state if state is not None else (x.new_zeros(x.shape[0], self.d_hidden),) * 2
        run = hooked_recurrence(
            self._step(self.W(x)), x.shape[1], carry,
            gate_hooks={name: getattr(self, f"hook_{name}_gate") for name in GATES},
            # c first: a hook on h sees the states that follow from a patched c
            state_hooks={"state": self.hook_state, "hidden": self.hook_hidden},
        )
        return self.W_o(run["hidden"]), self.short_conv.pack(window, (run["hidden"][:, -1], run["state"][:, -1]))

    def as_torch_lstm(self) -> nn.LSTM:
        """The same cell as a ``torch.nn.LSTM`` (batch first), for reference checks."""
        lstm = nn.LSTM(self.W.in_features, self.d_hidden, batch_first=True)
        lstm = lstm.to(dtype=self.W.weight.dtype, device=self.W.weight.device)
        with torch.no_grad():
            lstm.weight_ih_l0.copy_(self.W.weight)
            lstm.weight_hh_l0.copy_(self.R.weight)
            lstm.bias_ih_l0.copy_(self.W.bias)
            lstm.bias_hh_l0.zero_()
        return lstm


def build(config: dict) -> BlockLM:
    return BlockLM(ArchConfig(config), make_mixer=lambda cfg, _layer: LSTMMixer(cfg))
