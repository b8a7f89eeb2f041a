"""The batched patching engine: many patched runs in one forward pass, skipping what a patch cannot change.

A *run* is a tuple of sites patched together (:class:`~workbench.interventions.patching.Site`, hook
names already resolved, indices checked). A sweep is many runs on the same ``N`` prompts. Algorithm:

1. Base and source passes, as one pass of ``2N`` rows: the base run is the one being patched
   (corrupted tokens for denoising, clean for noising), the source run gives the patched-in values.
   The base rows cache every ``blocks.{l}.hook_resid_pre`` (on a Transformer also every layer's
   queries, keys and values); the source rows the patched hooks (and, for step 5, the queries, keys
   and values of each patched ``resid_pre``'s block). A one-row pass with a recorder on every hook
   point gives each hook's *start layer*: the last ``blocks.{l}.hook_resid_pre`` that fires before it
   (-1 for the embedding hooks).
2. Runs are sorted by (start layer, first patched position ``p``) and cut into chunks: one start layer
   per chunk, at most ``chunk_rows`` rows (runs x prompts) and positions spanning less than ``band``
   (by default :func:`auto_band`: the band that balances a chunk's fixed cost against the positions
   before each run's own ``p`` that a chunk computes in vain).
3. A chunk of ``S`` runs starting at layer ``l`` and position ``p0`` (its smallest ``p``) is one
   forward pass of ``S * N`` rows (row ``s * N + n`` = run ``s`` on prompt ``n``):
   - layers before ``l`` are skipped: the pass starts from the base run's ``blocks.{l}.hook_resid_pre``
     (a patch at layer ``l`` or later cannot change it);
   - positions before ``p0`` are skipped (every architecture here is causal, so they cannot change
     either): the pass reads only positions ``p0..T-1``, and what they need of the past comes from the
     base run: the keys and values of positions ``< p0`` as a frozen KV cache (Transformer), or each
     block's carried state after position ``p0 - 1`` (``BlockLM`` recurrent models: the state of a
     prefix pass on ``tokens[:, :p0]``, which is exactly what the full pass carries there; each
     prefix pass continues from the previous chunk's, so a sweep passes each position once);
   - one hook per patched hook point replaces, in row block ``s``, the sites of run ``s`` with the
     source values (``torch.where`` on a broadcast mask; positions shifted by ``p0``).
   Runs starting at the embedding, chunks touching hooks whose dim 1 is not the query position
   (attention patterns and scores, rotated keys), and models that are neither a transformer_lens
   ``HookedTransformer`` nor a ``BlockLM`` use the plain batched pass: all layers, all positions.
4. Only the answer positions go through the final norm and unembedding (all chunk positions when a
   run patches a hook after the blocks); a prompt whose answer position lies before ``p0`` keeps the
   base run's answer logits, which causality makes exact, and a run whose every site lies after every
   answer position is not run at all. Result: answer logits ``[runs, N, V]``.
5. When the prompts share one answer position ``a`` (Transformer; ``BlockLM`` whose MLPs are
   position-wise), chunks whose sites lie before the last layer or in the part of it computed at
   every position take the answer path (:mod:`~workbench.interventions.patch_answer`): positions after
   ``a`` are dropped and the last layer's output is computed at ``a`` alone (a Transformer's last
   layer needs only keys and values elsewhere; a recurrent one's its mixer). On a Transformer, chunks
   that patch ``resid_pre`` alone run transformer_lens's block operations directly on rotated cached
   keys, the patched layer's queries, keys and values are the base or source run's (no projection),
   and runs starting at the last layer project nothing at all, so they need no position band.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence

import torch
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from workbench.architectures.components import BlockLM
from workbench.interventions import patch_answer

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

# A chunk's fixed cost (its forward calls, caches and masks) in position-rows of compute; measured on
# CPU with the zoo models (benchmarks/patching.py), where a chunk costs about as much as this many rows
# (twice as many on recurrent models, whose chunks also run a prefix pass for their carried state).
CHUNK_COST_ROWS = 300


def auto_band(firsts: Sequence[int], n_prompts: int, cost_rows: int = CHUNK_COST_ROWS) -> int:
    """The band that balances chunk count against wasted rows. A chunk of runs whose first patched
    positions span ``b`` computes, per run, on average ``(b - 1) / 2`` positions before its own first
    (their results are the base run's); with ``k`` runs per position that is ``k N b^2 / 2`` wasted rows
    per chunk, against ``cost_rows`` per chunk: the sum over ``T / b`` chunks is least at
    ``b = sqrt(2 cost_rows / (k N))``."""
    per_position = len(firsts) / max(1, len(set(firsts)))
    return max(1, round((2 * cost_rows / (per_position * max(1, n_prompts))) ** 0.5))


class PatchEngine:
    """Steps 1-4 of the module docstring for one model, one base and one source token batch."""

    def __init__(self, model, base: torch.Tensor, source: torch.Tensor, positions: torch.Tensor,
                 hooks: Sequence[str], answer_path: bool = True):
        """``answer_path=False`` turns step 5 off (the tests compare the two paths)."""
        self.model, self.base, self.source = model, base, source
        self.positions = positions.to(base.device)
        self.n, self.n_pos = base.shape
        self.n_layers = model.cfg.n_layers
        self.kind = self._kind(model)
        self.layer_of = self._hook_layers(hooks)
        shared = bool((self.positions == self.positions[0]).all()) if self.n else False
        self.answer = int(self.positions[0]) if answer_path and shared and self.kind != "generic" \
            and patch_answer.supported(model) else None
        self.qkv = [patch_answer.qkv_hooks(model, l) for l in range(self.n_layers)] if self.kind == "transformer" \
            else []
        self.last_kv = self.qkv[-1][1:] if self.qkv else []
        base_hooks = [_resid_pre(l) for l in range(self.n_layers)]
        if self.kind == "transformer":
            base_hooks += [f"blocks.{l}.attn.hook_{kv}" for l in range(self.n_layers) for kv in "kv"]
            base_hooks += [name for names in self.qkv for name in names]
        # the answer path takes a patched resid_pre's queries, keys and values from the source run
        patched = [l for l in range(self.n_layers) if _resid_pre(l) in hooks] if self.answer is not None and self.qkv \
            else []
        source_hooks = list(dict.fromkeys([*hooks, *(name for l in patched for name in self.qkv[l])]))
        self._reference_passes(base_hooks, source_hooks)
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
    def _reference_passes(self, base_names: list[str], source_names: list[str]) -> None:
        """The base and source passes as one pass of ``2N`` rows (one pass's fixed cost, not two):
        ``base_logits`` / ``source_logits [N, V]`` at the answers, ``base_cache`` / ``source_cache``."""
        cache: dict[str, torch.Tensor] = {}
        keep = lambda act, hook: cache.__setitem__(hook.name, act.detach())
        with _attached(self.model, [(name, keep) for name in dict.fromkeys([*base_names, *source_names])]):
            logits = self.model(torch.cat([self.base, self.source]))
        rows = torch.arange(self.n, device=logits.device)
        self.base_logits, self.source_logits = logits[rows, self.positions], logits[rows + self.n, self.positions]
        self.base_cache = {name: cache[name][:self.n] for name in base_names if name in cache}
        self.source_cache = {name: cache[name][self.n:] for name in source_names if name in cache}

    # -- step 2 ------------------------------------------------------------------------------------
    def _start(self, run) -> tuple[int, int, bool]:
        """(start layer, first position, whether positions may be skipped) of one run."""
        layer = min(self.layer_of.get(site.hook, -1) for site in run)
        first = min(0 if site.position is None else site.position for site in run)
        skippable = self.kind != "generic" and layer >= 0 and not any(
            site.hook.endswith(FULL_CONTEXT_HOOKS) for site in run)
        return (layer if self.kind != "generic" else -1), (first if skippable else 0), skippable

    def _on_answer_path(self, run, layer: int) -> bool:
        """Step 5: every site before the last layer, or in the part of it that the answer path runs
        at every position (:func:`~workbench.interventions.patch_answer.runs_everywhere`)."""
        last = self.n_layers - 1
        return self.answer is not None and layer >= 0 and all(
            site.hook.startswith("blocks.") and not site.hook.endswith(FULL_CONTEXT_HOOKS)
            and (self.layer_of[site.hook] < last or patch_answer.runs_everywhere(self.model, site)) for site in run)

    def chunks(self, runs: Sequence[tuple], chunk_rows: int, band: int | None) -> list[tuple]:
        """Step 2: ``[(start layer, p0, answer path, run indices)]``; runs that cannot reach any answer
        position (step 4) are left out. ``band=None``: each group's own band (:func:`auto_band`)."""
        starts, groups, last_answer = [], {}, int(self.positions.max())
        for i, run in enumerate(runs):
            layer, first, skippable = self._start(run)
            if skippable and first > last_answer:
                continue
            answer = self._on_answer_path(run, layer)
            # a Transformer's last-layer run on the answer path reads no band of positions: p0 = 0
            first = 0 if answer and layer == self.n_layers - 1 and self.kind == "transformer" else first
            starts.append((layer, answer, first, i))
            groups.setdefault((layer, answer), []).append(first)
        cost = CHUNK_COST_ROWS * (2 if self.kind == "blocklm" else 1)
        bands = {key: band or auto_band(firsts, self.n, cost) for key, firsts in groups.items()}
        per_chunk = max(1, chunk_rows // max(self.n, 1))
        out: list[tuple[int, int, bool, list[int]]] = []
        for layer, answer, first, i in sorted(starts):
            if out and out[-1][0] == layer and out[-1][2] == answer and len(out[-1][3]) < per_chunk \
                    and first - out[-1][1] < bands[layer, answer]:
                out[-1][3].append(i)
            else:
                out.append((layer, first, answer, [i]))
        return out

    # -- step 3 ------------------------------------------------------------------------------------
    def _mask(self, runs: Sequence[tuple], hook: str, p0: int, end: int | None = None) -> torch.Tensor:
        """Bool ``[S, 1, end - p0, ...]``: which entries of ``hook`` each run patches (``end``: all of dim 1)."""
        value = self.source_cache[hook]
        end = value.shape[1] if end is None else end
        dims = {site.dim for run in runs for site in run if site.hook == hook and site.index is not None}
        shape = [len(runs), 1, end - p0] + [value.shape[d] if d in dims else 1 for d in range(2, value.dim())]
        mask = torch.zeros(shape, dtype=torch.bool, device=value.device)
        whole = [(s, site.position - p0) for s, run in enumerate(runs) for site in run
                 if site.hook == hook and site.index is None and site.position is not None and site.position < end]
        if whole:  # the common case (a layer x position sweep) in one indexing, not one per run
            rows, positions = zip(*whole, strict=True)
            mask[list(rows), 0, list(positions)] = True
        for s, run in enumerate(runs):
            for site in (site for site in run if site.hook == hook and (site.position or 0) < end
                         and (site.index is not None or site.position is None)):
                index = [s, 0, slice(None) if site.position is None else site.position - p0]
                index += [slice(None)] * (value.dim() - 2)
                if site.index is not None:  # value dim d is mask dim d + 1 (runs, prompts, positions, ...)
                    index[site.dim + 1] = site.index
                mask[tuple(index)] = True
        return mask

    def _patch_hooks(self, runs: Sequence[tuple], p0: int, end: int | None = None, skip: str = "") -> list:
        """One patching hook per hook point of the chunk's runs (except ``skip``), positions ``p0..end-1``."""
        hooks = []
        for name in dict.fromkeys(site.hook for run in runs for site in run if site.hook != skip):
            mask, source = self._mask(runs, name, p0, end), self.source_cache[name][:, p0:end].unsqueeze(0)

            def patch(act, hook, mask=mask, source=source):
                rows = act.view(mask.shape[0], self.n, *act.shape[1:])
                return torch.where(mask, source.to(act.dtype), rows).reshape(act.shape)

            hooks.append((name, patch))
        return hooks

    @torch.no_grad()
    def _prefix_states(self, p0: int, copies: int) -> list:
        """The base run's carried states after position ``p0 - 1``: continued from the nearest earlier
        state computed, so the chunks of a sweep (in increasing ``p0``) pass each position once."""
        if p0 not in self._states:
            start = max((p for p in self._states if p < p0), default=0)
            state = self._states.get(start)
            self._states[p0] = self.model(self.base[:, start:p0], state=state, return_state=True)[1]
        return _map_tensors(self._states[p0], lambda t: t.repeat(copies, *[1] * (t.dim() - 1)))

    def _kv_cache(self, layer: int, p0: int, copies: int, stop: int | None = None) -> list | None:
        if p0 == 0:
            return None
        entries: list = [None] * self.n_layers
        for i in range(layer, self.n_layers if stop is None else stop):
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

    # -- step 5 ------------------------------------------------------------------------------------
    @torch.no_grad()
    def answer_chunk(self, runs: Sequence[tuple], layer: int, p0: int) -> torch.Tensor:
        """Step 5 (patch_answer's steps 1-4): answer logits ``[S, N, V]`` of the chunk's runs."""
        if self.kind == "blocklm":
            return self._blocklm_answer_chunk(runs, layer, p0)
        copies, last, a = len(runs), self.n_layers - 1, self.answer
        t0 = max(0, a + 1 - patch_answer.TAIL)  # the last block runs on positions t0..a
        base_last, source_last = self.base_cache[_resid_pre(last)], self.source_cache.get(_resid_pre(last))
        base_kv = [self.base_cache[name] for name in self.last_kv]
        if layer == last:  # only the patched positions differ: keys/values are the base or source run's
            mask = self._mask(runs, _resid_pre(last), 0, a + 1)
            keys, values = (patch_answer.where_patched(mask[:, :, :t0], self.source_cache[name][:, :t0], kv[:, :t0])
                            for name, kv in zip(self.last_kv, base_kv, strict=True))
            rows = patch_answer.where_patched(mask[:, :, t0:], source_last[:, t0:a + 1], base_last[:, t0:a + 1])
        else:
            p0 = min(p0, t0)  # at least TAIL query rows: the attention products then round as in the full pass
            x = self._middle_layers(runs, layer, p0)
            if any(site.hook == _resid_pre(last) for run in runs for site in run):
                mask = self._mask(runs, _resid_pre(last), p0, a + 1)
                x = torch.where(mask, source_last[:, p0:a + 1].unsqueeze(0),
                                x.view(copies, self.n, *x.shape[1:])).reshape(x.shape)
            new_kv = patch_answer.keys_values(self.model, last, x[:, :t0 - p0], p0)
            keys, values = (torch.cat([kv[:, :p0].repeat(copies, 1, 1, 1), new], dim=1)
                            for kv, new in zip(base_kv, new_kv, strict=True))
            rows = x[:, t0 - p0:]
        out = patch_answer.block_forward(self.model, last, rows, keys, values, answer_only=True)
        return self._final(out).view(copies, self.n, -1)

    def _middle_layers(self, runs: Sequence[tuple], layer: int, p0: int) -> torch.Tensor:
        """Layers ``layer .. L-2`` of step 5 on positions ``p0..a``: the last layer's residual there."""
        copies, last, a = len(runs), self.n_layers - 1, self.answer
        x = self.base_cache[_resid_pre(layer)][:, p0:a + 1].repeat(copies, 1, 1)
        with _attached(self.model, self._patch_hooks(runs, p0, a + 1, skip=_resid_pre(last))):
            if not all(site.hook.endswith("hook_resid_pre") for run in runs for site in run):
                return self.model(x, start_at_layer=layer, stop_at_layer=last,
                                  past_kv_cache=self._kv_cache(layer, p0, copies, stop=last))
            for i in range(layer, last):
                keys, values = (self.base_cache[name][:, :p0].repeat(copies, 1, 1, 1) for name in self.qkv[i][1:])
                x = patch_answer.block_forward(self.model, i, x, keys, values, qkv=self._patched_qkv(runs, i, p0))
        return x

    def _patched_qkv(self, runs: Sequence[tuple], layer: int, p0: int) -> tuple | None:
        """Queries, keys and values at positions ``p0..a`` of block ``layer`` when its input differs from
        the base run's only by whole-vector ``resid_pre`` patches (then each position's are the base or
        the source run's); None when something before it in the chunk changed its input."""
        sites = [site for run in runs for site in run]
        if any(self.layer_of[site.hook] < layer or (site.hook == _resid_pre(layer) and site.index is not None)
               for site in sites):
            return None
        mask = self._mask(runs, _resid_pre(layer), p0, self.answer + 1)
        return tuple(patch_answer.where_patched(mask, self.source_cache[name][:, p0:self.answer + 1],
                                                self.base_cache[name][:, p0:self.answer + 1])
                     for name in self.qkv[layer])

    def _blocklm_answer_chunk(self, runs: Sequence[tuple], layer: int, p0: int) -> torch.Tensor:
        """Step 5 on a recurrent model: positions ``p0..a`` through the blocks from carried states,
        the last block's part after its mixer at the answer alone (patch_answer's step 5)."""
        copies, last, a = len(runs), self.n_layers - 1, self.answer
        states = self._context(layer, p0, copies)
        x = self.base_cache[_resid_pre(layer)][:, p0:a + 1].repeat(copies, 1, 1)
        with _attached(self.model, self._patch_hooks(runs, p0, a + 1)):
            for i in range(layer, last):
                x, _ = self.model.blocks[i](x, states[i])
            x = patch_answer.block_at_answer(self.model.blocks[last], x, states[last])
        return self._final(x).view(copies, self.n, -1)

    def run(self, runs: Sequence[tuple], chunk_rows: int = 256, band: int | None = None) -> torch.Tensor:
        """Answer logits ``[len(runs), N, V]``; ``band``: positions a chunk may span (None: chosen by
        :func:`auto_band`)."""
        out = self.base_logits.unsqueeze(0).repeat(len(runs), 1, 1)  # runs left out of every chunk: step 4
        for layer, p0, answer, idx in self.chunks(runs, chunk_rows, band):
            chunk = self.answer_chunk if answer else self.run_chunk
            out[torch.tensor(idx, device=out.device)] = chunk([runs[i] for i in idx], layer, p0)
        return out
