"""Shared pieces of every non-Transformer architecture, written once in gate form.

- :class:`ArchConfig`: attribute access to a JSON config (``model.cfg.n_layers`` as on transformer_lens).
- :class:`Norm`: RMSNorm or LayerNorm whose denominator sits behind ``hook_scale``.
- :class:`MLP`: the position-wise part transcoders replace (``hook_pre``, ``hook_post``).
- :class:`Block`: pre-norm mixer then pre-norm MLP, residual around each, with the shared hook names.
- :class:`BlockLM`: embedding, blocks, final norm, unembedding; carries recurrent state per block.

An architecture module supplies only its mixer (and, where its design has one, its own MLP-like part):
``BlockLM(cfg, make_mixer=lambda cfg, layer: MyMixer(cfg))``. A mixer maps ``x [B, T, d]`` and an
optional state to ``(y [B, T, d], new_state)``; ``state=None`` means "start of sequence".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookedRootModule, HookPoint

from workbench.architectures.hooked import SharedHookNames


class ArchConfig:
    """A config dict with attribute access; ``to_dict()`` gives back exactly the JSON-able dict."""

    def __init__(self, values: dict):
        self._values = dict(values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["_values"][key]
        except KeyError:
            raise AttributeError(f"config has no field {key!r}; fields: {sorted(self.__dict__['_values'])}") from None

    def get(self, key: str, default=None):
        return self._values.get(key, default)

    def to_dict(self) -> dict:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"ArchConfig({self._values})"


class Norm(nn.Module):
    """``(x - mean) / scale * w + b`` (LayerNorm) or ``x / scale * w`` (RMSNorm).

    The scale is data-dependent, so it goes behind ``hook_scale``: freezing that hook makes the norm
    a linear map of its input, which attribution needs.
    """

    def __init__(self, d: int, kind: str = "rms", eps: float = 1e-5):
        super().__init__()
        if kind not in ("rms", "layer"):
            raise ValueError(f"unknown norm {kind!r}; choose one of: layer, rms")
        self.kind, self.eps = kind, eps
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d)) if kind == "layer" else None
        self.hook_scale = HookPoint()  # [B, T, 1]
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        out = x / scale * self.w
        if self.b is not None:
            out = out + self.b
        return self.hook_normalized(out)


class MLP(nn.Module):
    """``W_out act(W_in x + b_in) + b_out``: the position-wise part that transcoders replace."""

    def __init__(self, d_model: int, d_mlp: int, act: str = "gelu"):
        super().__init__()
        acts = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}
        if act not in acts:
            raise ValueError(f"unknown activation {act!r}; choose one of: {', '.join(acts)}")
        self.act = acts[act]
        self.W_in = nn.Linear(d_model, d_mlp)
        self.W_out = nn.Linear(d_mlp, d_model)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_out(self.hook_post(self.act(self.hook_pre(self.W_in(x)))))


class Block(nn.Module):
    """Pre-norm residual block with the shared hook names (see ``hooked``)."""

    def __init__(self, d_model: int, mixer: nn.Module, mlp: nn.Module, norm: str = "rms"):
        super().__init__()
        self.ln1, self.ln2 = Norm(d_model, norm), Norm(d_model, norm)
        self.mixer, self.mlp = mixer, mlp
        for name in ("resid_pre", "mixer_in", "mixer_out", "resid_mid", "mlp_in", "mlp_out", "resid_post"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: torch.Tensor, state=None):
        resid_pre = self.hook_resid_pre(x)
        mixed, new_state = self.mixer(self.hook_mixer_in(self.ln1(resid_pre)), state)
        resid_mid = self.hook_resid_mid(resid_pre + self.hook_mixer_out(mixed))
        mlp_out = self.hook_mlp_out(self.mlp(self.hook_mlp_in(self.ln2(resid_mid))))
        return self.hook_resid_post(resid_mid + mlp_out), new_state


class BlockLM(SharedHookNames, HookedRootModule):
    """Token embedding -> blocks -> final norm -> unembedding, for any mixer.

    ``forward(tokens)`` returns logits; ``forward(tokens, state=s, return_state=True)`` continues from
    a carried state (one entry per block) and returns ``(logits, new_state)``, which is how generation
    runs recurrently and how "generation with carried state equals the full forward" is tested.
    """

    def __init__(self, cfg: ArchConfig, make_mixer: Callable[[ArchConfig, int], nn.Module],
                 make_mlp: Callable[[ArchConfig, int], nn.Module] | None = None):
        super().__init__()
        self.cfg = cfg
        make_mlp = make_mlp or (lambda c, _layer: MLP(c.d_model, c.d_mlp, c.get("act_fn", "gelu")))
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, make_mixer(cfg, layer), make_mlp(cfg, layer), cfg.get("norm", "rms"))
            for layer in range(cfg.n_layers)
        )
        self.ln_final = Norm(cfg.d_model, cfg.get("norm", "rms"))
        self.hook_final = HookPoint()
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.setup()
        self.register_hook_aliases({})

    def forward(self, tokens: torch.Tensor, state: list | None = None, return_state: bool = False):
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be int64 [batch, pos]; got {tuple(tokens.shape)} {tokens.dtype}")
        x = self.hook_embed(self.embed(tokens))
        states = state if state is not None else [None] * len(self.blocks)
        new_states = []
        for block, s in zip(self.blocks, states, strict=True):
            x, s_new = block(x, s)
            new_states.append(s_new)
        logits = self.unembed(self.hook_final(self.ln_final(x)))
        return (logits, new_states) if return_state else logits
