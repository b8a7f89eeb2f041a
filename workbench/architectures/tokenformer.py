"""TokenFormer ("Rethinking Transformer Scaling with Tokenized Model Parameters", Wang et al. 2024).

Every linear projection of a Transformer block becomes *Pattention*: the input attends to ``n``
learnable parameter tokens (keys ``K_P [n, d_in]``, values ``V_P [n, d_out]``) instead of multiplying a
weight matrix. Algorithm of one Pattention, ``x [..., d_in] -> y [..., d_out]``, in gate form:

1. Scores ``s = x K_P^T`` ``[..., n]``, behind ``hook_scores`` (which parameter tokens the input hits).
2. The paper's normalisation (its "l2_norm_gelu"): ``u = s * tau / ||s||_2``, ``tau = sqrt(n)``. The
   data-dependent denominator ``||s||_2 / tau`` sits behind ``hook_score_scale`` ``[..., 1]``.
3. The nonlinearity as value x gate: ``w = u * g(u)`` (GeLU: ``g = Phi``, the normal CDF; ReLU: the
   step; SiLU: the sigmoid), ``g`` behind ``hook_act_gate``; ``w`` behind ``hook_weights`` (how strongly
   each parameter token fires).
4. ``y = w V_P``. With the scale and the gate frozen, x -> y is linear (DESIGN.md, gate form).

``tau`` is a buffer (``score_scale``), saved with the weights: :func:`workbench.architectures.growth.grow`
appends zero-keyed parameter tokens and, to preserve the function, keeps ``tau`` at its old value.

The block (``Block``/``BlockLM`` of components.py, pre-norm, LayerNorm by default as the paper):
- ``attn``: Q, K, V from three Pattentions, rotary positions (GPT-NeoX's rotate-half, as the paper's
  code base), causal softmax attention between tokens (``hook_attn_scores``, ``hook_pattern``), heads
  merged (``hook_heads [B, T, H, d_head]``), output Pattention. Not ``hook_z``: the intervention tools
  treat ``attn.hook_z`` as heads whose shares of the output add up (``z_h W_O[h]``), and a Pattention
  output map is not linear in ``z``, so heads here are no additive components; ablate or patch a head
  as a slice of ``hook_heads``, or the whole attention at ``hook_mixer_out``.
- ``ffn``: one Pattention with ``d_mlp`` parameter tokens (``d_model -> d_model``): what transcoders
  replace, ``hook_mlp_in -> hook_mlp_out``.

Carried state: per block the rotated keys and values of every position so far (a KV cache,
``([B, past, H, d_head], [B, past, H, d_head])``); the rotary offset is ``past``. Running a sequence in
pieces, each continuing from the state the previous piece returned, equals running it whole.

Config: ``n_param_tokens`` parameter tokens per attention Pattention (Q, K, V, output), ``d_mlp`` for
the FFN's; ``grown`` lists per layer how many tokens growth appended to each of that layer's
Pattentions (empty: none), so a grown model's folder rebuilds with the right shapes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from workbench.architectures.components import BLOCK_DEFAULTS, ArchConfig, BlockLM

DEFAULTS = {
    **BLOCK_DEFAULTS,
    "norm": "layer",
    "n_heads": 4,
    "n_param_tokens": 64,  # per attention Pattention (Q, K, V, output); the FFN's count is d_mlp
    "grown": [],  # per layer: parameter tokens appended by growth to each of its Pattentions
}
ROTARY_BASE = 10000.0
SCORE_EPS = 1e-12  # keeps ||s|| > 0 for an all-zero input; zero scores of grown tokens add nothing to it


def _gate(u: torch.Tensor, act: str) -> torch.Tensor:
    """``g(u)`` with ``act(u) = u * g(u)``."""
    if act == "gelu":
        return 0.5 * (1.0 + torch.erf(u / math.sqrt(2.0)))
    if act == "relu":
        return (u > 0).to(u.dtype)
    if act == "silu":
        return torch.sigmoid(u)
    raise ValueError(f"unknown activation {act!r}; choose one of: gelu, relu, silu")


class Pattention(nn.Module):
    """Token-parameter attention ``x [..., d_in] -> y [..., d_out]`` (module docstring, steps 1-4)."""

    def __init__(self, d_in: int, d_out: int, n_tokens: int, act: str = "gelu", init_std: float = 0.02):
        super().__init__()
        _gate(torch.zeros(1), act)  # unknown activation: fail at build time
        self.act = act
        self.key_tokens = nn.Parameter(torch.randn(n_tokens, d_in) * init_std)
        self.value_tokens = nn.Parameter(torch.randn(n_tokens, d_out) * init_std)
        self.register_buffer("score_scale", torch.tensor(math.sqrt(n_tokens)))  # tau
        self.hook_scores = HookPoint()  # [..., n]
        self.hook_score_scale = HookPoint()  # [..., 1]
        self.hook_act_gate = HookPoint()  # [..., n]
        self.hook_weights = HookPoint()  # [..., n]

    @property
    def n_tokens(self) -> int:
        return self.key_tokens.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.hook_scores(x @ self.key_tokens.T)
        norm = (scores.pow(2).sum(-1, keepdim=True) + SCORE_EPS).sqrt()
        u = scores / self.hook_score_scale(norm / self.score_scale.to(scores.dtype))
        weights = self.hook_weights(u * self.hook_act_gate(_gate(u, self.act)))
        return weights @ self.value_tokens


def rotate(x: torch.Tensor, offset: int) -> torch.Tensor:
    """Rotary positions (rotate-half) on ``x [B, T, H, d_head]`` at positions ``offset .. offset+T-1``."""
    half = x.shape[-1] // 2
    inv_freq = ROTARY_BASE ** (-torch.arange(half, dtype=torch.float64, device=x.device) / half)
    angles = torch.arange(offset, offset + x.shape[1], dtype=torch.float64, device=x.device)[:, None] * inv_freq
    cos, sin = (f(angles).to(x.dtype)[None, :, None, :] for f in (torch.cos, torch.sin))
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class PattentionAttention(nn.Module):
    """Causal multi-head attention between tokens whose Q, K, V and output maps are Pattentions."""

    def __init__(self, cfg: ArchConfig, layer: int):
        super().__init__()
        d, heads = cfg.d_model, cfg.n_heads
        if d % heads or (d // heads) % 2:
            raise ValueError(f"tokenformer needs d_model={d} divisible by n_heads={heads} into an even "
                             "head width (rotary positions rotate pairs of channels)")
        self.n_heads, self.d_head = heads, d // heads
        n = cfg.n_param_tokens + grown_at(cfg, layer)
        for name in ("q", "k", "v", "o"):
            self.add_module(f"{name}_pattention", Pattention(d, d, n, cfg.get("act_fn", "gelu")))
        for name in ("q", "k", "v", "attn_scores", "pattern", "heads"):
            setattr(self, f"hook_{name}", HookPoint())

    def _heads(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(*y.shape[:2], self.n_heads, self.d_head)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        past = 0 if state is None else state[0].shape[1]
        q = rotate(self.hook_q(self._heads(self.q_pattention(x))), past)
        k = rotate(self.hook_k(self._heads(self.k_pattention(x))), past)
        v = self.hook_v(self._heads(self.v_pattention(x)))
        if state is not None:
            k, v = torch.cat([state[0], k], dim=1), torch.cat([state[1], v], dim=1)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
        n_q, n_k = q.shape[1], k.shape[1]
        future = torch.ones(n_q, n_k, dtype=torch.bool, device=x.device).triu(n_k - n_q + 1)
        scores = self.hook_attn_scores(scores.masked_fill(future, float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = self.hook_heads(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        return self.o_pattention(z.reshape(*z.shape[:2], -1)), (k, v)


def grown_at(cfg: ArchConfig, layer: int) -> int:
    grown = cfg.get("grown") or []
    if grown and len(grown) != cfg.n_layers:
        raise ValueError(f"tokenformer config: grown lists {len(grown)} layers, the model has {cfg.n_layers}")
    return int(grown[layer]) if grown else 0


def pattentions(model: BlockLM, layer: int) -> dict[str, Pattention]:
    """Block ``layer``'s Pattentions by their names under the block (``attn.q_pattention``, ``ffn``)."""
    return {name: module for name, module in model.blocks[layer].named_modules() if isinstance(module, Pattention)}


def build(config: dict) -> BlockLM:
    def make_ffn(cfg: ArchConfig, layer: int) -> Pattention:
        return Pattention(cfg.d_model, cfg.d_model, cfg.d_mlp + grown_at(cfg, layer), cfg.get("act_fn", "gelu"))

    return BlockLM(ArchConfig(config), make_mixer=lambda cfg, layer: PattentionAttention(cfg, layer),
                   make_mlp=make_ffn, mixer_name="attn", mlp_name="ffn")
