"""The jobs behind ``wb dict``: train a replacement set for a model folder, evaluate it, write its
feature data. Each returns plain dicts the CLI prints; nothing here prints.

Set folder (default ``<artifacts>/dictionaries/<model>-<kind>-L<layers>``, the name confined there)::

    set.json                      model, kind, layers, members, metrics, request (see dictionary_set)
    runs/<member>/                the trainer's run folder (checkpoints: an interrupted run resumes)
    runs/<member>/dictionary/     the trained dictionary
    features/                     written by ``wb dict features``

Writing a set (:func:`train_set`), so that no run silently replaces another:

1. Take the set folder's writer lock (``store.names.sole_writer``): a second process training into the
   same folder at the same time is refused at once, naming the folder.
2. A folder that already holds a set (``set.json``) is trained into again only when its recorded
   ``request`` (kind, activation, k, features, layers, steps, batch size, seed, data) is this one:
   the trainer then resumes from ``runs/<member>/`` (a resume may change the learning rate and the
   checkpoint cadence, see :mod:`.trainer`). Otherwise it is an error naming the differences, unless
   ``force``: the old set is replaced (its ``set.json``, run checkpoints and feature data go first).
   ``fresh`` starts over whatever the folder holds: the run checkpoints go (and the set is replaced).
3. Train each member, evaluate, and write ``set.json`` last, atomically; then catalog the set.

Every command that uses a set with a model (:func:`evaluate_set`, :func:`write_features`) loads it with
``dictionary_set.load_set_for_model``: a set of another model is an error before anything is written.

What the reported numbers are measured on (:func:`held_out_metrics`, :func:`spliced`): *held-out rows
of the distribution the dictionaries were trained on*, i.e. fresh rows of the task's train split drawn
with ``EVAL_SEED`` (the activation store's and the live stream's seeds are mixed with other salts), as
the field measures a dictionary. Per-layer FVU / L0 / dead / dense leave out the ``<bos>`` position
(see :mod:`.metrics`). The spliced metrics are reported twice: ``spliced`` on those held-out rows and
``spliced_test`` on the task's test split, which for toyworld holds out whole phrasings: the model
itself is out of distribution there (its test perplexity is 15x its train-phrasing one), and so are
the dictionaries.

Members: ``layer<l>`` per layer for sae / transcoder / skip_transcoder (an SAE reads and rewrites
``hook_mlp_out``; the others read ``hook_mlp_in`` and write ``hook_mlp_out``), or ``clt`` for one
cross-layer transcoder over the listed layers.

Under torchrun (``python -m torch.distributed.run --nproc_per_node N -m workbench dict train ...``)
:func:`train_set` trains data-parallel (see :mod:`.distributed`): rank 0 collects a store while the
others wait, every process reads its part of the activations, and rank 0 alone evaluates, writes the
set and catalogs it; every process returns the same result.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from workbench.architectures.hooked import hook_name
from workbench.dictionaries.activation_reader import ActivationStore
from workbench.dictionaries.activations import LiveActivations, collect_activations, transcoder_hooks
from workbench.dictionaries.dictionary_set import (
    SET_FILE,
    load_set_for_model,
    save_dictionary_set,
    set_model_meta,
)
from workbench.dictionaries.distributed import Comm, init_from_env
from workbench.dictionaries.features import DEFAULT_BINS, feature_data, write_feature_data
from workbench.dictionaries.metrics import evaluate_dictionary
from workbench.dictionaries.models import (
    DICTIONARY_KINDS,
    DictionaryConfig,
    _choice,
    register_dictionary,
)
from workbench.dictionaries.nonlinearities import NONLINEARITIES
from workbench.dictionaries.splice import spliced_metrics
from workbench.dictionaries.trainer import RESUMABLE, DictTrainConfig, train_dictionary
from workbench.store.atomic import read_json
from workbench.store.catalog import Catalog
from workbench.store.model_files import ModelBundle
from workbench.store.names import name_folder, sole_writer
from workbench.training.checkpoint import config_changes, describe_changes
from workbench.zoo.build import task_from_spec

ACTIVATION_SOURCES = ("live", "store")
EVAL_SEED = 1234


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``; ``None`` or ``"all"`` -> every layer; errors name the bad entry."""
    if text is None or text == "all":
        return list(range(n_layers))
    layers = []
    for part in text.split(","):
        if not part.strip().isdigit() or int(part) >= n_layers:
            raise ValueError(f"bad layer {part!r} in --layers {text!r}; the model has layers 0..{n_layers - 1}")
        layers.append(int(part))
    if len(set(layers)) != len(layers):
        raise ValueError(f"--layers {text!r} repeats a layer")
    return sorted(layers)


def bundle_task(bundle: ModelBundle):
    if "task" not in bundle.card:
        raise ValueError(f"{bundle.folder}/card.json names no task; cannot tell which data to read")
    return task_from_spec(bundle.card["task"])


def member_hooks(kind: str, layers: list[int]) -> dict[str, tuple[list[str], list[str]]]:
    """``{member: (input_hooks, output_hooks)}`` for a kind over layers."""
    if kind == "clt":
        return {"clt": ([hook_name("mlp_in", l) for l in layers], [hook_name("mlp_out", l) for l in layers])}
    reads = "mlp_out" if kind == "sae" else "mlp_in"
    return {f"layer{l}": ([hook_name(reads, l)], [hook_name("mlp_out", l)]) for l in layers}


def activation_store_folder(root: Path, model_name: str, layers) -> Path:
    """Where ``train_set`` keeps a model's activation store for these layers (``activations/<model>-L0-1``)."""
    return Path(root) / "activations" / f"{model_name}-L{'-'.join(map(str, layers))}"


def activation_stores(root: Path, model_name: str) -> list[Path]:
    """Every activation store ``train_set`` keeps for this model (one per layer selection)."""
    return sorted((Path(root) / "activations").glob(f"{model_name}-L*"))


def _source(bundle, task, layers, activations, n_sequences, catalog, progress, comm: Comm):
    hooks = transcoder_hooks(layers)
    if activations == "live":
        return LiveActivations(bundle.model, task, hooks, model_config=bundle.config)
    folder = activation_store_folder(catalog.root, bundle.name, layers)
    if comm.is_writer:
        collect_activations(bundle.model, task, folder, hooks, n_sequences, model_config=bundle.config,
                            model_name=bundle.name, progress=progress)
    comm.barrier()  # the store is complete before any process reads it
    return ActivationStore(folder)


HELD_OUT_SPLIT = "train"  # fresh rows (EVAL_SEED) of the distribution the dictionaries were trained on


def spliced(bundle, dictionaries: dict, task, n_eval: int) -> dict:
    """``{"spliced": held-out rows, "spliced_test": the test split}``, each a SplicedMetrics dict."""
    out = {}
    for key, split in (("spliced", HELD_OUT_SPLIT), ("spliced_test", "test")):
        batch = task.sample(split, n_eval, EVAL_SEED)
        metrics = spliced_metrics(bundle.model, list(dictionaries.values()), batch.tokens, batch.loss_mask)
        out[key] = metrics.to_dict() | {"split": split, "n_sequences": n_eval}
    return out


@torch.no_grad()
def held_out_metrics(bundle: ModelBundle, dictionaries: dict, task, batch_size: int = 512,
                     n_batches: int = 8) -> dict:
    """Per-member FVU / L0 / dead / dense on ``n_batches`` x ``batch_size`` held-out token rows
    (position 0 left out), streamed live from the model once for every member's hooks."""
    hooks = list(dict.fromkeys(h for d in dictionaries.values() for h in d.config.input_hooks + d.config.output_hooks))
    live = LiveActivations(bundle.model, task, hooks, split=HELD_OUT_SPLIT, model_config=bundle.config)
    stream = live.minibatches(batch_size, seed=EVAL_SEED, positions=True)
    rows = [batch for _, batch in zip(range(n_batches), stream, strict=False)]
    metrics = {}
    for member, d in dictionaries.items():
        metrics[member] = evaluate_dictionary(d, rows, d.config.input_hooks, d.config.output_hooks, n_batches)
        metrics[member] |= {"rows": sum(len(b["position"]) for b in rows), "split": HELD_OUT_SPLIT}
    return metrics


def check_set_folder(out: Path, request: dict, force: bool, fresh: bool) -> None:
    """Step 2: may this request train into ``out``? Clears what ``force`` / ``fresh`` replace."""
    if fresh:
        shutil.rmtree(out / "runs", ignore_errors=True)
    if not (out / SET_FILE).is_file():
        return
    meta = read_json(out / SET_FILE)
    recorded = meta.get("request")
    if recorded is None:  # a set from before requests were recorded: compare what it does record
        recorded = {k: meta[k] for k in ("kind", "activation", "layers", "n_features", "steps") if k in meta}
        request = {k: request[k] for k in recorded}
    changes = describe_changes(c for c in config_changes(recorded, request) if c[0] not in RESUMABLE)
    if not changes:
        return
    if not (force or fresh):
        raise ValueError(f"dictionary set folder {out} already holds a set of another config (differences: "
                         f"{'; '.join(changes[:8])}); pass --force to replace it, or --out another folder")
    # the old set is being replaced: until the new one is published there is none, and its checkpoints
    # and feature data belong to the old dictionaries
    (out / SET_FILE).unlink()
    for folder in ("runs", "features"):
        shutil.rmtree(out / folder, ignore_errors=True)


def _claim_set_folder(stack: ExitStack, out: Path, request: dict, force: bool, fresh: bool, comm: Comm) -> None:
    """Steps 1-2 on rank 0, held until ``stack`` closes; every process gets rank 0's verdict."""
    error = None
    if comm.is_writer:
        try:
            stack.enter_context(sole_writer(out, "dictionary set folder"))
            check_set_folder(out, request, force, fresh)
        except ValueError as err:
            error = str(err)
    error = comm.broadcast_object(error)
    if error:
        raise ValueError(error)


def _train_members(kind, chosen, source, cfg, n_features, activation, k, seed, out, set_name, catalog, progress,
                   comm) -> tuple[dict, dict, dict, dict]:
    """Step 3's training: ``(members, dictionaries, training metrics, resume notes)``, one per member."""
    members, dictionaries, metrics, notes = {}, {}, {}, {}
    for member, (ins, outs) in member_hooks(kind, chosen).items():
        config = DictionaryConfig(kind, d_in=source.widths[ins[0]], n_features=n_features,
                                  d_out=source.widths[outs[0]], n_layers=len(ins), activation=activation, k=k,
                                  input_hooks=ins, output_hooks=outs, seed=seed)
        result = train_dictionary(config, source, cfg, out / "runs" / member, progress=progress, comm=comm)
        members[member] = f"runs/{member}/dictionary"
        dictionaries[member], metrics[member] = result.dictionary, result.metrics
        if result.extra.get("resume_changes"):
            notes[member] = result.extra["resume_changes"]
        if comm.is_writer:
            register_dictionary(out / members[member], f"{set_name}/{member}", catalog.root)
    return members, dictionaries, metrics, notes


def train_set(bundle: ModelBundle, kind: str, activation: str, k: int | None, n_features: int, layers: str | None,
              steps: int, batch_size: int, lr: float, out: Path | None, activations: str, n_sequences: int,
              catalog: Catalog, n_eval: int = 256, seed: int = 0, progress: bool = True,
              device: str = "cpu", force: bool = False, fresh: bool = False,
              checkpoint_every: int | None = None) -> dict:
    """Train one dictionary per layer (or one CLT), save the set, catalog it; return its metrics
    (steps 1-3 of the module docstring). Under torchrun every process trains its part of the data.
    ``checkpoint_every``: steps between checkpoints (default min(100, steps))."""
    comm = init_from_env(device)
    _choice(kind, DICTIONARY_KINDS, "dictionary kind")
    _choice(activation, NONLINEARITIES, "activation")
    _choice(activations, ACTIVATION_SOURCES, "activation source")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be at least 1 step (got {checkpoint_every})")
    task = bundle_task(bundle)
    chosen = parse_layers(layers, int(bundle.config["n_layers"]))
    set_name = f"{bundle.name}-{kind}-L{'-'.join(map(str, chosen))}"
    out = Path(out) if out else name_folder(catalog.root / "dictionaries", set_name, "dictionary set")
    cfg = DictTrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                          checkpoint_every=checkpoint_every or max(1, min(100, steps)),
                          warmup_steps=min(50, max(1, steps // 10)))
    request = {"kind": kind, "activation": activation, "k": k, "n_features": n_features, "layers": chosen,
               "steps": steps, "batch_size": batch_size, "seed": seed, "activations": activations, "lr": lr,
               "checkpoint_every": cfg.checkpoint_every} | ({"n_sequences": n_sequences} if activations == "store" else {})
    with ExitStack() as stack:
        _claim_set_folder(stack, out, request, force, fresh, comm)
        source = _source(bundle, task, chosen, activations, n_sequences, catalog, progress, comm)
        members, dictionaries, metrics, notes = _train_members(kind, chosen, source, cfg, n_features, activation, k,
                                                               seed, out, set_name, catalog, progress, comm)
        summary = None
        if comm.is_writer:
            measured = {"metrics": held_out_metrics(bundle, dictionaries, task), **spliced(bundle, dictionaries, task, n_eval)}
            meta = {**set_model_meta(bundle), "kind": kind, "activation": activation, "layers": chosen,
                    "n_features": n_features, "steps": steps, "request": request, "training_metrics": metrics, **measured}
            save_dictionary_set(out, members, meta)
            catalog.register("dictionary", set_name, out, {k_: v for k_, v in meta.items() if k_ != "members"})
            summary = {"name": set_name, "folder": str(out), "resumed_with_changes": notes, **measured}
        return comm.broadcast_object(summary)


def evaluate_set(bundle: ModelBundle, folder: Path, n_eval: int = 256, batch_size: int = 512,
                 n_batches: int = 8) -> dict:
    """Per-member FVU / L0 / dead / dense on held-out rows and the spliced metrics (module docstring)."""
    dictionaries, _ = load_set_for_model(bundle, folder)
    task = bundle_task(bundle)
    return {"metrics": held_out_metrics(bundle, dictionaries, task, batch_size, n_batches),
            **spliced(bundle, dictionaries, task, n_eval)}


def write_features(bundle: ModelBundle, folder: Path, catalog: Catalog, n_sequences: int = 128,
                   seed: int = 0, half_windows: bool = False, **context_options) -> dict:
    """Feature data of every member (see :mod:`.features`), written under the set folder and catalogued;
    ``context_options`` (``n_top``, ``n_per_band``, ``window``, ...) go to :func:`.features.feature_data`;
    ``half_windows`` stores the per-token window activations (shading only) as float16."""
    folder = Path(folder)
    dictionaries, meta = load_set_for_model(bundle, folder)
    task = bundle_task(bundle)
    tokens = task.sample("train", n_sequences, seed).tokens
    frames = feature_data(bundle.model, dictionaries, tokens, bundle.tokenizer, seed=seed, **context_options)
    if half_windows:
        frames["contexts"]["window_activations"] = [np.asarray(v, dtype=np.float16)
                                                    for v in frames["contexts"]["window_activations"]]
    f = frames["features"]
    summary = {"model": str(bundle.folder), "n_sequences": n_sequences, "seed": seed,
               "n_tokens": int((tokens != task.tokenizer.pad_id).sum()), "n_features": len(f),
               "dead_features": int((f["density"] == 0).sum()), "mean_density": float(f["density"].mean()),
               "n_contexts": len(frames["contexts"]), "histogram_bins": context_options.get("n_bins", DEFAULT_BINS)}
    out = write_feature_data(folder, frames, summary)
    name = meta.get("name") or _set_name(meta, folder)
    catalog.register("dictionary", name, folder, {**{k: v for k, v in meta.items() if k != "members"},
                                                  "features": {**summary, "folder": str(out)}})
    return {**summary, "folder": str(out)}


def _set_name(meta: dict, folder: Path) -> str:
    if meta.get("model_name") and meta.get("kind"):
        return f"{meta['model_name']}-{meta['kind']}-L{'-'.join(map(str, meta.get('layers', [])))}"
    return folder.name


__all__ = ["ACTIVATION_SOURCES", "check_set_folder", "evaluate_set", "parse_layers", "train_set", "write_features"]
