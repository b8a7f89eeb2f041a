"""The job behind ``wb graph`` and the app's graph page: model folder + dictionary set + prompt -> a
saved, catalogued, pruned and scored attribution graph. Nothing here prints.

Graph folder (default ``<artifacts>/graphs/<name>``)::

    graph.safetensors, graph.json   the full graph (``graph.Graph``)
    neuronpedia.json                the pruned graph in circuit-tracer / Neuronpedia's JSON schema
    summary.json                    sizes, scores of the full and pruned graphs, thresholds, top paths

1. Encode the prompt with the model's own tokenizer (a ``<bos>`` is put first when missing, as every
   task's rows begin with it); refuse unknown tokens, ids outside the vocabulary and prompts longer
   than the model's context, naming the limit.
2. Load the dictionary set; refuse a set trained on another model, or whose members leave the set
   folder or miss a declared layer (``dictionary_set.load_set_for_model``).
3. Name the graph. The automatic name is ``<model>-<slug of the prompt>-<hash>``, the hash of (model
   folder, set folder, prompt tokens): graphs of one prompt through two sets or two models of one name
   are two graphs, and building the same graph again replaces it. ``name`` is a plain name, confined
   to ``<artifacts>/graphs`` (``store.names``); ``out`` is any folder the user chooses. An explicit
   name or folder that already holds a graph is an error unless ``force``; ``force`` never replaces a
   folder that is not a graph folder.
4. Holding the folder's writer lock (a concurrent writer of the same folder is refused), attribute,
   prune, score; build the whole folder under a staging name, publish it with one rename, then list it
   in the catalog (kind ``graph``).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from workbench.attribution.attribute import AttributionConfig, attribute
from workbench.attribution.graph import Graph
from workbench.attribution.prune import Pruned, graph_scores, normalize_rows, prune_graph
from workbench.dictionaries.dictionary_set import load_set_for_model
from workbench.store.atomic import atomic_write_json, publish_dir, read_json, staging_dir
from workbench.store.catalog import Catalog
from workbench.store.model_files import ModelBundle
from workbench.store.names import name_folder, short_hash, sole_writer

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
    members, meta = load_set_for_model(bundle, dict_folder)
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


def auto_graph_name(bundle: ModelBundle, dict_folder: str | Path, tokens: torch.Tensor, text: str) -> str:
    """Step 3's automatic name: readable stem, plus the hash of what makes the graph this graph."""
    model = re.sub(r"[^A-Za-z0-9_-]+", "-", bundle.name).strip("-")[:40] or "model"
    identity = short_hash(Path(bundle.folder).resolve(), Path(dict_folder).resolve(), tokens.flatten().tolist())
    return f"{model}-{_slug(text)}-{identity}"


def graph_target(bundle: ModelBundle, dict_folder: str | Path, tokens: torch.Tensor, text: str, catalog: Catalog,
                 name: str | None, out: str | Path | None) -> tuple[str, Path]:
    """Step 3: ``(name, folder)``; a name that is not a plain name is refused."""
    graphs = catalog.root / "graphs"
    if name is not None:
        name_folder(graphs, name, "graph")
    name = name if name is not None else auto_graph_name(bundle, dict_folder, tokens, text)
    return name, Path(out) if out is not None else name_folder(graphs, name, "graph")


def _check_replace(folder: Path, name: str, catalog: Catalog, force: bool, name_given: bool) -> None:
    """Step 3's rule for an explicit name or folder: replacing a graph needs ``force``."""
    taken = folder.exists() and (not folder.is_dir() or any(folder.iterdir()))
    listed = name_given and catalog.manifest_path("graph", name).is_file()
    if force:
        if taken and not (folder / "graph.json").is_file():
            raise ValueError(f"{folder} exists and is not a graph folder; refusing to replace it even with --force: "
                             "choose another --out")
        return
    if taken or listed:
        what = f"folder {folder}" if taken else f"the catalog (graph {name!r})"
        raise ValueError(f"a graph named {name!r} already exists in {what}; pass --force to replace it, or choose "
                         "another --name / --out")


def _publish_graph(graph: Graph, pruned: Pruned, summary: dict, folder: Path, name: str) -> None:
    """Step 4: the whole folder built under a staging name, then renamed into place."""
    stage = staging_dir(folder)
    try:
        graph.save(stage)
        write_neuronpedia_json(graph, pruned, stage / NEURONPEDIA_FILE, slug=name,
                               node_threshold=summary["node_threshold"])
        atomic_write_json(stage / SUMMARY_FILE, summary)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    publish_dir(stage, folder)


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
            "identity_error": graph.metadata.get("identity_error"),
            "validation": {k: v for k, v in (graph.metadata.get("validation") or {}).items()
                           if k in ("n_features", "pearson", "spearman", "frozen_max_deviation", "note")} or None}


def build_graph(bundle: ModelBundle, dict_folder: str | Path, prompt: str | list[int], *, node_threshold: float = 0.8,
                edge_threshold: float = 0.98, config: AttributionConfig | None = None, out: Path | None = None,
                catalog: Catalog | None = None, name: str | None = None, force: bool = False,
                progress: bool = True, validate: bool = True) -> dict:
    """Steps 1-4; returns the summary with ``folder`` and ``name`` added. With ``validate`` the graph's
    metadata and summary carry its validation by intervention
    (:func:`workbench.interventions.validation.validate_graph`)."""
    tokens = encode_prompt(bundle, prompt)
    dictionaries, set_meta = load_replacement_set(bundle, dict_folder)
    text = prompt if isinstance(prompt, str) else bundle.tokenizer.decode(tokens[0])
    catalog = catalog or Catalog()
    name_given, explicit = name is not None, name is not None or out is not None
    name, folder = graph_target(bundle, dict_folder, tokens, text, catalog, name, out)
    with sole_writer(folder, "graph folder"):
        if explicit:
            _check_replace(folder, name, catalog, force, name_given)
        graph = attribute(bundle.model, dictionaries, tokens, prompt=text, token_strings=bundle.tokenizer.tokens(tokens[0]),
                          token_label=lambda i: bundle.tokenizer.vocab[i], config=config, progress=progress,
                          metadata={"model": bundle.name, "dictionaries": str(dict_folder),
                                    "dictionary_set": {k: set_meta.get(k) for k in ("kind", "activation") if k in set_meta}})
        if validate:  # imported here: the interventions build on attribution, not the other way round
            from workbench.interventions.validation import validate_graph

            graph.metadata["validation"] = validate_graph(bundle.model, dictionaries, graph)
        pruned = prune_graph(graph, node_threshold, edge_threshold)
        summary = summarize(graph, pruned, node_threshold, edge_threshold)
        _publish_graph(graph, pruned, summary, folder, name)
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


__all__ = ["auto_graph_name", "build_graph", "encode_prompt", "load_replacement_set", "load_summary", "summarize", "top_paths"]
