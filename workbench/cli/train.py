"""`wb train` and `wb eval`: train a model on a task (resumable), evaluate a model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import (
    ArtifactsOpt,
    app,
    friendly_errors,
    parse_assignments,
)


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
    """Train a model (resumes from the run folder's last checkpoint when the config matches)."""
    import shutil

    from workbench.architectures import check_architecture, model_config
    from workbench.store import Catalog
    from workbench.store.model_files import save_model_folder
    from workbench.tasks import make_task
    from workbench.training import TrainConfig
    from workbench.training import train as run_training

    spec = json.loads(config.read_text()) if config else {}
    check_architecture(arch)
    the_task = make_task(task, **{**spec.get("task", {}), **parse_assignments(task_set, "--task-param")})
    mcfg = model_config(arch, the_task.tokenizer.vocab_size, the_task.seq_len,
                        **{**spec.get("model", {}), **parse_assignments(model_set, "--set")})
    tcfg = TrainConfig.from_dict({**spec.get("train", {}), **parse_assignments(train_set, "--train")})
    catalog = Catalog(artifacts)
    run_dir = run_dir or catalog.root / "runs" / f"{arch}-{task}"
    if fresh and (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")
    result = run_training(mcfg, the_task, tcfg, run_dir)
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
    from workbench.store.model_files import load_model_folder
    from workbench.training.evaluate import EVAL_SEED, evaluate
    from workbench.zoo.build import task_from_spec

    bundle = load_model_folder(model)
    if "task" not in bundle.card:
        raise ValueError(f"{model}/card.json names no task; cannot tell what to evaluate on")
    task = task_from_spec(bundle.card.get("eval_task") or bundle.card["task"])
    m = evaluate(bundle.model, task, split, n, EVAL_SEED)
    typer.echo(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()}, indent=2))
