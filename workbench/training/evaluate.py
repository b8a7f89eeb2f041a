"""Evaluation on a task split: exact match on answers, loss and perplexity on the LM targets."""

from __future__ import annotations

import math

import torch

from workbench.tasks.base import Batch, Task, answer_hits

EVAL_SEED = 1234  # the held-out evaluation batch is the same for every model of a task


@torch.no_grad()
def evaluate_batch(model: torch.nn.Module, batch: Batch, chunk: int = 256) -> dict:
    """Metrics over ``batch`` in chunks: exact-match accuracy, mean loss over loss-mask targets and over
    answer targets, and perplexity = exp(loss)."""
    was_training = model.training
    model.eval()
    hits, nll_sum, n_tok, ans_sum, n_ans = 0, 0.0, 0, 0.0, 0
    for start in range(0, len(batch), chunk):
        part = batch[start : start + chunk].to(next(model.parameters()).device)
        logits = model(part.tokens)
        hits += int(answer_hits(logits, part).sum())
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, part.tokens[:, 1:, None]).squeeze(-1)
        lm, ans = part.loss_mask[:, 1:], part.answer_mask[:, 1:]
        nll_sum += float(nll[lm].sum())
        n_tok += int(lm.sum())
        ans_sum += float(nll[ans].sum())
        n_ans += int(ans.sum())
    model.train(was_training)
    loss = nll_sum / max(n_tok, 1)
    return {
        "accuracy": hits / len(batch),
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "answer_loss": ans_sum / max(n_ans, 1),
        "examples": len(batch),
        "target_tokens": n_tok,
    }


def evaluate(model: torch.nn.Module, task: Task, split: str = "test", n: int = 1000, seed: int = EVAL_SEED) -> dict:
    return evaluate_batch(model, task.sample(split, n, seed))
