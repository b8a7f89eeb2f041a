"""Add-alpha smoothed bigram baseline: the perplexity a model must beat to have learnt more than
which word follows which (the scaling lecture's ladder: uniform ~V, bigram, ..., Transformer)."""

from __future__ import annotations

import math

import torch

from workbench.tasks.base import Batch


def _transitions(batch: Batch, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(previous token, target token) of every target under ``loss_mask``, as flat int64 tensors."""
    mask = batch.loss_mask[:, 1:]
    previous, target = batch.tokens[:, :-1][mask], batch.tokens[:, 1:][mask]
    if previous.numel() and int(torch.maximum(previous, target).max()) >= vocab_size:
        raise ValueError(f"token id {int(torch.maximum(previous, target).max())} >= vocab_size={vocab_size}")
    return previous, target


def bigram_perplexity(train: Batch, test: Batch, vocab_size: int, alpha: float = 0.1) -> float:
    """Perplexity on ``test``'s loss-mask targets of a bigram model fit on ``train``'s.

    ``p(next | prev) = (count(prev, next) + alpha) / (count(prev) + alpha * vocab_size)``, counted
    over the same (previous token, target) transitions the language-model loss scores, so the two
    numbers are comparable. Perplexity = exp(mean negative log-likelihood), i.e. 2^(bits per token).
    """
    if alpha <= 0:
        raise ValueError(
            f"alpha must be > 0 (unsmoothed counts give unseen bigrams zero probability), got {alpha}"
        )
    previous, target = _transitions(train, vocab_size)
    counts = torch.bincount(previous * vocab_size + target, minlength=vocab_size * vocab_size)
    counts = counts.reshape(vocab_size, vocab_size).double()
    log_probs = (counts + alpha).log() - (counts.sum(dim=1, keepdim=True) + alpha * vocab_size).log()
    test_previous, test_target = _transitions(test, vocab_size)
    if test_target.numel() == 0:
        raise ValueError("the test batch has no targets under its loss_mask")
    nll = -log_probs[test_previous, test_target].mean().item()
    return math.exp(nll)
