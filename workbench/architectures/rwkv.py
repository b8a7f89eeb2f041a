"""RWKV-4 ("RWKV: Reinventing RNNs for the Transformer Era", Peng et al. 2023) on the shared block.

A layer is a time-mix (the mixer) then a channel-mix (the MLP-like part), each pre-LayerNorm with a
residual around it. Both read the token shift ``x_{t-1}`` of their normalised input (0 before the first
token), mixed per projection: ``x~_P = mu_P * x_t + (1 - mu_P) * x_{t-1}`` with its own learned mu.

Time-mix (``blocks.l.time_mix``):

    r, k, v = W_r x~_r, W_k x~_k, W_v x~_v                 hook_r, hook_k, hook_v     [B, T, d]
    w = -exp(time_decay) < 0, u = time_first             hook_decay (w)             [d]
    wkv = WKV(w, u, k, v)                                hook_wkv, states and gates: wkv.py
    out = W_o(sigmoid(r) * wkv)                          sigmoid(r) behind hook_r_gate

Channel-mix (``blocks.l.channel_mix``):

    k = W_k x~_k,  r = W_r x~_r                          hook_k, hook_r
    out = sigmoid(r) * W_v(k * relu(k))                  relu(k) behind hook_k_gate (so relu(k)^2 is
                                                         value k x gate relu(k)), sigmoid(r) behind
                                                         hook_r_gate, k * relu(k) at hook_hidden

Gate form: frozen gates (r_gate, the WKV gates and scale, k_gate) leave both parts affine in their
inputs (wkv.py for the WKV; the channel-mix is then W_v(k * g) scaled by a fixed r gate).

What ``hook_mlp_in`` carries. The channel-mix reads x_t and x_{t-1}, so it is not a function of
position t's normalised residual alone, and a transcoder trained on ``ln2(resid_mid)`` could not
replace it. The token shift is a fixed reindexing with no parameters, so the block does it *before*
``hook_mlp_in`` (components.Block's stateful-MLP protocol): ``hook_mlp_in`` is ``[x_t, x_{t-1}]``, the
concatenation of the normalised input at t and t-1 (width 2 * d_model), and the channel-mix proper
(mu mixing included, as it is linear in that pair) is a position-wise map hook_mlp_in -> hook_mlp_out
that a transcoder can replace exactly. The time-mix is the mixer and reads ``hook_mixer_in`` (width
d_model) with its shift inside.

Carried state per block: ``((x_last, p, q, o), x_last)`` for (time-mix, channel-mix), each [B, d].

Option ``conv_kernel`` (default 0, none; not in RWKV): a short causal convolution in front of the
time-mix (components.ShortConv, issue #16's recall sweep: Zoology gives every recurrent mixer one).
The token shift then reads the convolved input, and the time-mix state is ``(conv window, (x_last, p,
q, o))``. The channel-mix is unchanged.

Initialisation as the reference (RWKV-LM, RWKV-v4neo/src/model.py), with r0 = l/(L-1) (0 for L = 1)
and r1 = 1 - l/L for layer l of L, and ddd_i = i/d:
- time_decay_h = -5 + 8 (h/(d-1))^(0.7 + 1.3 r0): per-channel decays spread from slow to fast, the
  spread growing with depth; time_first = log(0.3) + 0.5 * ((i+1) mod 3 - 1) (the "zigzag");
- time-mix mu_k = ddd^r1, mu_v = ddd^r1 + 0.3 r0, mu_r = ddd^(r1/2); channel-mix mu_k = mu_r = ddd^r1.
Differences: the linear layers keep PyTorch's default initialisation (the reference zero-initialises
the key, receptance and output projections, so that an untrained model's blocks are the identity; here
an untrained model must compute something for the structural tests); no LayerNorm on the embeddings
(the reference's ``ln0``, needed there because its embeddings are initialised at +-1e-4; BlockLM's are
N(0, 0.02)); the head is BlockLM's unembedding after the final norm, as in the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from workbench.architectures.components import ArchConfig, BlockLM, ShortConv
from workbench.architectures.wkv import WKV_HOOKS, wkv_parallel

DEFAULTS = {
    "n_layers": 2,
    "d_model": 64,
    "d_mlp": 256,  # the channel-mix hidden width (the reference's dim_ffn = 4 * n_embd)
    "norm": "layer",
    "conv_kernel": 0,  # a short causal conv before the time-mix; 0: none (RWKV as published)
}


def token_shift(x: torch.Tensor, last: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_{t-1}`` for every t (``last``, or 0, before the first) and the new ``last``."""
    first = x.new_zeros(x.shape[0], 1, x.shape[2]) if last is None else last.unsqueeze(1)
    return torch.cat([first, x[:, :-1]], dim=1), x[:, -1]


def shift_mix(x: torch.Tensor, prev: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """``mu * x_t + (1 - mu) * x_{t-1}``: what one projection reads."""
    return mu * x + (1 - mu) * prev


def _layer_ratios(layer: int, n_layers: int) -> tuple[float, float]:
    """The reference's ratio_0_to_1 (guarded for one layer) and ratio_1_to_almost0."""
    return layer / max(n_layers - 1, 1), 1.0 - layer / n_layers


def _channel_ramp(d: int) -> torch.Tensor:
    return torch.arange(d, dtype=torch.float32) / d  # the reference's ddd


class TimeMix(nn.Module):
    """The mixer: token shift, WKV, receptance gate, output projection."""

    def __init__(self, d_model: int, layer: int, n_layers: int, conv_kernel: int = 0):
        super().__init__()
        r0, r1 = _layer_ratios(layer, n_layers)
        ramp, channel = _channel_ramp(d_model), torch.arange(d_model, dtype=torch.float32)
        self.time_decay = nn.Parameter(-5 + 8 * (channel / max(d_model - 1, 1)) ** (0.7 + 1.3 * r0))
        zigzag = ((channel + 1) % 3 - 1) * 0.5
        self.time_first = nn.Parameter(torch.full((d_model,), math.log(0.3)) + zigzag)
        self.mu_k = nn.Parameter(ramp**r1)
        self.mu_v = nn.Parameter(ramp**r1 + 0.3 * r0)
        self.mu_r = nn.Parameter(ramp ** (0.5 * r1))
        self.key, self.value, self.receptance, self.output = (
            nn.Linear(d_model, d_model, bias=False) for _ in range(4))
        for name in ("r", "k", "v", "r_gate", "decay", "wkv", *WKV_HOOKS):
            setattr(self, f"hook_{name}", HookPoint())
        self.short_conv = ShortConv(d_model, conv_kernel)

    def forward(self, x: torch.Tensor, state: tuple | None = None):
        x, window, state = self.short_conv.split(x, state)
        last, wkv_state = (state[0], state[1:]) if state is not None else (None, None)
        prev, last = token_shift(x, last)
        r = self.hook_r(self.receptance(shift_mix(x, prev, self.mu_r)))
        k = self.hook_k(self.key(shift_mix(x, prev, self.mu_k)))
        v = self.hook_v(self.value(shift_mix(x, prev, self.mu_v)))
        w = self.hook_decay(-torch.exp(self.time_decay))
        wkv, wkv_state = wkv_parallel(w, self.time_first, k, v, wkv_state, hooks=self)
        out = self.output(self.hook_r_gate(torch.sigmoid(r)) * self.hook_wkv(wkv))
        return out, self.short_conv.pack(window, (last, *wkv_state))


class ChannelMix(nn.Module):
    """The MLP-like part, position-wise in ``[x_t, x_{t-1}]`` (see the module docstring)."""

    carries_state = True  # components.Block: call read_input(x, state) before hook_mlp_in

    def __init__(self, d_model: int, d_hidden: int, layer: int, n_layers: int):
        super().__init__()
        _, r1 = _layer_ratios(layer, n_layers)
        self.mu_k = nn.Parameter(_channel_ramp(d_model) ** r1)
        self.mu_r = nn.Parameter(_channel_ramp(d_model) ** r1)
        self.key = nn.Linear(d_model, d_hidden, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_hidden, d_model, bias=False)
        for name in ("k", "k_gate", "hidden", "r", "r_gate"):
            setattr(self, f"hook_{name}", HookPoint())

    def read_input(self, x: torch.Tensor, last: torch.Tensor | None = None):
        """``[x_t, x_{t-1}]`` (width 2d) and the new carried ``x_last``."""
        prev, last = token_shift(x, last)
        return torch.cat([x, prev], dim=-1), last

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        x, prev = pair.chunk(2, dim=-1)
        k = self.hook_k(self.key(shift_mix(x, prev, self.mu_k)))
        hidden = self.hook_hidden(k * self.hook_k_gate(F.relu(k)))  # relu(k)^2 in gate form
        r = self.hook_r(self.receptance(shift_mix(x, prev, self.mu_r)))
        return self.hook_r_gate(torch.sigmoid(r)) * self.value(hidden)


def build(config: dict) -> BlockLM:
    cfg = ArchConfig({**DEFAULTS, **config})
    return BlockLM(
        cfg,
        make_mixer=lambda c, layer: TimeMix(c.d_model, layer, c.n_layers, c.get("conv_kernel", 0)),
        make_mlp=lambda c, layer: ChannelMix(c.d_model, c.d_mlp, layer, c.n_layers),
        mixer_name="time_mix",
        mlp_name="channel_mix",
    )
