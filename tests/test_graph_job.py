"""`wb graph` and its job: model folder + dictionary set + prompt -> saved, catalogued, scored graph;
bad prompts and mismatched dictionaries are clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CONFIGS
from typer.testing import CliRunner

from workbench.architectures import build_model, model_config
from workbench.attribution.graph import Graph
from workbench.attribution.graph_file import load_graph_json
from workbench.attribution.jobs import build_graph, encode_prompt, load_summary
from workbench.cli import app
from workbench.dictionaries.dictionary_set import save_dictionary_set
from workbench.dictionaries.models import DictionaryConfig, build_dictionary, save_dictionary
from workbench.store.atomic import read_json
from workbench.store.catalog import Catalog
from workbench.store.model_files import load_model_folder, save_model_folder
from workbench.tasks import make_task

runner = CliRunner()


def _model_folder(path, arch="transformer", name="tiny-recall"):
    task = make_task("recall", n_pairs=3)
    torch.manual_seed(0)
    config = model_config(arch, d_vocab=task.tokenizer.vocab_size, n_ctx=task.seq_len, **TINY_CONFIGS[arch])
    model = build_model(config)
    save_model_folder(path, model, config, task.tokenizer, {"name": name, "task": {"name": "recall", "n_pairs": 3}})
    return load_model_folder(path)


def _dict_set(path, bundle, model_name=None):
    tokens = torch.tensor([[1, 2, 3]])
    _, cache = bundle.model.run_with_cache(tokens)
    members = {}
    for layer in range(bundle.model.cfg.n_layers):
        d_in, d_out = (cache[f"blocks.{layer}.hook_mlp_{k}"].shape[-1] for k in ("in", "out"))
        d = build_dictionary(DictionaryConfig("transcoder", d_in=d_in, d_out=d_out, n_features=32, activation="topk",
                                              k=4, seed=layer, input_hooks=[f"blocks.{layer}.hook_mlp_in"],
                                              output_hooks=[f"blocks.{layer}.hook_mlp_out"]))
        save_dictionary(path / f"layer{layer}", d)
        members[f"layer{layer}"] = f"layer{layer}"
    save_dictionary_set(path, members, {"model_name": model_name or bundle.name, "kind": "transcoder"})
    return path


@pytest.fixture
def zoo(tmp_path):
    bundle = _model_folder(tmp_path / "model")
    return bundle, _dict_set(tmp_path / "dicts", bundle), tmp_path


def _prompt(bundle):
    task = make_task("recall", n_pairs=3)
    row = task.sample("test", 1, 0).tokens[0].tolist()
    return bundle.tokenizer.decode(row[:-1])  # up to the answer


def test_build_graph_saves_catalogues_and_scores(zoo):
    bundle, dicts, root = zoo
    summary = build_graph(bundle, dicts, _prompt(bundle), catalog=Catalog(root / "art"), progress=False)
    folder = root / "art" / "graphs" / summary["name"]
    graph = Graph.load(folder)
    assert graph.token_strings[0] == "<bos>" and graph.n_features == summary["n_features"] > 0
    assert 0 <= summary["pruned_nodes"] <= summary["n_nodes"]
    for key in ("replacement_score", "completeness_score", "pruned_replacement_score", "pruned_completeness_score"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["identity_error"] < 1e-4 and summary["top_paths"]
    path = summary["top_paths"][0]
    assert graph.node_kind(path["nodes"][0]) == "token" and graph.node_kind(path["nodes"][-1]) == "logit"
    assert load_graph_json(folder / "neuronpedia.json").nodes  # the viewer file validates and loads
    assert load_summary(folder)["n_nodes"] == graph.n_nodes
    assert [g["name"] for g in Catalog(root / "art").list("graph")] == [summary["name"]]


def test_wb_graph_prints_a_summary(zoo):
    bundle, dicts, root = zoo
    result = runner.invoke(app, ["graph", "--model", str(bundle.folder), "--dict", str(dicts), "--prompt",
                                 _prompt(bundle), "--no-progress", "--artifacts", str(root / "art"),
                                 "--node-threshold", "0.7", "--max-feature-nodes", "20"])
    assert result.exit_code == 0, result.output
    assert "replacement score" in result.output and "path" in result.output and "graph tiny-recall-" in result.output
    assert "pruned (nodes 0.7" in result.output


def test_bad_prompts_are_clear_errors(zoo):
    bundle, dicts, root = zoo
    with pytest.raises(ValueError, match="context is"):
        encode_prompt(bundle, " ".join(["a"] * (bundle.model.cfg.n_ctx + 1)))
    with pytest.raises(ValueError, match="unknown token"):
        encode_prompt(bundle, "a > zebra")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encode_prompt(bundle, [1, 2, 10_000])
    with pytest.raises(ValueError, match="empty"):
        encode_prompt(bundle, "   ")
    result = runner.invoke(app, ["graph", "--model", str(bundle.folder), "--dict", str(dicts), "--prompt", "a > zebra",
                                 "--artifacts", str(root / "art")])
    assert result.exit_code == 2 and "unknown token" in result.output


def test_dictionaries_of_another_model_are_refused(zoo, tmp_path):
    bundle, _, root = zoo
    other = _dict_set(tmp_path / "other-name", bundle, model_name="some-other-model")
    with pytest.raises(ValueError, match="trained on model 'some-other-model'"):
        build_graph(bundle, other, _prompt(bundle), catalog=Catalog(root / "art"), progress=False)
    rwkv = _model_folder(tmp_path / "rwkv", arch="rwkv", name="tiny-recall")  # same name, wider mlp_in
    wide = _dict_set(tmp_path / "rwkv-dicts", rwkv)
    result = runner.invoke(app, ["graph", "--model", str(bundle.folder), "--dict", str(wide), "--prompt",
                                 _prompt(bundle), "--artifacts", str(root / "art")])
    assert result.exit_code == 2 and "trained on another model" in result.output


def _graph_args(bundle, dicts, root, *extra):
    return ["graph", "--model", str(bundle.folder), "--dict", str(dicts), "--prompt", _prompt(bundle), "--no-progress",
            "--artifacts", str(root / "art"), "--max-feature-nodes", "8", *extra]


def test_a_name_that_is_a_path_is_refused_and_nothing_is_written(zoo):
    bundle, dicts, root = zoo
    before = sorted(p.name for p in root.iterdir())
    result = runner.invoke(app, _graph_args(bundle, dicts, root, "--name", "../../escape"))
    assert result.exit_code == 2 and "graph name '../../escape' is not a plain name" in result.output
    assert sorted(p.name for p in root.iterdir() if p.name != "art") == before  # art: the root itself
    # the name would resolve to <root>/escape, or one level up; other tests share root.parent, so no glob
    assert not (root / "escape").exists() and not (root.parent / "escape").exists()
    assert not (root / "art" / "graphs").exists() and Catalog(root / "art").list("graph") == []


def test_automatic_names_are_unique_per_model_set_and_prompt(zoo, tmp_path):
    bundle, dicts, root = zoo
    other = _dict_set(tmp_path / "elsewhere" / "dicts", bundle)  # same folder name, another set
    catalog = Catalog(root / "art")
    a = build_graph(bundle, dicts, _prompt(bundle), catalog=catalog, progress=False)
    b = build_graph(bundle, other, _prompt(bundle), catalog=catalog, progress=False)
    assert a["name"] != b["name"] and a["name"].startswith("tiny-recall-bos-") and b["name"].startswith("tiny-recall-bos-")
    assert sorted(g["name"] for g in catalog.list("graph")) == sorted([a["name"], b["name"]])
    assert Graph.load(a["folder"]).metadata["dictionaries"] == str(dicts)
    assert Graph.load(b["folder"]).metadata["dictionaries"] == str(other)
    again = build_graph(bundle, dicts, _prompt(bundle), node_threshold=0.5, catalog=catalog, progress=False)
    assert again["name"] == a["name"] and load_summary(a["folder"])["node_threshold"] == 0.5  # same graph: rebuilt
    assert len(catalog.list("graph")) == 2


def test_an_existing_explicit_name_needs_force(zoo):
    bundle, dicts, root = zoo
    assert runner.invoke(app, _graph_args(bundle, dicts, root, "--name", "mine")).exit_code == 0
    folder = root / "art" / "graphs" / "mine"
    first = (folder / "summary.json").read_bytes()
    result = runner.invoke(app, _graph_args(bundle, dicts, root, "--name", "mine", "--node-threshold", "0.5"))
    assert result.exit_code == 2 and "a graph named 'mine' already exists" in result.output and "--force" in result.output
    assert (folder / "summary.json").read_bytes() == first
    result = runner.invoke(app, _graph_args(bundle, dicts, root, "--name", "mine", "--node-threshold", "0.5", "--force"))
    assert result.exit_code == 0, result.output
    assert load_summary(folder)["node_threshold"] == 0.5
    assert [g["name"] for g in Catalog(root / "art").list("graph")] == ["mine"]
    # --out: an existing graph folder needs --force too, and --force never replaces a folder that is not a graph's
    result = runner.invoke(app, _graph_args(bundle, dicts, root, "--out", str(folder)))
    assert result.exit_code == 2 and "already exists" in result.output
    result = runner.invoke(app, _graph_args(bundle, dicts, root, "--out", str(root / "model"), "--force"))
    assert result.exit_code == 2 and "is not a graph folder" in result.output
    assert (root / "model" / "model.safetensors").is_file()


def test_a_concurrent_writer_of_the_same_graph_is_refused(zoo):
    from workbench.store.names import sole_writer

    bundle, dicts, root = zoo
    with sole_writer(root / "art" / "graphs" / "mine", "graph folder"):  # another process writing it
        result = runner.invoke(app, _graph_args(bundle, dicts, root, "--name", "mine", "--force"))
    assert result.exit_code == 2 and "graph folder" in result.output and "is being written by another process" in result.output
    assert not (root / "art" / "graphs" / "mine").exists() and Catalog(root / "art").list("graph") == []


def test_a_set_missing_a_layer_builds_no_graph(zoo):
    bundle, dicts, root = zoo
    save_dictionary_set(dicts, {"layer0": "layer0"}, {"model_name": bundle.name, "layers": [0, 1]})
    result = runner.invoke(app, _graph_args(bundle, dicts, root))
    assert result.exit_code == 2 and "missing layer(s) [1]" in result.output
    assert not (root / "art" / "graphs").exists()


def test_recorded_model_config_must_match(zoo, tmp_path):
    from workbench.dictionaries.dictionary_set import set_model_meta

    bundle, _, root = zoo
    mingru = _model_folder(tmp_path / "mingru", arch="mingru", name="tiny-mingru")
    theirs = _dict_set(tmp_path / "mingru-dicts", mingru)
    meta = read_json(theirs / "set.json")
    save_dictionary_set(theirs, meta["members"], set_model_meta(mingru) | {"model_name": bundle.name})
    with pytest.raises(ValueError, match=r"trained on model tiny-recall with \{'architecture': 'mingru'.*"
                                         r"'architecture': 'transformer'.*trained on another model"):
        build_graph(bundle, theirs, _prompt(bundle), catalog=Catalog(root / "art"), progress=False)
    assert not (root / "art" / "graphs").exists()
