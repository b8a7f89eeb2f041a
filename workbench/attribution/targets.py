"""What a graph explains: its logit targets, each a direction read at the last position's ``hook_final``.

A target's value is ``direction . final[-1] + bias``:

- a token's logit, as circuit-tracer attributes it: demeaned, ``logit[v] - mean(logits)``
  (softmax-invariant), so ``direction = W_U[:, v] - mean_u W_U[:, u]``, ``bias = b_U[v] - mean(b_U)``;
- a difference of two logits ``logit[a] - logit[b]``;
- any custom direction in the final residual stream, with a label.

:func:`salient_logits` picks the most likely next tokens until their probability reaches
``desired_probability`` (at most ``max_n_logits``); custom targets carry weight 1 in influence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LogitTarget:
    label: str
    token: int  # vocabulary id, or -1 for a custom target
    direction: torch.Tensor  # [d_model], read at hook_final of the last position
    bias: float  # the unembedding bias part of the value
    weight: float  # the target's weight in influence (its probability for a token)


def _token_target(W_U, b_U, token: int, label: str, weight: float) -> LogitTarget:
    return LogitTarget(label, token, (W_U[:, token] - W_U.mean(dim=1)).detach(),
                       float(b_U[token] - b_U.mean()), weight)


@torch.no_grad()
def salient_logits(logits: torch.Tensor, W_U, b_U, token_label, max_n_logits: int = 10,
                   desired_probability: float = 0.95) -> list[LogitTarget]:
    """Top next-token logits at the last position until their cumulative probability reaches
    ``desired_probability``; ``token_label(id) -> str``."""
    if max_n_logits < 1 or not 0 < desired_probability <= 1:
        raise ValueError(f"max_n_logits must be >= 1 and desired_probability in (0, 1]; got {max_n_logits}, "
                         f"{desired_probability}")
    probs = torch.softmax(logits[-1].double(), dim=-1)
    top = torch.topk(probs, min(max_n_logits, probs.shape[0]))
    cumulative = torch.cumsum(top.values, 0)
    n = min(int(torch.searchsorted(cumulative, torch.tensor(desired_probability, dtype=cumulative.dtype))) + 1,
            len(cumulative))
    return [_token_target(W_U, b_U, int(t), token_label(int(t)), float(p))
            for t, p in zip(top.indices[:n], top.values[:n], strict=True)]


def logit_difference(W_U, b_U, token_a: int, token_b: int, label: str) -> LogitTarget:
    """The target ``logit[a] - logit[b]`` (weight 1)."""
    V = W_U.shape[1]
    for t in (token_a, token_b):
        if not 0 <= t < V:
            raise ValueError(f"token id {t} outside the vocabulary (0..{V - 1})")
    return LogitTarget(label, -1, (W_U[:, token_a] - W_U[:, token_b]).detach(), float(b_U[token_a] - b_U[token_b]), 1.0)


def direction_target(direction: torch.Tensor, label: str, d_model: int) -> LogitTarget:
    """A custom direction in the final residual stream (weight 1, no bias)."""
    direction = torch.as_tensor(direction, dtype=torch.float32).flatten()
    if direction.shape[0] != d_model:
        raise ValueError(f"custom target {label!r} has {direction.shape[0]} entries; the model's residual "
                         f"stream has d_model = {d_model}")
    return LogitTarget(label, -1, direction, 0.0, 1.0)


__all__ = ["LogitTarget", "direction_target", "logit_difference", "salient_logits"]
