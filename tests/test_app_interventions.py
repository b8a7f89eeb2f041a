"""The Interventions page and the Attribution graph page's Intervene section under AppTest.

Interventions: an ablation (and a patching sweep, when the ``patch`` method is registered) on the
committed zoo's transformer-recall runs as a catalogued one-step study and draws its figure; running
it again reads it back; a stored study opens; typed pairs of unequal lengths and unknown tokens show an
error and write nothing; labels from a study's files stay text. Intervene: on a graph built from the
tiny zoo, ablating a feature in frozen mode shows the graph's prediction equal to the frozen pass."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
PAGE = str(APP / "pages" / "4_Interventions.py")
GRAPH_PAGE = str(APP / "pages" / "3_Attribution_graph.py")
TIMEOUT = 120




def run_page(script: str = PAGE) -> AppTest:
    at = AppTest.from_file(script, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def click_run(at: AppTest) -> AppTest:
    at.button(key="iv_run").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown(markdown: str) -> str:
    """Markdown as the reader sees it: the backslash escapes of ``widgets.md_escape`` removed."""
    return re.sub(r"\\(.)", r"\1", markdown)


def figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def studies() -> list[dict]:
    from workbench.store.catalog import Catalog

    return Catalog().list("study")


def test_ablation_runs_as_a_catalogued_study_and_reads_back(recall_zoo):
    at = run_page()
    assert "No studies in the catalog" in at.info[0].value
    at.selectbox(key="iv_method").set_value("ablate").run()
    at.number_input(key="iv_n").set_value(4).run()
    at.text_input(key="iv_ablate_kinds").input("mixer, mlp").run()
    click_run(at)
    [entry] = studies()
    assert entry["name"].startswith("app-ablate-transformer-recall-")
    bars = figures(at)[0]["data"][0]
    assert bars["type"] == "bar" and len(bars["x"]) == 4  # two layers x (mixer, mlp)
    table = at.dataframe[0].value
    assert set(table["component"]) == {"mixer", "mlp"} and (table["change"] == table["ablated"] - table["clean"]).all()
    assert (table["clean"] > 5).all()  # the clean logit difference of a model that solves recall

    again = click_run(at)  # the same inputs: the same study, read back
    assert [e["name"] for e in studies()] == [entry["name"]]
    assert any("read back from the store" in c.value for c in again.caption)
    at.number_input(key="iv_n").set_value(3).run()
    click_run(at)
    assert len(studies()) == 2  # other inputs, another name

    home = run_page(str(APP / "Home.py"))
    assert {m.label: m.value for m in home.metric}["Studies"] == "2"
    assert any("stored study" in c.value for c in home.caption)  # the Interventions page says what it does

    fresh = run_page()  # a new session opens it under Stored studies
    assert fresh.selectbox(key="iv_stored").value is not None
    assert any(d["data"][0]["type"] == "bar" for d in figures(fresh))
    assert set(fresh.dataframe[-1].value["component"]) == {"mixer", "mlp"}


def test_patching_sweep_draws_a_layer_position_map(recall_zoo):
    from workbench.studies.methods import METHODS, load_adapters

    load_adapters()
    if "patch" not in METHODS:
        pytest.skip(f"the study method 'patch' is not registered yet (methods: {', '.join(sorted(METHODS))})")
    at = run_page()
    at.selectbox(key="iv_method").set_value("patch").run()
    at.number_input(key="iv_n").set_value(2).run()
    click_run(at)
    [entry] = studies()
    assert entry["name"].startswith("app-patch-transformer-recall-")
    heatmap = figures(at)[0]["data"][0]
    assert heatmap["type"] == "heatmap"
    assert not at.error


@pytest.mark.parametrize("clean, corrupted, message", [
    ("m > 7 ? m", "m > 7 w > 3 ? w", "the clean prompt has 6 tokens (with <bos>) but the corrupted prompt has 9"),
    ("m > 7 ? m", "m > 7 ? zebra", "unknown token"),
])
def test_bad_typed_pairs_show_an_error_and_write_nothing(recall_zoo, clean, corrupted, message):
    from workbench.store.catalog import Catalog

    at = run_page()
    at.radio(key="iv_source").set_value("Typed prompts").run()
    at.selectbox(key="iv_method").set_value("ablate").run()
    for key, text in (("iv_clean", clean), ("iv_corrupted", corrupted), ("iv_answer", "7"), ("iv_contrast", "3")):
        at.text_area(key=key).input(text).run()
    click_run(at)
    assert message in shown(at.error[0].value)
    assert not studies() and not (Catalog().root / "studies").exists()


def test_a_bad_parameter_or_a_failing_method_writes_nothing(recall_zoo):
    from workbench.store.catalog import Catalog

    at = run_page()
    at.selectbox(key="iv_method").set_value("steer").run()
    at.text_input(key="iv_steer_coefs").input("big, bigger").run()
    assert "parameter 'coefs' expects a comma-separated list of float" in shown(at.error[0].value)
    assert not at.get("button")  # nothing to run until the value is fixed
    at.selectbox(key="iv_method").set_value("ablate").run()
    at.number_input(key="iv_n").set_value(2).run()
    at.text_input(key="iv_ablate_layers").input("7").run()  # the model has layers 0 and 1
    click_run(at)
    assert "ablate failed" in shown(at.error[0].value) and "7" in shown(at.error[0].value)
    assert not studies() and not any((Catalog().root / "studies").glob("*"))


def test_typed_pairs_run(recall_zoo):
    at = run_page()
    at.radio(key="iv_source").set_value("Typed prompts").run()
    at.selectbox(key="iv_method").set_value("ablate").run()
    for key, text in (("iv_clean", "m > 7 w > 3 ? m"), ("iv_corrupted", "m > 7 w > 3 ? w"), ("iv_answer", "7"),
                      ("iv_contrast", "3")):
        at.text_area(key=key).input(text).run()
    click_run(at)
    assert not at.error and len(studies()) == 1
    assert studies()[0]["meta"]["spec"]["prompts"]["clean"] == ["m > 7 w > 3 ? m"]


def test_a_stored_study_with_tags_in_its_labels_draws_them_as_text(recall_zoo):
    from workbench.store import Catalog
    from workbench.studies import parse_spec, run_study

    spec = parse_spec({"name": "stored", "models": ["transformer-recall"], "prompts": {"n": 2},
                       "steps": [{"method": "ablate", "kinds": ["mlp"]}], "description": "<b>bold</b> *claim*"})
    result = run_study(spec, Catalog(), models_dir=recall_zoo)
    figure_file = result.folder / result.units[0]["figure"]
    doc = json.loads(figure_file.read_text())
    doc["layout"]["title"]["text"] = '<a href="https://example.com">click</a> &lt;kept&gt;'
    figure_file.write_text(json.dumps(doc))
    at = run_page()
    assert at.selectbox(key="iv_stored").value is not None
    title = figures(at)[0]["layout"]["title"]["text"]
    assert title == '&lt;a href="https://example.com"&gt;click&lt;/a&gt; &lt;kept&gt;'
    assert any(t.value == "<b>bold</b> *claim*" for t in at.text)  # the description, as plain text
    assert len(at.dataframe[-1].value) == 2  # one row per MLP


def test_a_study_pointing_outside_its_folder_is_refused(recall_zoo):
    from workbench.store import Catalog
    from workbench.studies import parse_spec, run_study

    spec = parse_spec({"name": "escape", "models": ["transformer-recall"], "prompts": {"n": 2},
                       "steps": [{"method": "ablate", "kinds": ["mlp"]}]})
    result = run_study(spec, Catalog(), models_dir=recall_zoo)
    meta = json.loads((result.folder / "study.json").read_text())
    meta["units"][0]["table"] = "../../../outside.parquet"
    (result.folder / "study.json").write_text(json.dumps(meta))
    at = run_page()
    assert any("leads outside" in shown(w.value) for w in [*at.warning, *at.error])
    assert not at.get("plotly_chart")


# ---- the Attribution graph page's Intervene section ---------------------------------------------------

@pytest.fixture
def tiny_graph(tmp_path):
    from graph_fixtures import tiny_zoo

    from workbench.attribution.jobs import build_graph
    from workbench.store.catalog import Catalog

    bundle, folder, prompt = tiny_zoo(tmp_path / "models", with_features=False)
    summary = build_graph(bundle, folder, prompt, node_threshold=0.99, catalog=Catalog(), progress=False)
    return bundle, folder, summary


def frame_with(at: AppTest, column: str):
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no table with a {column!r} column"
    return found[0]


def test_frozen_ablation_matches_the_graph_prediction(tiny_graph):
    from workbench.attribution.graph import Graph
    from workbench.attribution.jobs import load_replacement_set
    from workbench.interventions.features import FeatureEdit, FeatureSplice, logit_targets
    from workbench.store.catalog import Catalog

    bundle, folder, summary = tiny_graph
    at = run_page(GRAPH_PAGE)
    at.toggle(key="graph_iv_open").set_value(True).run()  # the section is closed until asked for
    options = at.multiselect(key="graph_iv_features").options
    assert options, "the drawn graph's feature nodes are offered"
    at.multiselect(key="graph_iv_features").set_value([options[0]]).run()
    at.radio(key="graph_iv_op").set_value("ablate").run()
    at.radio(key="graph_iv_mode").set_value("frozen").run()
    at.button(key="graph_iv_run").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    table = frame_with(at, "graph prediction")
    assert table["graph prediction"].to_numpy() == pytest.approx(table["frozen model"].to_numpy(), abs=1e-4)
    assert table["graph prediction"].abs().max() > 0  # the feature mattered: the check is not 0 == 0

    # the shown frozen change is the frozen pass's, computed here independently
    graph = Graph.load(Catalog().get("graph", summary["name"])["path"])
    [node] = at.multiselect(key="graph_iv_features").value  # a node id: {layer}_{feature}_{pos}
    layer, feature, pos = (int(v) for v in node.split("_"))
    dictionaries, _ = load_replacement_set(bundle, folder)
    splice = FeatureSplice(bundle.model, dictionaries, graph.input_tokens[None])
    frozen = splice.run([FeatureEdit(layer, feature, "ablate", positions=(pos,))], "frozen")
    expected = (logit_targets(graph, frozen) - logit_targets(graph, splice.clean_logits))[0]
    assert table["frozen model"].to_numpy() == pytest.approx(expected.numpy(), abs=1e-6)
    top = frame_with(at, "change")
    assert list(top.columns) == ["token", "probability", "change"] and len(top) >= 1
    assert any(t.value.startswith("with the intervention") for t in at.text)


def test_swapping_a_feature_for_itself_changes_nothing(tiny_graph):
    """Swap: ablate a feature and add it back from a donor prompt that is the graph's own, at its own
    position and activation: every pass and the graph's prediction show no change (while ablating it
    alone does change the logits)."""
    at = run_page(GRAPH_PAGE)
    at.toggle(key="graph_iv_open").set_value(True).run()  # the section is closed until asked for
    picker = at.multiselect(key="graph_iv_features")
    picker.set_value([picker.options[-1]]).run()
    [node_id] = at.multiselect(key="graph_iv_features").value
    layer, feature, pos = (int(v) for v in node_id.split("_"))
    at.radio(key="graph_iv_mode").set_value("live").run()
    at.button(key="graph_iv_run").click().run(timeout=TIMEOUT)
    assert frame_with(at, "graph prediction")["live model"].abs().max() > 1e-4  # the ablation alone

    at.radio(key="graph_iv_op").set_value("swap").run()
    at.number_input(key="graph_iv_donor_pos").set_value(pos).run()
    at.number_input(key="graph_iv_at_pos").set_value(pos).run()
    at.multiselect(key="graph_iv_add").set_value([f"L{layer} F{feature} @{pos}"]).run()
    assert any("Press Run intervention" in c.value for c in at.caption)  # new edits: not run yet
    at.button(key="graph_iv_run").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    table = frame_with(at, "graph prediction")
    for column in ("graph prediction", "frozen model", "live model"):
        assert table[column].abs().max() < 1e-5, column
    assert frame_with(at, "change")["change"].abs().max() < 1e-6
