"""The Features page beyond the panel (issue 14, items 2 and 4), under AppTest: a link's query parameters
open the entry they name and the URL follows the page, a label is edited and saved with the feature
data, "graphs containing this feature" lists the catalogued graphs that draw it, and "activations on my
text" runs the model and set on a typed prompt (unknown words get near matches)."""

import json
import re

import pytest
from graph_fixtures import tiny_zoo
from streamlit.testing.v1 import AppTest
from test_app import FEATURES, TIMEOUT

from workbench.dictionaries.labels import user_labels


def run_linked(params: dict) -> AppTest:
    at = AppTest.from_file(FEATURES, default_timeout=TIMEOUT)
    at.query_params.update(params)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_link_opens_the_named_entry_and_the_url_follows(feature_set):
    feature_set("a-transcoder")
    feature_set("b-clt", kind="clt")
    at = run_linked({"root": "artifacts", "set": "dictionaries/b-clt", "layer": "1", "feature": "7"})
    assert at.selectbox(key="features_dict").value == 1
    assert at.selectbox(key="features_layer@b-clt").value == 1
    assert at.subheader[0].value == "Feature 7 · layer 1"
    # a later pick is not undone by the link, and the URL names what is open
    at.selectbox(key="features_feature@b-clt").set_value(3).run()
    assert at.subheader[0].value == "Feature 3 · layer 1"
    assert at.query_params["feature"] in ("3", ["3"]) and at.query_params["set"] in ("dictionaries/b-clt",
                                                                                     ["dictionaries/b-clt"])


def test_a_bad_link_says_what_is_wrong(feature_set):
    feature_set("a-transcoder")
    at = run_linked({"root": "artifacts", "set": "../../etc", "layer": "0", "feature": "1"})
    assert "could not be opened" in at.warning[0].value and "outside" in at.warning[0].value
    assert at.subheader[0].value.startswith("Feature ")  # the page still opens its first entry


def test_label_is_edited_saved_and_shown(feature_set):
    folder = feature_set("tiny")
    at = run_linked({"root": "artifacts", "set": "dictionaries/tiny", "layer": "0", "feature": "2"})
    box = at.text_input(key="feature_label@tiny#0_2")
    automatic = box.placeholder
    assert automatic.startswith(("reads ", "writes ", "dead")) and not box.value
    assert f"**{automatic}**" in [m.value.replace("\\", "") for m in at.markdown]  # shown, escaped
    box.input("copies the key")
    at.button(key="feature_label@tiny#0_2:save").click().run()
    assert not at.exception and "Label saved" in at.success[0].value
    assert user_labels(folder) == {(0, 2): "copies the key"}
    assert "**copies the key**" in [m.value for m in at.markdown]
    fresh = run_linked({"root": "artifacts", "set": "dictionaries/tiny", "layer": "0", "feature": "2"})
    assert fresh.text_input(key="feature_label@tiny#0_2").value == "copies the key"
    assert "**copies the key**" in [m.value for m in fresh.markdown]


@pytest.fixture
def zoo_with_graph(tmp_path):
    """tiny-recall with its transcoder set (feature data catalogued) and one graph built with it."""
    from workbench.attribution.jobs import build_graph
    from workbench.store.catalog import Catalog

    bundle, set_folder, prompt = tiny_zoo(tmp_path / "models")
    summary = build_graph(bundle, set_folder, prompt, catalog=Catalog(), progress=False, validate=False,
                          node_threshold=1.0, edge_threshold=1.0)  # keep every node: an untrained set
    nodes = json.loads((tmp_path / "artifacts" / "graphs" / summary["name"] / "neuronpedia.json").read_text())["nodes"]
    drawn = {tuple(int(x) for x in n["node_id"].split("_")[:2]) for n in nodes
             if n["feature_type"] == "cross layer transcoder"}
    return bundle, set_folder, summary["name"], drawn


def zoo_link(layer: int, feature: int) -> dict:
    return {"root": "models", "set": "tiny-recall/dictionaries/transcoders", "layer": str(layer),
            "feature": str(feature)}


def test_graphs_containing_the_feature(zoo_with_graph):
    _, _, name, drawn = zoo_with_graph
    layer, feature = min(drawn)
    at = run_linked(zoo_link(layer, feature))
    assert at.subheader[0].value == f"Feature {feature} · layer {layer}"
    table = next(d.value for d in at.dataframe if "graph" in d.value.columns)
    assert list(table["graph"]) == [name] and re.match(r"^\d+ \(", table["at positions"].iloc[0])
    assert table["open"].iloc[0] == f"Attribution_graph?graph={name}"
    absent = next(f for f in range(32) if (layer, f) not in drawn)
    at = run_linked(zoo_link(layer, absent))
    assert any("No catalogued graph" in c.value for c in at.caption)


def test_activations_on_my_text(zoo_with_graph):
    bundle, set_folder, _, _ = zoo_with_graph
    at = run_linked(zoo_link(0, 1))
    box = at.text_input(key="features_my_text")
    assert box.placeholder.startswith("<bos>")  # an example from the model's own task
    prompt = box.placeholder
    box.input(prompt).run()
    assert not at.exception and not at.warning
    shaded = [el.proto.body for el in at.get("html") if "activation not recorded" not in el.proto.body
              and el.proto.body.count("<span") == len(prompt.split())]
    assert shaded, "the typed text's tokens, one span each"

    from workbench.dictionaries.dictionary_set import load_set_for_model
    from workbench.dictionaries.features import feature_activations

    dictionaries, _ = load_set_for_model(bundle, set_folder)
    ids = bundle.tokenizer.encode(prompt)
    acts, _, _ = feature_activations(bundle.model, dictionaries["layer0"], __import__("torch").tensor([ids]), 0)
    titles = [float(t) for t in re.findall(r'title="([-0-9.e]+)"', shaded[-1])]
    assert titles == pytest.approx(acts[:, 0, 1].tolist(), abs=1e-3)

    word = prompt.split()[1]
    at.text_input(key="features_my_text").input(f"{prompt} {word.upper()}x").run()
    assert "not in the model's vocabulary" in at.warning[0].value


def test_feature_sections_do_not_break_without_a_model(feature_set):
    feature_set("tiny")  # feature data only: its summary names a model that is not here
    at = run_linked({"root": "artifacts", "set": "dictionaries/tiny", "layer": "1", "feature": "0"})
    assert any("Not available for this set" in c.value for c in at.caption)
    assert any("No catalogued graph" in c.value for c in at.caption)
