"""The graph viewer's Python side, without a browser: the view state's round trip through the URL's
query parameters, the component payload (nodes, edges, labels, cards, links), the feature cards built
from real feature data, and the frontend shipped as plain files that fetch nothing."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

APP = Path(__file__).resolve().parents[1] / "app"
FRONTEND = APP / "components" / "graph_viewer" / "frontend"


@pytest.fixture
def app_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    import graph_cards
    import graph_data
    import graph_view

    return graph_data, graph_view, graph_cards


STATE = {"clickedId": "1_7_3", "pinnedIds": ["1_7_3", "E_5_0"], "supernodes": [["say Texas & co", "1_7_3", "0_2_1"]],
         "nodeThreshold": 0.55, "edgeThreshold": 0.9}


def test_the_view_state_survives_the_url(app_modules):
    gd, _, _ = app_modules
    query = gd.state_to_query({"graph": "my graph"}, STATE)
    assert query == {"graph": "my graph", "node": "1_7_3", "pins": "1_7_3,E_5_0",
                     "groups": '[["say Texas & co","1_7_3","0_2_1"]]', "nt": "0.55", "et": "0.9"}
    assert gd.state_from_query(query, (0.8, 0.98)) == ({"graph": "my graph"}, STATE)
    # an id holding a comma (another viewer's file) goes as JSON and comes back whole
    odd = {**STATE, "pinnedIds": ["E_a,b_0", "1_7_3"]}
    assert gd.state_from_query(gd.state_to_query({"file": "x.json"}, odd), (0.8, 0.98)) == ({"file": "x.json"}, odd)


def test_a_damaged_link_opens_what_it_can(app_modules):
    gd, _, _ = app_modules
    source, state = gd.state_from_query({"graph": "g", "pins": "a,b", "groups": "[[broken", "nt": "7", "et": "x"},
                                        (0.8, 0.98))
    assert source == {"graph": "g"}
    assert state == {"clickedId": "", "pinnedIds": ["a", "b"], "supernodes": [], "nodeThreshold": 0.8,
                     "edgeThreshold": 0.98}
    # a browser value with a lone-member group and a non-list pin field
    assert gd.clean_state({"supernodes": [["solo"], ["ok", "a"]], "pinnedIds": "a"}, (0.5, 0.5))["supernodes"] == [
        ["ok", "a"]]


def small_view(gd):
    return gd.GraphView(
        ids=["E_1_0", "0_3_0", "0_3_1", "2_9_1"], kinds=["token", "feature", "feature", "logit"],
        labels=["token 'a' @0", "L0 F3 @0 'a'", "L0 F3 @1 'b'", "logit 'c'"],
        row=np.array([0, 1, 1, 2]), pos=np.array([0, 0, 1, 1]), value=np.array([math.nan, 0.5, 1.23456789, 2.0]),
        influence=np.array([0.9, 0.4, 0.6, 1.0]), address=[None, (0, 3), (0, 3), None],
        source=np.array([0, 1, 2]), target=np.array([1, 2, 3]), weight=np.array([0.7, -0.123456, 0.05]),
        tokens=["a", "b"], n_rows=3, prob=np.array([math.nan, math.nan, math.nan, 0.25]))


def test_the_payload_carries_nodes_edges_labels_and_only_the_drawn_cards(app_modules):
    gd, gv, _ = app_modules
    cards = {"0_3": {"label": "reads 'a'"}, "5_5": {"label": "not drawn"}}
    payload = gv.payload(small_view(gd), "k1", cards, {(0, 3): "reads 'a'"}, {"0_3": "Features?layer=0", "5_5": "x"})
    nodes = payload["nodes"]
    assert payload["key"] == "k1" and payload["rowNames"] == ["tokens", "L0", "logits"]
    assert nodes["id"] == ["E_1_0", "0_3_0", "0_3_1", "2_9_1"] and nodes["card"] == [None, "0_3", "0_3", None]
    assert nodes["label"] == ["", "reads 'a'", "reads 'a'", ""]
    assert nodes["value"] == [None, 0.5, 1.235, 2.0] and nodes["prob"] == [None, None, None, 0.25]
    assert payload["edges"] == {"source": [0, 1, 2], "target": [1, 2, 3], "weight": [0.7, -0.1235, 0.05]}
    assert payload["cards"] == {"0_3": {"label": "reads 'a'"}} and payload["links"] == {"0_3": "Features?layer=0"}
    json.dumps(payload, allow_nan=False)  # JSON the browser can parse: no NaN


def test_feature_cards_from_real_feature_data(app_modules, feature_frames, tmp_path):
    _, _, cards_module = app_modules
    import feature_data

    frames = feature_frames("transcoder")
    data = feature_data.FeatureData(tmp_path, {}, frames["features"], frames["contexts"], frames["histograms"])
    live = frames["features"][frames["features"]["density"] > 0].iloc[0]
    address = (int(live["layer"]), int(live["feature"]))
    cards = cards_module.feature_cards(data, [address, (0, 999)], {address: "my label"}, n_contexts=3)
    assert list(cards) == [f"{address[0]}_{address[1]}"]  # feature 999 does not exist: no card
    card = cards[f"{address[0]}_{address[1]}"]
    top = frames["contexts"]
    top = top[(top["layer"] == address[0]) & (top["feature"] == address[1]) & (top["group"] == "top")]
    assert card["label"] == "my label" and len(card["contexts"]) == min(3, len(top))
    acts = [c["activation"] for c in card["contexts"]]
    assert acts == sorted(acts, reverse=True) and acts[0] == pytest.approx(float(top["activation"].max()), rel=1e-3)
    first = card["contexts"][0]
    assert first["center"] is not None and first["values"][first["center"]] == pytest.approx(acts[0], rel=1e-3)
    assert [t for t, _ in card["up"]] == [str(t) for t in live["top_tokens"][:5]]


def test_the_frontend_ships_as_plain_files_that_fetch_nothing():
    import sys

    sys.path.insert(0, str(APP))
    from components.graph_viewer import FRONTEND as declared

    assert declared == FRONTEND
    html = (FRONTEND / "index.html").read_text()
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {"protocol.js", "viewer.js", "viewer.css"} <= set(referenced)
    for name in referenced:
        assert (FRONTEND / name).is_file(), name
    for path in FRONTEND.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|fetch\(|XMLHttpRequest|import\(", text), f"{path.name} fetches something"
    protocol = (FRONTEND / "protocol.js").read_text()
    for message in ("streamlit:componentReady", "streamlit:render", "streamlit:setComponentValue",
                    "streamlit:setFrameHeight"):
        assert message in protocol


@pytest.mark.skipif(shutil.which("node") is None, reason="no node to run the frontend's escaping in")
def test_the_frontend_escapes_labels():
    script = (FRONTEND / "cards.js").read_text() + "\nconsole.log(esc(process.argv[1]));"
    out = subprocess.run(["node", "-e", script, "<script>alert('x')</script> & \"q\""], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
