"""The Streamlit app under AppTest: pages load on an empty, a normal and a damaged zoo or store, file
content is shown as text (never as HTML), and the pickers, comparison, feature search and feature panel
respond. No trained model needed: feature data comes from untrained dictionaries on a tiny model."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app"
HOME, MODELS = str(APP / "Home.py"), str(APP / "pages" / "1_Models.py")
TIMEOUT = 30


def card(name: str, accuracy: float, parameters: int, notes: str = "", bigram: float | None = 7.5) -> dict:
    metrics = {"test_accuracy": accuracy, "test_loss": 0.25, "test_perplexity": 1.3,
               "test_answer_loss": 0.1, "test_examples": 512}
    if bigram is not None:
        metrics["bigram_perplexity"] = bigram
    return {
        "name": name, "architecture": "transformer", "task": {"name": "reverse", "length": 6},
        "model_config": {"n_layers": 2, "d_model": 64}, "train_config": {"lr": 1e-3, "steps": 200},
        "metrics": metrics, "targets": {"test_accuracy": 0.99}, "parameters": parameters,
        "training_tokens": 400_000, "training_time_s": 12.5, "seed": 0,
        "eval": {"split": "test", "examples": 512, "seed": 1}, "trained_on": "cpu", "notes": notes,
        "created": "2025-01-01T00:00:00Z",
    }


def curves() -> pd.DataFrame:
    rows = []
    for step in (0, 50, 100):
        for split in ("train", "test"):
            rows.append((step, step * 1000, split, "loss", 3.0 / (1 + step / 50)))
            rows.append((step, step * 1000, split, "accuracy", step / 100))
            rows.append((step, step * 1000, split, "perplexity", 20.0 / (1 + step / 50)))
    return pd.DataFrame(rows, columns=["step", "tokens", "split", "metric", "value"])


def write_model(models: Path, folder: str, content: dict | str, with_curves: bool = True) -> None:
    path = models / folder
    path.mkdir(parents=True)
    text = content if isinstance(content, str) else json.dumps(content)
    (path / "card.json").write_text(text)
    if with_curves:
        curves().to_parquet(path / "curves.parquet", index=False)


@pytest.fixture
def zoo(tmp_path, monkeypatch) -> Path:
    models = tmp_path / "models"
    monkeypatch.setenv("WB_MODELS", str(models))
    monkeypatch.setenv("WB_ARTIFACTS", str(tmp_path / "artifacts"))
    return models


def run(script: str) -> AppTest:
    at = AppTest.from_file(script, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def bodies(at: AppTest) -> list[str]:
    """Every string an element could render as markdown or HTML."""
    kinds = ("markdown", "caption", "title", "header", "subheader", "info", "warning", "error", "success")
    out = [el.value for kind in kinds for el in getattr(at, kind)]
    return out + [el.proto.body for el in at.get("html")]


def test_empty_zoo(zoo):
    home = run(HOME)
    assert "empty" in home.info[0].value and "wb zoo build" in home.info[0].value
    assert [m.value for m in home.metric][:3] == ["0", "0", "0"]
    models = run(MODELS)
    assert "wb zoo build" in models.info[0].value
    zoo.mkdir()  # an existing but empty folder reads the same
    assert "wb zoo build" in run(MODELS).info[0].value


def test_home_counts_dictionary_sets_apart_from_their_members(zoo, tmp_path):
    from workbench.store import Catalog
    cat = Catalog(tmp_path / "artifacts")
    cat.register("dictionary", "m-transcoder-L0-1", tmp_path, {"kind": "transcoder", "layers": [0, 1]})
    for member in ("layer0", "layer1"):
        cat.register("dictionary", f"m-transcoder-L0-1/{member}", tmp_path, {"config": {"kind": "transcoder"}})
    cat.register("graph", "g", tmp_path, {})
    home = run(HOME)
    assert [m.value for m in home.metric][:3] == ["0", "1", "1"]
    assert "2 single dictionaries" in home.metric[1].proto.help


def test_zoo_table_card_and_curves(zoo):
    write_model(zoo, "alpha", card("alpha", 0.875, 12_345))
    write_model(zoo, "beta", card("beta", 0.5, 67_890, bigram=None), with_curves=False)
    home = run(HOME)
    assert home.metric[0].value == "2"
    at = run(MODELS)
    assert list(at.dataframe[0].value["name"]) == ["alpha", "beta"]
    assert "alpha" in at.subheader[0].value and at.metric[0].value == "87.50%"
    assert len(at.get("plotly_chart")) == 3 + 1  # loss, accuracy, perplexity + the comparison
    at.selectbox(key="models_card").select_index(1).run()
    assert not at.exception
    assert "beta" in at.subheader[0].value and at.metric[0].value == "50.00%"
    assert any("no curves.parquet" in i.value for i in at.info)


def test_committed_zoo_shows_dictionaries_graph_scores_and_sweeps(monkeypatch, tmp_path):
    """The real zoo: transformer-recall's card lists its transcoders and CLT with graph scores; a recall
    card with a sweep draws it; the table carries the dictionary columns."""
    monkeypatch.setenv("WB_MODELS", str(Path(__file__).resolve().parents[1] / "models"))
    monkeypatch.setenv("WB_ARTIFACTS", str(tmp_path / "artifacts"))
    at = run(MODELS)
    table = at.dataframe[0].value
    row = table[table["name"] == "transformer-recall"].iloc[0]
    assert row["replacement agreement"] > 0.9 and row["transcoder FVU (worst layer)"] < 0.1
    assert 0.5 < row["graph replacement score"] <= 1.0
    names = list(table["name"])
    at.selectbox(key="models_card").select_index(names.index("transformer-recall")).run()
    assert any("Dictionaries and attribution graphs" in m.value for m in at.markdown)
    recipes = at.dataframe[1].value
    assert set(recipes["recipe"]) >= {"transcoders", "clt"} and (recipes["completeness"] > 0.5).all()
    at.selectbox(key="models_card").select_index(names.index("rwkv-recall")).run()
    assert not at.exception and any("Recall sweep" in m.value for m in at.markdown)


def test_comparison(zoo):
    for i, name in enumerate(["alpha", "beta", "gamma"]):
        write_model(zoo, name, card(name, 0.3 * (i + 1), 1000 * (i + 1)), with_curves=False)
    at = run(MODELS)
    table = at.dataframe[-1].value
    assert list(table.columns) == ["alpha", "beta"]
    at.multiselect(key="models_compare").set_value([0, 2]).run()
    assert not at.exception
    table = at.dataframe[-1].value
    assert list(table.columns) == ["alpha", "gamma"]
    assert table.loc["test_accuracy", "gamma"] == pytest.approx(0.9)
    assert table.loc["parameters", "gamma"] == 3000
    at.multiselect(key="models_compare").set_value([]).run()
    assert any("Pick models" in i.value for i in at.info)


def test_damaged_card_is_reported(zoo):
    write_model(zoo, "alpha", card("alpha", 0.875, 12_345))
    write_model(zoo, "broken", "{not json")
    write_model(zoo, "listy", "[1, 2]", with_curves=False)
    write_model(zoo, "odd", json.dumps({"name": "odd", "metrics": "high"}), with_curves=False)
    for script in (HOME, MODELS):
        at = run(script)
        warning = at.warning[0].value
        assert all(name in warning for name in ("broken", "listy", "odd"))
    assert list(at.dataframe[0].value["name"]) == ["alpha"]


def test_damaged_curves_are_reported(zoo):
    write_model(zoo, "alpha", card("alpha", 0.875, 12_345), with_curves=False)
    (zoo / "alpha" / "curves.parquet").write_bytes(b"not parquet")
    at = run(MODELS)
    assert any("alpha" in w.value and "is damaged" in w.value for w in at.warning)


def test_file_content_is_never_html(zoo):
    script = "<script>alert(1)</script>"
    evil = card(f"evil{script}", 0.5, 10, notes=script) | {"eval": script, "architecture": script}
    write_model(zoo, "evil", evil)
    at = run(MODELS)
    assert any(script in t.value for t in at.text), "the notes should be shown verbatim as text"
    for body in bodies(at):
        assert "<script>" not in body


def test_token_highlighter_escapes(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    import widgets

    out = widgets.token_highlighter(["<script>", "a&b", '"q"'], [1.0, -0.5, float("nan")])
    assert "<script>" not in out and "&lt;script&gt;" in out and "&amp;b" in out and "&quot;q&quot;" in out
    assert out.count("<span") == 3
    with pytest.raises(ValueError, match="2 tokens but 1 values"):
        widgets.token_highlighter(["a", "b"], [1.0])


# ---- the Features page: sets with real feature data of untrained dictionaries (conftest's feature_set)

FEATURES = str(APP / "pages" / "2_Features.py")
SCRIPT = "<script>alert(1)</script>"


def strongest(frames: dict, layer: int = 0) -> int:
    """The feature the page opens first: the densest of the first layer."""
    f = frames["features"]
    f = f[f["layer"] == layer]
    return int(f.sort_values(["density", "feature"], ascending=[False, True], kind="stable")["feature"].iloc[0])


def html_bodies(at: AppTest) -> list[str]:
    return [el.proto.body for el in at.get("html")]


def test_features_page_on_an_empty_store():
    at = run(FEATURES)
    assert "No dictionaries" in at.info[0].value and "wb dict train" in at.info[0].value


def test_features_page_lists_searches_and_opens_features(feature_set, feature_frames):
    feature_set("tiny-transcoder-L0-1")
    at = run(FEATURES)
    listed = at.dataframe[0].value
    assert len(listed) == 12 and list(listed["density"]) == sorted(listed["density"], reverse=True)
    first = strongest(feature_frames("transcoder"))
    assert at.subheader[0].value == f"Feature {first} · layer 0"
    assert at.metric[0].label == "Density"
    assert len(at.get("plotly_chart")) == 1  # the histogram
    assert any("outline" in body for body in html_bodies(at))  # top contexts, the context's token outlined
    assert "token" in at.dataframe[1].value.columns and len(at.dataframe[1].value) == 5  # logits raised
    assert (at.dataframe[2].value["effect"] <= at.dataframe[1].value["effect"].min()).all()  # logits lowered

    at.selectbox(key="features_layer@tiny-transcoder-L0-1").select_index(1).run()
    at.radio(key="features_sort").set_value("max activation").run()
    assert not at.exception
    listed = at.dataframe[0].value
    assert list(listed["max activation"]) == sorted(listed["max activation"], reverse=True)
    at.selectbox(key="features_feature@tiny-transcoder-L0-1").set_value(7).run()
    assert at.subheader[0].value == "Feature 7 · layer 1"

    at.radio(key="features_search_by").set_value("feature index").run()
    at.text_input(key="features_search").input("3, 5").run()
    assert sorted(at.dataframe[0].value["feature"]) == [3, 5]
    assert at.subheader[0].value.startswith(("Feature 3 ", "Feature 5 "))
    at.text_input(key="features_search").input("three").run()
    assert "not a feature index" in at.warning[0].value

    features = feature_frames("transcoder")["features"]
    token = features.query("layer == 1 and feature == 4")["top_tokens"].iloc[0][0]
    at.radio(key="features_search_by").set_value("token").run()
    at.text_input(key="features_search").input(token.upper()).run()
    listed = at.dataframe[0].value
    assert 4 in set(listed["feature"]) and "match" in listed.columns
    assert not at.exception


def test_feature_labels_and_tokens_are_text_not_html(feature_set):
    def poison(frames):  # feature 0 of layer 0: its first top context's token and its top logit token
        contexts, features = frames["contexts"], frames["features"]
        first = contexts.index[(contexts["layer"] == 0) & (contexts["feature"] == 0) & (contexts["group"] == "top")][0]
        contexts.loc[first, "text"] = contexts.loc[first, "text"].replace(f"[[{contexts.loc[first, 'token']}]]",
                                                                          f"[[{SCRIPT}]]")
        contexts.loc[first, "token"] = SCRIPT
        if "window_tokens" in contexts:  # the per-token highlighter draws from the window columns
            window = list(contexts.at[first, "window_tokens"])
            window[int(contexts.at[first, "window_center"])] = SCRIPT
            contexts.at[first, "window_tokens"] = window
        features.at[features.index[0], "top_tokens"] = [SCRIPT, *features.at[features.index[0], "top_tokens"][1:]]

    feature_set(f"evil{SCRIPT}", edit=poison)
    at = run(FEATURES)
    at.radio(key="features_search_by").set_value("token").run()
    at.text_input(key="features_search").input(SCRIPT).run()
    assert not at.exception
    listed = at.dataframe[0].value
    assert list(listed["feature"]) == [0] and SCRIPT in listed["raises logits of"].iloc[0]
    at.selectbox(key=f"features_feature@evil{SCRIPT}").set_value(0).run()
    for body in bodies(at):
        assert "<script>" not in body
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in body for body in html_bodies(at))


def test_dead_feature_and_damaged_files(feature_set, feature_frames):
    dead = strongest(feature_frames("transcoder"))

    def kill(frames):
        features = frames["features"]
        features.loc[(features["layer"] == 0) & (features["feature"] == dead), "density"] = 0.0

    folder = feature_set("tiny", edit=kill)
    at = run(FEATURES)
    at.selectbox(key="features_feature@tiny").set_value(dead).run()
    assert any("never fired" in i.value for i in at.info) and not at.get("plotly_chart")
    (folder / "features" / "histograms.parquet").write_bytes(b"not parquet")
    at = run(FEATURES)
    assert "histograms" in at.warning[0].value and "is damaged" in at.warning[0].value


def test_deleted_unwritten_and_outside_folders_get_a_clear_message(feature_set, tmp_path):
    import shutil

    from workbench.store import Catalog

    shutil.rmtree(feature_set("gone"))
    at = run(FEATURES)
    assert "missing" in at.error[0].value and "deleted or moved" in at.error[0].value
    catalog = Catalog()
    (catalog.root / "dictionaries" / "fresh").mkdir(parents=True)
    catalog.register("dictionary", "fresh", catalog.root / "dictionaries" / "fresh", {"model": "models/m"})
    at.selectbox(key="features_dict").set_value(0).run()  # entries are sorted: fresh, gone
    assert "no feature data yet" in at.info[0].value
    assert at.code[0].value.startswith("wb dict features --model models/m --dict ")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    catalog.register("dictionary", "aaa-outside", outside, {})
    at = run(FEATURES)
    assert "outside the artifacts root" in at.error[0].value


def panel_script(app: str, dictionary: str, layer: int, feature: int) -> None:
    import sys

    sys.path.insert(0, app)
    import feature_panel

    feature_panel.feature_panel(dictionary, layer, feature)


def panel(dictionary: str, layer: int, feature: int) -> AppTest:
    at = AppTest.from_function(panel_script, args=(str(APP), dictionary, layer, feature),
                               default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_feature_panel_by_name_layer_and_index(feature_set):
    """The call the Attribution page makes for a clicked node: set (or member) name, layer, feature."""
    feature_set("tiny-clt-L0-1", kind="clt")
    feature_set("tiny-transcoder-L0-1")
    at = panel("tiny-clt-L0-1", 1, 3)
    assert at.subheader[0].value == "Feature 3 · layer 1" and "clt" in at.caption[0].value
    at = panel("tiny-transcoder-L0-1/layer1", 1, 2)
    assert at.subheader[0].value == "Feature 2 · layer 1" and "layer1" in at.caption[0].value
    assert "has no feature 99" in panel("tiny-transcoder-L0-1", 0, 99).warning[0].value
    assert "no features for member 'layer0' layer 1" in panel("tiny-transcoder-L0-1/layer0", 1, 2).warning[0].value
    assert "outside the artifacts root" in panel("../../etc", 0, 0).error[0].value


def test_feature_data_search_and_context_windows(feature_frames, monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    import feature_data

    frames = feature_frames("transcoder")
    features = frames["features"][frames["features"]["layer"] == 0]
    contexts = frames["contexts"][frames["contexts"]["layer"] == 0]
    assert list(feature_data.search(features, contexts, " ", "token")["feature"]) == list(range(12))
    token = contexts[contexts["group"] == "top"]["token"].iloc[0]
    hits = feature_data.search(features, contexts, token, "token")
    assert int(contexts[contexts["group"] == "top"]["feature"].iloc[0]) in set(hits["feature"])
    assert all(h for h in hits["match"])
    with pytest.raises(ValueError, match="'x' is not a feature index"):
        feature_data.search(features, contexts, "1 x", "feature index")

    row = contexts.iloc[0]
    tokens, values, center = feature_data.context_window(row)
    assert tokens[center] == row["token"] and values[center] == row["activation"]
    assert not any(math.isnan(v) for v in values)  # features.py records every window token's activation
    assert values == pytest.approx(list(row["window_activations"]))
    legacy = row.drop(["window_tokens", "window_activations", "window_center"])  # older feature data
    tokens, values, center = feature_data.context_window(legacy)
    assert tokens[center] == row["token"] and sum(not math.isnan(v) for v in values) == 1
    windowed = row.copy()
    windowed["window_tokens"], windowed["window_activations"], windowed["window_center"] = ["a", "b"], [0.5, 1.0], 1
    assert feature_data.context_window(windowed) == (["a", "b"], [0.5, 1.0], 1)


def test_histograms_load_with_their_edges_derived_or_stored(feature_set, monkeypatch):
    """Feature data written since issue #16 leaves the bins' edges out; the app derives them from the
    features' nonzero range and summary.json's histogram_bins. Files of the older format (edges stored)
    load as they are; a file that lacks both says what is missing."""
    monkeypatch.syspath_prepend(str(APP))
    import feature_data
    from conftest import TINY_FEATURE_BINS

    new = feature_data.load_feature_data(feature_set("compact"))
    assert "lo" not in pd.read_parquet(new.folder / "features" / "histograms.parquet").columns
    hist, feats = new.histograms, new.features
    assert {"lo", "hi"} <= set(hist.columns) and (hist[hist.bin == 0][["lo", "hi"]] == 0).all().all()
    active = feats[feats.density > 0].iloc[0]
    bins = hist[(hist.member == active.member) & (hist.layer == active.layer) & (hist.feature == active.feature)]
    width = (active.nonzero_max - active.nonzero_min) / TINY_FEATURE_BINS
    first = bins[bins.bin >= 1].iloc[0]
    assert first.lo == pytest.approx(active.nonzero_min + (first.bin - 1) * width, rel=1e-5, abs=1e-7)
    assert first.hi - first.lo == pytest.approx(width, rel=1e-4, abs=1e-7)

    def old_format(frames):  # edges stored as columns, no range columns
        frames["histograms"] = feature_data.with_bin_edges(frames["histograms"], frames["features"], TINY_FEATURE_BINS)
        frames["histograms"]["lo"] += 1.0  # so that a re-derivation would show
        frames["features"] = frames["features"].drop(columns=["nonzero_min", "nonzero_max"])

    old = feature_data.load_feature_data(feature_set("stored-edges", edit=old_format))
    assert (old.histograms[old.histograms.bin == 0].lo == 1.0).all()  # read as stored

    def neither(frames):
        frames["features"] = frames["features"].drop(columns=["nonzero_min", "nonzero_max"])

    with pytest.raises(ValueError, match=r"histograms.parquet has no bin edges.*nonzero_min"):
        feature_data.load_feature_data(feature_set("no-edges", edit=neither))
