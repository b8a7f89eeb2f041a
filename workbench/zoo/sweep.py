"""Recall sweeps for the cards: exact match against the number of pairs and the sequence length.

A recall model is trained at one size (8 pairs, 28 tokens). The sweep re-measures the trained model,
without retraining, on recall rows that hold ``n_pairs`` pairs in ``slots`` pair slots: the leading
``slots - n_pairs`` slots are ``<pad>`` (the format of ``recall``'s own ``min_pairs`` variant), so the
sequence is ``3 * slots + 4`` tokens long whatever the number of pairs. ``slots == n_pairs`` is plain
recall with that many pairs. The number of pairs asks how much the state holds; the padding asks
whether the state survives a longer sequence. Rows are drawn from the test split of
``recall(n_pairs=n_pairs)`` (then padded), with the evaluation seed, so a sweep is reproducible.
"""

from __future__ import annotations

import torch

from workbench.tasks.algorithmic import RecallTask
from workbench.tasks.base import Batch
from workbench.training.evaluate import EVAL_SEED, evaluate_batch

PAIRS = (1, 2, 4, 8, 12, 16, 24)
SLOTS = (8, 24)
SWEEP_EXAMPLES = 400


def padded_recall(n_pairs: int, slots: int, n: int, seed: int = EVAL_SEED, n_keys: int = 26,
                  n_values: int = 16) -> Batch:
    """``n`` test rows of recall with ``n_pairs`` pairs, after ``slots - n_pairs`` empty pair slots."""
    if not 1 <= n_pairs <= slots:
        raise ValueError(f"need 1 <= n_pairs <= slots; got n_pairs={n_pairs}, slots={slots}")
    task = RecallTask(n_pairs=n_pairs, n_keys=n_keys, n_values=n_values)
    batch = task.sample("test", n, seed)
    pad = 3 * (slots - n_pairs)
    if not pad:
        return batch
    rows = batch.tokens.shape[0]
    tokens = torch.cat([batch.tokens[:, :1], torch.full((rows, pad), task.tokenizer.pad_id, dtype=torch.int64),
                        batch.tokens[:, 1:]], dim=1)
    no = torch.zeros(rows, pad, dtype=torch.bool)
    answer = torch.cat([batch.answer_mask[:, :1], no, batch.answer_mask[:, 1:]], dim=1)
    return Batch(tokens=tokens, loss_mask=answer.clone(), answer_mask=answer)


def sweep_points(pairs=PAIRS, slots=SLOTS) -> list[tuple[int, int]]:
    """(n_pairs, slots): every pair count unpadded, and every pair count <= each slot count padded."""
    points = {(p, p) for p in pairs}
    points |= {(p, s) for s in slots for p in pairs if p <= s}
    return sorted(points, key=lambda ps: (ps[1], ps[0]))


@torch.no_grad()
def recall_sweep(model: torch.nn.Module, n_ctx: int | None = None, n: int = SWEEP_EXAMPLES,
                 pairs=PAIRS, slots=SLOTS) -> list[dict]:
    """Rows ``{n_pairs, slots, seq_len, accuracy, answer_loss}``; points longer than ``n_ctx`` (a
    model with learned or rotary positions up to a fixed length) are left out."""
    rows = []
    for n_pairs, n_slots in sweep_points(pairs, slots):
        seq_len = 3 * n_slots + 4
        if n_ctx is not None and seq_len > n_ctx:
            continue
        m = evaluate_batch(model, padded_recall(n_pairs, n_slots, n))
        rows.append({"n_pairs": n_pairs, "slots": n_slots, "seq_len": seq_len,
                     "accuracy": round(m["accuracy"], 4), "answer_loss": round(m["answer_loss"], 4),
                     "examples": m["examples"]})
    return rows
