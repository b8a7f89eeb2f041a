"""Integrity of model and dictionary folders (issue 17, item 7): checksums checked on load and by
`wb zoo verify`, non-finite weights and metrics refused, one bad zoo entry failing only its own row,
dictionary configs missing a required field named; and (item 8) every label in the app's plotly
figures is plain text. Tiny untrained models in tmp_path; the real zoo is never verified here."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIGS
from typer.testing import CliRunner

from workbench.architectures import build_model, count_parameters, model_config
from workbench.cli import app
from workbench.dictionaries.dictionary_set import save_dictionary_set
from workbench.dictionaries.models import DictionaryConfig, build_dictionary, load_dictionary, save_dictionary
from workbench.store.atomic import CorruptArtifactError, read_json, save_safetensors
from workbench.store.integrity import IntegrityWarning, write_checksums
from workbench.store.model_files import load_model_folder, save_model_folder, write_card
from workbench.tasks import make_task
from workbench.zoo import build
from workbench.zoo.build import verify_zoo, write_zoo_checksums

runner = CliRunner()
TASK = make_task("recall", n_pairs=2)
N_EVAL = 16


def flip_byte(path: Path, offset_from_end: int = 10) -> None:
    """One bit of the tensor data (the end of a safetensors file) flipped; the header stays readable."""
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def save_tiny_model(models: Path, name: str, edit=None) -> Path:
    """A tiny transformer folder whose card verifies: metrics measured on the verify batch, no targets."""
    torch.manual_seed(0)
    config = model_config("transformer", d_vocab=TASK.tokenizer.vocab_size, n_ctx=TASK.seq_len,
                          **TINY_CONFIGS["transformer"])
    model = build_model(config).eval()
    if edit:
        edit(model)
    card = {"name": name, "task": TASK.spec(), "parameters": count_parameters(model), "targets": {},
            "eval": {"examples": N_EVAL}, "metrics": {}}
    if not edit:
        card["metrics"] = build.measure(model, TASK, N_EVAL)
    return save_model_folder(models / name, model, config, TASK.tokenizer, card)


def save_tiny_set(model_folder: Path, edit=None) -> Path:
    """``<model>/dictionaries/transcoders``: two untrained per-layer transcoders and set.json."""
    folder = model_folder / "dictionaries" / "transcoders"
    for layer in range(2):
        d = build_dictionary(DictionaryConfig("transcoder", d_in=32, n_features=8, activation="topk", k=2, seed=layer,
                                              input_hooks=[f"blocks.{layer}.hook_mlp_in"],
                                              output_hooks=[f"blocks.{layer}.hook_mlp_out"]))
        if edit:
            edit(d)
        save_dictionary(folder / f"layer{layer}", d, card={"metrics": {"fvu": [0.5]}})
    save_dictionary_set(folder, {"layer0": "layer0", "layer1": "layer1"}, {"kind": "transcoder", "layers": [0, 1]})
    return folder


@pytest.fixture
def zoo(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(build, "ZOO", [])  # no "not built" rows for the real zoo's entries
    return tmp_path / "models"


def rows_by_name(models: Path) -> dict:
    return {row.name: row for row in verify_zoo(models)}


def test_a_clean_zoo_verifies_with_checksums_written_last(zoo):
    folder = save_tiny_model(zoo, "good")
    save_tiny_set(folder)
    sums = read_json(folder / "checksums.json")["files"]
    assert sorted(sums) == ["card.json", "config.json", "model.safetensors", "tokenizer.json"]
    member = read_json(folder / "dictionaries" / "transcoders" / "layer0" / "checksums.json")["files"]
    assert sorted(member) == ["card.json", "config.json", "dictionary.safetensors"]
    rows = rows_by_name(zoo)
    assert sorted(rows) == ["good", "good/transcoders"]
    assert all(r.ok for r in rows.values()), {n: r.problems for n, r in rows.items()}
    assert rows["good/transcoders"].detail == "2 dictionaries (transcoder)"


def test_flipped_byte_in_model_weights_fails_load_and_verify(zoo):
    folder = save_tiny_model(zoo, "flipped")
    save_tiny_model(zoo, "intact")
    flip_byte(folder / "model.safetensors")
    with pytest.raises(CorruptArtifactError, match=r"flipped/model\.safetensors has changed since it was written "
                                                   r"\(sha256 .*the file is damaged or was edited"):
        load_model_folder(folder)
    rows = rows_by_name(zoo)
    assert rows["intact"].ok
    assert not rows["flipped"].ok
    assert len(rows["flipped"].problems) == 1 and "model.safetensors has changed" in rows["flipped"].problems[0]


def test_flipped_byte_in_a_dictionary_fails_load_and_verify(zoo):
    folder = save_tiny_model(zoo, "m")
    member = save_tiny_set(folder) / "layer1"
    flip_byte(member / "dictionary.safetensors")
    with pytest.raises(CorruptArtifactError, match=r"layer1/dictionary\.safetensors has changed since it was written"):
        load_dictionary(member)
    rows = rows_by_name(zoo)
    assert rows["m"].ok  # the model itself is intact
    assert not rows["m/transcoders"].ok
    assert any("layer1/dictionary.safetensors has changed" in p for p in rows["m/transcoders"].problems)


def test_nan_weights_are_an_error_naming_the_tensor(zoo):
    def poison(model):
        with torch.no_grad():
            model.blocks[1].mlp.W_in[3, 5] = float("nan")

    folder = save_tiny_model(zoo, "nan-model", edit=poison)  # checksums match: the NaN was written so
    with pytest.raises(ValueError, match=r"tensor 'blocks\.1\.mlp\.W_in' in .*nan-model/model\.safetensors holds 1 "
                                         r"non-finite value"):
        load_model_folder(folder)
    (row,) = verify_zoo(zoo)
    assert not row.ok and "blocks.1.mlp.W_in" in row.problems[0]

    def poison_dict(d):
        with torch.no_grad():
            d.b_dec[0, 2] = float("inf")

    member = save_tiny_set(save_tiny_model(zoo, "other"), edit=poison_dict) / "layer0"
    with pytest.raises(ValueError, match=r"tensor 'b_dec' in .*layer0/dictionary\.safetensors holds 1 non-finite"):
        load_dictionary(member)


def test_the_attention_masks_own_infinity_is_not_refused(zoo):
    folder = save_tiny_model(zoo, "masked")
    assert torch.isinf(load_model_folder(folder).model.blocks[0].attn.IGNORE).all()


def test_non_finite_metrics_fail_verify_and_eval(zoo, monkeypatch):
    folder = save_tiny_model(zoo, "m")
    real = build.measure
    monkeypatch.setattr(build, "measure", lambda *a: real(*a) | {"test_loss": float("nan")})
    (row,) = verify_zoo(zoo)
    assert not row.ok and "measured test_loss is nan, not finite" in row.problems

    evaluate_module = importlib.import_module("workbench.training.evaluate")  # the package shadows its name
    real_eval = evaluate_module.evaluate
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a: real_eval(*a) | {"loss": float("nan")})
    result = runner.invoke(app, ["eval", str(folder), "--n", "8"])
    assert result.exit_code == 2
    assert "non-finite loss" in result.output


def test_one_malformed_card_or_config_fails_only_its_own_row(zoo, tmp_path):
    save_tiny_model(zoo, "alpha")
    (save_tiny_model(zoo, "broken-card") / "card.json").write_text("{not json")
    (save_tiny_model(zoo, "list-card") / "card.json").write_text("[1, 2]")
    config = save_tiny_model(zoo, "no-d-vocab") / "config.json"
    config.write_text(json.dumps({k: v for k, v in read_json(config).items() if k != "d_vocab"}))
    save_tiny_model(zoo, "zeta")
    rows = rows_by_name(zoo)
    assert sorted(rows) == ["alpha", "broken-card", "list-card", "no-d-vocab", "zeta"]
    assert rows["alpha"].ok and rows["zeta"].ok
    assert any("card.json is not valid JSON" in p for p in rows["broken-card"].problems)
    assert any("should hold a JSON object, not list" in p for p in rows["list-card"].problems)
    assert not rows["no-d-vocab"].ok and any("config.json has changed" in p for p in rows["no-d-vocab"].problems)

    result = runner.invoke(app, ["zoo", "verify", "--models", str(zoo), "--artifacts", str(tmp_path / "art")])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines if not line.startswith(" ")] == [
        ["ok", "alpha"], ["FAIL", "broken-card"], ["FAIL", "list-card"], ["FAIL", "no-d-vocab"], ["ok", "zeta"]]


def test_card_edits_warn_on_load_fail_verify_unless_written_through_the_helper(zoo):
    folder = save_tiny_model(zoo, "m")
    card = read_json(folder / "card.json")
    write_card(folder, card | {"notes": "rewritten by a tool"})  # the card writers' one path
    assert verify_zoo(zoo)[0].ok
    (folder / "card.json").write_text(json.dumps(card | {"notes": "typed by hand"}))
    with pytest.warns(IntegrityWarning, match=r"m/card\.json has changed since it was written"):
        assert load_model_folder(folder).card["notes"] == "typed by hand"
    (row,) = verify_zoo(zoo)
    assert len(row.problems) == 1
    assert row.problems[0].startswith(f"{folder / 'card.json'} has changed since it was written (sha256 ")
    assert row.problems[0].endswith("the file is damaged or was edited")


def test_folders_without_checksums_warn_and_the_zoo_command_writes_them(zoo, tmp_path):
    folder = save_tiny_model(zoo, "old")
    member = save_tiny_set(folder) / "layer0"
    (folder / "checksums.json").unlink()
    (member / "checksums.json").unlink()
    with pytest.warns(IntegrityWarning, match="no checksums.json"):
        load_model_folder(folder)
    with pytest.warns(IntegrityWarning, match="no checksums.json"):
        load_dictionary(member)
    rows = rows_by_name(zoo)
    assert any("no checksums.json; write one with `wb zoo checksums`" in p for p in rows["old"].problems)
    assert not rows["old/transcoders"].ok
    result = runner.invoke(app, ["zoo", "checksums", "--models", str(zoo)])
    assert result.exit_code == 0 and "2 folder(s) checksummed" in result.output
    assert write_zoo_checksums(zoo) == []  # existing ones are kept without --force
    assert all(r.ok for r in verify_zoo(zoo))


def test_dictionary_config_missing_a_required_field_is_named(tmp_path):
    d = build_dictionary(DictionaryConfig("clt", d_in=4, n_features=6, n_layers=2))
    folder = save_dictionary(tmp_path / "clt", d)
    config = read_json(folder / "config.json")
    for field in ("d_in", "kind", "n_layers"):
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != field}))
        with pytest.raises(ValueError, match=rf"clt/config\.json lacks the required dictionary config field\(s\) "
                                             rf"\['{field}'\]"):
            load_dictionary(folder)
    # an optional field takes its default, with a warning (checksums rewritten: the edit is deliberate)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "init_norm"}))
    write_checksums(folder)
    with pytest.warns(IntegrityWarning, match=r"lacks the optional field\(s\) \['init_norm'\]"):
        assert load_dictionary(folder).config.init_norm == 0.1
    (folder / "config.json").write_text(json.dumps(config | {"d_in": "four"}))
    write_checksums(folder)
    with pytest.raises(ValueError, match=r"clt/config\.json holds an unusable dictionary config"):
        load_dictionary(folder)


def test_dictionary_structure_errors_still_come_first(tmp_path):
    folder = save_dictionary(tmp_path / "sae", build_dictionary(DictionaryConfig("sae", d_in=4, n_features=6)))
    save_safetensors({"W_enc": torch.zeros(1)}, folder / "dictionary.safetensors")
    with pytest.raises(ValueError, match=r"do not fit the dictionary built from its config"):
        load_dictionary(folder)


# --- item 8: labels in the app's figures are plain text ---------------------------------------------

EVIL = '<a href="https://evil.example/">click</a>'


def test_card_names_and_curve_labels_are_plain_text_in_every_chart(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    from test_app import card, curves

    models = tmp_path / "models"
    monkeypatch.setenv("WB_MODELS", str(models))
    for folder, name in (("evil", EVIL), ("plain", "plain & <b>bold</b>")):
        (models / folder).mkdir(parents=True)
        (models / folder / "card.json").write_text(json.dumps(card(name, 0.75, 1000)))
        frame = curves()
        frame["split"] = frame["split"].map(lambda s: f"{s}<a href='https://evil.example/'>x</a>")
        frame.to_parquet(models / folder / "curves.parquet", index=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "pages" / "1_Models.py"),
                           default_timeout=30).run()
    assert not at.exception, [e.value for e in at.exception]
    specs = [chart.proto.spec for chart in at.get("plotly_chart")]
    assert len(specs) == 4  # three curves and the comparison
    for spec in specs:
        assert "<a" not in spec and "<b>" not in spec
    comparison = json.loads(specs[-1])
    ticks = comparison["data"][0]["x"]
    assert ticks == ["&lt;a href=\"https://evil.example/\"&gt;click&lt;/a&gt;", "plain &amp; &lt;b&gt;bold&lt;/b&gt;"]
    legend = {trace["name"] for trace in json.loads(specs[0])["data"]}
    assert legend == {"train&lt;a href='https://evil.example/'&gt;x&lt;/a&gt;",
                      "test&lt;a href='https://evil.example/'&gt;x&lt;/a&gt;"}


def test_graph_figure_labels_are_plain_text(monkeypatch):
    import numpy as np

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "app"))
    import graph_data
    import graph_view
    import widgets

    assert widgets.plot_text(EVIL) == "&lt;a href=\"https://evil.example/\"&gt;click&lt;/a&gt;"
    assert widgets.plot_text("a & b") == "a &amp; b"
    view = graph_data.GraphView(
        ids=["E_1_0", "0_3_0"], kinds=["token", "feature"], labels=[EVIL, f"feature {EVIL}"],
        row=np.array([0, 1]), pos=np.array([0, 0]), value=np.array([1.0, 0.5]), influence=np.array([0.9, 0.4]),
        address=[None, (0, 3)], source=np.array([0]), target=np.array([1]), weight=np.array([0.7]),
        tokens=[EVIL], n_rows=3)
    payload = graph_view.payload(view, "k")  # verbatim: the viewer escapes them (test_graph_viewer_payload)
    assert payload["nodes"]["name"] == [EVIL, f"feature {EVIL}"] and payload["tokens"] == [EVIL]


def test_demo_verification_re_measures_only_models_whose_files_changed(zoo, monkeypatch):
    from workbench.store.catalog import Catalog
    from workbench.zoo.verify_cache import verify_zoo_cached

    for name in ("a", "b"):
        save_tiny_set(save_tiny_model(zoo, name))
    catalog = Catalog(zoo.parent / "artifacts")
    measured: list[str] = []
    real = build.verify_model

    def counting(folder, catalog=None):
        measured.append(folder.name)
        return real(folder, catalog)

    monkeypatch.setattr(build, "verify_model", counting)
    first = verify_zoo_cached(zoo, catalog, progress=False)
    assert measured == ["a", "b"] and all(r.ok for r in first)
    second = verify_zoo_cached(zoo, catalog, progress=False)
    assert measured == ["a", "b"]  # nothing changed: nothing re-measured
    assert [r.name for r in second] == [r.name for r in first] and all("unchanged" in r.detail for r in second)
    flip_byte(zoo / "b" / "model.safetensors")
    third = {r.name: r for r in verify_zoo_cached(zoo, catalog, progress=False)}
    assert measured == ["a", "b", "b"] and third["a"].ok and not third["b"].ok
    verify_zoo_cached(zoo, catalog, progress=False)
    assert measured == ["a", "b", "b", "b"]  # a failing model is re-measured every time
