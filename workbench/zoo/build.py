"""Build and verify the model zoo under ``models/``.

``build_zoo`` trains every entry whose folder is missing (runs checkpoint under the artifacts root, so
an interrupted build resumes), measures it on its task's test split, writes its card and the
``models/README.md`` table, and catalogs it. ``verify_zoo`` reloads every committed model, re-measures
it with the same evaluation batch, and checks the numbers against its card and its entry's targets:

1. Each model folder is one row: its checksums (:mod:`workbench.store.integrity`; an edited card fails
   here though it only warns on load), its load (weights fit, finite), its re-measured metrics (every
   one finite) against the card and the targets.
2. Each committed dictionary set (``<model>/dictionaries/<recipe>``) is one row: every member's
   checksums and its load.
3. Any error in a row (a malformed card or config, a damaged file) is that row's FAIL, and verify goes
   on to the next row.

``write_zoo_checksums`` writes ``checksums.json`` into model and dictionary folders that lack one
(older folders), or into all of them with ``force`` (accepting the files as they are).
"""

from __future__ import annotations

import importlib
import math
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from workbench.architectures import count_parameters, model_config
from workbench.store.catalog import Catalog
from workbench.store.integrity import IntegrityWarning, checksum_problems, non_finite, write_checksums
from workbench.store.model_files import ModelBundle, load_model_folder, save_model_folder
from workbench.tasks import Task, make_task
from workbench.tasks.bigram import bigram_perplexity
from workbench.training.evaluate import EVAL_SEED, evaluate_batch
from workbench.training.trainer import train
from workbench.zoo.entries import ZOO, RaspEntry, ZooEntry, zoo_entry
from workbench.zoo.rasp_models import build_rasp_entry, rasp_problems
from workbench.zoo.readme import write_zoo_readme
from workbench.zoo.sweep import recall_sweep

BIGRAM_TRAIN_EXAMPLES = 20000
BIGRAM_SEED = 99


def task_from_spec(spec: dict) -> Task:
    params = {k: v for k, v in spec.items() if k != "name"}
    return make_task(spec["name"], **params)


def measure(model: torch.nn.Module, task: Task, n: int) -> dict:
    """The card's metrics: exact match, loss and perplexity on the test split. For a language task
    (loss on every token) also the bigram baseline on the same test batch, and both perplexities on
    fresh rows of the train split ("iid"): toyworld's test split holds out whole phrasings, whose word
    transitions a bigram model has never seen, so the two views tell different stories."""
    test = task.sample("test", n, EVAL_SEED)
    m = evaluate_batch(model, test)
    out = {"test_accuracy": m["accuracy"], "test_loss": m["loss"], "test_perplexity": m["perplexity"],
           "test_answer_loss": m["answer_loss"], "test_examples": m["examples"]}
    if not torch.equal(test.loss_mask, test.answer_mask):
        train_batch = task.sample("train", BIGRAM_TRAIN_EXAMPLES, BIGRAM_SEED)
        iid = task.sample("train", n, EVAL_SEED)  # seeds differ from training batches' seeds
        m_iid = evaluate_batch(model, iid)
        out["bigram_perplexity"] = bigram_perplexity(train_batch, test, task.tokenizer.vocab_size)
        out["iid_accuracy"] = m_iid["accuracy"]
        out["iid_perplexity"] = m_iid["perplexity"]
        out["bigram_iid_perplexity"] = bigram_perplexity(train_batch, iid, task.tokenizer.vocab_size)
    return out


def target_problems(metrics: dict, targets: dict) -> list[str]:
    problems = []
    bigram_pairs = {"beats_bigram": ("test_perplexity", "bigram_perplexity"),
                    "beats_bigram_iid": ("iid_perplexity", "bigram_iid_perplexity")}
    for key, want in targets.items():
        if key in bigram_pairs:
            ours, baseline = (metrics.get(k, float("nan")) for k in bigram_pairs[key])
            if want and not ours < baseline:
                problems.append(f"{bigram_pairs[key][0]} {ours:.3f} does not beat the bigram baseline {baseline:.3f}")
        elif metrics.get(f"test_{key}", float("-inf")) < want:
            problems.append(f"test {key} {metrics.get(f'test_{key}')} is below the target {want}")
    return problems


def make_card(entry: ZooEntry, task: Task, config: dict, model, metrics: dict, tokens: int, seconds: float) -> dict:
    return {
        "name": entry.name,
        "architecture": entry.architecture,
        "task": task.spec(),
        "eval_task": task_from_spec(entry.measured_task).spec(),
        "model_config": config,
        "train_config": asdict(entry.train),
        "metrics": metrics,
        "targets": entry.targets,
        "parameters": count_parameters(model),
        "training_tokens": tokens,
        "training_time_s": round(seconds, 1),
        "seed": entry.train.seed,
        "eval": {"split": "test", "examples": entry.eval_examples, "seed": EVAL_SEED},
        "trained_on": f"{platform.machine()} cpu x{torch.get_num_threads()} threads, torch {torch.__version__}",
        "notes": entry.notes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def build_entry(entry: ZooEntry, models_dir: Path, catalog: Catalog, progress: bool = True) -> Path:
    task = task_from_spec(entry.task)
    config = model_config(entry.architecture, task.tokenizer.vocab_size, task.seq_len, **entry.model)
    # the curves measure what the card measures (a recall model trains on eight queries, is judged on one)
    eval_task = task_from_spec(entry.eval_task) if entry.eval_task else None
    result = train(config, task, entry.train, catalog.root / "runs" / entry.name, progress=progress,
                   eval_task=eval_task, stop_after=entry.stop_after)
    metrics = measure(result.model, task_from_spec(entry.measured_task), entry.eval_examples)
    card = make_card(entry, task, config, result.model, metrics, result.tokens, result.elapsed_s)
    if eval_task is not None:  # the app's caption says which task the test curves measure
        card["curves_test_task"] = eval_task.spec()
    if entry.sweep:  # positions beyond n_ctx exist only for the recurrent models
        card["sweep"] = recall_sweep(result.model, config["n_ctx"] if entry.architecture == "transformer" else None)
    for section in entry.card_sections:  # "module:function" -> more card fields (an EBT's steps curve)
        module, function = section.split(":")
        card.update(getattr(importlib.import_module(module), function)(
            entry, result.model, config, task, eval_task or task, catalog.root / "runs"))
    folder = save_model_folder(models_dir / entry.name, result.model, config, task.tokenizer, card, result.curves)
    catalog.register("run", entry.name, result.run_dir, {"steps": result.steps, "model": entry.name})
    catalog.register("model", entry.name, folder, card)
    return folder


def build_zoo(models_dir: Path, catalog: Catalog, names: list[str] | None = None, force: bool = False,
              progress: bool = True, log=print) -> list[Path]:
    entries = [zoo_entry(n) for n in names] if names else ZOO
    built = []
    for entry in entries:
        folder = models_dir / entry.name
        if (folder / "card.json").is_file() and not force:
            log(f"{entry.name}: present, skipped (use --force to retrain)")
            continue
        if isinstance(entry, RaspEntry):  # compiled, not trained
            log(f"{entry.name}: compiling a RASP program for {entry.task['name']}")
            built.append(build_rasp_entry(entry, models_dir, catalog))
        else:
            log(f"{entry.name}: training {entry.architecture} on {entry.task['name']}")
            built.append(build_entry(entry, models_dir, catalog, progress))
        write_zoo_readme(models_dir)
    write_zoo_readme(models_dir)
    return built


@dataclass
class VerifyRow:
    name: str
    problems: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    detail: str = ""  # shown when there are no metrics (dictionary rows)

    @property
    def ok(self) -> bool:
        return not self.problems


def compare_metrics(card: dict, measured: dict, n: int) -> list[str]:
    problems = []
    for key, value in card.get("metrics", {}).items():
        got = measured.get(key)
        if got is None:
            problems.append(f"metric {key} in the card was not re-measured")
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{key}: card says {value!r}, not a finite number")
            continue
        tol = 1.0 / n + 1e-9 if key.endswith("accuracy") else 1e-4 * max(1.0, abs(value))
        if not abs(got - value) <= tol:  # written so that a NaN measurement fails
            problems.append(f"{key}: card says {value:.6g}, measured {got:.6g}")
    return problems


def verify_bundle(bundle: ModelBundle) -> VerifyRow:
    card = bundle.card
    row = VerifyRow(bundle.name)
    if not card:
        row.problems.append(f"{bundle.folder} has no card.json")
        return row
    task = task_from_spec(card.get("eval_task") or card["task"])
    if task.tokenizer != bundle.tokenizer or task_from_spec(card["task"]).tokenizer != bundle.tokenizer:
        row.problems.append("tokenizer.json differs from the task's tokenizer")
        return row
    if count_parameters(bundle.model) != card.get("parameters"):
        row.problems.append(f"parameters: card says {card.get('parameters')}, model has {count_parameters(bundle.model)}")
    n = card.get("eval", {}).get("examples", 2000)
    row.metrics = measure(bundle.model, task, n)
    row.problems += [f"measured {key} is {row.metrics[key]}, not finite" for key in non_finite(row.metrics)]
    row.problems += compare_metrics(card, row.metrics, n)
    row.problems += target_problems(row.metrics, card.get("targets", {}))
    if "rasp" in card:  # a compiled model must still equal its program's interpreter
        row.problems += rasp_problems(bundle, task)
    return row


def _guarded(name: str, check) -> VerifyRow:
    """Step 3: ``check()``'s row, or a FAIL row holding the error. Integrity warnings are silenced:
    the row reports the same findings as problems."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IntegrityWarning)
            return check()
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # errors that name what is wrong
        return VerifyRow(name, [str(err.args[0] if isinstance(err, KeyError) and err.args else err)])
    except Exception as err:  # noqa: BLE001 - a malformed card (a list, a string metric) must fail only its row
        return VerifyRow(name, [f"{type(err).__name__}: {err}"])


def _with_checksums(row: VerifyRow, folders: list[Path]) -> VerifyRow:
    """Checksum problems first; a changed file also fails the load with the same words: say it once."""
    sums = []
    for folder in folders:  # guarded too: a damaged checksums.json is a problem of this row only
        sums += _guarded(row.name, lambda f=folder: VerifyRow(row.name, checksum_problems(f))).problems
    row.problems = list(dict.fromkeys(sums + row.problems))
    return row


def verify_model(folder: Path, catalog: Catalog | None = None) -> VerifyRow:
    """Step 1 for one model folder."""
    loaded: list[ModelBundle] = []

    def check() -> VerifyRow:
        loaded.append(load_model_folder(folder))
        return verify_bundle(loaded[0])

    row = _with_checksums(_guarded(folder.name, check), [folder])
    if catalog is not None and row.ok:
        catalog.register("model", row.name, folder, loaded[0].card)
    return row


def verify_dictionary_set(folder: Path) -> VerifyRow:
    """Step 2 for one committed set folder: its members' checksums and their load."""
    from workbench.dictionaries.dictionary_set import load_dictionary_set  # the dictionaries import the zoo

    name = f"{folder.parent.parent.name}/{folder.name}"

    def check() -> VerifyRow:
        dictionaries, _ = load_dictionary_set(folder)
        kinds = sorted({d.config.kind for d in dictionaries.values()})
        count = f"{len(dictionaries)} dictionar{'y' if len(dictionaries) == 1 else 'ies'}"
        return VerifyRow(name, detail=f"{count} ({', '.join(kinds)})")

    members = sorted(p.parent for p in folder.glob("*/dictionary.safetensors"))
    return _with_checksums(_guarded(name, check), members)


def _model_folders(models_dir: Path) -> list[Path]:
    markers = ("config.json", "card.json", "model.safetensors")
    return sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and any((p / m).is_file() for m in markers))


def verify_folder(folder: Path, catalog: Catalog | None = None) -> list[VerifyRow]:
    """Steps 1-2 for one model folder: its own row, then one per committed dictionary set."""
    rows = [verify_model(folder, catalog)]
    return rows + [verify_dictionary_set(s.parent) for s in sorted(folder.glob("dictionaries/*/set.json"))]


def missing_rows(models_dir: Path) -> list[VerifyRow]:
    """A FAIL row for every zoo entry with no folder."""
    return [VerifyRow(e.name, ["not built: run `wb zoo build`"]) for e in ZOO if not (models_dir / e.name).is_dir()]


def verify_zoo(models_dir: Path, catalog: Catalog | None = None) -> list[VerifyRow]:
    rows = [row for folder in _model_folders(models_dir) for row in verify_folder(folder, catalog)]
    return rows + missing_rows(models_dir)


def write_zoo_checksums(models_dir: Path, force: bool = False) -> list[Path]:
    """``checksums.json`` for every model and dictionary folder lacking one (every one with ``force``);
    returns the folders written."""
    folders = _model_folders(models_dir)
    folders += sorted(p.parent for f in folders for p in f.glob("dictionaries/**/dictionary.safetensors"))
    todo = [f for f in folders if force or not (f / "checksums.json").is_file()]
    for folder in todo:
        write_checksums(folder)
    return todo
