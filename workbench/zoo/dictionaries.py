"""Zoo dictionaries: per-layer transcoders and a cross-layer transcoder for every zoo model, committed
beside the model, with their metrics and attribution-graph scores in the model's card.

    models/<name>/dictionaries/<recipe>/set.json      members, recipe, metrics
    models/<name>/dictionaries/<recipe>/<member>/     dictionary.safetensors + config.json (+ card.json)
    models/<name>/dictionaries/<recipe>/features/     feature data for the app (top contexts, ...)

For each model and recipe (``RECIPES``):

1. Train the set with the dictionaries job into a scratch folder under the artifacts root (activation
   store and checkpoints live there, so an interrupted build resumes).
2. Publish only the trained dictionaries (weights in float16: :func:`store_half`) and ``set.json``
   into the model folder, atomically; re-measure them as published; write their feature data.
3. Trace attribution graphs on ``N_GRAPH_PROMPTS`` test prompts (each a test row cut before its last
   target token) and record the replacement and completeness scores of the full and the pruned
   graphs (mean and min), and the graphs' validation by intervention (the correlation between the
   logit effect of ablating each of the top ``VALIDATION_TOP_K`` features, as the graph predicts it and
   as the live model shows it: :mod:`workbench.interventions.validation`), with the dictionaries' FVU,
   L0, dead fraction and spliced agreement, in the card under ``dictionaries.<recipe>``.

``remeasure`` redoes the measurements of a published set (held-out metrics and spliced metrics, see
:mod:`workbench.dictionaries.jobs`) without retraining: ``set.json`` and the card are rewritten. The card
is always rewritten through :func:`workbench.store.model_files.write_card`, which keeps the model
folder's ``checksums.json`` current.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from workbench.attribution.attribute import AttributionConfig, attribute
from workbench.attribution.prune import graph_scores, prune_graph
from workbench.dictionaries.dictionary_set import SET_FILE, load_dictionary_set, save_dictionary_set
from workbench.dictionaries.jobs import bundle_task, evaluate_set, train_set, write_features
from workbench.dictionaries.models import CONFIG_FILE, WEIGHTS_FILE
from workbench.interventions.validation import validate_graph
from workbench.store.atomic import (
    atomic_write_json,
    load_safetensors,
    publish_dir,
    read_json,
    save_safetensors,
    staging_dir,
)
from workbench.store.catalog import Catalog
from workbench.store.integrity import write_checksums
from workbench.store.model_files import ModelBundle, load_model_folder, write_card
from workbench.zoo.build import task_from_spec

COMMON = {"activation": "topk", "k": 16, "n_features": 512, "steps": 1500, "batch_size": 1024, "lr": 1e-3,
          "n_sequences": 2048}
RECIPES = {"transcoders": {"kind": "transcoder", **COMMON}, "clt": {"kind": "clt", **COMMON}}
N_GRAPH_PROMPTS = 20
# The committed feature data keeps the 5 strongest contexts and 1 in each of 3 quantile bands, 5 tokens
# either side with float16 shading values, 12 histogram bins and 5 top and bottom logit effects (the
# library's defaults, 10, 5 x 4, 8, 20 and 10, made the feature files a third of models/, whose budget is
# 50 MB; issue #13).
ZOO_CONTEXTS = {"n_top": 5, "n_bands": 3, "n_per_band": 1, "window": 5, "n_bins": 12, "n_logits": 5,
                "half_windows": True}
COMMITTED_DTYPE = torch.float16
VALIDATION_TOP_K = 10
NODE_THRESHOLD, EDGE_THRESHOLD = 0.8, 0.98


def store_half(member: Path) -> None:
    """A committed dictionary's weights as float16 (DESIGN: the zoo stays small; nothing here needs more
    precision, and loading upcasts into the float32 dictionary, so computation is unchanged), with its
    checksums rewritten. The set is re-measured after this (step 2), so its numbers are the published
    weights'."""
    path = member / WEIGHTS_FILE
    weights = load_safetensors(path)
    half = {k: v.to(COMMITTED_DTYPE) if v.is_floating_point() else v for k, v in weights.items()}
    save_safetensors(half, path, {"kind": read_json(member / CONFIG_FILE)["kind"]})
    write_checksums(member)


def _publish(scratch: Path, final: Path) -> None:
    """Step 2: copy the set's dictionaries (not its checkpoints, weights in float16) and set.json into
    ``final``."""
    meta = read_json(scratch / SET_FILE)
    stage = staging_dir(final)
    members = {}
    for member, rel in meta["members"].items():
        shutil.copytree(scratch / rel, stage / member)
        store_half(stage / member)
        members[member] = member
    save_dictionary_set(stage, members, {k: v for k, v in meta.items() if k not in ("members", "model")})
    publish_dir(stage, final)


def graph_prompts(bundle: ModelBundle, n: int = N_GRAPH_PROMPTS, seed: int = 4321) -> list[torch.Tensor]:
    """Test rows of the task the card is measured on (``eval_task``, else ``task``), cut just before
    their last target token (the answer of an algorithmic task)."""
    spec = bundle.card.get("eval_task") or bundle.card.get("task")
    batch = (task_from_spec(spec) if spec else bundle_task(bundle)).sample("test", n, seed)
    prompts = []
    for tokens, mask in zip(batch.tokens, batch.loss_mask, strict=True):
        last = int(mask.nonzero().flatten()[-1])
        prompts.append(tokens[:last])
    return prompts


def score_graphs(bundle: ModelBundle, folder: Path, n: int = N_GRAPH_PROMPTS) -> dict:
    """Step 3: replacement/completeness of full and pruned graphs over ``n`` test prompts."""
    dictionaries = list(load_dictionary_set(folder)[0].values())
    rows, validation = [], []
    for tokens in graph_prompts(bundle, n):
        graph = attribute(bundle.model, dictionaries, tokens, config=AttributionConfig(), progress=False)
        pruned = prune_graph(graph, NODE_THRESHOLD, EDGE_THRESHOLD)
        rows.append((*graph_scores(graph), *graph_scores(graph, pruned.node_mask), graph.n_nodes, pruned.n_nodes,
                     graph.metadata["identity_error"]))
        validation.append(validate_graph(bundle.model, dictionaries, graph, VALIDATION_TOP_K))
    t = torch.tensor(rows, dtype=torch.float64)
    names = ["replacement", "completeness", "pruned_replacement", "pruned_completeness", "nodes", "pruned_nodes"]
    out = {name: float(t[:, i].mean()) for i, name in enumerate(names)}
    out |= {f"{name}_min": float(t[:, i].min()) for i, name in enumerate(names[:4])}
    return out | {"n_prompts": n, "node_threshold": NODE_THRESHOLD, "edge_threshold": EDGE_THRESHOLD,
                  "max_identity_error": float(t[:, 6].max()), "validation": validation_summary(validation)}


def validation_summary(records: list[dict]) -> dict:
    """Step 3's graph validation over the prompts: mean (and range) of the per-graph correlations
    between the logit effect each top feature's ablation is predicted to have and its live effect."""
    out = {"n_graphs": len(records), "top_k": VALIDATION_TOP_K, "target": "top logit (demeaned)",
           "frozen_max_deviation": max((r.get("frozen_max_deviation", 0.0) for r in records), default=0.0)}
    for key in ("pearson", "spearman"):
        values = torch.tensor([r[key] for r in records if r.get(key) is not None and r[key] == r[key]])
        out[key] = float(values.mean()) if len(values) else None
        out[f"{key}_min"] = float(values.min()) if len(values) else None
        out[f"{key}_max"] = float(values.max()) if len(values) else None
    return out


def card_entry(recipe: dict, meta: dict, graphs: dict) -> dict:
    per_layer = [meta["metrics"][m] for m in sorted(meta["metrics"])]
    flat = lambda key: [v for m in per_layer for v in m[key]]
    spliced, test = meta["spliced"], meta["spliced_test"]
    return {"recipe": recipe, "fvu": flat("fvu"), "l0": flat("l0"), "dead_fraction": flat("dead_fraction"),
            "agreement": spliced["agreement"], "loss_original": spliced["loss_original"],
            "loss_all_replaced": spliced["loss_all_replaced"], "agreement_test": test["agreement"],
            "loss_original_test": test["loss_original"], "loss_all_replaced_test": test["loss_all_replaced"],
            "graphs": graphs}


def remeasure(bundle: ModelBundle, folder: Path) -> dict:
    """Re-measure a published set in place (held-out and spliced metrics); returns its new set.json."""
    meta = read_json(folder / SET_FILE)
    if "spliced_test" not in meta:  # a set from before held-out measurement: its metrics were the trainer's
        meta["training_metrics"] = meta.get("metrics")
    meta |= evaluate_set(bundle, folder)
    atomic_write_json(folder / SET_FILE, meta)
    return meta


def build_model_dictionaries(model_folder: Path, catalog: Catalog, recipes: list[str] | None = None,
                             force: bool = False, progress: bool = True, log=print, rescore: bool = False,
                             remeasure_only: bool = False, refeature: bool = False) -> dict:
    """Steps 1-3 for one zoo model; recipes already published are skipped unless ``force`` (or only
    re-scored, step 3, with ``rescore``; or only re-measured with ``remeasure_only``; or their feature
    data rewritten with ``refeature``)."""
    bundle = load_model_folder(model_folder)
    card_path = Path(model_folder) / "card.json"
    for name in recipes or list(RECIPES):
        if name not in RECIPES:
            raise ValueError(f"unknown dictionary recipe {name!r}; choose one of: {', '.join(RECIPES)}")
        final = Path(model_folder) / "dictionaries" / name
        card = read_json(card_path)
        if (final / SET_FILE).is_file() and name in card.get("dictionaries", {}) and not force:
            if remeasure_only:
                log(f"{bundle.name}/{name}: re-measuring on held-out rows and the test split")
                graphs = card["dictionaries"][name]["graphs"]
                card["dictionaries"][name] = card_entry(card["dictionaries"][name]["recipe"],
                                                        remeasure(bundle, final), graphs)
                write_card(model_folder, card)
            if refeature:
                log(f"{bundle.name}/{name}: rewriting feature data")
                write_features(bundle, final, catalog, **ZOO_CONTEXTS)
            if rescore:
                log(f"{bundle.name}/{name}: re-scoring graphs on {N_GRAPH_PROMPTS} test prompts")
                card["dictionaries"][name]["graphs"] = score_graphs(bundle, final)
                write_card(model_folder, card)
            elif not (remeasure_only or refeature):
                log(f"{bundle.name}/{name}: present, skipped")
            continue
        r = RECIPES[name]
        clear_stale_scratch(bundle, catalog, log)
        scratch = catalog.root / "zoo-dictionaries" / bundle.name / name
        log(f"{bundle.name}/{name}: training {r['kind']} ({r['activation']} k={r['k']}, {r['n_features']} features)")
        train_set(bundle, r["kind"], r["activation"], r["k"], r["n_features"], None, r["steps"], r["batch_size"],
                  r["lr"], scratch, "store", r["n_sequences"], catalog, progress=progress)
        _publish(scratch, final)
        remeasure(bundle, final)  # the published float16 weights, not the trainer's float32 ones
        write_features(bundle, final, catalog, **ZOO_CONTEXTS)
        log(f"{bundle.name}/{name}: scoring graphs on {N_GRAPH_PROMPTS} test prompts")
        graphs = score_graphs(bundle, final)
        card.setdefault("dictionaries", {})[name] = card_entry(r, read_json(final / SET_FILE), graphs)
        write_card(model_folder, card)
        register_zoo_dictionaries(Path(model_folder).parent, catalog)
    return read_json(card_path).get("dictionaries", {})


def clear_stale_scratch(bundle: ModelBundle, catalog: Catalog, log=print) -> None:
    """Remove this zoo model's training scratch under the artifacts root when it was made from other
    weights: after ``wb zoo build --force`` retrains an entry, ``wb zoo dicts --force`` starts over
    instead of refusing to mix the two models' data. Scratch is derived and rebuildable, and scratch of
    these weights is kept, so an interrupted build resumes. The dictionary run folders record the weights'
    digest in ``zoo-dictionaries/<model>/model.json``; an activation store goes only if its own manifest
    names other weights."""
    from workbench.dictionaries.activations import MANIFEST, weights_sha256
    from workbench.dictionaries.jobs import activation_stores

    def made_from(path: Path, *keys: str) -> str | None:
        record = read_json(path) if path.is_file() else {}
        for key in keys:
            record = record.get(key, {})
        return record or None

    digest = weights_sha256(bundle.model)
    scratch = catalog.root / "zoo-dictionaries" / bundle.name
    marker = scratch / "model.json"
    stale = [scratch] if scratch.exists() and made_from(marker, "weights_sha256") != digest else []
    stale += [store for store in activation_stores(catalog.root, bundle.name)
              if made_from(store / MANIFEST, "collection", "model", "weights_sha256") not in (None, digest)]
    for folder in stale:
        log(f"{bundle.name}: removing {folder} (made from other weights)")
        shutil.rmtree(folder)
    atomic_write_json(marker, {"model": bundle.name, "weights_sha256": digest})


def register_zoo_dictionaries(models_dir: Path, catalog: Catalog) -> list[str]:
    """List every committed zoo dictionary set in the catalog as ``<model>/<recipe>`` (so the app finds them)."""
    names = []
    for set_file in sorted(Path(models_dir).glob(f"*/dictionaries/*/{SET_FILE}")):
        folder = set_file.parent
        name = f"{folder.parent.parent.name}/{folder.name}"
        meta = {k: v for k, v in read_json(set_file).items() if k != "members"}
        summary = folder / "features" / "summary.json"
        if summary.is_file():  # the feature data committed beside the dictionaries
            meta["features"] = read_json(summary) | {"folder": str(summary.parent)}
        catalog.register("dictionary", name, folder, meta | {"model_folder": str(folder.parent.parent)})
        names.append(name)
    return names


DEMO_MODEL, DEMO_RECIPE = "transformer-recall", "transcoders"


def demo_graph(models_dir: Path, catalog: Catalog, progress: bool = False) -> dict | None:
    """The graph ``make demo`` opens: the demo model's first graph prompt through its committed
    transcoders, built once and catalogued (``None`` when the zoo lacks them)."""
    from workbench.attribution.jobs import build_graph, load_summary

    folder = Path(models_dir) / DEMO_MODEL
    dicts = folder / "dictionaries" / DEMO_RECIPE
    if not (dicts / SET_FILE).is_file():
        return None
    name = f"{DEMO_MODEL}-demo"
    existing = [g for g in catalog.list("graph") if g["name"] == name]
    if existing and (catalog.root / existing[0]["path"] / "summary.json").is_file():
        return load_summary(catalog.root / existing[0]["path"]) | {"name": name}
    bundle = load_model_folder(folder)
    prompt = graph_prompts(bundle, 1)[0]
    text = bundle.tokenizer.decode(prompt)
    # the demo graph is derived from committed files: a half-registered earlier one is simply rebuilt
    return build_graph(bundle, dicts, text, catalog=catalog, name=name, progress=progress, force=True)


__all__ = ["DEMO_MODEL", "N_GRAPH_PROMPTS", "RECIPES", "build_model_dictionaries", "demo_graph", "graph_prompts", "register_zoo_dictionaries", "remeasure", "score_graphs"]
