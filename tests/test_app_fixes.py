"""Fixes a new user ran into (issue 14, item 5), under AppTest or as unit tests: the Features page's
widgets follow the chosen set, paths from another machine are shown relative to a root, the Models page
names what each training curve measures and shows a missing value as "-", and long graph names are cut
at a word boundary."""

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
from streamlit.testing.v1 import AppTest
from test_app import APP, FEATURES, MODELS, card, run, write_model


def test_features_page_widgets_follow_the_chosen_set(feature_set):
    """Switching sets gives new layer and feature boxes (new element ids: the browser cannot keep the old
    set's labels) labelled from the new set's data, and switching back gives the first set's again."""
    feature_set("a-transcoder")

    def bigger(frames):
        frames["features"]["max_activation"] *= 1000

    feature_set("b-clt", kind="clt", edit=bigger)
    at = run(FEATURES)
    layer, feature = at.selectbox(key="features_layer@a-transcoder"), at.selectbox(key="features_feature@a-transcoder")
    assert layer.options == ["layer 0", "layer 1"]
    a_ids, a_labels = (layer.proto.id, feature.proto.id), list(feature.options)
    at.selectbox(key="features_dict").set_value(1).run()
    assert not at.exception
    assert [s.key for s in at.selectbox] == ["features_dict", "features_layer@b-clt", "features_feature@b-clt"]
    layer, feature = at.selectbox(key="features_layer@b-clt"), at.selectbox(key="features_feature@b-clt")
    assert layer.options == ["layer 0 · clt", "layer 1 · clt"]
    assert (layer.proto.id, feature.proto.id) != a_ids and {layer.proto.id, feature.proto.id}.isdisjoint(a_ids)
    maxima = [float(label.rpartition("max ")[2]) for label in feature.options]
    assert min(maxima) > 10 and max(float(label.rpartition("max ")[2]) for label in a_labels) < 10
    at.selectbox(key="features_dict").set_value(0).run()
    assert at.selectbox(key="features_feature@a-transcoder").options == a_labels


def test_display_path_is_relative_to_a_root(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(APP))
    import feature_data

    models = Path(tmp_path / "models").resolve()
    assert feature_data.display_path("models/tiny") == "models/tiny"
    assert feature_data.display_path(models / "tiny" / "dictionaries") == "models/tiny/dictionaries"
    assert feature_data.display_path(Path(tmp_path / "artifacts" / "dictionaries" / "x").resolve()) \
        == "artifacts/dictionaries/x"
    assert feature_data.display_path("/home/alice/wb/models/transformer-recall") == "models/transformer-recall"
    assert feature_data.display_path("/srv/alice/runs/m1") == "m1"


def test_feature_summary_shows_no_path_from_another_machine(feature_set):
    folder = feature_set("tiny")
    summary = folder / "features" / "summary.json"
    data = json.loads(summary.read_text())
    summary.write_text(json.dumps(data | {"model": "/home/alice/wb/models/tiny"}))
    at = run(FEATURES)
    caption = at.caption[0].value
    assert "models/tiny" in caption.replace("\\", "") and "alice" not in caption


def _curve_figures(at: AppTest) -> dict[str, dict]:
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    return {spec["layout"]["title"]["text"]: spec for spec in specs if "title" in spec["layout"]}


def test_training_curves_name_their_metric_and_task(tmp_path):
    zoo = tmp_path / "models"  # WB_MODELS (conftest)
    recall = card("recall-model", 0.2455, 1000) | {"task": {"name": "recall_multi"}, "eval_task": {"name": "recall"}}
    write_model(zoo, "recall-model", recall)
    at = run(MODELS)
    figures = _curve_figures(at)
    assert {"accuracy on recall_multi", "loss on recall_multi", "perplexity on recall_multi"} <= set(figures)
    y_title = figures["accuracy on recall_multi"]["layout"]["yaxis"]["title"]["text"]
    assert y_title.startswith("exact match") and "every answer" in y_title
    caption = next(c.value.replace("\\", "") for c in at.caption if "Curves are measured" in c.value)
    assert "training task recall_multi" in caption and "measured on recall" in caption
    assert at.metric[0].value == "24.55%"


def _display_values(at: AppTest, index: int = 0) -> pd.DataFrame:
    """The text a dataframe shows (its Styler's display values)."""
    raw = at.dataframe[index].proto.arrow_data.styler.display_values
    return pa.ipc.open_stream(io.BytesIO(raw)).read_all().to_pandas()


def test_zoo_table_shows_a_dash_for_missing_values(tmp_path):
    zoo = tmp_path / "models"  # WB_MODELS (conftest)
    write_model(zoo, "alpha", card("alpha", 0.875, 12_345, bigram=None), with_curves=False)
    at = run(MODELS)
    shown = _display_values(at)
    row = shown.iloc[0].astype(str).tolist()
    assert "-" in row and not any(v in ("None", "nan", "NaN") for v in row)
    assert "87.50%" in row and "12,345" in row
    assert pd.isna(at.dataframe[0].value["bigram perplexity"].iloc[0])  # the data stays numeric


def test_clip_words_cuts_at_a_word_boundary(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    from labels import clip_words

    name = "transformer-recall-the-quick-brown-fox-jumps-over-the-l-3f2a9c1b0e"
    clipped = clip_words(name, 48)
    assert clipped == "transformer-recall-the-quick-brown…-3f2a9c1b0e" and len(clipped) <= 48
    assert clip_words("short-name", 48) == "short-name"
    assert clip_words("hello world this is a long sentence of words", 20) == "hello world this is…"
    assert clip_words("a" * 30, 10) == "a" * 9 + "…"
