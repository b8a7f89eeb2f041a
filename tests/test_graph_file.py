"""Graph JSON files in circuit-tracer's / Neuronpedia's format: conventions, masks, round trip, errors."""

import gzip
import json
from pathlib import Path

import jsonschema
import pytest
import torch

from workbench.attribution.graph import Graph
from workbench.attribution.graph_file import (
    GRAPH_JSON_SCHEMA,
    GraphFile,
    GraphFileError,
    cantor_pair,
    feature_address,
    graph_to_json,
    load_graph_json,
    save_graph_json,
)
from workbench.store.atomic import CorruptArtifactError

FIXTURE = Path(__file__).parent / "fixtures" / "circuit_tracer_graph.json"
# circuit-tracer's Node fields, in the order its pydantic model writes them.
CT_NODE_FIELDS = ["node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
                  "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"]


def tiny_graph(logit_tokens=(42, 9), metadata=None) -> Graph:
    """2 layers, 3 tokens, 5 features, 2 logits; only feature and logit rows have inputs."""
    gen = torch.Generator().manual_seed(1)
    features = torch.tensor([[0, 0, 3], [0, 1, 7], [1, 1, 3], [1, 2, 12], [0, 2, 7]])
    n = 5 + 2 * 3 + 3 + 2
    adjacency = torch.randn(n, n, generator=gen) * (torch.rand(n, n, generator=gen) < 0.6)
    adjacency[5:14] = 0  # errors and tokens have no inputs
    adjacency[:, 14:] = 0  # logits feed nothing
    adjacency.fill_diagonal_(0)
    bias = torch.randn(n, generator=gen)
    bias[5:14] = 0
    values = adjacency.sum(1) + bias
    values[5:11] = torch.rand(6, generator=gen)  # error norms
    return Graph(prompt="<bos>Hi\n there", input_tokens=torch.tensor([2, 17, 5]),
                 token_strings=["<bos>", "Hi\n", " there"], n_layers=2, active_features=features,
                 activations=torch.rand(5, generator=gen), logit_tokens=torch.tensor(logit_tokens),
                 logit_probabilities=torch.tensor([0.7, 0.2]), logit_labels=[" yes", " no"],
                 adjacency=adjacency, values=values, bias=bias, metadata=metadata or {"model": "toy"})


def link_set(doc):
    return {(link["source"], link["target"], link["weight"]) for link in doc["links"]}


def node_ids(graph: Graph) -> list[str]:
    """Ids by node index, written out independently of the module under test."""
    ids = [f"{l}_{f}_{p}" for l, p, f in graph.active_features.tolist()]
    ids += [f"{layer}_-1_{pos}" for layer in range(2) for pos in range(3)]
    ids += [f"E_{t}_{p}" for p, t in enumerate(graph.input_tokens.tolist())]
    return ids + [f"3_{t}_2" for t in graph.logit_tokens.tolist()]


def test_written_nodes_follow_circuit_tracer_conventions():
    graph = tiny_graph()
    doc = graph_to_json(graph, slug="toy", scan="toy-2l", node_threshold=0.8)
    jsonschema.validate(doc, GRAPH_JSON_SCHEMA)
    nodes = {node["node_id"]: node for node in doc["nodes"]}
    assert [node["node_id"] for node in doc["nodes"]] == node_ids(graph)
    assert all(list(node)[:13] == CT_NODE_FIELDS for node in doc["nodes"])
    feature = nodes["1_12_2"]
    assert feature["feature"] == cantor_pair(1, 12) and feature["layer"] == "1" and feature["ctx_idx"] == 2
    assert feature["feature_type"] == "cross layer transcoder" and feature["jsNodeId"] == "1_12-0"
    assert feature["activation"] == graph.activations[3].item()
    error = nodes["1_-1_2"]
    assert (error["feature"], error["layer"], error["feature_type"], error["jsNodeId"]) == (
        -1, "1", "mlp reconstruction error", "1_-1-2")
    token = nodes["E_17_1"]
    assert (token["feature"], token["layer"], token["feature_type"], token["jsNodeId"]) == (1, "E", "embedding", "E_17-1")
    top, other = nodes["3_42_2"], nodes["3_9_2"]
    assert top["layer"] == "3" and top["feature_type"] == "logit" and top["jsNodeId"] == "L_42-2"
    assert top["is_target_logit"] and not other["is_target_logit"] and top["influence"] is None
    assert top["clerp"] == 'Output " yes" (p=0.700)' and top["token_prob"] == pytest.approx(0.7)
    meta = doc["metadata"]
    assert (meta["slug"], meta["scan"], meta["node_threshold"], meta["schema_version"]) == ("toy", "toy-2l", 0.8, 1)
    assert meta["prompt_tokens"] == ["<bos>", "Hi⏎", " there"] and meta["prompt"] == graph.prompt
    assert doc["qParams"] == {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    assert "node_threshold" not in graph_to_json(graph)["metadata"]  # Neuronpedia's schema refuses null


def test_whole_graph_links_are_the_nonzero_adjacency_entries_target_major():
    graph = tiny_graph()
    doc = graph_to_json(graph)
    ids = node_ids(graph)
    expected = [(ids[s], ids[t], graph.adjacency[t, s].item())
                for t in range(graph.n_nodes) for s in range(graph.n_nodes) if graph.adjacency[t, s] != 0]
    assert [(link["source"], link["target"], link["weight"]) for link in doc["links"]] == expected
    assert len(doc["nodes"]) == graph.n_nodes and doc["metadata"]["wb"]["pruned"] is False
    graph.adjacency = graph.adjacency.to_sparse()  # large graphs may hold a sparse adjacency
    assert graph_to_json(graph)["links"] == doc["links"]


def test_masks_keep_what_circuit_tracer_would_write():
    graph = tiny_graph()
    n = graph.n_nodes
    node_mask = torch.ones(n, dtype=torch.bool)
    node_mask[[1, 7]] = False  # a feature and an error pruned away
    edge_mask = torch.rand(n, n, generator=torch.Generator().manual_seed(3)) < 0.5
    doc = graph_to_json(graph, node_mask, edge_mask, influence=torch.linspace(0, 1, n))
    ids = node_ids(graph)
    kept_edges = [(s, t) for t in range(n) for s in range(n) if edge_mask[t, s] and node_mask[t] and node_mask[s]]
    assert link_set(doc) == {(ids[s], ids[t], graph.adjacency[t, s].item()) for s, t in kept_edges}
    linked = {s for s, _ in kept_edges} | {t for _, t in kept_edges}
    expected_nodes = [i for i in range(n) if node_mask[i] and (i in linked or i >= graph.token_start)]
    assert [node["wb_index"] for node in doc["nodes"]] == expected_nodes
    assert doc["nodes"][0]["influence"] == 0.0 and doc["metadata"]["wb"]["pruned"] is True
    with pytest.raises(ValueError, match=r"edge_mask must be a bool tensor of shape \(16, 16\)"):
        graph_to_json(graph, edge_mask=edge_mask[:3])
    with pytest.raises(ValueError, match="influence has 3 entries for a graph of 16 nodes"):
        graph_to_json(graph, influence=torch.zeros(3))


def test_save_load_round_trip_is_exact(tmp_path):
    graph = tiny_graph()
    path = save_graph_json(tmp_path / "toy.json", graph, slug="toy", scan="toy-2l", update_index=True)
    loaded = load_graph_json(path)
    assert [node["node_id"] for node in loaded.nodes] == node_ids(graph)
    features = loaded.nodes_of_kind("feature")
    assert [node["activation"] for node in features] == graph.activations.tolist()
    assert [node["wb_value"] for node in loaded.nodes] == graph.values.tolist()
    src, tgt, weight = loaded.link_arrays()
    assert torch.equal(weight.float(), graph.adjacency[tgt, src])
    assert torch.equal(loaded.adjacency(torch.float32), graph.adjacency)
    back = loaded.to_graph()
    for name in ("input_tokens", "active_features", "activations", "logit_tokens", "logit_probabilities",
                 "adjacency", "values", "bias"):
        assert torch.equal(getattr(back, name), getattr(graph, name)), name
    assert (back.prompt, back.token_strings, back.logit_labels, back.metadata) == (
        graph.prompt, graph.token_strings, graph.logit_labels, graph.metadata)
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["toy"] and "wb" not in index["graphs"][0]
    with pytest.raises(ValueError, match="name the file so"):
        save_graph_json(tmp_path / "other.json", graph, slug="toy", update_index=True)


def test_pruned_file_comes_back_as_the_kept_subgraph(tmp_path):
    graph = tiny_graph()
    node_mask = torch.ones(graph.n_nodes, dtype=torch.bool)
    node_mask[1] = False
    doc = graph_to_json(graph, node_mask, graph.adjacency != 0)
    back = GraphFile.from_dict(doc).to_graph()
    keep = [0, 2, 3, 4] + list(range(5, graph.n_nodes))
    expected = graph.adjacency[keep][:, keep].clone()
    assert back.n_features == 4 and back.metadata["json_pruned"] is True
    assert torch.equal(back.adjacency, expected)
    assert torch.equal(back.active_features, graph.active_features[[0, 2, 3, 4]])


def test_circuit_tracer_fixture_loads_and_validates():
    jsonschema.validate(json.loads(FIXTURE.read_text()), GRAPH_JSON_SCHEMA)
    loaded = load_graph_json(FIXTURE)
    counts = {kind: len(loaded.nodes_of_kind(kind)) for kind in ("feature", "error", "token", "logit", "other")}
    assert counts == {"feature": 4, "error": 1, "token": 4, "logit": 2, "other": 0}
    assert not loaded.has_workbench_fields
    assert loaded.qParams["supernodes"] == [["Texas", "1_77_3", "1_4096_3"]]
    assert loaded.metadata["pruning_settings"]["edge_threshold"] == 0.98
    src, tgt, weight = loaded.link_arrays()
    assert (loaded.nodes[src[0]]["node_id"], loaded.nodes[tgt[0]]["node_id"], weight[0].item()) == (
        "E_35360_1", "0_1234_1", 5.125)
    assert loaded.adjacency()[loaded.index_of["3_573_3"], loaded.index_of["1_77_3"]] == -0.6015625
    assert [feature_address(node) for node in loaded.nodes_of_kind("feature")] == [
        (0, 1, 1234), (0, 3, 88), (1, 3, 77), (1, 3, 4096)]
    # Ids that are not {layer}_{feature}_{pos} fall back to the Cantor-paired `feature`.
    assert feature_address({"node_id": "1_clt_4096_3", "feature": 8398849, "layer": "1", "ctx_idx": 3}) == (1, 3, 4096)
    with pytest.raises(GraphFileError, match="no workbench fields"):
        loaded.to_graph()


def test_gzipped_files_load(tmp_path):
    path = tmp_path / "g.json.gz"
    path.write_bytes(gzip.compress(FIXTURE.read_bytes()))
    assert len(load_graph_json(path).links) == 11


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("nodes"), r"bad\.json: 'nodes' is a required property"),
    (lambda d: d["nodes"][3].update(feature_type="foo"), r"nodes\[3\]\.feature_type: 'foo' is not one of \["),
    (lambda d: d["nodes"][0].pop("jsNodeId"), r"nodes\[0\]: 'jsNodeId' is a required property"),
    (lambda d: d["links"][2].update(target="9_9_9"), r"links\[2\]\.target '9_9_9' is not the node_id of any node"),
    (lambda d: d["links"][0].update(weight="heavy"), r"links\[0\]\.weight: 'heavy' is not of type 'number'"),
    (lambda d: d["nodes"][1].update(node_id="0_1234_1"), r"nodes\[1\]\.node_id '0_1234_1' repeats nodes\[0\]"),
    (lambda d: d["metadata"].update(prompt_tokens="abc"), r"metadata\.prompt_tokens: 'abc' is not of type 'array'"),
])
def test_malformed_files_name_the_bad_field(tmp_path, damage, message):
    doc = json.loads(FIXTURE.read_text())
    damage(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(GraphFileError, match=message):
        load_graph_json(path)


def test_unreadable_files_are_reported(tmp_path):
    (tmp_path / "cut.json").write_text('{"nodes": [')
    with pytest.raises(CorruptArtifactError, match="cut.json"):
        load_graph_json(tmp_path / "cut.json")
    with pytest.raises(FileNotFoundError, match="no graph file"):
        load_graph_json(tmp_path / "absent.json")


def test_script_labels_survive_as_plain_strings(tmp_path):
    label = "<script>alert('x')</script> & \"quotes\""
    path = save_graph_json(tmp_path / "g.json", tiny_graph(), labels={0: label})
    assert "<script>alert('x')</script>" in path.read_text()
    assert load_graph_json(path).nodes[0]["clerp"] == label


def test_custom_targets_scan_lists_and_extra_metadata():
    graph = tiny_graph(logit_tokens=(-1, 9))
    assert graph_to_json(graph, vocab_size=100)["nodes"][-2]["node_id"] == "3_100_2"
    assert graph_to_json(graph)["nodes"][-2]["node_id"] == "3_-1_2"
    doc = graph_to_json(graph, scan=["tc-l0", "tc-l1"], metadata_extra={"info": {"creator_name": "wb"}})
    assert doc["metadata"]["scan"] == graph_to_json(graph, scan=["tc-l0", "tc-l1"])["metadata"]["scan"]
    assert doc["metadata"]["scan"].startswith("custom-") and doc["metadata"]["transcoder_list"] == ["tc-l0", "tc-l1"]
    assert doc["metadata"]["info"] == {"creator_name": "wb"}
    with pytest.raises(ValueError, match="may not set 'slug'"):
        graph_to_json(graph, metadata_extra={"slug": "x"})


def test_non_finite_weights_are_refused():
    graph = tiny_graph()
    graph.adjacency[0, 5] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        graph_to_json(graph)


def test_workbench_files_must_keep_their_node_fields():
    doc = graph_to_json(tiny_graph())
    del doc["nodes"][2]["wb_bias"]
    with pytest.raises(GraphFileError, match=r"nodes\[2\]: 'wb_bias' is a required property"):
        GraphFile.from_dict(doc)
    doc = graph_to_json(tiny_graph())
    doc["metadata"]["wb"]["dtypes"]["values"] = "load"
    with pytest.raises(GraphFileError, match=r"metadata\.wb\.dtypes\.values: 'load' is not one of"):
        GraphFile.from_dict(doc)


def test_a_saved_graph_with_out_of_range_sparse_indices_is_a_clear_error(tmp_path):
    """A damaged sparse adjacency must be refused by name, never reach a sparse kernel (a crash)."""
    from graph_fixtures import synthetic_graph

    from workbench.attribution.graph import TENSORS_FILE, Graph
    from workbench.store.atomic import CorruptArtifactError, load_safetensors, save_safetensors

    folder = synthetic_graph(n_nodes=300, n_pos=5, n_layers=2).save(tmp_path / "g")
    tensors = load_safetensors(folder / TENSORS_FILE)
    tensors["adjacency_indices"][0, 0] = 10_000
    save_safetensors(tensors, folder / TENSORS_FILE)
    with pytest.raises(CorruptArtifactError, match="does not fit 300 nodes"):
        Graph.load(folder)
