"""Metrics of a patched (ablated, steered...) run against the clean and corrupted runs.

Every metric reads the logits at the answer prediction and is vectorised over any number of leading
"run" dimensions: ``logits [..., N, V]`` for ``N`` prompts (a sweep stacks its patched runs in front,
``[sites, N, V]``), with ``answer`` / ``contrast`` ids ``[N]`` and clean logits ``[N, V]`` broadcast
against them. Algorithm:

1. :func:`logits_at`: pick each prompt's prediction position from full logits ``[..., N, T, V]`` ->
   ``[..., N, V]`` (``positions [N]``, the :class:`~workbench.interventions.pairs.PromptPairs` field).
2. :func:`logit_diff`: ``logit[answer] - logit[contrast]`` -> ``[..., N]``.
3. :func:`answer_prob`: ``softmax(logits)[answer]`` -> ``[..., N]``.
4. :func:`kl_clean_patched`: ``KL(clean || patched) = sum_v p_clean (log p_clean - log p_patched)``
   -> ``[..., N]`` (0 when the patched run equals the clean one), in float64 log-space.
5. :func:`normalised_score`: ``(m - m_corrupted) / (m_clean - m_corrupted)`` for any per-prompt metric
   ``m``: 0 = the corrupted run, 1 = the clean run; NaN where clean and corrupted give the same value
   (nothing to recover, so no score).
6. :data:`METRICS` / :func:`metric`: the metrics by name, as one signature
   ``(logits, answer, contrast, clean_logits) -> [..., N]``, so a sweep can take a metric name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MetricFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def logits_at(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Step 1: ``[..., N, T, V]`` -> ``[..., N, V]``, the logits at ``positions [N]`` (one per prompt)."""
    positions = torch.as_tensor(positions, device=logits.device).long()
    n, t = logits.shape[-3], logits.shape[-2]
    if positions.shape != (n,):
        raise ValueError(f"positions must be [N={n}], one per prompt; got shape {tuple(positions.shape)}")
    if positions.numel() and not (-t <= int(positions.min()) and int(positions.max()) < t):
        raise ValueError(f"answer positions {positions.tolist()} out of range for {t} positions (0..{t - 1})")
    index = (positions % t).view(n, 1, 1).expand(*logits.shape[:-2], 1, logits.shape[-1])
    return logits.gather(-2, index).squeeze(-2)


def _token_logit(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    ids = torch.as_tensor(ids, device=logits.device).long()
    if ids.shape != logits.shape[-2:-1]:
        raise ValueError(f"token ids must be [N={logits.shape[-2]}]; got shape {tuple(ids.shape)}")
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < logits.shape[-1]):
        raise ValueError(f"token ids {ids.tolist()} out of range for a vocabulary of {logits.shape[-1]}")
    return logits.gather(-1, ids.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)


def logit_diff(logits: torch.Tensor, answer: torch.Tensor, contrast: torch.Tensor,
               clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Step 2: ``logits[..., answer] - logits[..., contrast]``: ``[..., N, V]`` -> ``[..., N]``."""
    return _token_logit(logits, answer) - _token_logit(logits, contrast)


def answer_prob(logits: torch.Tensor, answer: torch.Tensor, contrast: torch.Tensor | None = None,
                clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Step 3: the probability of ``answer``: ``[..., N, V]`` -> ``[..., N]``."""
    return _token_logit(torch.softmax(logits.double(), dim=-1), answer).to(logits.dtype)


def kl_clean_patched(logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """Step 4: ``KL(clean || patched)`` per prompt: logits ``[..., N, V]``, clean ``[N, V]`` -> ``[..., N]``."""
    if clean_logits.shape != logits.shape[-2:]:
        raise ValueError(f"clean logits must be [N, V] = {tuple(logits.shape[-2:])}; "
                         f"got {tuple(clean_logits.shape)}")
    log_p = torch.log_softmax(clean_logits.double(), dim=-1)
    log_q = torch.log_softmax(logits.double(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0).to(logits.dtype)


def normalised_score(value: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """Step 5: ``(value - corrupted) / (clean - corrupted)``; ``value [..., N]``, clean/corrupted ``[N]``.

    0 = the corrupted run, 1 = the clean run; NaN for a prompt whose clean and corrupted values are equal.
    """
    span = clean - corrupted
    safe = torch.where(span == 0, torch.ones_like(span), span)
    return torch.where(span == 0, torch.full_like(value, float("nan")), (value - corrupted) / safe)


def _kl_metric(logits, answer, contrast, clean_logits):
    if clean_logits is None:
        raise ValueError("the 'kl' metric needs the clean run's logits")
    return kl_clean_patched(logits, clean_logits)


METRICS: dict[str, MetricFn] = {"logit_diff": logit_diff, "answer_prob": answer_prob, "kl": _kl_metric}


def metric(name: str) -> MetricFn:
    """Step 6: a metric by name; an unknown name is an error listing the choices."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of: {', '.join(METRICS)}")
    return METRICS[name]


__all__ = [
    "METRICS",
    "MetricFn",
    "answer_prob",
    "kl_clean_patched",
    "logit_diff",
    "logits_at",
    "metric",
    "normalised_score",
]
