"""Mamba (Gu & Dao 2023): the selective state-space mixer, in gate form.

Per layer, with d_inner = expand * d_model, N = d_state, R = dt_rank (names as in the reference
implementation, mamba_simple.py / selective_scan_ref):

    [x, z] = in_proj(u)                          (no bias)
    x      = conv(x)                             depthwise causal, width d_conv, with bias
    x      = x * sigmoid(x)                      sigmoid: mixer.hook_conv_gate       [B, T, d_inner]
    dt     = softplus(dt_proj(x_proj_dt(x)))     mixer.ssm.hook_dt_gate              [B, T, d_inner]
    B, C   = x_proj_B(x), x_proj_C(x)            mixer.ssm.hook_B_gate, hook_C_gate  [B, T, N]
    A      = -exp(A_log)                         [d_inner, N]; S4D-real init A[d, n] = -(n + 1)
    decay  = exp(dt A)            (ZOH for A)    mixer.ssm.hook_decay_gate           [B, T, d_inner, N]
    h_t    = decay_t h_{t-1} + (dt_t x_t) B_t    mixer.ssm.hook_state                [B, T, d_inner, N]
    y_t    = h_t C_t + D x_t                     (sum over N; D a learned skip, init 1)
    out    = out_proj(y * silu(z))               silu(z): mixer.hook_out_gate        (no bias)

Choices, as the reference implementation makes them: B is discretised as dt * B (Euler), not with the
exact ZOH (dt A)^{-1}(exp(dt A) - 1) dt B; dt_rank = ceil(d_model / 16) when "auto"; dt_proj's weight
uniform in +-dt_rank^-0.5 and its bias the inverse softplus of dt drawn log-uniformly in [0.001, 0.1]
(floored at 1e-4), so the initial time steps span two decades; D = 1; no biases on in/out/x
projections, a bias on the conv. ``A_log`` and ``D`` carry ``_no_weight_decay`` as in the reference
(a trainer that honours it keeps weight decay from pulling the decay rates toward A = -1).

Gate form: every data-dependent factor is hooked (conv gate, dt, B, C, decay, out gate). Frozen, the
map u -> out is linear: x is linear in u, the SSM input (dt x) B is linear in x for fixed dt and B, the
scan is linear for a fixed decay, h C + D x is linear for fixed C, and y * silu(z) is linear in y for a
fixed silu(z). (z itself then no longer matters: silu(z) is the whole factor.)

Parallel form: :func:`~workbench.architectures.scan.linear_scan` over ``[B, T, d_inner, N]``;
:meth:`MambaMixer.forward_sequential` is the one-token-at-a-time recurrence (the reference's ``step``),
which the tests hold equal to it.

State patching propagates: patching ``mixer.ssm.hook_state`` at position t replaces h_t, and the
states after t are recomputed from it (scan.py, "Patchable states"), so outputs at t and later change
and outputs before t do not. dt, B, C and the decay do not depend on h, so the continuation is exact.
A backward hook there sees the total derivative dL/dh_t (scan.py, "Gradients at a state hook").

Carried state: ``(conv window [B, d_conv - 1, d_inner], h [B, d_inner, N])``.

An MLP sub-block follows the mixer (BlockLM's default). The Mamba block has none (its gated in/out
projections play that part); we add one because transcoders replace a position-wise map
(hook_mlp_in -> hook_mlp_out), and so that every architecture's blocks differ in the mixer alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from workbench.architectures.components import (
    BLOCK_DEFAULTS,
    ArchConfig,
    BlockLM,
    CausalConv1d,
    silu_gate_form,
)
from workbench.architectures.scan import patchable_linear_scan

DEFAULTS = {
    **BLOCK_DEFAULTS,
    "expand": 2,  # d_inner = expand * d_model
    "d_state": 16,  # N
    "d_conv": 4,
    "dt_rank": "auto",  # ceil(d_model / 16)
}

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4  # the reference implementation's dt initialisation


class SelectiveSSM(nn.Module):
    """x [B, T, d_inner] -> y [B, T, d_inner] through the selective scan (module docstring)."""

    def __init__(self, d_inner: int, d_state: int, dt_rank: int):
        super().__init__()
        self.dt_rank, self.d_state = dt_rank, d_state
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -dt_rank**-0.5, dt_rank**-0.5)
            log_dt = torch.rand(d_inner) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)
            dt = log_dt.exp().clamp(min=DT_FLOOR)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        s4d_real = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # A = -(1..N)
        self.A_log = nn.Parameter(torch.log(s4d_real))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        for name in ("dt", "B", "C", "decay"):
            setattr(self, f"hook_{name}_gate", HookPoint())
        self.hook_state = HookPoint()

    def selection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input-dependent dt [.., d_inner], B [.., N], C [.., N] (no hooks)."""
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt_low)), B, C

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None):
        dt, B, C = self.selection(x)
        dt, B, C = self.hook_dt_gate(dt), self.hook_B_gate(B), self.hook_C_gate(C)
        decay = self.hook_decay_gate(torch.exp(dt.unsqueeze(-1) * -torch.exp(self.A_log)))
        inp = (dt * x).unsqueeze(-1) * B.unsqueeze(2)  # [B, T, d_inner, N]
        states = patchable_linear_scan(self.hook_state, decay, inp, h0)
        y = (states * C.unsqueeze(2)).sum(-1) + self.D * x
        return y, states[:, -1]


class MambaMixer(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        d_inner = int(cfg.expand * cfg.d_model)
        dt_rank = math.ceil(cfg.d_model / 16) if cfg.dt_rank == "auto" else int(cfg.dt_rank)
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=False)
        self.conv = CausalConv1d(d_inner, cfg.d_conv)
        self.ssm = SelectiveSSM(d_inner, cfg.d_state, dt_rank)
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)
        self.hook_conv_gate = HookPoint()
        self.hook_out_gate = HookPoint()

    def forward(self, u: torch.Tensor, state: tuple | None = None):
        window, h0 = state if state is not None else (None, None)
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, window = self.conv(x, window)
        y, h_last = self.ssm(silu_gate_form(x, self.hook_conv_gate), h0)
        return self.out_proj(y * self.hook_out_gate(F.silu(z))), (window, h_last)

    def forward_sequential(self, u: torch.Tensor, state: tuple | None = None):
        """One token at a time, as the reference's ``step`` (no scan, no hooks): the test reference."""
        x_all, z_all = self.in_proj(u).chunk(2, dim=-1)
        batch, d_inner = u.shape[0], x_all.shape[-1]
        width, ssm = self.conv.width, self.ssm
        window = u.new_zeros(batch, width - 1, d_inner) if state is None else state[0]
        h = u.new_zeros(batch, d_inner, ssm.d_state) if state is None else state[1]
        kernel = self.conv.conv.weight[:, 0, :].T  # [width, d_inner]
        A = -torch.exp(ssm.A_log)
        outputs = []
        for t in range(u.shape[1]):
            taps = torch.cat([window, x_all[:, t:t + 1]], dim=1)  # the last `width` inputs
            window = taps[:, 1:]
            x = F.silu((taps * kernel).sum(1) + self.conv.conv.bias)
            dt, B, C = ssm.selection(x)
            h = torch.exp(dt.unsqueeze(-1) * A) * h + (dt * x).unsqueeze(-1) * B.unsqueeze(1)
            y = (h * C.unsqueeze(1)).sum(-1) + ssm.D * x
            outputs.append(self.out_proj(y * F.silu(z_all[:, t])))
        return torch.stack(outputs, dim=1), (window, h)


def build(config: dict) -> BlockLM:
    return BlockLM(ArchConfig(config), make_mixer=lambda cfg, _layer: MambaMixer(cfg))
