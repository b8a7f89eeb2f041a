"""Greedy or sampled generation with an intervention applied at every step, on any architecture.

The intervention is a list of transformer_lens fwd hooks ``[(hook name, fn), ...]`` (shared, native or
state hook names), or a function ``current tokens [B, t] -> hooks`` for interventions that depend on
the sequence so far (feature interventions recompute their held error terms on it).

Algorithm, for ``max_new_tokens`` steps:

1. Take the hooks for the current sequence (the list, or the function's answer for it).
2. Run the model on the WHOLE current sequence with those hooks (``run_with_hooks``) and keep the
   last position's logits.
3. Pick the next token: the argmax (``temperature == 0``, greedy), or a sample from
   ``softmax(logits / temperature)``, restricted to the ``top_k`` largest when given, drawn from a
   ``torch.Generator`` seeded with ``seed`` (the same seed gives the same tokens).
4. Append it; a row that has produced ``stop_token`` keeps producing it, and generation ends early
   once every row has.

Why the whole prefix each step. Recurrent models carry state (``BlockLM.forward(tokens, state=...,
return_state=True)``), and the Transformer has a KV cache, either of which makes a step cost one
position. But a hook on a carried step sees only the new position: an intervention at position 3, or
one patching a recurrent state, would act once (or never) instead of at every step, and positions in
the hook would be counted from the step, not from the start. Rerunning the prefix keeps every hook's
positions aligned with the sequence and applies the intervention to every position at every step,
exactly, for every architecture; it costs O(n^2) positions over n steps, nothing at the workbench's
sequence lengths. With no hooks the result equals plain greedy decoding with carried state (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Hooks = list[tuple[str, Callable]]


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator) -> torch.Tensor:
    """Step 3: ``[B]`` next tokens from last-position logits ``[B, V]``."""
    if temperature == 0:
        return logits.argmax(-1)
    scaled = logits.double() / temperature
    if top_k is not None:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


def _check(model, tokens: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be int64 [batch, pos]; got {tuple(tokens.shape)} {tokens.dtype}")
    if max_new_tokens < 0 or temperature < 0:
        raise ValueError(f"max_new_tokens and temperature must be >= 0; got {max_new_tokens}, {temperature}")
    vocab = model.cfg.d_vocab
    if top_k is not None and not 1 <= top_k <= vocab:
        raise ValueError(f"top_k={top_k} out of range: choose 1..{vocab} (the vocabulary size)")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and tokens.shape[1] + max_new_tokens > n_ctx:
        raise ValueError(f"{tokens.shape[1]} prompt tokens + {max_new_tokens} new ones exceed the model's context "
                         f"of {n_ctx}; generate at most {max(0, n_ctx - tokens.shape[1])} tokens")


@torch.no_grad()
def generate(model, tokens: torch.Tensor, max_new_tokens: int, hooks: Hooks | Callable[[torch.Tensor], Hooks] | None = None,
             temperature: float = 0.0, top_k: int | None = None, seed: int = 0,
             stop_token: int | None = None) -> torch.Tensor:
    """``[B, T + n]`` tokens: the prompt ``tokens [B, T]`` and ``n <= max_new_tokens`` generated ones
    (module docstring, steps 1-4)."""
    tokens = tokens.reshape(1, -1) if tokens.dim() == 1 else tokens
    _check(model, tokens, max_new_tokens, temperature, top_k)
    gen = torch.Generator().manual_seed(seed)
    current = tokens
    done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for _ in range(max_new_tokens):
        step_hooks = hooks(current) if callable(hooks) else (hooks or [])
        logits = model.run_with_hooks(current, fwd_hooks=list(step_hooks))[:, -1]
        nxt = _next_token(logits, temperature, top_k, gen)
        if stop_token is not None:
            nxt = torch.where(done, torch.full_like(nxt, stop_token), nxt)
            done |= nxt == stop_token
        current = torch.cat([current, nxt[:, None]], dim=1)
        if stop_token is not None and bool(done.all()):
            break
    return current


__all__ = ["generate"]
