"""Zoo dictionaries (`wb zoo dicts`): a tiny model folder gets a published transcoder set, feature data
and a card entry with held-out and test-split metrics and graph scores; `--remeasure` redoes the
measurements in place without retraining, also for a set written before held-out measurement."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CONFIGS

from workbench.architectures import build_model, model_config
from workbench.dictionaries.activations import weights_sha256
from workbench.store.atomic import atomic_write_json, read_json
from workbench.store.catalog import Catalog
from workbench.store.model_files import load_model_folder, save_model_folder
from workbench.tasks import make_task
from workbench.zoo import dictionaries as zoo_dicts

RECIPE = {"kind": "transcoder", "activation": "topk", "k": 4, "n_features": 32, "steps": 20, "batch_size": 64,
          "lr": 1e-3, "n_sequences": 64}


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_dicts, "RECIPES", {"transcoders": RECIPE})
    task = make_task("recall", n_pairs=3)
    torch.manual_seed(0)
    config = model_config("transformer", d_vocab=task.tokenizer.vocab_size, n_ctx=task.seq_len,
                          **TINY_CONFIGS["transformer"])
    folder = tmp_path / "models" / "tiny-recall"
    save_model_folder(folder, build_model(config), config, task.tokenizer,
                      {"name": "tiny-recall", "task": {"name": "recall", "n_pairs": 3}})
    return folder, Catalog(tmp_path / "artifacts")


def test_build_publishes_the_set_and_writes_the_card_entry(zoo):
    folder, catalog = zoo
    log: list[str] = []
    entries = zoo_dicts.build_model_dictionaries(folder, catalog, progress=False, log=log.append)
    entry = entries["transcoders"]
    assert entry["recipe"] == RECIPE and len(entry["fvu"]) == len(entry["l0"]) == 2
    assert all(0 < v < 10 for v in entry["fvu"]) and all(0 < v <= 4 for v in entry["l0"])
    for key in ("agreement", "agreement_test"):
        assert 0.0 <= entry[key] <= 1.0
    assert entry["loss_original"] > 0 and entry["loss_all_replaced_test"] > 0
    graphs = entry["graphs"]
    assert graphs["n_prompts"] == zoo_dicts.N_GRAPH_PROMPTS and graphs["max_identity_error"] < 1e-3
    assert 0 < graphs["replacement"] <= 1 and 0 < graphs["completeness"] <= 1
    published = folder / "dictionaries" / "transcoders"
    meta = read_json(published / "set.json")
    assert {"metrics", "training_metrics", "spliced", "spliced_test"} <= set(meta)
    assert meta["spliced"]["split"] == "train" and meta["spliced_test"]["split"] == "test"
    assert meta["metrics"]["layer0"]["split"] == "train"
    assert (published / "features" / "summary.json").is_file() and not (published / "runs").exists()
    # published weights are float16 (a small zoo), checksummed, and the set's numbers are theirs
    from workbench.dictionaries.dictionary_set import load_dictionary_set
    from workbench.store.atomic import load_safetensors

    stored = load_safetensors(published / "layer0" / "dictionary.safetensors")
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    members, _ = load_dictionary_set(published)  # checksums verified on load
    assert members["layer0"].W_enc.dtype == torch.float32  # computation stays float32
    assert [d["name"] for d in catalog.list("dictionary") if d["name"].startswith("tiny-recall/")] == \
        ["tiny-recall/transcoders"]
    # a second build leaves the published set alone
    log.clear()
    zoo_dicts.build_model_dictionaries(folder, catalog, progress=False, log=log.append)
    assert log == ["tiny-recall/transcoders: present, skipped"]


def test_remeasure_redoes_the_numbers_without_retraining(zoo):
    folder, catalog = zoo
    entry = zoo_dicts.build_model_dictionaries(folder, catalog, progress=False, log=lambda _: None)["transcoders"]
    published = folder / "dictionaries" / "transcoders"
    weights = (published / "layer0" / "dictionary.safetensors").read_bytes()
    # a card and set.json as an older build wrote them: trainer metrics under "metrics", no test split
    card = read_json(folder / "card.json")
    card["dictionaries"]["transcoders"] |= {"agreement": -1.0}
    del card["dictionaries"]["transcoders"]["agreement_test"]
    atomic_write_json(folder / "card.json", card)
    meta = read_json(published / "set.json")
    old_metrics = {"layer0": {"fvu": [0.5]}, "layer1": {"fvu": [0.5]}}
    meta = {k: v for k, v in meta.items() if k not in ("spliced_test", "training_metrics")} | {"metrics": old_metrics}
    atomic_write_json(published / "set.json", meta)

    again = zoo_dicts.build_model_dictionaries(folder, catalog, progress=False, log=lambda _: None,
                                               remeasure_only=True)["transcoders"]
    assert again["agreement"] == entry["agreement"] and again["agreement_test"] == entry["agreement_test"]
    assert again["fvu"] == pytest.approx(entry["fvu"]) and again["graphs"] == entry["graphs"]
    remeasured = read_json(published / "set.json")
    assert remeasured["training_metrics"] == old_metrics and "spliced_test" in remeasured
    assert (published / "layer0" / "dictionary.safetensors").read_bytes() == weights


def test_force_after_the_model_was_retrained_starts_over_instead_of_refusing_to_mix(zoo):
    """`wb zoo build --force` then `wb zoo dicts --force`: the scratch (activation store, run checkpoints)
    of the old weights is removed, not mixed with the new model's; scratch of the same weights is kept."""
    folder, catalog = zoo
    zoo_dicts.build_model_dictionaries(folder, catalog, progress=False, log=lambda _: None)
    store = next((catalog.root / "activations").glob("tiny-recall-L*"))
    kept: list[str] = []
    zoo_dicts.clear_stale_scratch(load_model_folder(folder), catalog, kept.append)
    assert kept == [] and store.exists()  # same weights: nothing removed, an interrupted build would resume
    bundle = load_model_folder(folder)
    torch.manual_seed(1)
    save_model_folder(folder, build_model(bundle.config), bundle.config, bundle.tokenizer, bundle.card)  # "retrained"
    log: list[str] = []
    entries = zoo_dicts.build_model_dictionaries(folder, catalog, force=True, progress=False, log=log.append)
    removed = [line for line in log if "made from other weights" in line]
    assert any("activations" in line for line in removed) and any("zoo-dictionaries" in line for line in removed)
    assert entries["transcoders"]["graphs"]["max_identity_error"] < 1e-3
    marker = read_json(catalog.root / "zoo-dictionaries" / "tiny-recall" / "model.json")
    assert marker["weights_sha256"] == weights_sha256(load_model_folder(folder).model)
