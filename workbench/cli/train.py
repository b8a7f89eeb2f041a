"""`wb train` and `wb eval`: train a model on a task (resumable), evaluate a model folder.

`wb train` reads its configs from ``--config`` and key=value options, every value typed and range-checked
by its field (:mod:`workbench.fields`), before anything is written; a run that fails before its first
checkpoint removes the run folder it created.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import (
    ArtifactsOpt,
    app,
    friendly_errors,
    parse_assignments,
)

SECTIONS = ("model", "task", "train")


def read_spec(path: Path | None) -> dict:
    """The ``--config`` file: a JSON object with optional 'model', 'task', 'train' objects."""
    if path is None:
        return {}
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--config {path} is not valid JSON: {err}") from None
    if not isinstance(spec, dict) or set(spec) - set(SECTIONS):
        raise ValueError(f"--config {path} should hold a JSON object with optional {', '.join(map(repr, SECTIONS))} "
                         f"objects; found {sorted(spec) if isinstance(spec, dict) else type(spec).__name__}")
    for name in SECTIONS:
        if not isinstance(spec.setdefault(name, {}), dict):
            raise ValueError(f"--config {path}: {name!r} should be a JSON object, not {type(spec[name]).__name__}")  # noqa: TRY004
    return spec


def section(spec: dict, name: str, fields: dict, path: Path | None, kind: str) -> dict:
    """One section of the ``--config`` file, every field known to ``fields`` and of its type and range."""
    from workbench.fields import check_values

    values = spec.get(name, {})
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"--config {path}: unknown {kind}(s) {unknown}; choose from: {', '.join(fields)}")
    return check_values(fields, values, f"--config {path}, {name!r}: ")


def build_configs(arch: str, task: str, path: Path | None, model_set, task_set, train_set):
    """(task, model config, train config) from the ``--config`` file and the key=value overrides."""
    from workbench.architectures import check_architecture, model_config, model_fields
    from workbench.tasks import make_task, task_fields
    from workbench.training import TrainConfig
    from workbench.training.trainer import train_fields

    spec = read_spec(path)
    check_architecture(arch)
    t_fields, m_fields, tr_fields = task_fields(task), model_fields(arch), train_fields()
    m_fields = {k: v for k, v in m_fields.items() if k not in ("d_vocab", "n_ctx")}  # the task decides those
    params = section(spec, "task", t_fields, path, f"{task} task parameter")
    params |= parse_assignments(task_set, "--task-param", t_fields, f"{task} task parameter")
    the_task = make_task(task, **params)
    overrides = section(spec, "model", m_fields, path, f"{arch} config field")
    overrides |= parse_assignments(model_set, "--set", m_fields, f"{arch} config field")
    mcfg = model_config(arch, the_task.tokenizer.vocab_size, the_task.seq_len, **overrides)
    values = section(spec, "train", tr_fields, path, "train config field")
    tcfg = TrainConfig.from_dict(values | parse_assignments(train_set, "--train", tr_fields, "train config field"))
    return the_task, mcfg, tcfg


def check_run_dir(run_dir: Path) -> None:
    """A run folder must be a folder (or not exist yet, below folders)."""
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == run_dir else f"lies below {path}, which is a file"
                raise ValueError(f"--run-dir {run_dir} {what}; give a folder (it holds the run's checkpoints)")
            return


@contextmanager
def removed_on_failure(folder: Path):
    """Run the body; if it fails, remove ``folder`` and the parents it needed when this call created them
    and ``folder`` holds no checkpoint: a failed run leaves no empty run folder behind."""
    from workbench.training import list_checkpoints

    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        if created and not list_checkpoints(folder):
            shutil.rmtree(created[0], ignore_errors=True)  # the run folder itself: all in it is this run's
            for parent in created[1:]:
                try:
                    parent.rmdir()
                except OSError:
                    break  # not empty: another writer uses it now
        raise


@app.command()
@friendly_errors
def train(
    arch: Annotated[str, typer.Option("--arch", help="Architecture (see `wb archs`).")] = "transformer",
    task: Annotated[str, typer.Option("--task", help="Task (see `wb tasks`).")] = "recall",
    config: Annotated[Path | None, typer.Option(help="JSON file with optional 'model', 'task', 'train' objects.")] = None,
    model_set: Annotated[list[str] | None, typer.Option("--set", help="Model config override key=value.")] = None,
    task_set: Annotated[list[str] | None, typer.Option("--task-param", help="Task parameter key=value.")] = None,
    train_set: Annotated[list[str] | None, typer.Option("--train", help="Train config override key=value (steps=500).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default <artifacts>/runs/<arch>-<task>).")] = None,
    fresh: Annotated[bool, typer.Option(help="Delete the run folder's checkpoints first instead of resuming.")] = False,
    save: Annotated[Path | None, typer.Option(help="Also save the trained model as a model folder here.")] = None,
    artifacts: ArtifactsOpt = None,
):
    """Train a model (resumes from the run folder's last checkpoint when the config matches; a resume may
    change the learning rate, its schedule, steps and the eval/checkpoint/log cadence, noted in train.log)."""
    from workbench.store import Catalog
    from workbench.store.model_files import save_model_folder
    from workbench.training import train as run_training

    the_task, mcfg, tcfg = build_configs(arch, task, config, model_set, task_set, train_set)
    catalog = Catalog(artifacts)
    run_dir = run_dir or catalog.root / "runs" / f"{arch}-{task}"
    check_run_dir(run_dir)
    if fresh and (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")
    with removed_on_failure(run_dir):
        result = run_training(mcfg, the_task, tcfg, run_dir, log=typer.echo)
    catalog.register("run", run_dir.name, run_dir, {"architecture": arch, "task": the_task.spec(),
                                                    "steps": result.steps, "metrics": result.metrics})
    m = result.metrics
    typer.echo(f"step {result.steps}: test accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, "
               f"perplexity {m['perplexity']:.3f}; {result.tokens:,} tokens in {result.elapsed_s:.1f} s")
    typer.echo(f"run folder: {run_dir}")
    if save:
        card = {"name": save.name, "architecture": arch, "task": the_task.spec(), "metrics": m,
                "train_config": tcfg.__dict__, "model_config": mcfg}
        save_model_folder(save, result.model, mcfg, the_task.tokenizer, card, result.curves)
        typer.echo(f"model folder: {save}")


@app.command("eval")
@friendly_errors
def eval_cmd(
    model: Annotated[Path, typer.Argument(help="A model folder (e.g. models/transformer-recall).")],
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    n: Annotated[int, typer.Option(help="Examples to evaluate.")] = 2000,
):
    """Evaluate a model folder on its card's task."""
    from workbench.store.integrity import non_finite
    from workbench.store.model_files import load_model_folder
    from workbench.training.evaluate import EVAL_SEED, evaluate
    from workbench.zoo.build import task_from_spec

    bundle = load_model_folder(model)
    if "task" not in bundle.card:
        raise ValueError(f"{model}/card.json names no task; cannot tell what to evaluate on")
    task = task_from_spec(bundle.card.get("eval_task") or bundle.card["task"])
    m = evaluate(bundle.model, task, split, n, EVAL_SEED)
    typer.echo(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()}, indent=2))
    if non_finite(m):  # NaN metrics are a failed evaluation, not a result
        raise ValueError(f"evaluation of {model} gave non-finite {', '.join(non_finite(m))}; the model is unusable")
