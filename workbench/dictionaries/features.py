"""Feature data for a replacement set on a model and task: what each feature fires on and writes.

The set's features are read on ``n_sequences`` sequences of the task (real tokens only, ``tokens !=
pad``); each dictionary layer's features are its own rows, named by (member, layer, feature) where
``layer`` is the model layer of the dictionary layer's input hook. For every feature:

- top contexts: the ``n_top`` highest activations, plus ``n_per_band`` samples from each of
  ``n_bands`` quantile bands of its *nonzero* activations (band 0 the lowest quantiles, the last band
  the highest; samples spread evenly over the band's ranks with a seeded offset). A context is the
  sequence index, position, activation, the token, and the window ``window`` tokens either side as
  text with the token marked ``[[tok]]``.
- histogram: bin 0 counts the tokens where the feature is exactly 0; bins 1..``n_bins`` split the
  feature's nonzero activations evenly over ``[min, max]`` of those values (the feature row's
  ``nonzero_min`` / ``nonzero_max``). Counts sum to the tokens; bins 1.. that hold nothing are not
  stored (a sparse feature's histogram is mostly empty bins), nor are the bins' edges: they follow from
  the range and ``n_bins`` (``summary.json``'s ``histogram_bins``), and :func:`with_bin_edges` adds them
  (the edges were 80% of the committed histogram bytes).
- density: fraction of tokens where the feature is nonzero.
- direct logit effects: the feature's decoder direction in model units (summed over the layers a CLT
  feature writes to, divided by the output scales) times the unembedding ``W_U`` ``[d_model, vocab]``;
  the ``n_logits`` top and bottom tokens with their values. Direct path only: the final norm is ignored.

Files (each written atomically) under ``<set folder>/features/``: ``features.parquet`` (one row per
feature), ``contexts.parquet``, ``histograms.parquet``, then ``summary.json``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import torch

from workbench.dictionaries.activations import real_token_rows
from workbench.dictionaries.models import Dictionary
from workbench.store.atomic import atomic_write_json, atomic_write_parquet

FEATURES_DIR = "features"


def unembedding_matrix(model) -> torch.Tensor:
    """``[d_model, d_vocab]`` reading ``hook_final``: a transformer's ``W_U``, else the ``unembed`` linear
    map's weight transposed (every other architecture, a user's included: the protocol in
    docs/architectures.md)."""
    if hasattr(model, "W_U"):
        return model.W_U
    unembed = getattr(model, "unembed", None)
    if isinstance(unembed, torch.nn.Linear):
        return unembed.weight.T
    raise TypeError(f"no unembedding known for {type(model).__name__}: give it a W_U [d_model, d_vocab] or an "
                    "`unembed` nn.Linear reading hook_final")


def model_layer_of(hook: str) -> int:
    found = re.match(r"blocks\.(\d+)\.", hook)
    if not found:
        raise ValueError(f"hook {hook!r} is not a per-layer hook (blocks.<layer>.*)")
    return int(found.group(1))


@torch.no_grad()
def feature_activations(model, d: Dictionary, tokens: torch.Tensor, pad_id: int, batch_size: int = 32):
    """``(acts [real tokens, layers, features], row sequence index, row position)`` in (sequence,
    position) order."""
    c = d.config
    parts = []
    for s in range(0, tokens.shape[0], batch_size):
        rows = real_token_rows(model, tokens[s:s + batch_size], c.input_hooks, pad_id)
        x = torch.stack([rows[h].float() for h in c.input_hooks], dim=1)
        acts = d.encode(x if c.n_layers > 1 else x[:, 0])
        parts.append(acts if c.n_layers > 1 else acts[:, None])
    mask = tokens != pad_id
    seq = torch.arange(tokens.shape[0])[:, None].expand_as(tokens)[mask]
    pos = torch.arange(tokens.shape[1])[None].expand_as(tokens)[mask]
    return torch.cat(parts), seq, pos


def logit_effects(model, d: Dictionary) -> torch.Tensor:
    """``[layers, features, vocab]``: each feature's model-unit decoder direction @ ``W_U``."""
    W_U = unembedding_matrix(model).detach().float().cpu()
    scales = d.output_scale.detach().float().cpu()
    out = []
    for source, w in enumerate(d.W_dec):  # [features, targets, d_out], targets = layers source..L-1
        direction = (w.detach().float().cpu() / scales[source:, None]).sum(dim=1)
        out.append(direction @ W_U)
    return torch.stack(out)


def context_ranks(sorted_acts: torch.Tensor, n_top: int, n_bands: int, n_per_band: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ranks [features, picks], band [picks])`` into each feature's descending-sorted column;
    band -1 is the top group. Ranks past a feature's active count are -1 (no context)."""
    n_rows, n_features = sorted_acts.shape
    active = (sorted_acts != 0).sum(dim=0)  # [features]
    top = torch.arange(min(n_top, n_rows))[None].expand(n_features, -1)
    top = torch.where(top < active[:, None], top, -1)
    # band b covers ascending quantiles [b/n, (b+1)/n) of the active values: descending ranks
    # [active * (n - b - 1) / n, active * (n - b) / n)
    offset = torch.rand(n_features, n_bands, 1, generator=generator)
    b = torch.arange(n_bands)[None, :, None]
    lo = (active[:, None, None] * (n_bands - b - 1)) // n_bands
    hi = (active[:, None, None] * (n_bands - b)) // n_bands
    j = torch.arange(n_per_band)[None, None]
    ranks = lo + ((j + offset) / n_per_band * (hi - lo)).long()
    ranks = torch.where(hi > lo, ranks, -1).reshape(n_features, -1)
    band = torch.cat([torch.full((top.shape[1],), -1), torch.arange(n_bands).repeat_interleave(n_per_band)])
    return torch.cat([top, ranks], dim=1), band


def _context_texts(tokenizer, tokens: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor, window: int) -> list[str]:
    texts = []
    pad_id = tokenizer.pad_id
    for s, p in zip(seq.tolist(), pos.tolist(), strict=True):  # one per kept context, not per token
        row = tokens[s]
        left = [t for t in row[max(0, p - window):p].tolist() if t != pad_id]
        right = [t for t in row[p + 1:p + 1 + window].tolist() if t != pad_id]
        texts.append(" ".join([tokenizer.decode(left), f"[[{tokenizer.decode([int(row[p])])}]]",
                               tokenizer.decode(right)]).strip())
    return texts


def layer_contexts(acts: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor, tokenizer,
                   n_top: int, n_bands: int, n_per_band: int, window: int, seed: int) -> pd.DataFrame:
    """Contexts of one dictionary layer's features ``acts [rows, features]``."""
    sorted_acts, order = acts.sort(dim=0, descending=True, stable=True)
    ranks, band = context_ranks(sorted_acts, n_top, n_bands, n_per_band, torch.Generator().manual_seed(seed))
    feature = torch.arange(acts.shape[1])[:, None].expand_as(ranks)
    keep = ranks >= 0
    f, r, bnd = feature[keep], ranks[keep], band[None].expand_as(ranks)[keep]
    rows = order[r, f]
    frame = pd.DataFrame({"feature": f.numpy(), "group": ["top" if x < 0 else "band" for x in bnd.tolist()],
                          "band": bnd.numpy(), "rank": r.numpy(), "sequence_index": seq[rows].numpy(),
                          "position": pos[rows].numpy(), "activation": acts[rows, f].numpy()})
    frame = frame.drop_duplicates(["feature", "group", "rank"]).reset_index(drop=True)
    s_idx, p_idx = torch.tensor(frame["sequence_index"].tolist()), torch.tensor(frame["position"].tolist())
    frame["token"] = tokenizer.tokens(tokens[s_idx, p_idx].tolist())
    frame["text"] = _context_texts(tokenizer, tokens, s_idx, p_idx, window)
    return _add_windows(frame, acts, seq, pos, tokens, tokenizer, window)


def _add_windows(frame: pd.DataFrame, acts: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor,
                 tokenizer, window: int) -> pd.DataFrame:
    """Per-token highlighting data: each context's window tokens, the feature's activation on each
    (pads and positions outside the sequence dropped) and the index of the context's own token."""
    row_of = torch.full(tokens.shape, -1, dtype=torch.long)
    row_of[seq, pos] = torch.arange(len(seq))
    s_idx = torch.tensor(frame["sequence_index"].tolist(), dtype=torch.long)
    p_idx = torch.tensor(frame["position"].tolist(), dtype=torch.long)
    f_idx = torch.tensor(frame["feature"].tolist(), dtype=torch.long)
    offsets = torch.arange(-window, window + 1)
    where = p_idx[:, None] + offsets[None]  # [contexts, 2w + 1]
    inside = (where >= 0) & (where < tokens.shape[1])
    rows = torch.where(inside, row_of[s_idx[:, None], where.clamp(0, tokens.shape[1] - 1)], -1)
    valid = rows >= 0  # real tokens only
    values = acts[rows.clamp_min(0), f_idx[:, None].expand_as(rows)]
    ids = tokens[s_idx[:, None], where.clamp(0, tokens.shape[1] - 1)]
    names, vals, centers = [], [], []
    for keep, id_row, v_row in zip(valid.tolist(), ids.tolist(), values.tolist(), strict=True):
        kept = [i for i, k in enumerate(keep) if k]
        names.append(tokenizer.tokens([id_row[i] for i in kept]))
        vals.append([float(v_row[i]) for i in kept])
        centers.append(kept.index(window) if window in kept else -1)
    frame["window_tokens"], frame["window_activations"], frame["window_center"] = names, vals, centers
    return frame


DEFAULT_BINS = 20


def nonzero_range(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per feature, the min and max of its nonzero activations (both 0 for a feature never active)."""
    nonzero = acts != 0
    big = torch.finfo(acts.dtype).max
    lo = torch.where(nonzero, acts, big).amin(dim=0)
    hi = torch.where(nonzero, acts, -big).amax(dim=0)
    active = nonzero.any(0)
    return torch.where(active, lo, 0.0), torch.where(active, hi, 0.0)


def _bin_width(lo, hi, n_bins: int):
    # the same float32 arithmetic when binning (torch) and when the edges are read back (numpy)
    return (hi - lo).clip(1e-12, None) / n_bins


def layer_histograms(acts: torch.Tensor, n_bins: int, nonzero_lo: torch.Tensor, nonzero_hi: torch.Tensor
                     ) -> pd.DataFrame:
    """Bin 0: exact zeros; bins 1..n_bins: nonzero values evenly over each feature's [min, max]
    (``nonzero_lo``, ``nonzero_hi``: :func:`nonzero_range`)."""
    n_features = acts.shape[1]
    nonzero = acts != 0
    lo, hi = nonzero_lo, nonzero_hi
    width = _bin_width(lo, hi, n_bins)
    bins = ((acts - lo) / width).floor().long().clamp(0, n_bins - 1) + 1
    bins = torch.where(nonzero, bins, 0)
    flat = bins + torch.arange(n_features)[None] * (n_bins + 1)
    counts = torch.bincount(flat.reshape(-1), minlength=n_features * (n_bins + 1)).reshape(n_features, n_bins + 1)
    frame = pd.DataFrame({"feature": torch.arange(n_features).repeat_interleave(n_bins + 1).numpy(),
                          "bin": torch.arange(n_bins + 1).repeat(n_features).numpy(),
                          "count": counts.reshape(-1).numpy()})
    return frame[(frame["bin"] == 0) | (frame["count"] > 0)].reset_index(drop=True)  # empty bins: not stored


def with_bin_edges(histograms: pd.DataFrame, features: pd.DataFrame, n_bins: int) -> pd.DataFrame:
    """``histograms`` with each bin's ``lo`` / ``hi`` (0, 0 for bin 0), from the feature rows' nonzero range."""
    key = ["member", "layer", "feature"]
    ranges = features[[*key, "nonzero_min", "nonzero_max"]]
    out = histograms.drop(columns=["lo", "hi"], errors="ignore").merge(ranges, on=key, how="left", validate="m:1")
    lo = out["nonzero_min"].to_numpy(dtype="float32")
    width = _bin_width(lo, out["nonzero_max"].to_numpy(dtype="float32"), n_bins)
    steps = out["bin"].to_numpy()
    first = steps >= 1
    out["lo"] = (lo + width * (steps - 1).astype("float32")) * first
    out["hi"] = (lo + width * steps.astype("float32")) * first
    return out.drop(columns=["nonzero_min", "nonzero_max"])


def layer_features(acts: torch.Tensor, effects: torch.Tensor, tokenizer, n_logits: int, nonzero_lo: torch.Tensor,
                   nonzero_hi: torch.Tensor) -> pd.DataFrame:
    """One row per feature of one dictionary layer: density, activation stats (its nonzero range from
    :func:`nonzero_range`), logit effects."""
    nonzero = acts != 0
    k = min(n_logits, effects.shape[-1])
    top_v, top_i = effects.topk(k, dim=-1)
    bot_v, bot_i = (-effects).topk(k, dim=-1)
    count = nonzero.sum(0)
    return pd.DataFrame({
        "feature": range(acts.shape[1]), "density": (count.float() / max(1, acts.shape[0])).numpy(),
        "nonzero_min": nonzero_lo.numpy(), "nonzero_max": nonzero_hi.numpy(),
        "max_activation": acts.amax(0).numpy(),
        "mean_active_activation": (acts.sum(0) / count.clamp_min(1)).numpy(),
        "top_tokens": [tokenizer.tokens(row) for row in top_i.tolist()], "top_values": top_v.tolist(),
        "bottom_tokens": [tokenizer.tokens(row) for row in bot_i.tolist()], "bottom_values": (-bot_v).tolist()})


@torch.no_grad()
def feature_data(model, dictionaries: dict[str, Dictionary], tokens: torch.Tensor, tokenizer, *, n_top: int = 10,
                 n_bands: int = 4, n_per_band: int = 5, n_bins: int = DEFAULT_BINS, n_logits: int = 10, window: int = 8,
                 seed: int = 0, batch_size: int = 32) -> dict[str, pd.DataFrame]:
    """``{"features", "contexts", "histograms"}`` frames for every member and layer of the set."""
    frames: dict[str, list[pd.DataFrame]] = {"features": [], "contexts": [], "histograms": []}
    for member, d in dictionaries.items():
        d.eval()
        acts, seq, pos = feature_activations(model, d, tokens, tokenizer.pad_id, batch_size)
        effects = logit_effects(model, d)
        for i, hook in enumerate(d.config.input_hooks):
            a = acts[:, i].float().cpu()
            lo, hi = nonzero_range(a)  # the features' stats and their histograms' bins
            made = {"features": layer_features(a, effects[i], tokenizer, n_logits, lo, hi),
                    "contexts": layer_contexts(a, seq, pos, tokens, tokenizer, n_top, n_bands, n_per_band,
                                               window, seed + i),
                    "histograms": layer_histograms(a, n_bins, lo, hi)}
            for name, frame in made.items():
                frame.insert(0, "layer", model_layer_of(hook))
                frame.insert(0, "member", member)
                frames[name].append(frame)
    return {name: pd.concat(parts, ignore_index=True) for name, parts in frames.items()}


def write_feature_data(folder: str | Path, frames: dict[str, pd.DataFrame], summary: dict) -> Path:
    """Each parquet file atomically, then ``summary.json`` (its presence marks a finished write)."""
    out = Path(folder) / FEATURES_DIR
    for name, frame in frames.items():
        atomic_write_parquet(out / f"{name}.parquet", frame)
    atomic_write_json(out / "summary.json", summary)
    return out


__all__ = ["DEFAULT_BINS", "FEATURES_DIR", "feature_activations", "feature_data", "logit_effects", "nonzero_range",
           "unembedding_matrix", "with_bin_edges", "write_feature_data"]
