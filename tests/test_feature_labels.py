"""Feature labels (workbench/dictionaries/labels.py) and links to the Features page (app/links.py):
automatic labels from the feature data, user labels saved and deleted, concurrent writers keeping each
other's labels, and links that name sets relative to a root and open the same entry."""

import multiprocessing
import sys
from pathlib import Path

import pandas as pd
import pytest

from workbench.dictionaries.labels import (
    LABELS_FILE,
    automatic_label,
    feature_labels,
    save_label,
    top_context_tokens,
    user_labels,
)

APP = Path(__file__).resolve().parents[1] / "app"


def test_automatic_label_names_what_a_feature_reads_and_writes():
    row = {"density": 0.1, "top_tokens": ["V2", "V9"], "top_values": [1.0, 0.5]}
    contexts = pd.DataFrame({"group": ["band", "top", "top", "top"], "rank": [0, 2, 0, 1],
                             "token": ["X", "K7", "K3", "K3"]})
    reads = top_context_tokens(contexts)
    assert reads == ["K3", "K7"]  # rank order, distinct, the band sample left out
    assert automatic_label(row, reads) == "reads 'K3','K7' → writes 'V2'"
    assert automatic_label(row) == "writes 'V2'"
    assert automatic_label({"density": 0.0, "top_tokens": ["V2"]}, ["K3"]).startswith("dead")
    long = automatic_label(row, ["a" * 40])
    assert len(long) < 40 and "…" in long


def test_feature_labels_prefer_the_user_label(feature_set):
    folder = feature_set("tiny")
    labels = feature_labels(folder)
    features = pd.read_parquet(folder / "features" / "features.parquet")
    assert set(labels) == {(int(r.layer), int(r.feature)) for r in features.itertuples()}
    alive = features[features["density"] > 0].iloc[0]
    key = (int(alive["layer"]), int(alive["feature"]))
    assert f"writes {alive['top_tokens'][0]!r}" in labels[key]
    save_label(folder, *key, "  copies\n the key ")
    assert feature_labels(folder)[key] == "copies the key"
    assert feature_labels(folder / "features")[key] == "copies the key"  # the features/ folder names it too
    other = next(k for k in labels if k != key)
    assert feature_labels(folder)[other] == labels[other]
    save_label(folder, *key, "   ")  # blank deletes: the automatic label is back
    assert feature_labels(folder)[key] == labels[key]
    assert user_labels(folder) == {}


def test_save_label_refuses_what_it_cannot_label(feature_set, tmp_path):
    bare = tmp_path / "no-data"
    bare.mkdir()
    with pytest.raises(FileNotFoundError, match="no feature data"):
        save_label(bare, 0, 1, "x")
    with pytest.raises(FileNotFoundError, match="no feature data"):
        feature_labels(bare)
    folder = feature_set("tiny")
    with pytest.raises(KeyError, match="no feature 999 at layer 0"):
        save_label(folder, 0, 999, "x")
    with pytest.raises(ValueError, match="too long"):
        save_label(folder, 0, 1, "x" * 500)
    (folder / "features" / LABELS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        user_labels(folder)


def _label_many(args):
    folder, layer, start = args
    for feature in range(start, start + 6):
        save_label(folder, layer, feature, f"w{layer}-{feature}")


def test_concurrent_writers_keep_each_others_labels(feature_set):
    folder = feature_set("tiny")
    jobs = [(folder, 0, 0), (folder, 0, 6), (folder, 1, 0), (folder, 1, 6)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_label_many, jobs)
    saved = user_labels(folder)
    assert saved == {(layer, f): f"w{layer}-{f}" for layer in (0, 1) for f in range(12)}


@pytest.fixture
def links(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    sys.modules.pop("links", None)
    import links

    return links


def test_features_link_is_relative_and_opens_the_same_set(links, tmp_path):
    zoo_set = tmp_path / "models" / "tiny" / "dictionaries" / "transcoders"
    link = links.features_link(zoo_set, 1, 7)
    assert link == "Features?root=models&set=tiny%2Fdictionaries%2Ftranscoders&layer=1&feature=7"
    assert str(tmp_path) not in link
    params = dict(p.split("=") for p in link.partition("?")[2].replace("%2F", "/").split("&"))
    assert links.features_target(params) == (zoo_set.resolve(), 1, 7)
    art_set = tmp_path / "artifacts" / "dictionaries" / "mine"
    link = links.features_link(art_set, 0, 3)
    assert "root=artifacts" in link and str(tmp_path) not in link
    assert links.features_target({"root": "artifacts", "set": "dictionaries/mine", "layer": "0", "feature": "3"}) \
        == (art_set.resolve(), 0, 3)
    assert links.features_target({}) is None
    assert links.graph_link("my graph/1") == "Attribution_graph?graph=my+graph%2F1"


def test_features_link_refuses_paths_outside_the_roots(links, tmp_path):
    with pytest.raises(PermissionError, match="outside the zoo"):
        links.features_link(tmp_path / "elsewhere" / "set", 0, 0)
    with pytest.raises(PermissionError, match="absolute path"):
        links.features_target({"root": "models", "set": "/etc", "layer": "0", "feature": "0"})
    with pytest.raises(PermissionError, match="outside"):
        links.features_target({"root": "models", "set": "../../x", "layer": "0", "feature": "0"})
    with pytest.raises(ValueError, match="unknown root 'home'"):
        links.features_target({"root": "home", "set": "x", "layer": "0", "feature": "0"})
    with pytest.raises(ValueError, match="feature 'x' is not a whole number"):
        links.features_target({"root": "models", "set": "x", "layer": "0", "feature": "x"})
