"""The job behind ``wb graph`` and the app's graph page: model folder + dictionary set + prompt -> a
saved, catalogued, pruned and scored attribution graph. Nothing here prints.

Graph folder (default ``<artifacts>/graphs/<model>-<slug of the prompt>``)::

    graph.safetensors, graph.json   the full graph (``graph.Graph``)
    neuronpedia.json                the pruned graph in circuit-tracer / Neuronpedia's JSON schema
    summary.json                    sizes, scores of the full and pruned graphs, thresholds, top paths

1. Encode the prompt with the model's own tokenizer (a ``<bos>`` is put first when missing, as every
   task's rows begin with it); refuse unknown tokens, ids outside the vocabulary and prompts longer
   than the model's context, naming the limit.
2. Load the dictionary set; refuse a set trained on another model (its ``set.json`` names the model) or
   whose hooks and widths do not fit (``replacement.py``).
3. Attribute, prune, score; write the folder atomically and list it in the catalog (kind ``graph``).
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import torch

from workbench.attribution.attribute import AttributionConfig, attribute
from workbench.attribution.graph import Graph
from workbench.attribution.prune import Pruned, graph_scores, normalize_rows, prune_graph
from workbench.dictionaries.dictionary_set import load_dictionary_set
from workbench.store.atomic import atomic_write_json, read_json
from workbench.store.catalog import Catalog
from workbench.store.model_files import ModelBundle

SUMMARY_FILE, NEURONPEDIA_FILE = "summary.json", "neuronpedia.json"


def encode_prompt(bundle: ModelBundle, prompt: str | list[int]) -> torch.Tensor:
    """Step 1: ``[1, T]`` token ids of a text prompt (space-separated tokens) or a list of ids."""
    tok, n_ctx = bundle.tokenizer, bundle.model.cfg.n_ctx
    if isinstance(prompt, str):
        if not prompt.split():
            raise ValueError("the prompt is empty; type tokens separated by spaces")
        ids = tok.encode(prompt)  # raises on unknown tokens, listing known ones
    else:
        ids = [int(i) for i in prompt]
        bad = [i for i in ids if not 0 <= i < tok.vocab_size]
        if bad:
            raise ValueError(f"token id(s) {bad[:5]} outside the vocabulary (0..{tok.vocab_size - 1})")
    if not ids or ids[0] != tok.bos_id:
        ids = [tok.bos_id] + ids
    if len(ids) > n_ctx:
        raise ValueError(f"the prompt has {len(ids)} tokens (with <bos>) but the model's context is {n_ctx}; "
                         "shorten it")
    return torch.tensor([ids], dtype=torch.long)


def load_replacement_set(bundle: ModelBundle, dict_folder: str | Path) -> tuple[list, dict]:
    """Step 2: the set's dictionaries (in layer order) and its ``set.json`` meta."""
    members, meta = load_dictionary_set(dict_folder)
    trained_on = meta.get("model_name")
    if trained_on and trained_on != bundle.name:
        raise ValueError(f"dictionary set {dict_folder} was trained on model {trained_on!r}, not {bundle.name!r}; "
                         "pick a set trained on this model")
    return list(members.values()), meta


def top_paths(graph: Graph, pruned: Pruned, k: int = 3) -> list[dict]:
    """The ``k`` strongest token -> ... -> top-logit paths of the pruned graph, each scored by the
    product of its edges' normalised weights (a path's share of the logit's input)."""
    A = normalize_rows(graph.dense_adjacency().float() * pruned.edge_mask)
    best = torch.zeros(graph.n_nodes)
    nxt = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    best[graph.logit_start] = 1.0  # the most likely logit target
    # Nodes feed only later layers (errors and features of layer l feed layers > l): sweep layers downward.
    layers = graph.active_features[:, 0] if graph.n_features else torch.zeros(0, dtype=torch.long)
    error_layers = torch.arange(graph.n_layers).repeat_interleave(graph.n_pos)
    node_layer = torch.cat([layers, error_layers, torch.full((graph.n_pos,), -1), torch.full((graph.n_logits,), 10**6)])
    for layer in sorted(set(node_layer.tolist()), reverse=True):
        if layer == 10**6:
            continue
        nodes = (node_layer == layer).nonzero().flatten()
        scores = A[:, nodes] * best[:, None]  # [targets, nodes]
        value, arg = scores.max(0)
        best[nodes], nxt[nodes] = value, arg
    starts = torch.argsort(best[graph.token_start:graph.logit_start], descending=True)[:k] + graph.token_start
    paths = []
    for s in starts.tolist():
        if best[s] <= 0:
            continue
        path, node = [s], s
        while nxt[node] >= 0 and node != graph.logit_start:
            node = int(nxt[node])
            path.append(node)
        paths.append({"score": float(best[s]), "nodes": path, "labels": [graph.node_label(i) for i in path]})
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "graph"


def summarize(graph: Graph, pruned: Pruned, node_threshold: float, edge_threshold: float) -> dict:
    full, kept = graph_scores(graph), graph_scores(graph, pruned.node_mask)
    return {"prompt": graph.prompt, "n_tokens": graph.n_pos, "n_features": graph.n_features,
            "n_nodes": graph.n_nodes, "n_edges": int((graph.dense_adjacency() != 0).sum()),
            "pruned_nodes": pruned.n_nodes, "pruned_edges": pruned.n_edges,
            "node_threshold": node_threshold, "edge_threshold": edge_threshold,
            "replacement_score": full[0], "completeness_score": full[1],
            "pruned_replacement_score": kept[0], "pruned_completeness_score": kept[1],
            "logits": [{"label": l, "probability": float(p)} for l, p in zip(graph.logit_labels, graph.logit_probabilities)],
            "top_paths": top_paths(graph, pruned), "approximate": graph.metadata.get("approximate", False),
            "identity_error": graph.metadata.get("identity_error")}


def build_graph(bundle: ModelBundle, dict_folder: str | Path, prompt: str | list[int], *, node_threshold: float = 0.8,
                edge_threshold: float = 0.98, config: AttributionConfig | None = None, out: Path | None = None,
                catalog: Catalog | None = None, name: str | None = None, progress: bool = True) -> dict:
    """Steps 1-3; returns the summary with ``folder`` and ``name`` added."""
    tokens = encode_prompt(bundle, prompt)
    dictionaries, set_meta = load_replacement_set(bundle, dict_folder)
    text = prompt if isinstance(prompt, str) else bundle.tokenizer.decode(tokens[0])
    strings = bundle.tokenizer.tokens(tokens[0])
    graph = attribute(bundle.model, dictionaries, tokens, prompt=text, token_strings=strings,
                      token_label=lambda i: bundle.tokenizer.vocab[i], config=config, progress=progress,
                      metadata={"model": bundle.name, "dictionaries": str(dict_folder),
                                "dictionary_set": {k: set_meta.get(k) for k in ("kind", "activation") if k in set_meta}})
    pruned = prune_graph(graph, node_threshold, edge_threshold)
    summary = summarize(graph, pruned, node_threshold, edge_threshold)
    catalog = catalog or Catalog()
    name = name or f"{bundle.name}-{_slug(text)}"
    folder = Path(out) if out else catalog.root / "graphs" / name
    graph.save(folder)
    write_neuronpedia_json(graph, pruned, folder / NEURONPEDIA_FILE, slug=name, node_threshold=node_threshold)
    atomic_write_json(folder / SUMMARY_FILE, summary)
    catalog.register("graph", name, folder, {k: v for k, v in summary.items() if k != "top_paths"}
                     | {"model": bundle.name, "dictionaries": str(dict_folder),
                        "config": asdict(config or AttributionConfig())})
    return summary | {"folder": str(folder), "name": name}


def write_neuronpedia_json(graph: Graph, pruned: Pruned, path: Path, slug: str, node_threshold: float) -> None:
    """The pruned graph in circuit-tracer / Neuronpedia's schema (``graph_file``); ``influence`` carries
    each node's cumulative influence, which their viewer's slider compares with the node threshold."""
    from workbench.attribution.graph_file import save_graph_json

    save_graph_json(path, graph, pruned.node_mask, pruned.edge_mask, slug=slug, influence=pruned.cumulative,
                    node_threshold=node_threshold, scan=graph.metadata.get("model", "workbench"))


def load_summary(folder: str | Path) -> dict:
    return read_json(Path(folder) / SUMMARY_FILE)


__all__ = ["build_graph", "encode_prompt", "load_replacement_set", "load_summary", "summarize", "top_paths"]
