"""xLSTM blocks and the xLSTM[a:b] language model on the shared block (cells: xlstm_cells.py).

Each xLSTM block is, in the paper, a residual block with its own projections; it maps onto the shared
skeleton as mixer = the cell with its projections (``blocks.l.mixer``, hooks ``mixer.cell.hook_*``) and
MLP-like part = the block's feed-forward (``blocks.l.mlp``). Which layers are sLSTM is ``slstm_at``
(layer indices; the rest are mLSTM). The paper's xLSTM[a:b] counts mLSTM:sLSTM blocks, so
``n_layers: 8, slstm_at: [3]`` is an xLSTM[7:1] stack, ``slstm_at: []`` is xLSTM[1:0], and the default
``n_layers: 2, slstm_at: [1]`` is xLSTM[1:1].

mLSTM block ("pre up-projection", reference ``mLSTMLayer``), mixer for input x [B, T, d]:

    [x_m, z] = W_up x                              inner width e = proj_factor * d (2), no bias
    x_c = conv(x_m) * sigmoid(conv(x_m))           causal depthwise conv (conv_kernel 4), swish in gate
                                                   form: sigmoid behind mixer.hook_conv_gate
    q, k = W_q x_c, W_k x_c;  v = W_v x_m          block-diagonal ("headwise") with blocks of qkv_blocksize
    i~, f~ = W_i [q, k, v] + b_i, W_f [q, k, v] + b_f   one scalar per head
    h~ = mLSTM(q, k, v, i~, f~)                    mixer.cell (xlstm_cells.py)
    y = W_down((GroupNorm(h~) + skip * x_c) * silu(z))  learnable skip; silu(z), the output gate, behind
                                                   mixer.hook_o_gate
MLP-like part: the standard MLP (BlockLM's default, width d_mlp). The paper's mLSTM block has no
feed-forward (its up/down projections play that part); we add one because transcoders replace a
position-wise map hook_mlp_in -> hook_mlp_out, and the mLSTM block has none to replace.

sLSTM block ("post up-projection", reference ``sLSTMLayer`` + gated FFN), mixer:

    x_c = conv(x) * sigmoid(conv(x))               feeds i and f only; sigmoid behind mixer.hook_conv_gate
    W x = [W_i x_c, W_f x_c, W_z x, W_o x]         block-diagonal per head, no bias (the cell has it);
                                                   passed as four parts, unstacked (xlstm_cells.py,
                                                   fixed-gate sLSTM: a frozen backward reads W_z x only)
    y = GroupNorm(sLSTM(W x))                      mixer.cell (xlstm_cells.py); per-head norm
MLP-like part: the gated feed-forward W_down(gelu(W_g x) * W_u x), width ffn_proj_factor * d (1.3, as
the reference); gelu(W_g x) behind mlp.hook_act_gate, so the FFN too is in gate form.

Initialisation as the reference's ``reset_parameters`` (xlstm package, mLSTMLayer / sLSTMLayer /
GatedFeedForward), checked against it on the same shapes in tests/test_recall_grid.py:
- "small init" N(0, std sqrt(2 / (5 d))) with d = d_model (the embedding width, NOT the fan-in: the
  reference says "use the embedding dim instead of the inner embedding dim") for the headwise q, k, v
  projections, the sLSTM gate projections W_i, W_f, W_z, W_o, the mLSTM up-projection and the gated
  FFN's up-projection. (Until issue #16 the headwise blocks used their own fan-in, 4.8x too large for
  mLSTM q/k/v at d_model 96 with blocks of 4, 2x for the sLSTM gates with 4 heads.)
- "Wang init" N(0, std 2 / (n_layers sqrt(d))) for the mLSTM down-projection and the gated FFN's
  down-projection (residual branches shrink with depth).
- mLSTM i/f gate weights 0, forget bias linspace(3, 6) over heads, input bias N(0, 0.1); sLSTM biases
  and recurrent matrices in xlstm_cells.py; learnable skip 1; the conv PyTorch's default (as the
  reference). The MLP added to mLSTM blocks is the shared MLP (BlockLM's init, as every architecture),
  and so are the embedding and unembedding: comparisons across architectures differ in the blocks only.
- ``init: "legacy"`` keeps the scheme before issue #16 (headwise blocks N(0, 2 / (5 block fan-in)),
  PyTorch's default for the up/down projections), so that zoo entries trained with it rebuild to their
  cards' numbers.

Norms: LayerNorm pre-norms and per-head GroupNorms (Norm with groups; the reference's have no bias,
ours start at 0). Block widths are not rounded up to multiples
of 64 as in the reference (that only serves GPU kernels).

Carried state per block: mLSTM ``(conv window, (C, n, m))``; sLSTM ``(conv window, (c, n, m, h))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from workbench.architectures.components import MLP, ArchConfig, BlockLM, CausalConv1d, Norm, silu_gate_form
from workbench.architectures.xlstm_cells import MLSTMCell, SLSTMCell

DEFAULTS = {
    "n_layers": 2,
    "d_model": 64,
    "n_heads": 4,
    "slstm_at": [1],  # sLSTM layers; the others are mLSTM
    "proj_factor": 2.0,  # mLSTM up-projection
    "conv_kernel": 4,
    "qkv_blocksize": 4,
    "d_mlp": 256,  # the MLP added to mLSTM blocks
    "ffn_proj_factor": 1.3,  # the sLSTM block's gated FFN
    "act_fn": "gelu",
    "norm": "layer",
    "init": "reference",  # or "legacy" (module docstring)
}


def small_init_(weight: torch.Tensor, d_model: int) -> torch.Tensor:
    """The reference's small init: N(0, std sqrt(2 / (5 d_model))) (Nguyen & Salazar 2019)."""
    with torch.no_grad():
        return weight.normal_(0.0, math.sqrt(2 / (5 * d_model)))


def wang_init_(weight: torch.Tensor, d_model: int, n_layers: int) -> torch.Tensor:
    """The reference's Wang init for residual outputs: N(0, std 2 / (n_layers sqrt(d_model)))."""
    with torch.no_grad():
        return weight.normal_(0.0, 2 / n_layers / math.sqrt(d_model))


def reference_init(cfg: ArchConfig) -> bool:
    """The reference's initialisation (``init: "reference"``), or the pre-issue-#16 one (``"legacy"``)."""
    return cfg.get("init", "reference") == "reference"


class HeadwiseLinear(nn.Module):
    """Block-diagonal linear map: ``n_blocks`` independent square blocks (reference LinearHeadwiseExpand),
    small-initialised with the model width ``d_model`` (module docstring); ``None``: with the block's own
    fan-in (the legacy init)."""

    def __init__(self, width: int, n_blocks: int, d_model: int | None):
        super().__init__()
        if width % n_blocks:
            raise ValueError(f"width {width} is not divisible into {n_blocks} blocks")
        size = width // n_blocks
        self.weight = nn.Parameter(small_init_(torch.empty(n_blocks, size, size), d_model or size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = x.unflatten(-1, (self.weight.shape[0], -1))
        return torch.einsum("...hi,hoi->...ho", blocks, self.weight).flatten(-2)


class GatedFFN(nn.Module):
    """``W_down(act(W_g x) * W_u x)``, act(W_g x) behind ``hook_act_gate`` (reference GatedFeedForward)."""

    def __init__(self, d_model: int, proj_factor: float, act: str = "gelu", n_layers: int = 1,
                 reference: bool = True):
        super().__init__()
        acts = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}
        if act not in acts:
            raise ValueError(f"unknown activation {act!r}; choose one of: {', '.join(acts)}")
        self.act, width = acts[act], round(proj_factor * d_model)
        self.proj_up = nn.Linear(d_model, 2 * width, bias=False)
        self.proj_down = nn.Linear(width, d_model, bias=False)
        if reference:
            small_init_(self.proj_up.weight, d_model)
            wang_init_(self.proj_down.weight, d_model, n_layers)
        for name in ("pre", "act_gate", "up", "post"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_pre, up = self.proj_up(x).chunk(2, dim=-1)
        gate = self.hook_act_gate(self.act(self.hook_pre(gate_pre)))
        return self.proj_down(self.hook_post(gate * self.hook_up(up)))


class MLSTMLayer(nn.Module):
    """The mLSTM block's mixer (module docstring)."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        inner, heads = round(cfg.proj_factor * cfg.d_model), cfg.n_heads
        if inner % heads or inner % cfg.qkv_blocksize:
            raise ValueError(f"mLSTM inner width {inner} (proj_factor * d_model) must be divisible by "
                             f"n_heads={heads} and qkv_blocksize={cfg.qkv_blocksize}")
        self.heads = heads
        self.proj_up = nn.Linear(cfg.d_model, 2 * inner, bias=False)
        self.conv = CausalConv1d(inner, cfg.conv_kernel)
        blocks = inner // cfg.qkv_blocksize
        self.reference_init = reference_init(cfg)
        init_dim = cfg.d_model if self.reference_init else None
        self.q_proj, self.k_proj, self.v_proj = (HeadwiseLinear(inner, blocks, init_dim) for _ in range(3))
        if self.reference_init:
            small_init_(self.proj_up.weight, cfg.d_model)
        self.igate, self.fgate = nn.Linear(3 * inner, heads), nn.Linear(3 * inner, heads)
        with torch.no_grad():
            for gate in (self.igate, self.fgate):
                gate.weight.zero_()
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, heads))
            self.igate.bias.normal_(0.0, 0.1)
        self.cell = MLSTMCell()
        self.outnorm = Norm(inner, "layer", groups=heads)
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, cfg.d_model, bias=False)
        if self.reference_init:
            wang_init_(self.proj_down.weight, cfg.d_model, cfg.n_layers)
        self.hook_conv_gate, self.hook_o_gate = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, state: tuple | None = None):
        window, cell_state = state if state is not None else (None, None)
        x_m, z = self.proj_up(x).chunk(2, dim=-1)
        conv, window = self.conv(x_m, window)
        x_c = silu_gate_form(conv, self.hook_conv_gate)
        q, k, v = self.q_proj(x_c), self.k_proj(x_c), self.v_proj(x_m)
        gate_in = torch.cat([q, k, v], dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)) for t in (q, k, v))
        h, cell_state = self.cell(q, k, v, self.igate(gate_in), self.fgate(gate_in), cell_state)
        h = self.outnorm(h.flatten(-2)) + self.learnable_skip * x_c
        return self.proj_down(h * self.hook_o_gate(F.silu(z))), (window, cell_state)


class SLSTMLayer(nn.Module):
    """The sLSTM block's mixer (module docstring)."""

    def __init__(self, cfg: ArchConfig, layer: int):
        super().__init__()
        d, heads = cfg.d_model, cfg.n_heads
        self.conv = CausalConv1d(d, cfg.conv_kernel)
        init_dim = d if reference_init(cfg) else None
        self.W_i, self.W_f, self.W_z, self.W_o = (HeadwiseLinear(d, heads, init_dim) for _ in range(4))
        self.cell = SLSTMCell(d, heads, layer, cfg.n_layers)
        self.group_norm = Norm(d, "layer", groups=heads)
        self.hook_conv_gate = HookPoint()

    def forward(self, x: torch.Tensor, state: tuple | None = None):
        window, cell_state = state if state is not None else (None, None)
        conv, window = self.conv(x, window)
        x_c = silu_gate_form(conv, self.hook_conv_gate)
        parts = (self.W_i(x_c), self.W_f(x_c), self.W_z(x), self.W_o(x))
        h, cell_state = self.cell(tuple(p.unflatten(-1, (self.cell.n_heads, -1)) for p in parts), cell_state)
        return self.group_norm(h.flatten(-2)), (window, cell_state)


def slstm_layers(cfg: ArchConfig) -> set[int]:
    at = cfg.slstm_at
    valid = isinstance(at, list | tuple) and all(isinstance(i, int) and 0 <= i < cfg.n_layers for i in at)
    if not valid:
        raise ValueError(f"slstm_at={at!r} must list layer indices in 0..{cfg.n_layers - 1} "
                         f"(the sLSTM blocks; the others are mLSTM)")
    return set(at)


def build(config: dict) -> BlockLM:
    cfg = ArchConfig({**DEFAULTS, **config})
    slstm = slstm_layers(cfg)

    def make_mixer(c: ArchConfig, layer: int) -> nn.Module:
        return SLSTMLayer(c, layer) if layer in slstm else MLSTMLayer(c)

    def make_mlp(c: ArchConfig, layer: int) -> nn.Module:
        if layer in slstm:
            return GatedFFN(c.d_model, c.ffn_proj_factor, c.act_fn, c.n_layers, reference_init(c))
        return MLP(c.d_model, c.d_mlp, c.act_fn)

    return BlockLM(cfg, make_mixer, make_mlp)
