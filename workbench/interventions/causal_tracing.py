"""Causal tracing (ROME, Meng et al. 2022): where along layers and positions a model carries a fact.

The subject's token embeddings are noised until the model loses the answer, then one hidden state at
a time is restored to its clean value; a state that brings the answer back carries the fact there.
The same code runs on every architecture: noise goes in at ``hook_embed``, restores at the shared hook
names and at the recurrent state hooks (a restored state carries forward, ``architectures/scan.py``).

Algorithm (:func:`causal_trace`):

1. Clean pass on the prompts ``tokens [N, T]``: p(answer) at each prompt's answer position, and the
   value of every hook a restore may touch.
2. Noise (:func:`make_noise`): ``S`` Gaussian samples ``[S, N, T, d]`` drawn from a
   ``torch.Generator`` seeded with ``seed``, zero outside the subject positions, times ``scale``
   (default: 3 x the standard deviation of the token embeddings at the subject positions, ROME's
   ``3 * collect_embedding_std``). The same samples serve the noised run and every restored run, so
   each restored probability is compared with the noised run of the same noise.
3. Noised pass: ``S * N`` rows, each row's ``hook_embed`` plus its noise -> p_noised ``[S, N]``.
4. Restore sweep: a site is (kind, layer, position). Kinds are hooks per layer: ``resid_pre``,
   ``resid_post``, ``mixer_out``, ``mlp_out`` and ``state``: every recurrent state hook of the layer
   restored together (:func:`state_hooks`: RWKV's numerator, denominator and stabiliser; Mamba's h;
   the mLSTM's C, n, m or the sLSTM's c, n, m, h; the LSTM's c and h; the minGRU's h). Sites are cut
   into chunks of at most ``max_rows`` rows; a chunk of ``K`` sites is ONE forward pass of ``K * S * N``
   rows (row ``k S N + s N + n`` = site k, noise sample s, prompt n) with the noise added at
   ``hook_embed`` and, in each block of rows, the site's hook at its position set to the clean value.
5. Average indirect effect ``AIE[kind][layer, position]`` = mean over samples and prompts of
   ``p(answer | noised + restored) - p(answer | noised)``; the result also holds the mean clean and
   noised probabilities (:class:`TraceResult`).

Prompts for the fact experiment (:func:`toyworld_trace_prompts`): the toyworld prompt pairs of
``pairs.py`` (one template, so every prompt has one length), the subject span computed from the
template (:func:`toyworld_subject_mask`): ``pairs.py`` does not expose it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from workbench.architectures.hooked import hook_name
from workbench.interventions.ablation import STATE_FAMILIES
from workbench.interventions.hooks import check_layers, check_positions, resolve_hook
from workbench.interventions.metrics import answer_prob, logits_at
from workbench.interventions.pairs import SUBJECT_SLOTS, PromptPairs, toyworld_pairs

TRACE_KINDS = ("resid_pre", "resid_post", "mixer_out", "mlp_out", "state")
DEFAULT_KINDS = ("resid_post", "mixer_out", "mlp_out", "state")
RestoreSet = Mapping[str, Iterable[int]]  # hook name -> positions restored together in one run


def state_hooks(model, layer: int) -> list[str]:
    """Native names of every recurrent state hook of block ``layer`` (empty for the Transformer)."""
    names: list[str] = []
    for suffixes, *_ in STATE_FAMILIES.values():
        found = [f"blocks.{layer}.{s}" for s in suffixes]
        if all(n in model.hook_dict for n in found):
            names += found
    return list(dict.fromkeys(names))


def kind_hooks(model, kind: str, layer: int) -> list[str]:
    """Native hook names restored together for site kind ``kind`` at ``layer``."""
    if kind not in TRACE_KINDS:
        raise ValueError(f"unknown causal-tracing kind {kind!r}; choose one of: {', '.join(TRACE_KINDS)}")
    if kind == "state":
        return state_hooks(model, layer)
    return [resolve_hook(model, hook_name(kind, layer))]


@dataclass(frozen=True)
class Noise:
    """Step 2: ``values [S, N, T, d]`` (zero outside ``subject [N, T]``), already multiplied by ``scale``."""

    values: torch.Tensor
    scale: float
    subject: torch.Tensor

    @property
    def n_samples(self) -> int:
        return self.values.shape[0]


def subject_mask(subject, tokens: torch.Tensor) -> torch.Tensor:
    """Bool ``[N, T]`` from a mask of that shape or from positions shared by every prompt."""
    n, t = tokens.shape
    if isinstance(subject, torch.Tensor) and subject.dtype == torch.bool:
        if subject.shape != (n, t):
            raise ValueError(f"subject mask must be [N, T] = {(n, t)}; got {tuple(subject.shape)}")
        mask = subject.to(tokens.device)
    else:
        mask = torch.zeros(n, t, dtype=torch.bool, device=tokens.device)
        mask[:, check_positions(subject, t)] = True
    if not mask.any(1).all():
        raise ValueError(f"every prompt needs at least one subject position; rows without one: "
                         f"{(~mask.any(1)).nonzero().flatten().tolist()}")
    return mask


@torch.no_grad()
def make_noise(model, tokens: torch.Tensor, subject, n_samples: int = 10, scale: float | None = None,
               seed: int = 0) -> Noise:
    """Step 2. ``subject``: bool ``[N, T]`` or positions; ``scale`` None: 3 x the subject embeddings' std."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1; got {n_samples}")
    mask = subject_mask(subject, tokens)
    _, cache = model.run_with_cache(tokens, names_filter=["hook_embed"])
    embed = cache["hook_embed"]
    if scale is None:  # over every entry of every subject embedding, as ROME's collect_embedding_std
        scale = 3.0 * float(embed[mask].double().std())
    if not scale >= 0:
        raise ValueError(f"noise scale must be a non-negative number; got {scale}")
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randn((n_samples, *embed.shape), generator=gen, dtype=torch.float64)
    values = (draws * scale * mask[None, :, :, None].cpu()).to(embed.device, embed.dtype)
    return Noise(values, float(scale), mask)


def _restore_hook(clean: torch.Tensor, entries: list[tuple[int, list[int]]], block: int, n: int):
    """Write ``clean[n, p]`` into rows of block k (``block`` rows each) at its positions, per entry."""
    rows, pos = [], []
    for k, positions in entries:
        for p in positions:
            rows.append(torch.arange(k * block, (k + 1) * block))
            pos.append(torch.full((block,), p))
    rows_t, pos_t = torch.cat(rows).to(clean.device), torch.cat(pos).to(clean.device)
    source = clean[rows_t % block % n, pos_t]

    def hook(act, hook):
        out = act.clone()
        out[rows_t, pos_t] = source.to(act.dtype)
        return out
    return hook


def noised_logits(model, tokens: torch.Tensor, noise: Noise, restores: Sequence[RestoreSet] = ({},),
                  clean_cache: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Steps 3-4 for explicit restore sets: logits ``[K, S, N, T, V]``, one forward pass of ``K S N`` rows.

    Each restore set maps hook names (shared or native) to the positions restored together in its
    run; ``{}`` is the plain noised run. ``clean_cache`` (native names) saves the clean pass.
    """
    n, t = tokens.shape
    if noise.values.shape[1:3] != (n, t):
        raise ValueError(f"noise was drawn for prompts of shape {tuple(noise.values.shape[1:3])}, "
                         f"not {(n, t)}")
    s, k = noise.n_samples, len(restores)
    by_hook: dict[str, list[tuple[int, list[int]]]] = {}
    for i, restore in enumerate(restores):
        for name, positions in restore.items():
            by_hook.setdefault(resolve_hook(model, name), []).append((i, check_positions(positions, t)))
    if clean_cache is None or not set(by_hook) <= set(clean_cache):
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=list(by_hook) or ["hook_embed"])
        clean_cache = {name: cache[name] for name in by_hook}
    flat_noise = noise.values.reshape(s * n, t, -1).repeat(k, 1, 1)
    hooks = [("hook_embed", lambda act, hook: act + flat_noise.to(act.dtype))]
    hooks += [(name, _restore_hook(clean_cache[name], entries, s * n, n)) for name, entries in by_hook.items()]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens.repeat(k * s, 1), fwd_hooks=hooks)
    return logits.reshape(k, s, n, t, -1)


@dataclass(frozen=True)
class TraceResult:
    """AIE maps ``{kind: [n_layers, T]}`` (NaN where a site was not traced) and the run summaries."""

    aie: dict[str, torch.Tensor]
    p_clean: float
    p_noised: float
    noise_scale: float
    n_samples: int
    n_prompts: int

    def frame(self) -> pd.DataFrame:
        """Tidy table: ``kind, layer, position, aie, p_restored`` (traced sites only)."""
        rows = [{"kind": kind, "layer": layer, "position": pos, "aie": float(value),
                 "p_restored": self.p_noised + float(value)}
                for kind, grid in self.aie.items() for (layer, pos), value in _cells(grid)]
        return pd.DataFrame(rows, columns=["kind", "layer", "position", "aie", "p_restored"])


def _cells(grid: torch.Tensor):
    """``((layer, position), value)`` of every traced (non-NaN) cell, row-major."""
    for layer, pos in (~torch.isnan(grid)).nonzero().tolist():
        yield (layer, pos), grid[layer, pos]


def _check_kinds(model, kinds: Sequence[str] | None) -> list[str]:
    layers = range(model.cfg.n_layers)
    available = [k for k in TRACE_KINDS if any(kind_hooks(model, k, l) for l in layers)]
    if kinds is None:
        return [k for k in DEFAULT_KINDS if k in available]
    for k in kinds:
        kind_hooks(model, k, 0)  # unknown kinds raise, naming the choices
        if k not in available:
            raise ValueError(f"this model has no {k!r} hooks to restore; it has: {', '.join(available)}")
    return list(dict.fromkeys(kinds))


def causal_trace(model, tokens: torch.Tensor, subject, answer: torch.Tensor,
                 answer_positions: torch.Tensor | None = None, kinds: Sequence[str] | None = None,
                 layers: Iterable[int] | None = None, positions: Iterable[int] | None = None,
                 n_samples: int = 10, noise_scale: float | None = None, seed: int = 0,
                 max_rows: int = 512) -> TraceResult:
    """Steps 1-5. ``subject``: bool ``[N, T]`` or positions; ``answer [N]`` ids read at
    ``answer_positions [N]`` (the last position when None); ``kinds`` / ``layers`` / ``positions``
    choose the sites (all when None)."""
    n, t = tokens.shape
    at = torch.full((n,), t - 1) if answer_positions is None else torch.as_tensor(answer_positions)
    kinds = _check_kinds(model, kinds)
    layers = check_layers(layers, model.cfg.n_layers)
    positions = check_positions(positions, t)
    noise = make_noise(model, tokens, subject, n_samples, noise_scale, seed)
    sites = [(kind, layer, p) for kind in kinds for layer in layers if kind_hooks(model, kind, layer)
             for p in positions]
    names = sorted({h for kind, layer, _ in sites for h in kind_hooks(model, kind, layer)})
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(tokens, names_filter=names or ["hook_embed"])
    clean_cache = {name: cache[name] for name in names}
    prob = lambda logits: answer_prob(logits_at(logits, at), answer)
    p_noised = prob(noised_logits(model, tokens, noise)[0]).double()  # [S, N]
    aie = {kind: torch.full((model.cfg.n_layers, t), float("nan"), dtype=torch.float64) for kind in kinds}
    per_chunk = max(1, max_rows // (noise.n_samples * n))
    for start in range(0, len(sites), per_chunk):
        chunk = sites[start:start + per_chunk]
        restores = [{h: [p] for h in kind_hooks(model, kind, layer)} for kind, layer, p in chunk]
        restored = prob(noised_logits(model, tokens, noise, restores, clean_cache)).double()  # [K, S, N]
        effect = (restored - p_noised).mean(dim=(1, 2))
        for (kind, layer, p), value in zip(chunk, effect.tolist(), strict=True):
            aie[kind][layer, p] = value
    return TraceResult(aie, float(prob(clean_logits).double().mean()), float(p_noised.mean()),
                       noise.scale, noise.n_samples, n)


def toyworld_subject_mask(kind: str, template: int, n_pos: int) -> torch.Tensor:
    """Bool ``[T]``: the subject slot's positions in a ``<bos>``-prefixed prompt of one toyworld template.

    Literal words are one token each (toyworld's tokenizer is word level); slots other than the
    subject are one token (a language name); every occurrence of the subject has the same width, the
    tokens left over. Computed from the template, so it holds for any fact the template is filled with.
    """
    from workbench.tasks.toyworld_world import TEMPLATE_TEXTS

    if kind not in SUBJECT_SLOTS:
        raise ValueError(f"toyworld kind {kind!r} has no subject; choose one of: {', '.join(SUBJECT_SLOTS)}")
    words = TEMPLATE_TEXTS[kind][1][template].split()
    subject = "{" + SUBJECT_SLOTS[kind] + "}"
    occurrences = words.count(subject)
    rest = n_pos - 1 - (len(words) - occurrences)
    if occurrences == 0 or rest < occurrences or rest % occurrences:
        raise ValueError(f"a {n_pos}-token prompt does not fit template {template} of {kind!r}: {' '.join(words)}")
    width, mask, pos = rest // occurrences, torch.zeros(n_pos, dtype=torch.bool), 1
    for word in words:
        step = width if word == subject else 1
        mask[pos:pos + step] = word == subject
        pos += step
    return mask


def toyworld_trace_prompts(task, kind: str = "two_hop", n: int = 16, seed: int = 0,
                           template: int = 0) -> tuple[PromptPairs, torch.Tensor]:
    """Clean fact prompts of one template (``pairs.toyworld_pairs``) and their subject mask ``[N, T]``."""
    pairs = toyworld_pairs(task, kind, n, seed, template)
    mask = toyworld_subject_mask(kind, template, pairs.n_pos)
    return pairs, mask.expand(len(pairs), -1).clone()


__all__ = [
    "DEFAULT_KINDS",
    "TRACE_KINDS",
    "Noise",
    "TraceResult",
    "causal_trace",
    "kind_hooks",
    "make_noise",
    "noised_logits",
    "state_hooks",
    "subject_mask",
    "toyworld_subject_mask",
    "toyworld_trace_prompts",
]
