"""minGRU ("Were RNNs All We Needed?", Feng et al. 2024) as a mixer in the shared block.

    z_t  = sigmoid(W_z x_t + b_z)              behind mixer.hook_z_gate     [B, T, d_hidden]
    h~_t = W_h x_t + b_h
    h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t    behind mixer.hook_state      [B, T, d_hidden]
    y_t  = W_o h_t                             (only when d_hidden = expand * d_model != d_model)

z and h~ read x_t only, never h_{t-1}, so the recurrence is linear with decay a = 1 - z and input
b = z h~, computed for all positions at once by :func:`~workbench.architectures.scan.linear_scan`.

Choices where the paper leaves one:
- h~ = W_h x, no g(x). The paper's g (x + 0.5 for x >= 0, sigmoid(x) below) exists only to keep h~
  positive for its log-space scan; our associative scan needs no positivity (scan.py says why), and
  leaving h~ affine keeps the cell in gate form: with z frozen, x -> h is affine.
- Both projections carry biases (the paper's Linear); h_0 = 0 at the start of a sequence.
- An MLP sub-block after the mixer (BlockLM's default). The paper's minGRU layer is only the
  recurrence; we add the position-wise MLP because transcoders replace a position-wise map
  (hook_mlp_in -> hook_mlp_out), and a model without one would give attribution graphs nothing to
  decompose into features. It also matches the other architectures' blocks, so comparisons differ in
  the mixer alone.

Option ``conv_kernel`` (default 0, none): a short causal convolution in front of the cell
(components.ShortConv, issue #16's recall sweep); the carried state is then ``(conv window, h)``.

Carried state: the last h, ``[B, d_hidden]``. Patching ``mixer.hook_state`` at position t replaces h_t
and every later state follows from it (scan.py, "Patchable states"), so outputs before t are unchanged;
a backward hook there sees the total derivative dL/dh_t (scan.py, "Gradients at a state hook").
"""

from __future__ import annotations

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from workbench.architectures.components import BLOCK_DEFAULTS, ArchConfig, BlockLM, ShortConv
from workbench.architectures.scan import patchable_linear_scan

DEFAULTS = {
    **BLOCK_DEFAULTS,
    "expand": 1,  # d_hidden = expand * d_model
    "conv_kernel": 0,  # a short causal conv before the cell; 0: none
}


class MinGRUMixer(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        d_hidden = int(cfg.expand * cfg.d_model)
        self.W_z = nn.Linear(cfg.d_model, d_hidden)
        self.W_h = nn.Linear(cfg.d_model, d_hidden)
        self.W_o = nn.Linear(d_hidden, cfg.d_model, bias=False) if d_hidden != cfg.d_model else nn.Identity()
        self.hook_z_gate = HookPoint()
        self.hook_state = HookPoint()
        self.short_conv = ShortConv(cfg.d_model, cfg.get("conv_kernel", 0))

    def forward(self, x: torch.Tensor, state=None):
        x, window, state = self.short_conv.split(x, state)
        z = self.hook_z_gate(torch.sigmoid(self.W_z(x)))
        decay, inp = 1 - z, z * self.W_h(x)
        states = patchable_linear_scan(self.hook_state, decay, inp, state)
        return self.W_o(states), self.short_conv.pack(window, states[:, -1])

    def forward_sequential(self, x: torch.Tensor, state=None):
        """The cell one step at a time, without hooks: the reference the parallel form is tested against."""
        x, window, state = self.short_conv.split(x, state)
        z, candidate = torch.sigmoid(self.W_z(x)), self.W_h(x)
        h = state if state is not None else x.new_zeros(x.shape[0], z.shape[-1])
        outputs = []
        for t in range(x.shape[1]):
            h = (1 - z[:, t]) * h + z[:, t] * candidate[:, t]
            outputs.append(h)
        return self.W_o(torch.stack(outputs, dim=1)), self.short_conv.pack(window, h)


def build(config: dict) -> BlockLM:
    return BlockLM(ArchConfig(config), make_mixer=lambda cfg, _layer: MinGRUMixer(cfg))
