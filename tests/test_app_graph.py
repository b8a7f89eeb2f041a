"""The Attribution graph page under AppTest: an empty store, a catalogued graph (scores, the viewer's
graph with feature cards and labels, a view from the URL, saved with the graph and given to the Intervene
section), a graph built from a prompt, an imported circuit-tracer file, labels from files kept as text,
missing and damaged graphs, paths outside the artifacts root, and a 10,000-node graph that is pruned and
capped, never sent whole. Plus the page's data functions. What happens in the browser (clicks, panel,
hover) is tested in Chromium: test_browser_graph_viewer.py."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from graph_fixtures import save_graph, synthetic_graph, tiny_zoo
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app"
PAGE = str(APP / "pages" / "3_Attribution_graph.py")
FIXTURE = Path(__file__).parent / "fixtures" / "circuit_tracer_graph.json"
SCRIPT = "<script>alert(1)</script>"
TIMEOUT = 60


def run(timeout: float = TIMEOUT) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=timeout).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def bodies(at: AppTest) -> list[str]:
    """Every string an element could render as markdown or HTML."""
    kinds = ("markdown", "caption", "title", "header", "subheader", "info", "warning", "error", "success")
    return [el.value for kind in kinds for el in getattr(at, kind)] + [el.proto.body for el in at.get("html")]


def viewer(at: AppTest) -> dict:
    """The graph viewer component's arguments: ``graph`` (the payload) and ``state``."""
    [element] = at.get("component_instance")
    return json.loads(element.proto.json_args)


def sent_nodes(at: AppTest) -> list[str]:
    return viewer(at)["graph"]["nodes"]["id"]


@pytest.fixture
def app_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    import graph_data

    return graph_data


@pytest.fixture
def zoo_graph(tmp_path):
    """The tiny zoo (model, transcoders with feature data) and one graph built from it, catalogued."""
    from workbench.attribution.jobs import build_graph
    from workbench.store.catalog import Catalog

    bundle, folder, prompt = tiny_zoo(tmp_path / "models")
    # untrained transcoders explain little: 0.99 keeps some features (0.8 keeps none)
    summary = build_graph(bundle, folder, prompt, node_threshold=0.99, catalog=Catalog(), progress=False)
    return bundle, folder, prompt, summary


def test_empty_store():
    at = run()
    assert "No graphs in the catalog" in at.info[0].value and "wb graph" in at.info[0].value
    at.radio(key="graph_source").set_value("Build from a prompt").run()
    assert "No models" in at.info[0].value and "wb zoo build" in at.info[0].value
    at.radio(key="graph_source").set_value("Import a file").run()
    assert "Upload a graph file" in at.info[0].value
    assert not at.exception


def drawn_view(name: str, node_threshold: float = 1.0, edge_threshold: float = 1.0):
    """The view the page sends the viewer for catalogued graph ``name`` (at 1.0 and 1.0: the browser
    cuts it at the chosen thresholds)."""
    import graph_data

    from workbench.attribution.graph import Graph
    from workbench.attribution.prune_sparse import prune_graph_sparse
    from workbench.store.catalog import Catalog

    graph = Graph.load(Catalog().get("graph", name)["path"])
    pruned = prune_graph_sparse(graph, node_threshold, edge_threshold)
    return graph_data.view_from_graph(graph, pruned, *graph_data.cap_to_budget(graph, pruned))


def test_saved_graph_scores_viewer_url_state_and_saved_view(zoo_graph, app_modules):
    from workbench.attribution.graph import Graph
    from workbench.attribution.prune_sparse import graph_scores_sparse, prune_graph_sparse
    from workbench.store.catalog import Catalog

    *_, summary = zoo_graph
    at = run()
    labels = [m.label for m in at.metric]
    assert labels[:4] == ["Replacement", "Completeness", "Replacement (pruned)", "Completeness (pruned)"]
    assert float(at.metric[0].value) == pytest.approx(summary["replacement_score"], abs=2e-3)
    assert float(at.metric[3].value) == pytest.approx(summary["pruned_completeness_score"], abs=2e-3)
    view = drawn_view(summary["name"])
    args = viewer(at)
    assert args["graph"]["nodes"]["id"] == view.ids and len(args["graph"]["edges"]["weight"]) == len(view.weight)
    assert args["state"] == {"clickedId": "", "pinnedIds": [], "supernodes": [], "nodeThreshold": 0.99,
                             "edgeThreshold": 0.98}  # the thresholds the graph was built with
    features = [i for i, k in enumerate(view.kinds) if k == "feature"]
    cards, links = args["graph"]["cards"], args["graph"]["links"]
    key = args["graph"]["nodes"]["card"][features[0]]
    assert key == "_".join(view.ids[features[0]].split("_")[:2]) and cards[key]["contexts"]  # its feature data
    assert links[key].startswith("Features?root=models&set=tiny-recall") and cards[key]["label"]
    assert args["graph"]["nodes"]["label"][features[0]] == cards[key]["label"]  # the node carries its label
    assert at.query_params["graph"] == summary["name"]

    # a shared link: the graph, a selected node, two pins in a supernode, thresholds
    pins = [view.ids[i] for i in features[:2]]
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    query = app_modules.state_to_query({"graph": summary["name"]}, {
        "clickedId": pins[0], "pinnedIds": pins, "supernodes": [["pair", *pins]], "nodeThreshold": 0.5,
        "edgeThreshold": 0.9})
    for name, value in query.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception
    state = viewer(at)["state"]
    assert state == {"clickedId": pins[0], "pinnedIds": pins, "supernodes": [["pair", *pins]], "nodeThreshold": 0.5,
                     "edgeThreshold": 0.9}
    graph = Graph.load(Catalog().get("graph", summary["name"])["path"])
    kept = prune_graph_sparse(graph, 0.5, 0.9).node_mask  # the scores follow the URL's thresholds
    assert float(at.metric[2].value) == pytest.approx(graph_scores_sparse(graph, kept)[0], abs=2e-3)
    assert any("node threshold 0.5 and edge threshold 0.9" in c.value for c in at.caption)

    at.toggle(key="graph_iv_open").set_value(True).run()  # the pinned features come preselected
    assert at.multiselect(key="graph_iv_features").value == pins
    at.button(key="graph_save_view").click().run()
    folder = Catalog().get("graph", summary["name"])["path"]
    saved = json.loads((folder / "qParams.json").read_text())
    assert saved["pinnedIds"] == pins and saved["supernodes"] == [["pair", *pins]] and saved["nodeThreshold"] == 0.5
    assert viewer(run())["state"] == state  # a plain visit opens the saved view
    assert at.get("download_button")[0].label == "Download graph JSON"


def test_build_from_a_prompt(tmp_path):
    from workbench.store.catalog import Catalog

    _, _, prompt = tiny_zoo(tmp_path / "models", with_features=False)
    at = run()
    at.radio(key="graph_source").set_value("Build from a prompt").run()
    assert at.text_input(key="graph_prompt").value == prompt  # a test row of the model's task
    assert any("Vocabulary" in c.value for c in at.caption)
    at.text_input(key="graph_prompt").input("zebra").run()
    at.button(key="graph_build").click().run()
    assert "unknown token" in at.error[0].value and not Catalog().list("graph")
    at.text_input(key="graph_prompt").input(prompt).run()
    start = time.perf_counter()
    at.button(key="graph_build").click().run(timeout=120)
    print(f"built through the page in {time.perf_counter() - start:.1f} s")
    assert not at.exception
    [entry] = Catalog().list("graph")
    assert at.header[0].value.startswith("Graph tiny") and entry["name"].startswith("tiny-recall-bos-")
    assert entry["path"].parent == Catalog().root / "graphs"  # the job's automatic name, as `wb graph` gives
    assert [m.label for m in at.metric][:2] == ["Replacement", "Completeness"]
    assert len(sent_nodes(at)) > 0
    # the graph was checked against the live model when it was built, and the page says how well
    assert any(c.value.startswith("Validation by intervention") for c in at.caption)
    assert "validation" in entry["meta"]  # the catalog row carries the summary's numbers
    assert any("no feature data yet" in i.value for i in at.info) or not any(
        s.value == "Feature node" for s in at.subheader)


def test_built_graph_names_stay_in_the_graphs_folder(tmp_path):
    from workbench.attribution.jobs import auto_graph_name, encode_prompt

    bundle, folder, prompt = tiny_zoo(tmp_path / "models", with_features=False)
    bundle.card["name"] = "../../etc"  # a card is a file: its name is not trusted either
    name = auto_graph_name(bundle, folder, encode_prompt(bundle, prompt), prompt)
    assert name.startswith("etc-bos-") and "/" not in name and len(name.rsplit("-", 1)[1]) == 8


def test_a_set_member_outside_the_set_builds_nothing(tmp_path):
    """set.json member ``../../../../outside_set/layer1`` (a real dictionary there): Build graph shows
    an error naming the member, loads nothing and catalogues nothing."""
    from workbench.store.atomic import atomic_write_json, read_json
    from workbench.store.catalog import Catalog

    _, folder, _ = tiny_zoo(tmp_path / "models", with_features=False)
    outside = folder / "../../../../outside_set/layer1"
    shutil.copytree(folder / "layer1", outside)
    meta = read_json(folder / "set.json")
    atomic_write_json(folder / "set.json", meta | {"members": {"layer0": "layer0",
                                                               "layer1": "../../../../outside_set/layer1"}})
    at = run()
    at.radio(key="graph_source").set_value("Build from a prompt").run()
    at.button(key="graph_build").click().run(timeout=120)
    assert not at.exception
    error = " ".join(e.value for e in at.error)
    assert "member 'layer1'" in error and "leads outside the set folder" in error
    assert not Catalog().list("graph") and not (Catalog().root / "graphs").exists()
    assert not at.get("component_instance")


def test_imported_circuit_tracer_file(app_modules):
    from workbench.store.catalog import artifacts_root

    target = artifacts_root() / "imports" / "ct.json"
    target.parent.mkdir(parents=True)
    shutil.copy(FIXTURE, target)
    at = run()
    at.radio(key="graph_source").set_value("Import a file").run()
    at.text_input(key="graph_import_path").input("imports/ct.json").run()
    assert not at.exception
    assert at.header[0].value.startswith("Graph dallas")
    assert any("imported file" in c.value for c in at.caption)
    doc = json.loads(FIXTURE.read_text())
    args = viewer(at)
    assert args["graph"]["nodes"]["id"] == [n["node_id"] for n in doc["nodes"]]
    assert args["state"]["pinnedIds"] == doc["qParams"]["pinnedIds"]  # the file's pins and supernode
    assert [g[0] for g in args["state"]["supernodes"]] == ["Texas"]
    assert at.query_params["file"] == "imports/ct.json"  # a typed path goes in the URL

    at.text_input(key="graph_import_path").input("../../etc/passwd").run()
    assert "outside the artifacts root" in at.error[0].value
    at.text_input(key="graph_import_path").input("imports/none.json").run()
    assert "No graph file" in at.error[0].value


def test_labels_from_files_are_text(app_modules):
    from workbench.store.catalog import artifacts_root

    save_graph(synthetic_graph(300, token_label=SCRIPT), f"evil{SCRIPT}")
    doc = json.loads(FIXTURE.read_text())
    doc["nodes"][0]["clerp"] = SCRIPT
    doc["metadata"]["slug"] = f"x{SCRIPT}"
    doc["metadata"]["prompt_tokens"][1] = SCRIPT
    (artifacts_root() / "evil.json").write_text(json.dumps(doc))
    at = run()
    _assert_escaped(at)
    at.radio(key="graph_source").set_value("Import a file").run()
    at.text_input(key="graph_import_path").input("evil.json").run()
    _assert_escaped(at)


def _assert_escaped(at: AppTest) -> None:
    """Labels reach the viewer verbatim (it escapes them: frontend/cards.js) and the page as text."""
    assert not at.exception
    graph = viewer(at)["graph"]
    assert any(SCRIPT in name for name in graph["nodes"]["name"]) or SCRIPT in graph["tokens"]
    for body in bodies(at):
        assert "<script>" not in body


def test_a_10k_node_graph_is_pruned_and_capped(app_modules):
    graph = synthetic_graph(10_000)
    save_graph(graph, "big")
    start = time.perf_counter()
    at = run()
    first = time.perf_counter() - start
    points = len(sent_nodes(at))  # sent at 1.0 and 1.0: 1,647 nodes, over the draw budget
    assert points == app_modules.DRAW_NODES
    assert any("most influential" in w.value for w in at.warning)
    print(f"10k-node graph: first render {first:.1f} s, {points} nodes sent")


def test_missing_damaged_and_outside_graphs(tmp_path):
    from workbench.store.catalog import Catalog

    folder = save_graph(synthetic_graph(200), "gone")
    shutil.rmtree(folder)
    at = run()
    assert "missing" in at.error[0].value and "wb graph" in at.error[0].value
    folder = save_graph(synthetic_graph(200), "hurt")
    (folder / "graph.json").write_text("{not json")
    at = run()  # the newest graph opens first
    assert "damaged" in at.warning[0].value
    outside = tmp_path / "elsewhere"
    synthetic_graph(200).save(outside)
    Catalog().register("graph", "aaa-outside", outside, {})
    at = run()
    assert "outside the artifacts root" in at.error[0].value


# ---- the page's data functions -----------------------------------------------------------------------

def test_the_download_carries_pins_supernodes_and_thresholds(app_modules):
    from workbench.attribution.graph_file import GraphFile
    from workbench.attribution.prune_sparse import prune_graph_sparse

    gd = app_modules
    graph = synthetic_graph(400, seed=3)
    pruned = prune_graph_sparse(graph)
    node_mask, edge_keep, notes = gd.cap_to_budget(graph, pruned)
    view = gd.view_from_graph(graph, pruned, node_mask, edge_keep, notes)
    assert len(view) == pruned.n_nodes and len(view.weight) == pruned.n_edges and not notes
    feats = [i for i, k in enumerate(view.kinds) if k == "feature"][:3]
    group = ["trio", *[view.ids[i] for i in feats]]
    state = gd.view_state(view, [view.ids[feats[0]], "not-drawn"], [group], view.ids[-1], (0.5, 0.9))
    doc = gd.graph_document(graph, pruned, node_mask, edge_keep, state, "syn", 0.8)
    assert doc["qParams"]["pinnedIds"] == [view.ids[feats[0]]] and doc["qParams"]["supernodes"] == [group]
    assert doc["qParams"]["clickedId"] == view.ids[-1] and doc["qParams"]["nodeThreshold"] == 0.5
    assert {n["node_id"] for n in doc["nodes"]} == set(view.ids) and len(doc["links"]) == len(view.weight)
    gf = GraphFile.from_dict(json.loads(FIXTURE.read_text()))
    file_view = gd.view_from_file(gf)
    file_doc = gd.file_document(gf, file_view, gd.view_state(file_view, ["1_77_3"], [], None))
    assert len(file_doc["nodes"]) == len(gf.nodes) and file_doc["qParams"]["pinnedIds"] == ["1_77_3"]


def test_file_thresholds_keep_the_viewers_nodes(app_modules):
    from workbench.attribution.graph_file import GraphFile

    gf = GraphFile.from_dict(json.loads(FIXTURE.read_text()))
    nodes, _ = app_modules.file_keeps(gf, 0.5, 1.0)
    for i in nodes:
        node = gf.nodes[i]
        assert gf.kind(node) in ("token", "logit") or node.get("influence") is None or node["influence"] <= 0.5
    assert len(nodes) < len(gf.nodes)
    _, strongest = app_modules.file_keeps(gf, 1.0, 0.5)
    assert 0 < len(strongest) < len(gf.links)




def test_a_link_opens_the_graph_it_names():
    save_graph(synthetic_graph(200, seed=1), "older")
    save_graph(synthetic_graph(200, seed=2), "newer")
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params["graph"] = "older"  # links.graph_link, as the Features page writes it
    at.run()
    assert not at.exception and viewer(at)["graph"]["key"].startswith("catalog:older:")
    assert at.selectbox(key="graph_pick").value == 1  # the picker follows (newest first)
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params["graph"] = "gone"
    at.run()
    assert "names graph gone" in at.warning[0].value and viewer(at)["graph"]["key"].startswith("catalog:newer:")
