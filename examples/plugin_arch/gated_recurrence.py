"""A tiny example plug-in architecture: a gated linear recurrence, written in gate form.

Per block (the mixer; the block around it, its norms, MLP and shared hooks come from ``BlockLM``)::

    f_t = sigmoid(W_f x_t + b_f)             behind mixer.hook_f_gate   how much of h_{t-1} to keep
    h_t = f_t * h_{t-1} + (1 - f_t) * W_v x_t  behind mixer.hook_state    the recurrent state
    o_t = sigmoid(W_o x_t + b_o)             behind mixer.hook_o_gate   an output gate
    y_t = W_out (o_t * h_t)

Gate form: the only data-dependent factors (f, o) sit behind ``hook_*_gate`` hooks, so with them
frozen x -> y is linear, and the workbench's attribution graphs are exact. Causal: f, o and W_v x read
x_t only, and h_t reads h_{t-1}. Carried state: the last h, which ``BlockLM`` threads through
``forward(tokens, state=..., return_state=True)``. State patching: ``patchable_linear_scan`` makes a
patch of ``hook_state`` at t carry into every later state.

Bring it in with ``wb arch check examples/plugin_arch/gated_recurrence.py`` (it registers itself on
import), or from a package through an entry point (docs/architectures.md).
"""

from __future__ import annotations

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from workbench.architectures import register_architecture
from workbench.architectures.components import BLOCK_DEFAULTS, ArchConfig, BlockLM
from workbench.architectures.scan import patchable_linear_scan

NAME = "gated_recurrence"
DEFAULTS = {**BLOCK_DEFAULTS, "d_hidden": 64}  # every field build() reads besides d_vocab, n_ctx, seed
TINY_CONFIG = {"d_hidden": 16}  # what `wb arch check` sets on top of the shrunk defaults


class GatedRecurrence(nn.Module):
    """The mixer: ``x [B, T, d_model]`` and a state ``[B, d_hidden]`` (None: start) -> ``(y, last h)``."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.W_f = nn.Linear(cfg.d_model, cfg.d_hidden)
        self.W_v = nn.Linear(cfg.d_model, cfg.d_hidden, bias=False)
        self.W_o = nn.Linear(cfg.d_model, cfg.d_hidden)
        self.W_out = nn.Linear(cfg.d_hidden, cfg.d_model, bias=False)
        self.hook_f_gate, self.hook_o_gate, self.hook_state = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        f = self.hook_f_gate(torch.sigmoid(self.W_f(x)))
        states = patchable_linear_scan(self.hook_state, f, (1 - f) * self.W_v(x), state)
        o = self.hook_o_gate(torch.sigmoid(self.W_o(x)))
        return self.W_out(o * states), states[:, -1]


def build(config: dict) -> BlockLM:
    return BlockLM(ArchConfig(config), make_mixer=lambda cfg, _layer: GatedRecurrence(cfg))


# replace=True: importing the module again (a notebook reload) swaps in the new builder
register_architecture(NAME, build, DEFAULTS, replace=True)
