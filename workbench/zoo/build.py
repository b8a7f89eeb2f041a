"""Build and verify the model zoo under ``models/``.

``build_zoo`` trains every entry whose folder is missing (runs checkpoint under the artifacts root, so
an interrupted build resumes), measures it on its task's test split, writes its card and the
``models/README.md`` table, and catalogs it. ``verify_zoo`` reloads every committed model, re-measures
it with the same evaluation batch, and checks the numbers against its card and its entry's targets.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from workbench.architectures import count_parameters, model_config
from workbench.store.catalog import Catalog
from workbench.store.model_files import ModelBundle, load_model_folder, save_model_folder
from workbench.tasks import Task, make_task
from workbench.tasks.bigram import bigram_perplexity
from workbench.training.evaluate import EVAL_SEED, evaluate_batch
from workbench.training.trainer import train
from workbench.zoo.entries import ZOO, ZooEntry, zoo_entry
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
    result = train(config, task, entry.train, catalog.root / "runs" / entry.name, progress=progress)
    metrics = measure(result.model, task_from_spec(entry.measured_task), entry.eval_examples)
    card = make_card(entry, task, config, result.model, metrics, result.tokens, result.elapsed_s)
    if entry.sweep:  # positions beyond n_ctx exist only for the recurrent models
        card["sweep"] = recall_sweep(result.model, config["n_ctx"] if entry.architecture == "transformer" else None)
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
        tol = 1.0 / n + 1e-9 if key.endswith("accuracy") else 1e-4 * max(1.0, abs(value))
        if abs(got - value) > tol:
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
    row.problems += compare_metrics(card, row.metrics, n)
    row.problems += target_problems(row.metrics, card.get("targets", {}))
    return row


def verify_zoo(models_dir: Path, catalog: Catalog | None = None) -> list[VerifyRow]:
    rows = []
    folders = sorted(p for p in models_dir.iterdir() if p.is_dir() and (p / "config.json").is_file())
    for folder in folders:
        try:
            bundle = load_model_folder(folder)
        except (OSError, ValueError, KeyError, RuntimeError) as err:  # a damaged folder fails by name
            rows.append(VerifyRow(folder.name, [f"cannot load: {err}"]))
            continue
        row = verify_bundle(bundle)
        rows.append(row)
        if catalog is not None and row.ok:
            catalog.register("model", bundle.name, folder, bundle.card)
    missing = [e.name for e in ZOO if not (models_dir / e.name).is_dir()]
    rows += [VerifyRow(name, ["not built: run `wb zoo build`"]) for name in missing]
    return rows
