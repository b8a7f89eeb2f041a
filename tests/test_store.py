"""Atomic writes, safetensors-only loading with named errors, the catalog, and the root guard."""

import os

import pytest
import torch

from workbench.store import (
    Catalog,
    CorruptArtifactError,
    atomic_write_json,
    inside_root,
    load_safetensors,
    read_json,
    save_safetensors,
)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    path = atomic_write_json(tmp_path / "a" / "x.json", {"b": 1})
    assert read_json(path) == {"b": 1}
    atomic_write_json(path, {"b": 2})
    assert read_json(path) == {"b": 2}
    assert sorted(os.listdir(path.parent)) == ["x.json"]


def test_failed_write_keeps_the_old_version(tmp_path):
    path = atomic_write_json(tmp_path / "x.json", {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"v": object()})  # not JSON-serialisable: fails before the rename
    assert read_json(path) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["x.json"]


def test_safetensors_round_trip_and_damage_is_named(tmp_path):
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    path = save_safetensors(tensors, tmp_path / "m.safetensors")
    back = load_safetensors(path)
    assert all(torch.equal(tensors[k], back[k]) for k in tensors)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptArtifactError, match="m.safetensors"):
        load_safetensors(path)
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        load_safetensors(tmp_path / "nothere.safetensors")


def test_damaged_json_is_named(tmp_path):
    (tmp_path / "card.json").write_text("{broken")
    with pytest.raises(CorruptArtifactError, match="card.json"):
        read_json(tmp_path / "card.json")


def test_catalog_register_list_get_query(tmp_path):
    cat = Catalog(tmp_path / "root")
    (cat.root / "graphs").mkdir()
    cat.register("graph", "g1", cat.root / "graphs" / "g1.json", {"nodes": 12})
    cat.register("model", "m1", tmp_path / "elsewhere", {"metrics": {"test_accuracy": 0.995}})
    cat.register("model", "m1", tmp_path / "elsewhere", {"metrics": {"test_accuracy": 0.999}})  # replaces
    assert [r["name"] for r in cat.list("model")] == ["m1"]
    assert cat.get("graph", "g1")["path"] == cat.root / "graphs" / "g1.json"
    assert cat.get("graph", "g1")["meta"] == {"nodes": 12}
    df = cat.query("SELECT name, CAST(meta->>'$.metrics.test_accuracy' AS DOUBLE) AS acc FROM models")
    assert df.to_dict("records") == [{"name": "m1", "acc": 0.999}]
    with pytest.raises(KeyError, match="no model named 'zz'.*known: m1"):
        cat.get("model", "zz")
    with pytest.raises(ValueError, match="unknown artifact kind 'graf'; choose one of: model, run"):
        cat.list("graf")


def test_catalog_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WB_ARTIFACTS", str(tmp_path / "envroot"))
    assert Catalog().root == (tmp_path / "envroot").resolve()


def test_inside_root_refuses_escapes(tmp_path):
    assert inside_root(tmp_path, "graphs/a.json") == (tmp_path / "graphs" / "a.json").resolve()
    for bad in ("../x", "/etc/passwd", "graphs/../../x"):
        with pytest.raises(PermissionError, match="outside the artifacts root"):
            inside_root(tmp_path, bad)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(PermissionError):
        inside_root(tmp_path, "link/passwd")


def test_published_files_and_folders_are_not_private(tmp_path):
    from workbench.store.atomic import publish_dir, staging_dir

    stage = staging_dir(tmp_path / "model")
    atomic_write_json(stage / "card.json", {})
    final = publish_dir(stage, tmp_path / "model")
    assert final.stat().st_mode & 0o055 and (final / "card.json").stat().st_mode & 0o044
