"""The hook-name scheme every architecture shares, and the protocol every model implements.

Every model is a ``transformer_lens`` ``HookedRootModule``: ``run_with_cache``, ``run_with_hooks`` and
``hooks()`` work alike everywhere. The shared names (DESIGN.md) are::

    hook_embed
    blocks.{l}.hook_resid_pre
    blocks.{l}.hook_mixer_in      the (normalised) input the mixer reads
    blocks.{l}.hook_mixer_out     attention, time-mix, SSM, xLSTM cell, minGRU, Pattention attention
    blocks.{l}.hook_resid_mid
    blocks.{l}.hook_mlp_in        the (normalised) input the MLP-like part reads
    blocks.{l}.hook_mlp_out       MLP, channel-mix, Pattention FFN, xLSTM FFN
    blocks.{l}.hook_resid_post
    hook_final                    the normalised residual just before the unembedding

``hook_mixer_in`` / ``hook_mlp_in`` are read *after* the block's normalisation: they are exactly what
the sublayer function reads, so a transcoder trained from ``hook_mlp_in`` to ``hook_mlp_out`` replaces
that function and nothing else.

Architectures whose own modules carry other names (the Transformer keeps transformer_lens's names)
declare ``hook_aliases`` (shared name -> native name). :class:`SharedHookNames` makes aliases
first-class: they can be hooked, patched and filtered on, and ``run_with_cache`` returns them as keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

BLOCK_HOOKS = ("resid_pre", "mixer_in", "mixer_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
GLOBAL_HOOKS = ("embed", "final")
HOOK_KINDS = GLOBAL_HOOKS + BLOCK_HOOKS


def hook_name(kind: str, layer: int | None = None) -> str:
    """The shared name of a hook: ``hook_name("mlp_out", 2) == "blocks.2.hook_mlp_out"``."""
    if kind in GLOBAL_HOOKS:
        if layer is not None:
            raise ValueError(f"hook kind {kind!r} is not per layer; call hook_name({kind!r})")
        return f"hook_{kind}"
    if kind in BLOCK_HOOKS:
        if layer is None:
            raise ValueError(f"hook kind {kind!r} is per layer; pass a layer index")
        return f"blocks.{layer}.hook_{kind}"
    raise ValueError(f"unknown hook kind {kind!r}; choose one of: {', '.join(HOOK_KINDS)}")


def shared_hook_names(n_layers: int) -> list[str]:
    """Every shared hook name of an ``n_layers`` model, in forward order."""
    names = [hook_name("embed")]
    for layer in range(n_layers):
        names += [hook_name(kind, layer) for kind in BLOCK_HOOKS]
    return names + [hook_name("final")]


@runtime_checkable
class HookedModel(Protocol):
    """What the workbench needs of a model of any architecture.

    ``cfg`` carries at least ``n_layers``, ``d_model``, ``d_vocab`` and ``n_ctx``. ``forward(tokens)``
    maps int64 ``[batch, pos]`` token ids to ``[batch, pos, d_vocab]`` logits.
    """

    cfg: Any

    def forward(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def hook_names(self, kind: str | None = None) -> list[str]: ...

    def run_with_cache(self, *args, **kwargs): ...

    def run_with_hooks(self, *args, **kwargs): ...


class SharedHookNames:
    """Mixin for a ``HookedRootModule``: shared names as aliases of native hook points.

    Call :meth:`register_hook_aliases` after ``setup()``. Aliases go into ``mod_dict`` (so
    ``add_hook``/``hooks``/``run_with_hooks`` resolve them by name) but not into ``hook_dict`` (so a
    hook point is never cached or hooked twice). Name filters given as functions see both names.
    """

    hook_aliases: dict[str, str]

    def register_hook_aliases(self, aliases: dict[str, str]) -> None:
        missing = sorted(native for native in aliases.values() if native not in self.hook_dict)
        if missing:
            raise ValueError(f"hook aliases point at hook points the model lacks: {missing[:5]}")
        self.hook_aliases = dict(aliases)
        self._native_to_aliases: dict[str, list[str]] = {}
        for alias, native in aliases.items():
            self.mod_dict[alias] = self.hook_dict[native]
            self._native_to_aliases.setdefault(native, []).append(alias)

    def resolve_hook_name(self, name: str) -> str:
        """The native hook-point name behind a shared or native name (error lists close names)."""
        name = getattr(self, "hook_aliases", {}).get(name, name)
        if name not in self.hook_dict:
            close = [n for n in self.hook_names() if n.split(".")[-1] == name.split(".")[-1]][:6]
            raise KeyError(f"model has no hook named {name!r}; hooks with that ending: {close}")
        return name

    def hook_names(self, kind: str | None = None) -> list[str]:
        """Shared names first, then native ones; ``kind`` filters by the name's ending (``mlp_out``,
        ``gate``, ``scale``, ``pattern``...)."""
        names = list(getattr(self, "hook_aliases", {})) + [n for n in self.hook_dict]
        names = list(dict.fromkeys(names))
        if kind is None:
            return names
        return [n for n in names if n.endswith((f"hook_{kind}", f"_{kind}"))]

    def _widen_filter(self, names_filter: Callable[[str], bool]) -> Callable[[str], bool]:
        aliases_of = getattr(self, "_native_to_aliases", {})
        return lambda native: names_filter(native) or any(names_filter(a) for a in aliases_of.get(native, ()))

    # --- transformer_lens overrides -------------------------------------------------------------
    def _enable_hook(self, name, hook, dir):
        if callable(name) and not isinstance(name, str):
            name = self._widen_filter(name)
        return super()._enable_hook(name=name, hook=hook, dir=dir)

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False):
        if callable(name) and not isinstance(name, str):
            name = self._widen_filter(name)
        elif isinstance(name, str):
            name = self.resolve_hook_name(name)
        return super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def get_caching_hooks(self, names_filter=None, *args, **kwargs):
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if isinstance(names_filter, list):
            wanted = {self.resolve_hook_name(n) for n in names_filter}
            names_filter = wanted.__contains__
        elif callable(names_filter):
            names_filter = self._widen_filter(names_filter)
        return super().get_caching_hooks(names_filter, *args, **kwargs)

    def run_with_cache(self, *args, **kwargs):
        out, cache = super().run_with_cache(*args, **kwargs)
        store = cache.cache_dict if hasattr(cache, "cache_dict") else cache
        for native, aliases in getattr(self, "_native_to_aliases", {}).items():
            for suffix in ("", "_grad"):
                if native + suffix in store:
                    for alias in aliases:
                        store[alias + suffix] = store[native + suffix]
        return out, cache
