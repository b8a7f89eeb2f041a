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
from test_app import APP, FEATURES, HOME, MODELS, card, run, write_model


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


def _home_constants(name: str) -> dict:
    """A constant of app/Home.py, read without running the page."""
    import ast

    tree = ast.parse((APP / "Home.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == name)
    return ast.literal_eval(node.value)


def test_home_names_every_page_and_only_what_it_does():
    """Each page has a note on Home that appears under its link; the intervention methods the notes name
    are ones the Interventions page offers; the intro promises no instrument by name."""
    from workbench.studies.methods import METHODS, load_adapters

    at = run(HOME)
    notes, methods = _home_constants("PAGE_NOTES"), _home_constants("NOTED_METHODS")
    pages = sorted(p.stem for p in (APP / "pages").glob("*.py"))
    assert sorted(notes) == pages
    captions = [c.value for c in at.caption]
    assert all(note in captions for note in notes.values())
    load_adapters()
    noted = notes["4_Interventions"]
    assert methods and all(phrase in noted and method in METHODS for phrase, method in methods.items())
    intro = at.markdown[0].value
    assert not any(word in intro for word in ("patching", "steering", "ablation"))


def test_sweep_and_curve_legends_sit_below_the_plot(monkeypatch, tmp_path):
    """Plotly's toolbar sits at the figure's top right: legends go under the plot, as one row."""
    monkeypatch.setenv("WB_MODELS", str(Path(__file__).resolve().parents[1] / "models"))
    at = run(MODELS)
    names = list(at.dataframe[0].value["name"])
    at.selectbox(key="models_card").select_index(names.index("rwkv-recall")).run()
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    sweep = next(s for s in specs if s["layout"].get("xaxis", {}).get("title", {}).get("text") == "pairs in context")
    curves = [s for s in specs if "title" in s["layout"] and " on " in s["layout"]["title"]["text"]]
    assert curves
    for spec in [sweep, *curves]:
        legend = spec["layout"]["legend"]
        assert legend["orientation"] == "h" and legend["y"] < 0 and legend["yanchor"] == "top"


def test_comparison_shows_a_dash_for_missing_values(tmp_path):
    zoo = tmp_path / "models"  # WB_MODELS (conftest)
    write_model(zoo, "alpha", card("alpha", 0.875, 12_345, bigram=None), with_curves=False)
    write_model(zoo, "beta", card("beta", 0.5, 2_000), with_curves=False)
    at = run(MODELS)
    shown = _display_values(at, -1)
    assert shown.loc["bigram_perplexity"].tolist() == ["-", "7.5"]
    assert shown.loc["parameters"].tolist() == ["12,345", "2,000"]
    assert not shown.isin(["None", "nan", "NaN"]).any().any()
    assert pd.isna(at.dataframe[-1].value.loc["bigram_perplexity", "alpha"])  # the data stays numeric
