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


def _graph_folder(cat, name):
    folder = cat.root / "graphs" / name
    folder.mkdir(parents=True)
    (folder / "graph.safetensors").write_bytes(b"weights")
    return folder


def test_register_publishes_a_manifest_per_name(tmp_path):
    cat = Catalog(tmp_path / "root")
    folder = _graph_folder(cat, "g")
    cat.register("dictionary", "set/layer0", folder, {"k": 1})
    cat.register("dictionary", "set%2Flayer0", folder, {"k": 2})  # its encoding as a name: another file
    cat.register("dictionary", "..", folder, {"k": 3})
    files = sorted(p.name for p in (cat.root / "manifests" / "dictionary").iterdir())
    assert files == ["%2E..json", "set%252Flayer0.json", "set%2Flayer0.json"]
    record = read_json(cat.root / "manifests" / "dictionary" / "set%2Flayer0.json")
    assert record["name"] == "set/layer0" and record["path"] == "graphs/g" and record["meta"] == {"k": 1}
    assert cat.get("dictionary", "set/layer0")["created"].isoformat() == record["created"]
    long = "x/" * 300
    cat.register("graph", long, folder)
    assert cat.get("graph", long)["path"] == folder
    assert all(len(p.name) < 255 for p in (cat.root / "manifests" / "graph").iterdir())


def test_query_is_read_only(tmp_path):
    import duckdb

    cat = Catalog(tmp_path / "root")
    cat.register("graph", "g", _graph_folder(cat, "g"))
    with pytest.raises(duckdb.Error, match="read-only"):
        cat.query("DELETE FROM artifacts")
    assert [r["name"] for r in cat.list("graph")] == ["g"]


def test_reindex_restores_a_deleted_catalog(tmp_path):
    cat = Catalog(tmp_path / "root")
    for name in ("a", "b"):
        cat.register("graph", name, _graph_folder(cat, name), {"n": name})
    cat.register("model", "m/1", tmp_path / "outside", {"acc": 0.5})
    (tmp_path / "outside").mkdir()
    before = {k: cat.list(k) for k in ("graph", "model")}
    cat.path.unlink()
    done = cat.reindex()
    assert sorted(done.restored) == [("graph", "a"), ("graph", "b"), ("model", "m/1")] and not done.skipped
    assert {k: cat.list(k) for k in ("graph", "model")} == before  # names, paths, created, meta alike


def test_reindex_skips_manifests_whose_folder_is_gone(tmp_path):
    import shutil

    cat = Catalog(tmp_path / "root")
    for name in ("kept", "gone"):
        cat.register("graph", name, _graph_folder(cat, name))
    shutil.rmtree(cat.root / "graphs" / "gone")
    (cat.root / "manifests" / "graph" / "junk.json").write_text("{broken")
    done = cat.reindex()
    assert done.restored == [("graph", "kept")]
    why = {p.name: reason for p, reason in done.skipped}
    assert "graphs/gone no longer exists" in why["gone.json"] and "junk.json" in why["junk.json"]
    assert [r["name"] for r in cat.list("graph")] == ["kept"]
    assert (cat.root / "manifests" / "graph" / "gone.json").is_file()  # reported, not deleted


def test_reindex_migrates_rows_of_an_old_catalog(tmp_path):
    import duckdb

    cat = Catalog(tmp_path / "root")
    cat.register("graph", "new", _graph_folder(cat, "new"))
    _graph_folder(cat, "old")
    with duckdb.connect(str(cat.path)) as con:  # a row written before manifests existed
        con.execute("INSERT INTO artifacts VALUES ('graph', 'old', 'graphs/old', TIMESTAMP '2024-01-02 03:04:05', "
                    "'{\"n\": 7}')")
    done = cat.reindex()
    assert done.migrated == [("graph", "old")] and sorted(done.restored) == [("graph", "new"), ("graph", "old")]
    assert read_json(cat.root / "manifests" / "graph" / "old.json")["meta"] == {"n": 7}
    cat.path.unlink()
    cat.reindex()
    assert cat.get("graph", "old")["created"].isoformat() == "2024-01-02T03:04:05"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_catalog_is_one_clear_error_and_reindex_repairs_it(tmp_path, damage):
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.store import CatalogDamaged

    cat = Catalog(tmp_path / "root")
    cat.register("graph", "g", _graph_folder(cat, "g"))
    data = cat.path.read_bytes()
    cat.path.write_bytes(b"not a database" if damage == "garbage" else data[:len(data) // 3])
    for read in (lambda: cat.list("graph"), lambda: cat.get("graph", "g"), lambda: cat.query("SELECT 1")):
        with pytest.raises(CatalogDamaged, match="catalog.duckdb is damaged.*rebuild it with `wb store reindex") as err:
            read()
        assert "\n" not in str(err.value)
    runner = CliRunner()
    result = runner.invoke(app, ["store", "list", "--artifacts", str(cat.root)])
    assert result.exit_code == 2 and "wb store reindex" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["store", "reindex", "--artifacts", str(cat.root)])
    assert result.exit_code == 0, result.output
    assert "1 row(s) restored" in result.output and "moved aside" in result.output
    aside = [p for p in cat.root.iterdir() if p.name.startswith("catalog.duckdb.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes()[:14] == (b"not a database" if damage == "garbage" else data[:14])
    assert [r["name"] for r in cat.list("graph")] == ["g"]


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    import subprocess
    import time

    from workbench.store import clean_stale_temporaries
    from workbench.store.atomic import staging_dir

    dead = subprocess.Popen(["true"])
    dead.wait()
    live = staging_dir(tmp_path / "a" / "model")  # this process's: alive
    assert f".model.{os.getpid()}-" in live.name
    (live / "weights.bin").write_bytes(b"x")
    names = {"dead_file": f".shard.safetensors.{dead.pid}-abcd1234.tmp", "live_file": f".x.json.{os.getpid()}-abcd1234.tmp",
             "old_no_pid": ".y.json.abcd1234.tmp", "new_no_pid": ".z.json.abcd1234.tmp", "plain": "notes.tmp"}
    (tmp_path / "a" / "b").mkdir()
    for name in names.values():
        (tmp_path / "a" / "b" / name).write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(tmp_path / "a" / "b" / names["old_no_pid"], (old, old))
    stage = tmp_path / "a" / f".graph.{dead.pid}-abcd1234.staging"
    stage.mkdir()
    (stage / "graph.safetensors").write_bytes(b"x")
    assert clean_stale_temporaries(tmp_path / "a", recursive=False) == [stage]
    removed = clean_stale_temporaries(tmp_path)
    assert removed == sorted(tmp_path / "a" / "b" / names[k] for k in ("dead_file", "old_no_pid"))
    assert live.is_dir() and sorted(os.listdir(tmp_path / "a" / "b")) == sorted(
        names[k] for k in ("live_file", "new_no_pid", "plain"))


def test_wb_store_clean_reports_what_it_removed(tmp_path):
    import subprocess

    from typer.testing import CliRunner

    from workbench.cli import app

    dead = subprocess.Popen(["true"])
    dead.wait()
    shard = tmp_path / "activations" / "m-L0" / f".shard-00000.safetensors.{dead.pid}-abcd1234.tmp"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"x" * 1000)
    result = CliRunner().invoke(app, ["store", "clean", "--artifacts", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"removed activations/m-L0/{shard.name}" in result.output and "1 stale" in result.output
    assert not shard.exists()
