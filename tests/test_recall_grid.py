"""Issue #16: the short convolution option, the references' initialisation, early stopping, and the
recall sweep's runs and tables."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from workbench.architectures import build_model, model_config
from workbench.store.names import sole_writer
from workbench.training import TrainConfig, train
from workbench.zoo import recall_grid
from workbench.zoo.build import task_from_spec

F64 = torch.float64
VOCAB, CTX = 20, 16


def conv_model(arch: str, width: int = 3):
    config = model_config(arch, VOCAB, CTX, n_layers=2, d_model=8, d_mlp=16, conv_kernel=width, seed=0)
    return build_model(config).to(F64).eval()


@pytest.mark.parametrize("arch", ["mingru", "lstm", "rwkv"])
def test_short_conv_keeps_causality_and_carried_state(arch):
    model = conv_model(arch)
    toks = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    full = model(toks)
    state, pieces = None, []
    for chunk in toks.split([5, 1, 6], dim=1):  # the conv window and the cell state both carry over
        logits, state = model(chunk, state=state, return_state=True)
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-12)
    changed = toks.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    after = model(changed)
    assert torch.equal(after[:, :7], full[:, :7])
    assert not torch.allclose(after[:, 7], full[:, 7])
    mixer_state = state[0][0] if arch == "rwkv" else state[0]  # RWKV's block carries (time-mix, channel-mix)
    window, _inner = mixer_state
    assert window.shape == (2, 2, 8)  # width - 1 inputs carried


def test_short_conv_mingru_parallel_equals_sequential_and_width_zero_is_plain():
    mixer = conv_model("mingru").blocks[0].mixer
    x = torch.randn(2, 9, 8, dtype=F64)
    (fast, fast_state), (slow, slow_state) = mixer(x), mixer.forward_sequential(x)
    assert torch.allclose(fast, slow, atol=1e-12)
    assert torch.allclose(fast_state[1], slow_state[1], atol=1e-12)
    plain = conv_model("mingru", width=0).blocks[0].mixer
    assert plain.short_conv.conv is None and torch.is_tensor(plain(x)[1])


def test_xlstm_init_follows_the_reference_small_and_wang_inits():
    d, layers = 96, 2
    model = build_model(model_config("xlstm", VOCAB, CTX, d_model=d, n_layers=layers, n_heads=4, seed=0))
    mlstm, slstm = model.blocks[0].mixer, model.blocks[1].mixer
    small, wang = math.sqrt(2 / (5 * d)), 2 / layers / math.sqrt(d)
    for weight, expected in [(mlstm.q_proj.weight, small), (mlstm.k_proj.weight, small),
                             (mlstm.v_proj.weight, small), (mlstm.proj_up.weight, small),
                             (slstm.W_i.weight, small), (slstm.W_o.weight, small),
                             (mlstm.proj_down.weight, wang), (model.blocks[1].mlp.proj_down.weight, wang)]:
        assert weight.std().item() == pytest.approx(expected, rel=0.12)
    # the legacy fan-in init (kept for the entries trained with it) gives blocks of 4 a std of
    # sqrt(2 / 20) = 0.32, 4.9x the reference's
    legacy = build_model(model_config("xlstm", VOCAB, CTX, d_model=d, n_layers=layers, n_heads=4, seed=0,
                                      init="legacy"))
    assert legacy.blocks[0].mixer.q_proj.weight.std().item() == pytest.approx(math.sqrt(2 / 20), rel=0.12)
    assert mlstm.q_proj.weight.std().item() < 0.1
    with pytest.raises(ValueError, match="init.*reference.*legacy"):
        model_config("xlstm", VOCAB, CTX, init="fan_in")


def test_mamba_rescales_its_residual_outputs_as_the_reference():
    config = model_config("mamba", VOCAB, CTX, d_model=32, n_layers=3, d_mlp=64, seed=0)
    model = build_model(config)
    fan_in = model.blocks[0].mixer.out_proj.in_features
    default_std = 1 / math.sqrt(3 * fan_in)  # PyTorch's Linear default: uniform(+-1/sqrt(fan_in))
    legacy = build_model({**config, "init": "legacy"})
    for block, old in zip(model.blocks, legacy.blocks, strict=True):
        assert block.mixer.out_proj.weight.std().item() == pytest.approx(default_std / math.sqrt(2 * 3), rel=0.1)
        assert torch.count_nonzero(block.mlp.W_out.bias) == 0
        assert old.mixer.out_proj.weight.std().item() == pytest.approx(default_std, rel=0.1)


def test_early_stop_ends_at_the_first_evaluation_that_reaches_the_target(tmp_path):
    task = task_from_spec({"name": "recall_multi", "n_queries": 2, "n_pairs": 2})
    config = model_config("mingru", task.tokenizer.vocab_size, task.seq_len, d_model=8, d_mlp=16)
    cfg = TrainConfig(steps=12, batch_size=8, eval_every=4, checkpoint_every=100, eval_examples=16, warmup_steps=1)
    eval_task = task_from_spec({"name": "recall", "n_pairs": 2})
    result = train(config, task, cfg, tmp_path / "run", progress=False, eval_task=eval_task, stop_at=0.0)
    assert result.steps == 4 and result.extra["stopped_early"] == 4
    again = train(config, task, cfg, tmp_path / "run", progress=False, eval_task=eval_task, stop_at=0.0)
    assert again.steps == 4 and again.resumed_from == 4  # a stopped run trains no further
    goes_on = train(config, task, cfg, tmp_path / "run", progress=False)
    assert goes_on.steps == 12
    unreachable = train(config, task, cfg, tmp_path / "other", progress=False, eval_task=eval_task, stop_at=1.01)
    assert unreachable.steps == 12 and unreachable.extra["stopped_early"] is None


def test_a_grid_run_records_its_result_once_and_skips_a_held_run(tmp_path, monkeypatch):
    monkeypatch.setattr(recall_grid, "MEASURE_EXAMPLES", 50)
    spec = recall_grid.RunSpec("mingru-conv4", 8, 3e-3, steps=3)
    row = recall_grid.run_one(spec, tmp_path)
    assert row["steps_trained"] == 3 and 0.0 <= row["accuracy"] <= 1.0 and row["examples"] == 50
    assert json.loads((recall_grid.run_dir(tmp_path, spec) / "result.json").read_text())["run"] == spec.name
    assert recall_grid.run_one(spec, tmp_path) == row  # finished: read back, not retrained
    longer_spec = recall_grid.RunSpec("mingru-conv4", 8, 3e-3, steps=5)
    longer = recall_grid.run_one(longer_spec, tmp_path)
    assert longer["steps_trained"] == 5 and longer["run"] == spec.name  # a larger budget resumes the run
    with pytest.raises(ValueError, match="schedule changed midway"):  # a fresh build would not reach it
        recall_grid.promote(tmp_path, longer_spec, "mingru-recall")
    fresh = recall_grid.RunSpec("mingru-conv4", 8, 3e-3, steps=4, fresh=True)  # its own run, one schedule
    fresh_row = recall_grid.run_one(fresh, tmp_path)
    assert fresh.name == spec.name + "-s4" and fresh_row["steps_trained"] == 4 and fresh_row["run"] == fresh.name
    assert not recall_grid.budget_grew(tmp_path, fresh)
    other = recall_grid.RunSpec("lstm", 8, 1e-3, steps=3)
    with sole_writer(recall_grid.run_dir(tmp_path, other), "test"):
        assert recall_grid.run_one(other, tmp_path) is None
    table = recall_grid.sweep_table(tmp_path)
    assert sorted(table.run) == [spec.name, fresh.name] and sorted(table.steps_trained) == [4, 5]
    assert (tmp_path / recall_grid.SWEEP_DIR / "table.parquet").is_file()


def test_grid_order_and_unknown_variant():
    runs = recall_grid.grid(["lstm-conv4", "transformer"], widths=(64, 128))
    assert [r.d_model for r in runs] == [64] * 6 + [128] * 6  # cheapest first
    assert {r.lr for r in runs if r.variant == "transformer"} == set(recall_grid.REFERENCE_LRS)
    with pytest.raises(ValueError, match="unknown recall-sweep variant.*choose from: rwkv"):
        recall_grid.grid(["rwvk"])


def test_best_rows_smallest_solving_and_the_markdown_table():
    rows = [("mamba", 64, 1e-3, 0.30, 2000), ("mamba", 64, 3e-3, 0.41, 2000), ("mamba", 128, 1e-3, 0.97, 750),
            ("mamba", 128, 3e-3, 0.99, 500), ("lstm", 64, 1e-3, 0.25, 2000), ("lstm", 128, 1e-3, 0.5, 2000)]
    table = pd.DataFrame(rows, columns=["variant", "d_model", "lr", "accuracy", "steps_trained"])
    table["params"] = table.d_model * 1000
    best = recall_grid.best_rows(table)
    assert best.set_index(["variant", "d_model"]).loc[("mamba", 128), "lr"] == 3e-3
    solving = recall_grid.smallest_solving(table)
    assert set(solving) == {"mamba"} and solving["mamba"]["d_model"] == 128
    text = recall_grid.markdown_table(table)
    assert "| mamba | 41.0% (lr 0.003, 2000 steps; 2 lr) | 99.0% (lr 0.003, 500 steps; 2 lr) |" in text
    assert recall_grid.sweep_figure(table).data[0].name in {"lstm", "mamba"}


def test_the_svg_figure_draws_each_variants_best_points_where_they_belong():
    import xml.etree.ElementTree as ET

    rows = [("mamba", 64, 3e-3, 0.25, 2000), ("mamba", 128, 3e-3, 1.0, 500), ("mamba", 128, 1e-3, 0.5, 2000),
            ("lstm", 64, 1e-3, 0.5, 2000)]
    table = pd.DataFrame(rows, columns=["variant", "d_model", "lr", "accuracy", "steps_trained"])
    root = ET.fromstring(recall_grid.sweep_svg(table, width=640, height=400))
    ns = "{http://www.w3.org/2000/svg}"
    lines = {}
    for poly, label in zip(root.iter(ns + "polyline"), sorted(["lstm", "mamba"]), strict=True):
        lines[label] = [tuple(map(float, pt.split(","))) for pt in poly.get("points").split()]
    assert len(lines["lstm"]) == 1 and len(lines["mamba"]) == 2  # one point per width: the best lr
    (x64, y25), (x128, y100) = lines["mamba"]
    assert x64 < x128 and y100 < y25  # wider to the right, more accurate higher up
    assert lines["lstm"][0][0] == x64 and abs((y25 - lines["lstm"][0][1]) - (y25 - y100) / 3) < 0.2  # 50% is 1/3 up
    assert {t.text for t in root.iter(ns + "text")} >= {"lstm", "mamba", "64", "128", "256", "d_model"}


def test_longer_schedules_are_reported_beside_the_grid_budget_not_mixed_into_it():
    import xml.etree.ElementTree as ET

    rows = [("mingru", 64, 1e-2, 0.58, 2000, 2000, False), ("mingru", 64, 1e-2, 0.973, 20000, 20000, True),
            ("mingru", 128, 3e-3, 0.52, 2000, 2000, False), ("mamba", 128, 1e-2, 0.99, 1250, 2000, False)]
    table = pd.DataFrame(rows, columns=["variant", "d_model", "lr", "accuracy", "steps_trained", "steps", "fresh"])
    table["params"] = 1
    assert recall_grid.longer_schedule(table).tolist() == [False, True, False, False]
    text = recall_grid.markdown_table(table)
    assert ("| mingru | 58.0% (lr 0.01, 2000 steps; 1 lr) · longer: 97.3% (lr 0.01, 20000 of 20000 steps) "
            "| 52.0% (lr 0.003, 2000 steps; 1 lr) |") in text
    assert "| mamba | - | 99.0% (lr 0.01, 1250 steps; 1 lr) |" in text
    fig = recall_grid.sweep_figure(table)
    lines = {t.name: list(t.y) for t in fig.data}
    assert lines == {"mamba": [0.99], "mingru": [0.58, 0.52], "mingru (longer schedule)": [0.973]}
    root = ET.fromstring(recall_grid.sweep_svg(table))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(list(root.iter(ns + "polyline"))) == 2  # the grid's budget: one line per variant
    assert sum(c.get("fill") == "none" for c in root.iter(ns + "circle")) == 1  # the longer schedule, open


def test_models_page_draws_the_published_sweep_and_the_curves_caption(tmp_path, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    models = tmp_path / "models"
    (models / "m").mkdir(parents=True)
    card = {"name": "m", "architecture": "mamba", "task": {"name": "recall_multi"}, "eval_task": {"name": "recall"},
            "curves_test_task": {"name": "recall"}, "metrics": {"test_accuracy": 0.97}}
    (models / "m" / "card.json").write_text(json.dumps(card))
    pd.DataFrame([(250, 1000, "test", "accuracy", 0.5)], columns=["step", "tokens", "split", "metric", "value"]
                 ).to_parquet(models / "m" / "curves.parquet")
    rows = [{"variant": v, "d_model": w, "lr": 1e-3, "accuracy": acc, "steps_trained": 500, "params": 1}
            for v, w, acc in [("mamba", 64, 0.3), ("mamba", 128, 0.97), ("lstm", 64, 0.25)]]
    pd.DataFrame(rows).to_parquet(models / recall_grid.PUBLISHED)
    monkeypatch.setenv("WB_MODELS", str(models))
    monkeypatch.setenv("WB_ARTIFACTS", str(tmp_path / "artifacts"))
    page = Path(__file__).resolve().parents[1] / "app" / "pages" / "1_Models.py"
    at = AppTest.from_file(str(page), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Recall sweep" in h.value for h in at.header)
    assert any("| mamba | 30.0% (lr 0.001, 500 steps; 1 lr) | 97.0%" in m.value for m in at.markdown)
    assert any("test curves on the test split of recall" in c.value for c in at.caption)


def test_a_promoted_run_builds_into_the_zoo_without_training_and_rebuilds_the_same(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from workbench.store import Catalog
    from workbench.zoo.build import build_entry
    from workbench.zoo.entries import ZooEntry

    monkeypatch.setattr(recall_grid, "MEASURE_EXAMPLES", 40)
    spec = recall_grid.RunSpec("mingru-conv4", 8, 3e-3, steps=4)
    row = recall_grid.run_one(spec, tmp_path / "art")
    entry = ZooEntry(name="mingru-recall-test", eval_examples=40, **recall_grid.entry_recipe(spec, row["steps_trained"]))
    catalog = Catalog(tmp_path / "art")
    recall_grid.promote(tmp_path / "art", spec, entry.name)
    with pytest.raises(FileExistsError):
        recall_grid.promote(tmp_path / "art", spec, entry.name)
    promoted = build_entry(entry, tmp_path / "models", catalog, progress=False)
    card = json.loads((promoted / "card.json").read_text())
    assert card["metrics"]["test_accuracy"] == row["accuracy"]  # the run's own weights, measured alike
    fresh = build_entry(entry, tmp_path / "models2", Catalog(tmp_path / "art2"), progress=False)
    a, b = load_file(promoted / "model.safetensors"), load_file(fresh / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # retrained from scratch: same bytes


def test_publishing_writes_each_recall_cards_grid_rows_and_keeps_its_checksums(tmp_path):
    from workbench.store.integrity import checksum_problems, write_checksums

    for name, arch, tested in [("mamba-recall", "mamba", "recall"), ("mamba-toyworld", "mamba", "toyworld"),
                               ("rasp-recall", "transformer", "recall")]:
        (tmp_path / name).mkdir()
        compiled = {"rasp": {"program": "recall"}} if name.startswith("rasp") else {}
        (tmp_path / name / "card.json").write_text(json.dumps({"name": name, "architecture": arch,
                                                               "eval_task": {"name": tested}, **compiled}))
        write_checksums(tmp_path / name)
    rows = [("mamba", "mamba", 64, 3e-3, 0.3), ("mamba", "mamba", 128, 3e-3, 0.96), ("lstm", "lstm", 64, 1e-3, 0.25),
            ("transformer", "transformer", 64, 3e-3, 1.0)]
    table = pd.DataFrame(rows, columns=["variant", "architecture", "d_model", "lr", "accuracy"])
    table["steps_trained"], table["stopped_early"], table["params"] = 2000, None, 1
    assert recall_grid.publish_into_cards(tmp_path, table) == ["mamba-recall"]
    card = json.loads((tmp_path / "mamba-recall" / "card.json").read_text())
    variants = [(r["variant"], r["d_model"]) for r in card["recall_grid"]["best_per_width"]]
    assert variants == [("mamba", 64), ("mamba", 128), ("transformer", 64)]  # its own and the references
    assert checksum_problems(tmp_path / "mamba-recall") == []
    assert "recall_grid" not in json.loads((tmp_path / "mamba-toyworld" / "card.json").read_text())


def test_worker_processes_get_the_arguments_without_the_workers_option():
    from workbench.cli.zoo import without_option

    argv = ["zoo", "recall-sweep", "--workers", "2", "--width", "128", "--workers=3", "--lr", "3e-3"]
    assert without_option(argv, "--workers") == ["zoo", "recall-sweep", "--width", "128", "--lr", "3e-3"]


def test_wb_zoo_promote_hands_an_entrys_own_run_to_the_build_and_checks_where_it_stopped(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.zoo import entries

    monkeypatch.setattr(recall_grid, "MEASURE_EXAMPLES", 20)
    spec = recall_grid.RunSpec("mingru-conv4", 8, 3e-3, steps=3)
    recall_grid.run_one(spec, tmp_path)
    entry = entries.from_sweep("mingru-recall-test", spec, steps_trained=3)
    wrong = entries.from_sweep("mingru-recall-wrong", spec, steps_trained=2)
    monkeypatch.setattr(entries, "ZOO", [entry, wrong, *entries.ZOO])
    runner = CliRunner()
    done = runner.invoke(app, ["zoo", "promote", entry.name, "--artifacts", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "runs" / entry.name / "checkpoints").iterdir()) == \
        sorted(p.name for p in (recall_grid.run_dir(tmp_path, spec) / "checkpoints").iterdir())
    again = runner.invoke(app, ["zoo", "promote", entry.name, "--artifacts", str(tmp_path)])
    assert again.exit_code != 0 and "--replace" in again.output
    replaced = runner.invoke(app, ["zoo", "promote", entry.name, "--replace", "--artifacts", str(tmp_path)])
    assert replaced.exit_code == 0 and len(list((tmp_path / "runs").glob(f"{entry.name}.replaced-*"))) == 1
    mismatch = runner.invoke(app, ["zoo", "promote", wrong.name, "--artifacts", str(tmp_path)])
    assert mismatch.exit_code != 0 and "stopped at step 3" in mismatch.output
    not_swept = runner.invoke(app, ["zoo", "promote", "transformer-recall", "--artifacts", str(tmp_path)])
    assert not_swept.exit_code != 0 and "not a recall-sweep run" in not_swept.output
