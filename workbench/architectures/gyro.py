"""Gyro: a causal language model whose residual stream lives in the Poincare ball (curvature -c).

The maths is :mod:`workbench.gyro`. Per position, with ``(+)`` Mobius addition and exp_0 / log_0 the maps
at the origin:

1. Embedding: ``e = W_E[token]`` (``+ W_pos[position]`` with ``rotary`` off) in the tangent space at 0
   (``hook_embed_tangent``), taken into the ball: ``x_0 = exp_0(e)`` (``hook_embed``).
2. Attention (the mixer), reading the tangent value ``u = log_0(x)`` (``hook_mixer_in_tangent``):
   ``n = RMSNorm(u)``; queries and keys ``W_q n``, ``W_k n`` (rotary positions by default) score as in a
   transformer (causal softmax, ``hook_pattern``); each head's value is the Mobius matrix-vector product ``v = exp_0(W_v n)``, a point
   of the head's ball; head h at t aggregates its values by the weighted gyro-midpoint
   ``m_t = 1/2 (x) (sum_s a_ts lambda_s v_s / sum_s a_ts (lambda_s - 1))`` (``hook_midpoint``); the
   heads' ``log_0(m)`` are concatenated and projected, ``W_o``, to the mixer's tangent output
   (``hook_mixer_out_tangent``), whose ``exp_0`` is ``hook_mixer_out``.
3. Residual update by Mobius addition: ``resid_mid = resid_pre (+) mixer_out``.
4. MLP in the tangent space: ``mlp_out = exp_0(MLP(RMSNorm(log_0(resid_mid))))``;
   ``resid_post = resid_mid (+) mlp_out``.
5. Unembedding from the tangent space: ``logits = W_U RMSNorm(log_0(x_L))``.

Hooks. The shared names carry ball values, except ``hook_final``: it carries what the unembedding
reads (the normalised tangent vector, as the transformer's ``hook_final`` is the normalised residual),
so the attribution graph's logit targets (``W_U . hook_final``) are the model's logits. Tangent values
sit under ``*_tangent`` names: ``hook_embed_tangent``, ``blocks.{l}.hook_{resid_pre, mixer_in,
mixer_out, resid_mid, mlp_in, mlp_out, resid_post}_tangent``. Those of the mixer and the MLP are on the
computation path; the residual ones are views: patching one replaces the ball value at the patched
positions by ``exp_0`` of the patched tangent (others stay bit-identical), and a backward hook there
sees dL/du (scan.py's ``hook_patch_mask`` / ``patch_values``).

Gate form, exactly. Every factor that depends on the data is a scalar per position (per head) behind a
hook: the log_0 / exp_0 factors (``*.hook_gate``, the ball projection folded in), the RMSNorm scales
(``hook_scale``), the attention pattern, the values' conformal factors ``lambda`` (``hook_conformal_gate``),
the midpoint's denominator (``hook_midpoint_scale``), the ``1/2 (x)`` factor (``hook_half_gate``) and the
two Mobius-addition coefficients of each residual update ``x (+) y = a x + b y`` (``hook_lhs_gate``,
``hook_rhs_gate``). Frozen, every map between residual points is affine, so the graph sum identity
holds and graphs are not marked approximate (``linearization_note`` is None).

Parameters are Euclidean (tangent-space matrices and vectors); no parameter lives on the ball, so the
shared trainer's Adam is used, not geoopt's Riemannian optimiser (which only differs for manifold
parameters). Carried state per block: the keys (tangent, rotated) and values (ball points) seen so far;
the position of the next token is the cache's length.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformer_lens.hook_points import HookedRootModule, HookPoint

from workbench import gyro
from workbench.architectures.components import BLOCK_DEFAULTS, MLP, ArchConfig, Norm, run_blocks
from workbench.architectures.hooked import BLOCK_HOOKS, SharedHookNames
from workbench.architectures.scan import hook_patch_mask, patch_values

# rotary: positions enter queries and keys by rotation (RoFormer) instead of a learned table added to the
# embedding; recall needs relative offsets (a value sits two tokens after its key).
DEFAULTS = {**BLOCK_DEFAULTS, "n_heads": 4, "curvature": 1.0, "rotary": True}
RESIDUAL_VIEWS = ("resid_pre", "resid_mid", "resid_post")


class ToBall(nn.Module):
    """``exp_0(v) = g v``, g (with the projection onto the clamped ball) behind ``hook_gate``."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c
        self.hook_gate = HookPoint()

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        gate = gyro.expmap0_gate(v, self.c)
        gate = gate * gyro.project_factor(gate * v, self.c)
        return self.hook_gate(gate) * v


class ToTangent(nn.Module):
    """``log_0(x) = g x``, g behind ``hook_gate``."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c
        self.hook_gate = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_gate(gyro.logmap0_gate(x, self.c)) * x


class MobiusResidual(nn.Module):
    """``x (+) y = a x + b y`` (projected), the coefficients behind ``hook_lhs_gate`` / ``hook_rhs_gate``."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c
        self.hook_lhs_gate, self.hook_rhs_gate = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, b = gyro.mobius_add_coefficients(x, y, self.c)
        keep = gyro.project_factor(a * x + b * y, self.c)
        return self.hook_lhs_gate(a * keep) * x + self.hook_rhs_gate(b * keep) * y


def tangent_view(x: torch.Tensor, hook: HookPoint, c: float) -> torch.Tensor:
    """``x`` (ball), its ``log_0`` shown to ``hook``; where the hook changed a position, ``exp_0`` of the
    patched tangent replaces it (module docstring, "Hooks")."""
    if not (hook._forward_hooks or hook._backward_hooks):
        return x
    hooked, mask = hook_patch_mask(hook, gyro.logmap0(x, c))
    if mask is None:
        return x
    return patch_values(x, gyro.expmap0(hooked, c), mask.any(-1, keepdim=True).expand_as(x))


class GyroAttention(nn.Module):
    """Causal attention whose heads aggregate ball-valued values by the weighted gyro-midpoint
    (module docstring, step 2). Tangent input ``[B, T, d]`` -> tangent output ``[B, T, d]``."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"gyro d_model {cfg.d_model} is not divisible by n_heads {cfg.n_heads}")
        self.c, self.n_heads, self.d_head = cfg.curvature, cfg.n_heads, cfg.d_model // cfg.n_heads
        self.rotary = cfg.get("rotary", True)
        self.ln = Norm(cfg.d_model, cfg.get("norm", "rms"))
        self.W_q, self.W_k, self.W_v = (nn.Linear(cfg.d_model, cfg.d_model, bias=False) for _ in range(3))
        self.W_o = nn.Linear(cfg.d_model, cfg.d_model)
        self.value_to_ball, self.head_to_tangent = ToBall(self.c), ToTangent(self.c)
        self.hook_pattern = HookPoint()  # [B, H, T_query, T_key]
        self.hook_conformal_gate = HookPoint()  # lambda of each value [B, T_key, H, 1]
        self.hook_midpoint_scale = HookPoint()  # sum_s a_ts (lambda_s - 1) [B, T, H, 1]
        self.hook_half_gate = HookPoint()  # the 1/2 (x) factor [B, T, H, 1]
        self.hook_midpoint = HookPoint()  # each head's gyro-midpoint, a ball point [B, T, H, d_head]

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], self.n_heads, self.d_head)

    def rotate(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rotary positions on ``[B, T, H, d_head]`` queries or keys at positions start.. (half-split pairs)."""
        if not self.rotary:
            return x
        half = self.d_head // 2
        freqs = 10000.0 ** (-torch.arange(half, dtype=x.dtype, device=x.device) / half)
        angles = torch.arange(start, start + x.shape[1], dtype=x.dtype, device=x.device)[:, None] * freqs
        cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # [T, 1, half]
        x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], -1)

    def forward(self, u: torch.Tensor, state: tuple | None = None):
        n = self.ln(u)
        start = 0 if state is None else state[0].shape[1]
        q, k = self.rotate(self.heads(self.W_q(n)), start), self.rotate(self.heads(self.W_k(n)), start)
        v = self.value_to_ball(self.heads(self.W_v(n)))  # the Mobius matvec W_v (x) exp_0(n), per head
        if state is not None:
            k, v = torch.cat([state[0], k], 1), torch.cat([state[1], v], 1)
        t_new, t_all = q.shape[1], k.shape[1]
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(self.d_head)
        future = torch.ones(t_new, t_all, dtype=torch.bool, device=u.device).triu(t_all - t_new + 1)
        pattern = self.hook_pattern(scores.masked_fill(future, float("-inf")).softmax(-1))
        lam = self.hook_conformal_gate(gyro.conformal_factor(v, self.c))
        numerator = torch.einsum("bhts,bshd->bthd", pattern, lam * v)
        denominator = self.hook_midpoint_scale(torch.einsum("bhts,bsh->bth", pattern, lam[..., 0] - 1)[..., None])
        klein = numerator / denominator
        keep = gyro.project_factor(klein, self.c)  # rounding past the Klein boundary stays finite
        half = self.hook_half_gate(gyro.scalar_mul_gate(0.5, klein * keep, self.c) * keep)
        midpoint = self.hook_midpoint(half * klein)
        out = self.W_o(self.head_to_tangent(midpoint).flatten(-2))
        return out, (k, v)


class GyroBlock(nn.Module):
    """Shared hook names on ball values, ``*_tangent`` hooks on tangent values (module docstring)."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        c = self.c = cfg.curvature
        self.attn = GyroAttention(cfg)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.get("act_fn", "gelu"))
        self.ln2 = Norm(cfg.d_model, cfg.get("norm", "rms"))
        self.mixer_log, self.mixer_exp, self.mlp_log, self.mlp_exp = ToTangent(c), ToBall(c), ToTangent(c), ToBall(c)
        self.mixer_add, self.mlp_add = MobiusResidual(c), MobiusResidual(c)
        for name in BLOCK_HOOKS:
            setattr(self, f"hook_{name}", HookPoint())
            setattr(self, f"hook_{name}_tangent", HookPoint())

    @property
    def mixer(self) -> nn.Module:
        return self.attn

    def forward(self, x: torch.Tensor, state: tuple | None = None):
        resid_pre = tangent_view(self.hook_resid_pre(x), self.hook_resid_pre_tangent, self.c)
        mixer_in = self.hook_mixer_in(resid_pre)
        mixed, new_state = self.attn(self.hook_mixer_in_tangent(self.mixer_log(mixer_in)), state)
        mixer_out = self.hook_mixer_out(self.mixer_exp(self.hook_mixer_out_tangent(mixed)))
        resid_mid = self.hook_resid_mid(self.mixer_add(resid_pre, mixer_out))
        resid_mid = tangent_view(resid_mid, self.hook_resid_mid_tangent, self.c)
        mlp_in = self.hook_mlp_in(resid_mid)
        hidden = self.mlp(self.ln2(self.hook_mlp_in_tangent(self.mlp_log(mlp_in))))
        mlp_out = self.hook_mlp_out(self.mlp_exp(self.hook_mlp_out_tangent(hidden)))
        resid_post = self.hook_resid_post(self.mlp_add(resid_mid, mlp_out))
        return tangent_view(resid_post, self.hook_resid_post_tangent, self.c), new_state


class GyroLM(SharedHookNames, HookedRootModule):
    """Embedding into the ball, gyro blocks, unembedding from the tangent space (module docstring).

    ``forward(tokens)`` returns logits; ``forward(tokens, state=s, return_state=True)`` continues from
    the carried per-block caches and returns ``(logits, new_state)``, as every architecture's does.
    """

    linearization_note = None  # exact gate form: graphs of this model are not approximate

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        self.c = gyro.check_curvature(cfg.curvature)
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = None if cfg.get("rotary", True) else nn.Embedding(cfg.n_ctx, cfg.d_model)
        # tangent vectors of norm about 0.5: inside the ball, away from both the flat centre and the edge
        for table in (self.embed, self.pos_embed):
            if table is not None:
                nn.init.normal_(table.weight, std=0.5 / math.sqrt(cfg.d_model))
        self.embed_to_ball, self.final_log = ToBall(self.c), ToTangent(self.c)
        self.hook_embed_tangent, self.hook_embed = HookPoint(), HookPoint()
        self.blocks = nn.ModuleList(GyroBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = Norm(cfg.d_model, cfg.get("norm", "rms"))
        self.hook_final = HookPoint()
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        self._shrink_updates()
        self.setup()
        self.register_hook_aliases({})

    @torch.no_grad()
    def _shrink_updates(self) -> None:
        """Start every update near the origin. With nn.Linear's default scale the values and each
        sublayer's output reach tanh(2-3) of the radius, and the stream sits at the float32 clamp
        (0.996 of the radius) by layer 1, where Mobius addition barely moves it and the projection
        erases what it carries; a 2-layer recall model stayed on the copy-a-value plateau so."""
        for block in self.blocks:
            block.attn.W_v.weight.mul_(0.25)
            for out in (block.attn.W_o, block.mlp.W_out):
                out.weight.mul_(0.1)
                out.bias.zero_()

    def forward(self, tokens: torch.Tensor, state: list | None = None, return_state: bool = False):
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be int64 [batch, pos]; got {tuple(tokens.shape)} {tokens.dtype}")
        start = 0 if state is None else state[0][0].shape[1]
        # rotary positions have no table, so only learned ones bound the length (recall sweeps go past n_ctx)
        if self.pos_embed is not None and start + tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"gyro model has n_ctx {self.cfg.n_ctx}; got {start} carried + "
                             f"{tokens.shape[1]} new positions")
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        e = self.embed(tokens) if self.pos_embed is None else self.embed(tokens) + self.pos_embed(positions)
        e = self.hook_embed_tangent(e)
        x, new_states = run_blocks(self.blocks, self.hook_embed(self.embed_to_ball(e)), state)
        logits = self.unembed(self.hook_final(self.ln_final(self.final_log(x))))
        return (logits, new_states) if return_state else logits


def build(config: dict) -> GyroLM:
    return GyroLM(ArchConfig(config))
