"""The recall sweep's padded rows: same answers as plain recall, pads where the empty slots are."""

from __future__ import annotations

import pytest
import torch

from workbench.tasks.algorithmic import RecallTask
from workbench.zoo.sweep import padded_recall, recall_sweep


def test_padded_recall_keeps_the_rows_and_moves_them_right():
    plain = RecallTask(n_pairs=3).sample("test", 5, 7)
    padded = padded_recall(3, 8, 5, seed=7)
    pad = 3 * (8 - 3)
    assert padded.tokens.shape == (5, 3 * 8 + 4) and plain.tokens.shape[1] + pad == padded.tokens.shape[1]
    assert (padded.tokens[:, 1:1 + pad] == 0).all()  # <pad> = 0 fills the empty pair slots after <bos>
    assert torch.equal(padded.tokens[:, 1 + pad:], plain.tokens[:, 1:])
    assert torch.equal(padded.answer_mask[:, 1 + pad:], plain.answer_mask[:, 1:])
    assert int(padded.answer_mask.sum()) == int(plain.answer_mask.sum()) == 5
    unpadded, direct = padded_recall(8, 8, 5, seed=3), RecallTask(n_pairs=8).sample("test", 5, 3)
    assert torch.equal(unpadded.tokens, direct.tokens)
    with pytest.raises(ValueError, match="n_pairs <= slots"):
        padded_recall(9, 8, 2)


def test_sweep_of_the_committed_recall_transformer():
    from pathlib import Path

    from workbench.store.model_files import load_model_folder

    bundle = load_model_folder(Path(__file__).resolve().parents[1] / "models" / "transformer-recall")
    rows = recall_sweep(bundle.model, n_ctx=bundle.model.cfg.n_ctx, n=40, pairs=(1, 8, 16), slots=(8, 24))
    points = {(r["n_pairs"], r["slots"]) for r in rows}
    assert points == {(1, 1), (1, 8), (8, 8)}  # 16 pairs = 52 tokens, 24 slots = 76: past the context of 49
    by_point = {(r["n_pairs"], r["slots"]): r["accuracy"] for r in rows}
    assert by_point[(8, 8)] >= 0.95  # the size it was trained at: the card's 100%
