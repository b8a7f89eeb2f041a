"""Shared pieces of every non-Transformer architecture, written once in gate form.

- :class:`ArchConfig`: attribute access to a JSON config (``model.cfg.n_layers`` as on transformer_lens).
- :class:`Norm`: RMSNorm or LayerNorm whose denominator sits behind ``hook_scale`` (optionally per
  group of channels: per-head GroupNorm).
- :class:`MLP`: the position-wise part transcoders replace (``hook_pre``, ``hook_post``).
- :class:`Block`: pre-norm mixer then pre-norm MLP, residual around each, with the shared hook names.
- :class:`BlockLM`: embedding, blocks, final norm, unembedding; carries recurrent state per block.
- :class:`CausalConv1d`: depthwise causal convolution over time that carries its input window as state.
- :func:`silu_gate_form`, :func:`tanh_ratio`: SiLU and tanh written as value x gate (the gate hookable).

An architecture module supplies only its mixer (and, where its design has one, its own MLP-like part):
``BlockLM(cfg, make_mixer=lambda cfg, layer: MyMixer(cfg))``. A mixer maps ``x [B, T, d]`` and an
optional state to ``(y [B, T, d], new_state)``; ``state=None`` means "start of sequence".
``mixer_name`` / ``mlp_name`` name the two parts (RWKV: ``time_mix`` / ``channel_mix``), so their own
hooks read ``blocks.0.time_mix.hook_wkv``; ``block.mixer`` / ``block.mlp`` reach them whatever the name.

An MLP-like part that reads other positions (RWKV's channel-mix reads x_{t-1}) declares
``carries_state = True`` and splits itself in two: ``read_input(x, state) -> (inputs, new_state)``
gathers what position t reads into one position-wise input, which ``hook_mlp_in`` records, and
``forward(inputs)`` is then a position-wise map, so a transcoder hook_mlp_in -> hook_mlp_out replaces
exactly it. Such a block's state is the pair ``(mixer_state, mlp_state)``; other blocks carry the
mixer's state alone, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookedRootModule, HookPoint

from workbench.architectures.hooked import SharedHookNames

# Fields every BlockLM architecture shares; each module's DEFAULTS adds its own on top.
BLOCK_DEFAULTS = {"n_layers": 2, "d_model": 64, "d_mlp": 256, "act_fn": "gelu", "norm": "rms"}


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
    a linear map of its input, which attribution needs. With ``groups > 1`` each group of ``d / groups``
    consecutive channels is normalised on its own (per-head GroupNorm, as xLSTM's MultiHeadLayerNorm);
    the scale is then ``[B, T, groups, 1]``.
    """

    def __init__(self, d: int, kind: str = "rms", eps: float = 1e-5, groups: int = 1):
        super().__init__()
        if kind not in ("rms", "layer"):
            raise ValueError(f"unknown norm {kind!r}; choose one of: layer, rms")
        if d % groups:
            raise ValueError(f"norm width {d} is not divisible into {groups} groups")
        self.kind, self.eps, self.groups = kind, eps, groups
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d)) if kind == "layer" else None
        self.hook_scale = HookPoint()  # [B, T, 1], or [B, T, groups, 1]
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.groups > 1:
            x = x.reshape(*shape[:-1], self.groups, shape[-1] // self.groups)
        if self.kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        out = (x / scale).reshape(shape) * self.w
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


def silu_gate_form(x: torch.Tensor, gate_hook: HookPoint) -> torch.Tensor:
    """``silu(x) = x * sigmoid(x)`` with the sigmoid behind ``gate_hook``: frozen, the map is linear."""
    return x * gate_hook(torch.sigmoid(x))


def tanh_ratio(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x) / x`` (1 at 0), so that ``tanh(x) = x * tanh_ratio(x)`` puts tanh in gate form.

    Near 0 the series ``1 - x^2/3`` replaces the quotient; the unused branch divides by a safe 1 so
    that no 0/0 reaches the gradient through ``torch.where``.
    """
    small = x.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1 - x * x / 3, torch.tanh(safe) / safe)


class CausalConv1d(nn.Module):
    """Depthwise causal convolution over time on ``[B, T, C]``, with its input window as state.

    Output t reads inputs t-width+1..t; the ``width - 1`` inputs before the first position come from the
    carried window (zeros at the start of a sequence), so running a sequence in pieces, each piece
    continuing from the window the previous one returned, equals running it whole. The parameters are
    an ``nn.Conv1d(C, C, width, groups=C)`` (reference implementations' layout and initialisation).
    """

    def __init__(self, channels: int, width: int, bias: bool = True):
        super().__init__()
        if width < 1:
            raise ValueError(f"convolution width must be >= 1; got {width}")
        self.width = width
        self.conv = nn.Conv1d(channels, channels, width, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor, window: torch.Tensor | None = None):
        """``x [B, T, C]`` -> ``(y [B, T, C], window [B, width - 1, C])``."""
        if window is None:
            window = x.new_zeros(x.shape[0], self.width - 1, x.shape[2])
        padded = torch.cat([window, x], dim=1)
        y = self.conv(padded.transpose(1, 2)).transpose(1, 2)
        return y, padded[:, padded.shape[1] - (self.width - 1):]


class ShortConv(nn.Module):
    """An optional short causal convolution in front of a recurrent mixer (Zoology's "short conv").

    Width 0 is no convolution: the mixer sees its input unchanged and carries only its own state.
    Width w > 0 is a depthwise :class:`CausalConv1d` of ``channels`` (linear, with bias, no activation, so
    gate form is untouched): position t reads inputs t-w+1..t, so on recall the key two positions back
    reaches the value's position before the recurrence writes its state. The mixer's carried state is then
    ``(conv window, the mixer's own state)``.

    Use: ``x, window, inner = self.short_conv.split(x, state)`` at the top of the mixer's forward, and
    ``return y, self.short_conv.pack(window, new_inner)``.
    """

    def __init__(self, channels: int, width: int):
        super().__init__()
        if width < 0:
            raise ValueError(f"short convolution width must be >= 0 (0: none); got {width}")
        self.width = width
        self.conv = CausalConv1d(channels, width) if width else None
        self.hook_conv = HookPoint()  # the convolved input (patchable; linear, so no gate)

    def split(self, x: torch.Tensor, state):
        if self.conv is None:
            return x, None, state
        window, inner = state if state is not None else (None, None)
        y, window = self.conv(x, window)
        return self.hook_conv(y), window, inner

    def pack(self, window, inner):
        return inner if self.conv is None else (window, inner)


class Block(nn.Module):
    """Pre-norm residual block with the shared hook names (see ``hooked``); the mixer and the MLP-like
    part are registered under ``mixer_name`` / ``mlp_name`` (module docstring)."""

    def __init__(self, d_model: int, mixer: nn.Module, mlp: nn.Module, norm: str = "rms",
                 mixer_name: str = "mixer", mlp_name: str = "mlp"):
        super().__init__()
        self.ln1, self.ln2 = Norm(d_model, norm), Norm(d_model, norm)
        self.mixer_name, self.mlp_name = mixer_name, mlp_name
        self.add_module(mixer_name, mixer)
        self.add_module(mlp_name, mlp)
        for name in ("resid_pre", "mixer_in", "mixer_out", "resid_mid", "mlp_in", "mlp_out", "resid_post"):
            setattr(self, f"hook_{name}", HookPoint())

    # Properties, so that ``block.mixer`` / ``block.mlp`` work whatever the registered names; an
    # AttributeError before registration keeps nn.Module.add_module's name check working.
    @property
    def mixer(self) -> nn.Module:
        try:
            return self._modules[self.mixer_name]
        except KeyError:
            raise AttributeError("mixer") from None

    @property
    def mlp(self) -> nn.Module:
        try:
            return self._modules[self.mlp_name]
        except KeyError:
            raise AttributeError("mlp") from None

    def forward(self, x: torch.Tensor, state=None):
        stateful_mlp = getattr(self.mlp, "carries_state", False)
        mixer_state, mlp_state = (state or (None, None)) if stateful_mlp else (state, None)
        resid_pre = self.hook_resid_pre(x)
        mixed, new_state = self.mixer(self.hook_mixer_in(self.ln1(resid_pre)), mixer_state)
        resid_mid = self.hook_resid_mid(resid_pre + self.hook_mixer_out(mixed))
        mlp_in = self.ln2(resid_mid)
        if stateful_mlp:  # gather what each position reads (e.g. [x_t, x_{t-1}]) before hook_mlp_in
            mlp_in, mlp_state = self.mlp.read_input(mlp_in, mlp_state)
            new_state = (new_state, mlp_state)
        mlp_out = self.hook_mlp_out(self.mlp(self.hook_mlp_in(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out), new_state


def run_blocks(blocks, x: torch.Tensor, state: list | None) -> tuple[torch.Tensor, list]:
    """``x`` through each block in turn, block ``l`` continuing from ``state[l]`` (``None``: a fresh
    sequence); returns the output and every block's new carried state."""
    states = state if state is not None else [None] * len(blocks)
    new_states = []
    for block, s in zip(blocks, states, strict=True):
        x, s_new = block(x, s)
        new_states.append(s_new)
    return x, new_states


class BlockLM(SharedHookNames, HookedRootModule):
    """Token embedding -> blocks -> final norm -> unembedding, for any mixer.

    ``forward(tokens)`` returns logits; ``forward(tokens, state=s, return_state=True)`` continues from
    a carried state (one entry per block) and returns ``(logits, new_state)``, which is how generation
    runs recurrently and how "generation with carried state equals the full forward" is tested.
    """

    def __init__(self, cfg: ArchConfig, make_mixer: Callable[[ArchConfig, int], nn.Module],
                 make_mlp: Callable[[ArchConfig, int], nn.Module] | None = None,
                 mixer_name: str = "mixer", mlp_name: str = "mlp"):
        super().__init__()
        self.cfg = cfg
        make_mlp = make_mlp or (lambda c, _layer: MLP(c.d_model, c.d_mlp, c.get("act_fn", "gelu")))
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, make_mixer(cfg, layer), make_mlp(cfg, layer), cfg.get("norm", "rms"),
                  mixer_name, mlp_name)
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
        x, new_states = run_blocks(self.blocks, self.hook_embed(self.embed(tokens)), state)
        logits = self.unembed(self.hook_final(self.ln_final(x)))
        return (logits, new_states) if return_state else logits
