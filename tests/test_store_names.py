"""Names and member paths confined to their roots, one writer per folder, and dictionary sets that are
whole: a set.json member outside the set, or a declared layer with no member, is an error naming it."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_graph_job import _dict_set, _model_folder

from workbench.dictionaries.dictionary_set import SET_FILE, load_dictionary_set, save_dictionary_set
from workbench.store.atomic import atomic_write_json, read_json
from workbench.store.names import FolderBusy, name_folder, short_hash, sole_writer


def test_a_name_is_one_plain_folder_name(tmp_path):
    parent = tmp_path / "graphs"
    assert name_folder(parent, "tiny-recall-a-b-1234abcd", "graph") == (parent / "tiny-recall-a-b-1234abcd").resolve()
    for bad in ("../../escape", "a/b", "..", ".", ".hidden", "", "a\\b", "/etc"):
        with pytest.raises(ValueError, match="is not a plain name"):
            name_folder(parent, bad, "graph")
    parent.mkdir()
    (parent / "link").symlink_to(tmp_path.parent)  # a plain name that is a link out of the folder
    with pytest.raises(PermissionError, match="leads outside"):
        name_folder(parent, "link", "graph")


def test_short_hash_is_stable_and_tells_parts_apart():
    assert short_hash("m", "s", [1, 2]) == short_hash("m", "s", [1, 2])
    assert len(short_hash("m")) == 8
    assert len({short_hash("m", "s1", [1]), short_hash("m", "s2", [1]), short_hash("m2", "s1", [1]),
                short_hash("m", "s1", [1, 2])}) == 4


def test_sole_writer_refuses_a_second_writer_until_the_first_is_done(tmp_path):
    folder = tmp_path / "sets" / "one"
    with sole_writer(folder, "dictionary set folder"):
        with pytest.raises(FolderBusy, match=r"dictionary set folder .*one is being written by another process"), \
                sole_writer(folder, "dictionary set folder"):
            pass
        with sole_writer(tmp_path / "sets" / "two", "dictionary set folder"):  # another folder is free
            pass
    with sole_writer(folder, "dictionary set folder"):  # released: the next writer gets it
        pass


@pytest.fixture
def tiny_set(tmp_path):
    bundle = _model_folder(tmp_path / "model")
    return bundle, _dict_set(tmp_path / "sets" / "a" / "dicts", bundle)


def _rewrite_members(folder, **members):
    meta = read_json(folder / SET_FILE)
    atomic_write_json(folder / SET_FILE, meta | {"members": meta["members"] | members})


def test_a_member_outside_the_set_is_refused_before_anything_is_read(tiny_set, tmp_path, monkeypatch):
    _, folder = tiny_set
    _rewrite_members(folder, layer1="../../../../../etc")
    reads = []
    monkeypatch.setattr("workbench.dictionaries.dictionary_set.load_dictionary", lambda p: reads.append(p))
    with pytest.raises(PermissionError, match=r"member 'layer1' \('../../../../../etc'\) leads outside the set folder") as err:
        load_dictionary_set(folder)
    assert str(folder / SET_FILE) in str(err.value) and reads == []
    # a real dictionary outside the set is refused as well (it would load if it were followed)
    shutil.copytree(folder / "layer1", tmp_path / "sets" / "outside")
    _rewrite_members(folder, layer1="../outside")
    with pytest.raises(PermissionError, match="member 'layer1'"):
        load_dictionary_set(folder)
    with pytest.raises(PermissionError, match="member 'layer0'"):
        save_dictionary_set(folder, {"layer0": "../../x"}, {})


def test_a_set_missing_a_declared_layer_names_it(tiny_set):
    _, folder = tiny_set
    meta = read_json(folder / SET_FILE)
    save_dictionary_set(folder, {"layer0": "layer0"}, {k: v for k, v in meta.items() if k != "members"}
                        | {"layers": [0, 1]})
    with pytest.raises(ValueError, match=r"declares layers \[0, 1\] but its members \(layer0\) write only "
                                         r"layer\(s\) \[0\]; missing layer\(s\) \[1\]"):
        load_dictionary_set(folder)
    save_dictionary_set(folder, {"layer0": "layer0", "layer1": "layer1"}, {"layers": [0, 1]})
    members, _ = load_dictionary_set(folder)
    assert [d.config.output_hooks for d in members.values()] == [["blocks.0.hook_mlp_out"], ["blocks.1.hook_mlp_out"]]
    assert all(torch.isfinite(p).all() for d in members.values() for p in d.parameters())
