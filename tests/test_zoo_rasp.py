"""Compiled RASP programs in the zoo: `wb zoo build` compiles a RaspEntry into a model folder that reads
its task's tokens, measured by the zoo's evaluator; `wb zoo verify` checks it against its card and the
interpreter, and the committed rasp-* models pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench.store.catalog import Catalog
from workbench.store.model_files import load_model_folder, save_model_folder
from workbench.zoo import build, entries
from workbench.zoo.entries import RASP_ZOO, RaspEntry
from workbench.zoo.rasp_models import LOGIT_SCALE

ROOT = Path(__file__).resolve().parents[1]
ENTRY = RaspEntry("rasp-hist-small", {"name": "histogram", "length": 4, "n_symbols": 3}, eval_examples=200)


@pytest.fixture
def built(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(entries, "ZOO", [ENTRY])
    monkeypatch.setattr(build, "ZOO", [ENTRY])
    models = tmp_path / "models"
    build.build_zoo(models, Catalog(tmp_path / "artifacts"), log=lambda _: None)
    return models


def test_build_compiles_a_model_folder_with_its_circuit(built):
    bundle = load_model_folder(built / ENTRY.name)
    card = bundle.card
    assert card["metrics"]["test_accuracy"] == 1.0 and card["metrics"]["test_examples"] == 200
    assert card["rasp"]["program"] == "histogram" and card["rasp"]["params"]["offset"] == 4
    assert card["rasp"]["circuit"]["hist"] == {"reads": ["tokens"], "kind": "attention+mlp", "layer": 0,
                                               "heads": [[0, 0]], "mlp": 0}
    assert card["weights_dtype"] == "float16" and bundle.config["attention_dir"] == "bidirectional"
    assert bundle.config["n_ctx"] == 10 and len(card["rasp"]["residual_labels"]) == bundle.config["d_model"]
    # the row <bos> b a b c | 2 1 2 1 (x1..x4, then each one's count): predictions at | and after
    ids = torch.tensor([bundle.tokenizer.encode(["<bos>", "b", "a", "b", "c", "|", "2", "1", "2", "1"])])
    logits = bundle.model(ids)[0]
    assert bundle.tokenizer.tokens(logits[5:9].argmax(-1).tolist()) == ["2", "1", "2", "1"]
    assert logits[1:4].abs().max() < 1e-6  # the shifted histogram is None before the answers: no logit on
    assert torch.allclose(logits[5:9].max(-1).values, torch.full((4,), LOGIT_SCALE))
    assert "rasp-hist-small" in (built / "README.md").read_text()


def test_verify_passes_and_catches_a_model_that_no_longer_computes_its_program(built, tmp_path):
    rows = build.verify_zoo(built)
    assert [(r.name, r.ok) for r in rows] == [(ENTRY.name, True)]
    bundle = load_model_folder(built / ENTRY.name)
    with torch.no_grad():  # swap what the counts 1 and 2 unembed to; checksums rewritten with the folder
        one, two = bundle.tokenizer.index["1"], bundle.tokenizer.index["2"]
        bundle.model.unembed.W_U[:, [one, two]] = bundle.model.unembed.W_U[:, [two, one]]
    save_model_folder(built / ENTRY.name, bundle.model, bundle.config, bundle.tokenizer, bundle.card)
    row = build.verify_zoo(built)[0]
    assert not row.ok
    assert any(p.startswith("test_accuracy: card says 1") for p in row.problems)
    assert any("the interpreter predicts" in p and "the model" in p for p in row.problems)


@pytest.mark.parametrize("entry", RASP_ZOO, ids=[e.name for e in RASP_ZOO])
def test_committed_rasp_models_verify(entry):
    row = build.verify_model(ROOT / "models" / entry.name)
    assert row.ok, row.problems
    assert row.metrics["test_accuracy"] == 1.0
