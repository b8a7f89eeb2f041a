"""Attribution patching over a component graph: AtP (nodes), EAP and EAP-IG (edges), checked against real
activation patching, on every architecture.

The graph (``path_patching``): senders are the embedding, per layer the mixer (each attention head on a
Transformer) and the MLP; receivers are per layer the mixer's and the MLP's input residual, and the
logits. An edge runs from a sender to every receiver after it. A sender's *output* is what it adds to
the residual (a head's is ``z_h W_O[h]``), so a sender's change ``delta = corrupted - clean`` output is
a vector in the residual stream.

Gradients at a receiver's input, from one backward pass: blocks read the residual as
``resid_mid = resid_pre + mixer(resid_pre)`` and ``resid_post = resid_mid + mlp(resid_mid)``, so the
gradient flowing into the mixer alone is ``g(resid_pre) - g(resid_mid)``, into the MLP alone
``g(resid_mid) - g(resid_post)``, into the logits ``g(last resid_post)`` (``g`` = d metric / d value).
Recurrent mixers read many positions; the identity holds for the whole ``[N, T, d]`` value.

Algorithm:

1. Clean and corrupted passes: every sender's output ``[N, T, d]`` in both; ``delta_s`` per sender.
2. Gradients (:func:`receiver_gradients`): the metric, averaged over pairs, at the clean prompts; the
   residual hooks recorded and differentiated as above -> ``G_r [N, T, d]`` per receiver and the
   gradient at each sender's output (``g(resid_mid)`` for a mixer or head, ``g(resid_post)`` for an
   MLP, ``g(resid_pre 0)`` for the embedding). EAP-IG (Hanna et al. 2024) averages the gradients over
   ``k`` points along the input interpolation: ``hook_embed = e_corr + (i / k) (e_clean - e_corr)``,
   ``i = 1..k``, all ``k N`` rows in one forward and one backward pass (``k = 1`` is EAP).
3. Scores: AtP node score ``delta_s . g_s``; edge score ``delta_s . G_r`` (summed over positions and
   width, averaged over pairs). A node's AtP score is the sum of its outgoing edges' scores (the
   receiver gradients telescope to the sender's).
4. Real edge patching (:func:`real_edge_effects`): the sender's change added to that receiver's input
   only: ``+delta_s`` at the receiver's residual hook (``resid_pre`` for a mixer, ``resid_mid`` for an
   MLP, the last ``resid_post`` for the logits) and ``-delta_s`` at the next one (``resid_mid`` /
   ``resid_post``), so the skip connection carries the clean value on. Every edge is a block of ``N``
   rows; edges are stacked into passes of at most ``max_rows`` rows. Effect = patched - clean metric.
   Real node patching is ``patching.patch_runs`` (noising: the sender's hook takes its corrupted value).
5. Agreement (:func:`agreement`): Spearman rank correlation of scores and real effects, and the
   overlap of their top-k edges by absolute value. :func:`edge_attribution` returns the tidy tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.interventions.ablation import Component
from workbench.interventions.metrics import logits_at, metric
from workbench.interventions.pairs import PromptPairs
from workbench.interventions.patching import Site, patch_runs
from workbench.interventions.path_patching import Receiver, node_label, receivers, senders


def _resid(kind: str, layer: int) -> str:
    return f"blocks.{layer}.hook_resid_{kind}"


def _receiver_hooks(r: Receiver, n_layers: int) -> tuple[str, str | None]:
    """(residual hook the receiver reads, the next residual hook, where the skip path resumes)."""
    if r.kind == "mixer_in":
        return _resid("pre", r.layer), _resid("mid", r.layer)
    if r.kind == "mlp_in":
        return _resid("mid", r.layer), _resid("post", r.layer)
    return _resid("post", n_layers - 1), None


def _sender_hook(c: Component) -> str:
    return c.hooks[0]


@torch.no_grad()
def pair_caches(model, pairs: PromptPairs, sender_list: Sequence[Component]):
    """Step 1's two passes: ``(clean answer logits [N, V], clean cache, corrupted cache)``, each cache
    holding ``hook_embed`` and every sender's hook."""
    names = sorted({"hook_embed", *(_sender_hook(c) for c in sender_list)})
    clean_logits, clean = model.run_with_cache(pairs.clean, names_filter=names)
    _, corrupted = model.run_with_cache(pairs.corrupted, names_filter=names)
    return logits_at(clean_logits, pairs.positions), {n: clean[n] for n in names}, {n: corrupted[n] for n in names}


def sender_outputs(model, cache: dict[str, torch.Tensor], sender_list: Sequence[Component]) -> torch.Tensor:
    """What each sender adds to the residual, from a cache of its hooks: ``[S, N, T, d]``."""
    out = []
    for c in sender_list:
        value = cache[_sender_hook(c)]
        if c.kind == "head":  # z_h W_O[h]: the head's share of the attention output (b_O is constant)
            value = torch.einsum("ntd,dm->ntm", value[:, :, c.index], model.blocks[c.layer].attn.W_O[c.index])
        out.append(value)
    return torch.stack(out).detach()


def receiver_gradients(model, pairs: PromptPairs, e_clean: torch.Tensor, e_corrupted: torch.Tensor,
                       clean_at: torch.Tensor, metric_name: str = "logit_diff", steps: int = 1,
                       max_rows: int = 512) -> dict[str, torch.Tensor]:
    """Step 2: ``{residual hook: gradient [N, T, d]}`` of the mean metric, averaged over ``steps``
    points ``hook_embed = e_corrupted + (i / steps) (e_clean - e_corrupted)`` (``steps = 1``: clean).
    ``clean_at``: the clean answer logits ``[N, V]`` (the KL metric's reference)."""
    if steps < 1:
        raise ValueError(f"integrated-gradient steps must be >= 1; got {steps}")
    score, n, n_layers = metric(metric_name), len(pairs), model.cfg.n_layers
    names = [_resid(kind, l) for l in range(n_layers) for kind in ("pre", "mid", "post")]
    alphas = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    per_pass = max(1, max_rows // max(n, 1))
    total = {name: torch.zeros_like(e_clean) for name in names}
    for start in range(0, steps, per_pass):
        chunk = alphas[start:start + per_pass].to(e_clean.device, e_clean.dtype)
        k = len(chunk)
        # written from the clean end, so that alpha = 1 is the clean embedding bit for bit
        embed = (e_clean - (1 - chunk.view(k, 1, 1, 1)) * (e_clean - e_corrupted)).reshape(k * n, *e_clean.shape[1:])
        saved: dict[str, torch.Tensor] = {}
        hooks = [("hook_embed", lambda act, hook, embed=embed: embed.detach().requires_grad_(True))]
        hooks += [(name, lambda act, hook, saved=saved: saved.__setitem__(hook.name, act)) for name in names]
        with torch.enable_grad():
            logits = model.run_with_hooks(pairs.clean.repeat(k, 1), fwd_hooks=hooks)
            values = score(logits_at(logits, pairs.positions.repeat(k)), pairs.answer.repeat(k),
                           pairs.contrast.repeat(k), clean_at.repeat(k, 1))
            grads = torch.autograd.grad(values.sum() / (n * steps), [saved[name] for name in names],
                                        allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            if grad is not None:  # None: the metric does not depend on it (nothing reads it)
                total[name] += grad.detach().reshape(k, n, *grad.shape[1:]).sum(0)
    return total


def _receiver_gradient(grads: dict[str, torch.Tensor], r: Receiver, n_layers: int) -> torch.Tensor:
    into, resumes = _receiver_hooks(r, n_layers)
    return grads[into] - grads[resumes] if resumes else grads[into]


def _sender_gradient(grads: dict[str, torch.Tensor], c: Component) -> torch.Tensor:
    if c.kind == "embed":
        return grads[_resid("pre", 0)]
    return grads[_resid("post" if c.kind == "mlp" else "mid", c.layer)]


def _deltas(model, clean: dict, corrupted: dict, sender_list) -> torch.Tensor:
    return sender_outputs(model, corrupted, sender_list) - sender_outputs(model, clean, sender_list)


def edge_mask(sender_list: Sequence[Component], receiver_list: Sequence[Receiver]) -> torch.Tensor:
    """Bool ``[S, R]``: which (sender, receiver) pairs are edges (the sender writes before the read)."""
    return torch.tensor([[r.reads(c) for r in receiver_list] for c in sender_list], dtype=torch.bool)


def attribution_scores(model, pairs: PromptPairs, sender_list: Sequence[Component] | None = None,
                       receiver_list: Sequence[Receiver] | None = None, metric_name: str = "logit_diff",
                       steps: int = 1, max_rows: int = 512, *, caches: tuple | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-3: ``(node scores [S], edge scores [S, R])`` (NaN where no edge); ``steps`` > 1: EAP-IG.
    ``caches``: :func:`pair_caches` of these senders when already computed."""
    sender_list = senders(model, pairs.clean) if sender_list is None else list(sender_list)
    receiver_list = receivers(model) if receiver_list is None else list(receiver_list)
    n_layers = model.cfg.n_layers
    clean_at, clean, corrupted = caches or pair_caches(model, pairs, sender_list)
    grads = receiver_gradients(model, pairs, clean["hook_embed"], corrupted["hook_embed"], clean_at, metric_name,
                               steps, max_rows)
    deltas = _deltas(model, clean, corrupted, sender_list).double()  # [S, N, T, d]
    g_receivers = torch.stack([_receiver_gradient(grads, r, n_layers) for r in receiver_list]).double()
    g_senders = torch.stack([_sender_gradient(grads, c) for c in sender_list]).double()
    edges = torch.einsum("sntd,rntd->sr", deltas, g_receivers)
    nodes = torch.einsum("sntd,sntd->s", deltas, g_senders)
    return nodes.cpu(), edges.masked_fill(~edge_mask(sender_list, receiver_list).to(edges.device), float("nan")).cpu()


def _edge_hooks(entries: list[tuple[int, str, torch.Tensor]], n: int, k: int):
    """One hook per residual name adding each entry's ``[N, T, d]`` change to its block of rows."""
    by_name: dict[str, torch.Tensor] = {}
    for block, name, change in entries:
        if name not in by_name:
            by_name[name] = change.new_zeros(k * n, *change.shape[1:])
        by_name[name][block * n:(block + 1) * n] += change
    return [(name, lambda act, hook, add=add: act + add.to(act.dtype)) for name, add in by_name.items()]


@torch.no_grad()
def real_edge_effects(model, pairs: PromptPairs, sender_list: Sequence[Component] | None = None,
                      receiver_list: Sequence[Receiver] | None = None, metric_name: str = "logit_diff",
                      max_rows: int = 512, *, caches: tuple | None = None) -> torch.Tensor:
    """Step 4: ``[S, R]`` patched - clean metric (mean over pairs) of patching each edge alone (NaN: no edge).
    ``caches``: :func:`pair_caches` of these senders when already computed."""
    sender_list = senders(model, pairs.clean) if sender_list is None else list(sender_list)
    receiver_list = receivers(model) if receiver_list is None else list(receiver_list)
    score, n, n_layers = metric(metric_name), len(pairs), model.cfg.n_layers
    clean_logits, clean_cache, corrupted_cache = caches or pair_caches(model, pairs, sender_list)
    deltas = _deltas(model, clean_cache, corrupted_cache, sender_list)
    mask = edge_mask(sender_list, receiver_list)
    edges = mask.nonzero().tolist()
    clean = score(clean_logits, pairs.answer, pairs.contrast, clean_logits).double()
    out = torch.full(mask.shape, float("nan"), dtype=torch.float64)
    per_pass = max(1, max_rows // max(n, 1))
    for start in range(0, len(edges), per_pass):
        chunk = edges[start:start + per_pass]
        entries = []
        for block, (s, r) in enumerate(chunk):
            into, resumes = _receiver_hooks(receiver_list[r], n_layers)
            entries.append((block, into, deltas[s]))
            if resumes:
                entries.append((block, resumes, -deltas[s]))
        k = len(chunk)
        logits = model.run_with_hooks(pairs.clean.repeat(k, 1), fwd_hooks=_edge_hooks(entries, n, k))
        values = score(logits_at(logits, pairs.positions.repeat(k)), pairs.answer.repeat(k),
                       pairs.contrast.repeat(k), clean_logits.repeat(k, 1)).double()
        effects = (values.reshape(k, n) - clean).mean(-1)
        for (s, r), effect in zip(chunk, effects.tolist(), strict=True):
            out[s, r] = effect
    return out


def real_node_effects(model, pairs: PromptPairs, sender_list: Sequence[Component],
                      metric_name: str = "logit_diff") -> torch.Tensor:
    """``[S]`` patched - clean metric of each sender's activation patch (``patching.patch_runs``, noising)."""
    runs = [[Site(_sender_hook(c), None, c.index, 2, "head") if c.kind == "head" else Site(_sender_hook(c))]
            for c in sender_list]
    values, clean, _, _ = patch_runs(model, pairs, runs, direction="noise", metric_name=metric_name)
    return (values.double() - clean.double()).mean(-1)


def _ranks(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(method="average").to_numpy()


def agreement(scores, real, k: int = 10) -> dict[str, float]:
    """Step 5: Spearman rank correlation (average ranks for ties) and top-``k`` overlap by |value|."""
    a, b = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(real, dtype=np.float64).ravel()
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 2:
        raise ValueError(f"agreement needs at least 2 scored edges; got {len(a)}")
    ra, rb = _ranks(a), _ranks(b)
    spearman = float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")
    k = min(k, len(a))
    top_a, top_b = set(np.argsort(-np.abs(a), kind="stable")[:k]), set(np.argsort(-np.abs(b), kind="stable")[:k])
    return {"spearman": spearman, "top_k_overlap": len(top_a & top_b) / k, "k": k, "n_edges": len(a)}


@dataclass(frozen=True)
class EdgeAttribution:
    """Tidy tables: ``edges`` (one row per edge: eap, eap_ig, real), ``nodes`` (atp, real) and
    ``agreement`` (per method: spearman, top_k_overlap, k, n_edges)."""

    edges: pd.DataFrame
    nodes: pd.DataFrame
    agreement: pd.DataFrame


def edge_attribution(model, pairs: PromptPairs, heads: bool | None = None, metric_name: str = "logit_diff",
                     ig_steps: int = 5, top_k: int = 10, max_rows: int = 512) -> EdgeAttribution:
    """Steps 1-5 on the model's whole component graph (heads where the model has them)."""
    sender_list, receiver_list = senders(model, pairs.clean, heads), receivers(model)
    args = (model, pairs, sender_list, receiver_list, metric_name)
    caches = pair_caches(model, pairs, sender_list)  # step 1 once, for all three
    atp, eap = attribution_scores(*args, steps=1, max_rows=max_rows, caches=caches)
    _, eap_ig = attribution_scores(*args, steps=ig_steps, max_rows=max_rows, caches=caches)
    real = real_edge_effects(*args, max_rows=max_rows, caches=caches)
    mask = edge_mask(sender_list, receiver_list)
    rows = [{"sender": node_label(sender_list[s]), "receiver": receiver_list[r].label,
             "sender_kind": sender_list[s].kind, "sender_layer": sender_list[s].layer,
             "sender_index": sender_list[s].index, "receiver_kind": receiver_list[r].kind,
             "receiver_layer": receiver_list[r].layer, "eap": float(eap[s, r]), "eap_ig": float(eap_ig[s, r]),
             "real": float(real[s, r])} for s, r in mask.nonzero().tolist()]
    edges = pd.DataFrame(rows)
    real_nodes = real_node_effects(model, pairs, sender_list, metric_name)
    nodes = pd.DataFrame({"node": [node_label(c) for c in sender_list], "kind": [c.kind for c in sender_list],
                          "layer": [c.layer for c in sender_list], "atp": atp.tolist(), "real": real_nodes.tolist()})
    stats = [{"method": name, "target": "edges", **agreement(edges[name], edges["real"], top_k)}
             for name in ("eap", "eap_ig")]
    stats.append({"method": "atp", "target": "nodes", **agreement(nodes["atp"], nodes["real"], top_k)})
    return EdgeAttribution(edges, nodes, pd.DataFrame(stats))


__all__ = [
    "EdgeAttribution",
    "agreement",
    "attribution_scores",
    "edge_attribution",
    "edge_mask",
    "pair_caches",
    "real_edge_effects",
    "real_node_effects",
    "receiver_gradients",
    "sender_outputs",
]
