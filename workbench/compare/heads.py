"""Head matching: which trained attention head realises each compiled selector.

A compiled head for a selector attends uniformly to the keys the selector picks (and to ``<bos>``
when it picks none, the compiler's default); a trained head that does the same job should show the
same pattern. Transformers only: the pattern is read at ``blocks.{l}.attn.hook_pattern``.

Algorithm:

1. Evaluate each selector with the interpreter on every input: a bool ``[query, key]`` matrix over
   program positions (:func:`workbench.compare.variables.selector_matrices`).
2. Turn it into the attention a compiled head would show over the model's token positions: program
   position ``i`` sits at token position ``offset + i``; each query row is normalised to sum 1, and a
   row that selects nothing puts all its weight on position 0 (``<bos>``).
3. Run the trained model once and read every head's pattern ``[batch, head, query, key]``.
4. Similarity per head = the mean, over inputs and query positions, of ``1 - TV(p, q)``, where
   ``TV = 1/2 sum_k |p_k - q_k|`` (equivalently ``sum_k min(p_k, q_k)``): 1 for the same
   distribution, 0 for disjoint supports.
5. Per selector: the best head, its score, and the runner-up (how clearly the best one stands out).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench.compare.variables import AttentionSelector


def selector_attention(matrices: list[np.ndarray], n_pos: int, offset: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: ``(target [batch, n_pos, n_pos], query_mask [batch, n_pos])``."""
    target = torch.zeros(len(matrices), n_pos, n_pos)
    mask = torch.zeros(len(matrices), n_pos, dtype=torch.bool)
    for b, matrix in enumerate(matrices):
        m = torch.as_tensor(np.asarray(matrix, dtype=np.float32))
        n = m.shape[0]
        if m.shape != (n, n) or offset + n > n_pos:
            raise ValueError(f"selector matrix of shape {tuple(m.shape)} does not fit {n_pos} positions "
                             f"after offset {offset}")
        width = m.sum(1, keepdim=True)
        rows = torch.where(width > 0, m / width.clamp_min(1), torch.zeros_like(m))
        target[b, offset:offset + n, offset:offset + n] = rows
        target[b, offset:offset + n, 0] = (width[:, 0] == 0).float()  # nothing selected: attend to <bos>
        mask[b, offset:offset + n] = True
    return target, mask


@torch.no_grad()
def head_patterns(model, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Step 3: ``[batch, layer, head, query, key]`` attention patterns of a transformer."""
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    if not all(name in model.hook_dict for name in names):
        raise ValueError(f"model {type(model).__name__} has no attention patterns (blocks.<l>.attn.hook_pattern); "
                         "head matching needs a transformer")
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start:start + batch_size].to(device),
                                        names_filter=lambda n: n in names)
        chunks.append(torch.stack([cache[name].float().cpu() for name in names], 1))
    return torch.cat(chunks)


def overlap_scores(patterns: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Step 4: ``[layer, head]`` mean of ``sum_k min(p, q)`` over inputs and masked query rows."""
    overlap = torch.minimum(patterns, target[:, None, None]).sum(-1)  # [batch, layer, head, query]
    weights = mask[:, None, None].float()
    return (overlap * weights).sum((0, 3)) / weights.sum((0, 3)).clamp_min(1)


def _ranked(scores: torch.Tensor, n_heads: int) -> tuple[list[str], list[float]]:
    flat = scores.reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True).tolist()
    return [f"L{i // n_heads}H{i % n_heads}" for i in order], [float(flat[i]) for i in order]


def match_heads(selectors: list[AttentionSelector], patterns: torch.Tensor, offset: int = 1) -> pd.DataFrame:
    """Step 5: one row per selector: best head, score, runner-up and its score.

    ``score`` averages over every query row; ``score_selecting`` over the rows where the selector picks
    at least one key (a trained head has no reason to copy the compiler's ``<bos>`` default), with the
    head that is best by that measure beside it.
    """
    rows = []
    n_heads = patterns.shape[2]
    for sel in selectors:
        target, mask = selector_attention(sel.matrices, patterns.shape[-1], offset)
        heads, scores = _ranked(overlap_scores(patterns, target, mask), n_heads)
        selecting = mask & (target[..., 0] < 1)  # rows that select something besides <bos>
        sel_heads, sel_scores = _ranked(overlap_scores(patterns, target, selecting), n_heads)
        rows.append({
            "selector": sel.selector, "computes": sel.consumer,
            "best_head": heads[0], "score": scores[0],
            "runner_up": heads[1] if len(heads) > 1 else None,
            "runner_up_score": scores[1] if len(heads) > 1 else float("nan"),
            "best_head_selecting": sel_heads[0], "score_selecting": sel_scores[0],
            "runner_up_selecting": sel_scores[1] if len(heads) > 1 else float("nan"),
            "selecting_rows": float(selecting.sum() / mask.sum().clamp_min(1)),
        })
    return pd.DataFrame(rows)


def score_matrix(selectors: list[AttentionSelector], patterns: torch.Tensor, offset: int = 1) -> pd.DataFrame:
    """Every (selector, layer, head) score in long form, for heat maps."""
    rows = []
    for sel in selectors:
        target, mask = selector_attention(sel.matrices, patterns.shape[-1], offset)
        scores = overlap_scores(patterns, target, mask)
        for (layer, head), value in np.ndenumerate(scores.numpy()):
            rows.append({"selector": sel.selector, "layer": layer, "head": head, "score": float(value)})
    return pd.DataFrame(rows)
