"""The batched patching engine: many patched runs in one forward pass, skipping what a patch cannot change.

A *run* is a tuple of sites patched together (:class:`~workbench.interventions.patching.Site`, hook
names already resolved, indices checked). A sweep is many runs on the same ``N`` prompts. Algorithm:

1. Base and source passes, once each: the base run is the one being patched (corrupted tokens for
   denoising, clean for noising), the source run gives the patched-in values. The base pass caches
   every ``blocks.{l}.hook_resid_pre`` (and, on a Transformer, every ``attn.hook_k`` / ``hook_v``);
   the source pass caches the patched hooks. A one-row pass with a recorder on every hook point gives
   each hook's *start layer*: the last ``blocks.{l}.hook_resid_pre`` that fires before it (-1 for the
   embedding hooks).
2. Runs are sorted by (start layer, first patched position ``p``) and cut into chunks: one start layer
   per chunk, at most ``chunk_rows`` rows (runs x prompts) and positions spanning less than ``band``.
3. A chunk of ``S`` runs starting at layer ``l`` and position ``p0`` (its smallest ``p``) is one
   forward pass of ``S * N`` rows (row ``s * N + n`` = run ``s`` on prompt ``n``):
   - layers before ``l`` are skipped: the pass starts from the base run's ``blocks.{l}.hook_resid_pre``
     (a patch at layer ``l`` or later cannot change it);
   - positions before ``p0`` are skipped (every architecture here is causal, so they cannot change
     either): the pass reads only positions ``p0..T-1``, and what they need of the past comes from the
     base run: the keys and values of positions ``< p0`` as a frozen KV cache (Transformer), or each
     block's carried state after position ``p0 - 1`` (``BlockLM`` recurrent models: the state of a
     prefix pass on ``tokens[:, :p0]``, which is exactly what the full pass carries there);
   - one hook per patched hook point replaces, in row block ``s``, the sites of run ``s`` with the
     source values (``torch.where`` on a broadcast mask; positions shifted by ``p0``).
   Runs starting at the embedding, chunks touching hooks whose dim 1 is not the query position
   (attention patterns and scores, rotated keys), and models that are neither a transformer_lens
   ``HookedTransformer`` nor a ``BlockLM`` use the plain batched pass: all layers, all positions.
4. Only the answer positions go through the final norm and unembedding (all chunk positions when a
   run patches a hook after the blocks); a prompt whose answer position lies before ``p0`` keeps the
   base run's answer logits, which causality makes exact. Result: answer logits ``[runs, N, V]``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence

import torch
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from workbench.architectures.components import BlockLM

# Hooks whose value is not [batch, query position, ...] in a pass that skips positions.
FULL_CONTEXT_HOOKS = ("hook_pattern", "hook_attn_scores", "hook_rot_k")


def _resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def _map_tensors(value, fn):
    """``fn`` on every tensor of a nested tuple/list state (recurrent states are batch-first)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


@contextlib.contextmanager
def _attached(model, hooks: list):
    """Forward hooks on their hook points for a block; removes only these (``model.hooks()`` resets
    every hook point of the model on exit, a millisecond per chunk on small models)."""
    level = _HOOK_LEVEL
    points = [model.hook_dict[name] for name, _ in hooks]
    try:
        for point, (_, fn) in zip(points, hooks, strict=True):
            point.add_hook(fn, dir="fwd", level=level)
        yield
    finally:
        for point in points:
            point.remove_hooks("fwd", level=level)


_HOOK_LEVEL = 0x5EED  # a context level of our own, so removal leaves other hooks alone


class PatchEngine:
    """Steps 1-4 of the module docstring for one model, one base and one source token batch."""

    def __init__(self, model, base: torch.Tensor, source: torch.Tensor, positions: torch.Tensor,
                 hooks: Sequence[str]):
        self.model, self.base, self.source = model, base, source
        self.positions = positions.to(base.device)
        self.n, self.n_pos = base.shape
        self.n_layers = model.cfg.n_layers
        self.kind = self._kind(model)
        self.layer_of = self._hook_layers(hooks)
        base_hooks = [_resid_pre(l) for l in range(self.n_layers)]
        if self.kind == "transformer":
            base_hooks += [f"blocks.{l}.attn.hook_{kv}" for l in range(self.n_layers) for kv in "kv"]
        self.source_logits, self.source_cache = self._answer_logits_and_cache(source, list(hooks))
        self.base_logits, self.base_cache = self._answer_logits_and_cache(base, base_hooks)
        self.shapes = {name: tuple(value.shape) for name, value in self.source_cache.items()}
        self._states: dict[int, list] = {}

    # -- step 1 ------------------------------------------------------------------------------------
    @staticmethod
    def _kind(model) -> str:
        if isinstance(model, HookedTransformer):
            cfg = model.cfg
            plain = cfg.positional_embedding_type in ("standard", "rotary") and cfg.n_key_value_heads is None
            plain = plain and getattr(cfg, "clip_qkv", None) is None
            if plain and (getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0) <= 0:
                return "transformer"
        if isinstance(model, BlockLM):
            return "blocklm"
        return "generic"

    @torch.no_grad()
    def _hook_layers(self, hooks: Sequence[str]) -> dict[str, int]:
        """Each hook's start layer: ``blocks.{l}.*`` is in block ``l``, whose first hook is its
        ``hook_resid_pre``; any other name is placed by a one-row pass recording the firing order."""
        layers = {}
        for name in hooks:
            match = re.match(r"blocks\.(\d+)\.", name)
            if match:
                layers[name] = int(match.group(1))
        if all(name in layers for name in hooks):
            return layers
        order: list[str] = []
        record = lambda act, hook: order.append(hook.name)
        self.model.run_with_hooks(self.base[:1], fwd_hooks=[(lambda name: True, record)])
        current = -1
        for name in order:
            match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_pre", name)
            current = int(match.group(1)) if match else current
            layers.setdefault(name, current)
        return layers

    @torch.no_grad()
    def _answer_logits_and_cache(self, tokens, names):
        cache: dict[str, torch.Tensor] = {}
        keep = lambda act, hook: cache.__setitem__(hook.name, act.detach())
        logits = self.model.run_with_hooks(tokens, fwd_hooks=[(name, keep) for name in names])
        return logits[torch.arange(self.n), self.positions], cache

    # -- step 2 ------------------------------------------------------------------------------------
    def _start(self, run) -> tuple[int, int, bool]:
        """(start layer, first position, whether positions may be skipped) of one run."""
        layer = min(self.layer_of.get(site.hook, -1) for site in run)
        first = min(0 if site.position is None else site.position for site in run)
        skippable = self.kind != "generic" and layer >= 0 and not any(
            site.hook.endswith(FULL_CONTEXT_HOOKS) for site in run)
        return (layer if self.kind != "generic" else -1), (first if skippable else 0), skippable

    def chunks(self, runs: Sequence[tuple], chunk_rows: int, band: int) -> list[tuple[int, int, list[int]]]:
        """Step 2: ``[(start layer, p0, run indices)]``."""
        starts = [self._start(run) for run in runs]
        order = sorted(range(len(runs)), key=lambda i: starts[i][:2])
        per_chunk = max(1, chunk_rows // max(self.n, 1))
        out: list[tuple[int, int, list[int]]] = []
        for i in order:
            layer, first, _ = starts[i]
            if out and out[-1][0] == layer and len(out[-1][2]) < per_chunk and first - out[-1][1] < band:
                out[-1][2].append(i)
            else:
                out.append((layer, first, [i]))
        return out

    # -- step 3 ------------------------------------------------------------------------------------
    def _mask(self, runs: Sequence[tuple], hook: str, p0: int) -> torch.Tensor:
        """Bool ``[S, 1, T - p0, ...]``: which entries of ``hook`` each run patches."""
        value = self.source_cache[hook]
        dims = {site.dim for run in runs for site in run if site.hook == hook and site.index is not None}
        shape = [len(runs), 1, value.shape[1] - p0] + [value.shape[d] if d in dims else 1
                                                       for d in range(2, value.dim())]
        mask = torch.zeros(shape, dtype=torch.bool, device=value.device)
        for s, run in enumerate(runs):
            for site in (site for site in run if site.hook == hook):
                index = [s, 0, slice(None) if site.position is None else site.position - p0]
                index += [slice(None)] * (value.dim() - 2)
                if site.index is not None:  # value dim d is mask dim d + 1 (runs, prompts, positions, ...)
                    index[site.dim + 1] = site.index
                mask[tuple(index)] = True
        return mask

    def _patch_hooks(self, runs: Sequence[tuple], p0: int) -> list:
        hooks = []
        for name in dict.fromkeys(site.hook for run in runs for site in run):
            mask, source = self._mask(runs, name, p0), self.source_cache[name][:, p0:].unsqueeze(0)

            def patch(act, hook, mask=mask, source=source):
                rows = act.view(mask.shape[0], self.n, *act.shape[1:])
                return torch.where(mask, source.to(act.dtype), rows).reshape(act.shape)

            hooks.append((name, patch))
        return hooks

    def _prefix_states(self, p0: int, copies: int) -> list:
        if p0 not in self._states:
            with torch.no_grad():
                self._states[p0] = self.model(self.base[:, :p0], return_state=True)[1]
        return _map_tensors(self._states[p0], lambda t: t.repeat(copies, *[1] * (t.dim() - 1)))

    def _kv_cache(self, layer: int, p0: int, copies: int) -> list | None:
        if p0 == 0:
            return None
        entries: list = [None] * self.n_layers
        for i in range(layer, self.n_layers):
            keys, values = (self.base_cache[f"blocks.{i}.attn.hook_{kv}"][:, :p0] for kv in "kv")
            entries[i] = TransformerLensKeyValueCacheEntry(keys.repeat(copies, 1, 1, 1),
                                                           values.repeat(copies, 1, 1, 1), frozen=True)
        return entries

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and unembedding (the last lines of the model's own forward)."""
        model = self.model
        if self.kind == "transformer":
            x = model.ln_final(x) if model.cfg.normalization_type is not None else x
            return model.unembed(x)
        return model.unembed(model.hook_final(model.ln_final(x)))

    def _context(self, layer: int, p0: int, copies: int):
        """What positions ``>= p0`` need of the past: a KV cache or carried states (before hooking)."""
        if self.kind == "transformer":
            return self._kv_cache(layer, p0, copies)
        return self._prefix_states(p0, copies) if p0 else [None] * self.n_layers

    def _blocks(self, layer: int, p0: int, copies: int, context) -> torch.Tensor:
        """The final residual ``[S*N, T - p0, d]`` from layer ``layer`` on (hooks already attached)."""
        resid = self.base_cache[_resid_pre(layer)][:, p0:].repeat(copies, 1, 1)
        if self.kind == "transformer":
            return self.model(resid, start_at_layer=layer, stop_at_layer=self.n_layers, past_kv_cache=context)
        states = context
        for i in range(layer, self.n_layers):
            resid, _ = self.model.blocks[i](resid, states[i])
        return resid

    @torch.no_grad()
    def run_chunk(self, runs: Sequence[tuple], layer: int, p0: int) -> torch.Tensor:
        """Step 3-4: answer logits ``[S, N, V]`` of the chunk's runs."""
        copies = len(runs)
        context = self._context(layer, p0, copies) if layer >= 0 else None
        with _attached(self.model, self._patch_hooks(runs, p0)):
            if layer < 0:
                logits = self.model(self.base.repeat(copies, 1)).view(copies, self.n, self.n_pos, -1)
                return logits[:, torch.arange(self.n), self.positions]
            x = self._blocks(layer, p0, copies, context)  # [S*N, T - p0, d]
            after_blocks = any(not site.hook.startswith("blocks.") for run in runs for site in run)
            at = (self.positions - p0).clamp_min(0)
            if after_blocks:
                logits = self._final(x).view(copies, self.n, x.shape[1], -1)[:, torch.arange(self.n), at]
            else:  # hooks keep seeing [batch, pos, ...]: one position per row
                x = x.view(copies, self.n, *x.shape[1:])[:, torch.arange(self.n), at]
                logits = self._final(x.reshape(copies * self.n, 1, -1)).view(copies, self.n, -1)
        before = (self.positions < p0).view(1, self.n, 1)
        return torch.where(before, self.base_logits.unsqueeze(0), logits)

    def run(self, runs: Sequence[tuple], chunk_rows: int = 256, band: int | None = None) -> torch.Tensor:
        """Answer logits ``[len(runs), N, V]``; ``band``: positions a chunk may span (default 8)."""
        band = 8 if band is None else band  # measured best on CPU at 27 and 64 tokens (benchmarks/patching.py)
        out = torch.empty(len(runs), self.n, self.base_logits.shape[-1], dtype=self.base_logits.dtype,
                          device=self.base_logits.device)
        for layer, p0, idx in self.chunks(runs, chunk_rows, band):
            out[idx] = self.run_chunk([runs[i] for i in idx], layer, p0)
        return out
