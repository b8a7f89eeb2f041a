"""The ``wb`` command: train, evaluate, build and verify the zoo, open the app.

Every command turns the workbench's errors (unknown names, damaged files, diverged runs) into one
line on stderr and exit code 2, instead of a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Mechanistic-interpretability workbench: every architecture, the same instruments.",
                  no_args_is_help=True, add_completion=False)
zoo_app = typer.Typer(help="Build, verify and list the trained model zoo (models/).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
dict_app = typer.Typer(help="Train, evaluate and describe dictionaries (transcoders, CLTs) of a model.",
                       no_args_is_help=True)
app.add_typer(dict_app, name="dict")

ArtifactsOpt = Annotated[str | None, typer.Option("--artifacts", help="Artifacts root (default $WB_ARTIFACTS or ./artifacts).")]
ModelsOpt = Annotated[str | None, typer.Option("--models", help="Zoo folder (default $WB_MODELS or the checkout's models/).")]


def friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from workbench.store.atomic import CorruptArtifactError
        from workbench.training.checkpoint import TrainingDiverged

        try:
            return fn(*args, **kwargs)
        except (ValueError, KeyError, FileNotFoundError, PermissionError, CorruptArtifactError, TrainingDiverged) as err:
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            typer.secho(f"error: {msg}", fg="red", err=True)
            raise typer.Exit(2) from None
    return wrapper


def parse_assignments(items: list[str] | None, what: str) -> dict:
    """``["d_model=128", "act_fn=relu"]`` -> ``{"d_model": 128, "act_fn": "relu"}`` (values as JSON if they parse)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


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


@zoo_app.command("build")
@friendly_errors
def zoo_build(
    only: Annotated[list[str] | None, typer.Option("--only", help="Build only these entries.")] = None,
    force: Annotated[bool, typer.Option(help="Retrain entries already present.")] = False,
    models: ModelsOpt = None,
    artifacts: ArtifactsOpt = None,
):
    """Train every zoo entry missing from models/ (interrupted builds resume), then write the table."""
    from workbench.store import Catalog, models_root
    from workbench.zoo import build_zoo, zoo_table

    models_dir = models_root(models)
    build_zoo(models_dir, Catalog(artifacts), only, force, log=typer.echo)
    typer.echo(zoo_table(models_dir))


@zoo_app.command("dicts")
@friendly_errors
def zoo_dicts(
    only: Annotated[list[str] | None, typer.Option("--only", help="Only these zoo models.")] = None,
    recipe: Annotated[list[str] | None, typer.Option("--recipe", help="transcoders and/or clt (default both).")] = None,
    force: Annotated[bool, typer.Option(help="Retrain dictionaries already present.")] = False,
    rescore: Annotated[bool, typer.Option(help="Re-score the graphs of dictionaries already present.")] = False,
    remeasure: Annotated[bool, typer.Option(help="Re-measure FVU/L0/agreement of dictionaries already present "
                                                 "(no retraining).")] = False,
    progress: ProgressOpt = True,
    models: ModelsOpt = None,
    artifacts: ArtifactsOpt = None,
):
    """Train every zoo model's transcoders and CLT (missing ones), score graphs, update cards and table."""
    from workbench.store import Catalog, models_root
    from workbench.zoo import zoo_table
    from workbench.zoo.dictionaries import build_model_dictionaries
    from workbench.zoo.readme import write_zoo_readme

    models_dir = models_root(models)
    folders = [models_dir / n for n in only] if only else sorted(p.parent for p in models_dir.glob("*/card.json"))
    for folder in folders:
        build_model_dictionaries(folder, Catalog(artifacts), recipe, force, progress, log=typer.echo, rescore=rescore,
                                 remeasure_only=remeasure)
        write_zoo_readme(models_dir)
    typer.echo(zoo_table(models_dir))


@zoo_app.command("verify")
@friendly_errors
def zoo_verify(models: ModelsOpt = None, artifacts: ArtifactsOpt = None):
    """Re-evaluate every committed model and check it against its card and targets."""
    from workbench.store import Catalog, models_root
    from workbench.zoo import verify_zoo

    rows = verify_zoo(models_root(models), Catalog(artifacts))
    for row in rows:
        status = typer.style("ok  ", fg="green") if row.ok else typer.style("FAIL", fg="red")
        acc = row.metrics.get("test_accuracy")
        detail = f"accuracy {acc:.4f}, perplexity {row.metrics['test_perplexity']:.3f}" if acc is not None else ""
        typer.echo(f"{status} {row.name:28s} {detail}")
        for problem in row.problems:
            typer.echo(f"       - {problem}")
    if not all(r.ok for r in rows):
        raise typer.Exit(1)


@zoo_app.command("list")
def zoo_list(models: ModelsOpt = None):
    """Print the zoo table from the committed cards."""
    from workbench.store import models_root
    from workbench.zoo import zoo_table

    typer.echo(zoo_table(models_root(models)))


ModelArg = Annotated[Path, typer.Option("--model", help="A model folder (e.g. models/transformer-toyworld).")]
DictArg = Annotated[Path, typer.Option("--dict", help="A dictionary set folder written by `wb dict train`.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


def _echo_dict_metrics(metrics: dict) -> None:
    typer.echo("per layer, on held-out token rows (the <bos> position left out):")
    for member, m in metrics.items():
        per_layer = zip(m["fvu"], m["l0"], m["dead_fraction"], m["dense_fraction"], strict=True)
        for i, (fvu, l0, dead, dense) in enumerate(per_layer):
            where = member if len(m["fvu"]) == 1 else f"{member}[{i}]"
            typer.echo(f"{where:10s} FVU {fvu:.4f}  L0 {l0:.2f}  dead {dead:.3f}  dense {dense:.3f}")


def _echo_spliced(result: dict) -> None:
    for key, where in (("spliced", "held-out rows of the training distribution"), ("spliced_test", "test split")):
        s = result[key]
        typer.echo(f"spliced, {where} ({s['n_sequences']} sequences of split {s['split']!r}):")
        typer.echo(f"  next-token loss: original {s['loss_original']:.4f}, all replaced "
                   f"{s['loss_all_replaced']:.4f} ({s['n_targets']} targets)")
        for hook, loss in s["loss_replaced"].items():
            typer.echo(f"    only {hook} replaced: {loss:.4f}")
        typer.echo(f"  replacement-model agreement (argmax next token): {s['agreement']:.4f} "
                   f"over {s['n_positions']} predicting positions")


@dict_app.command("train")
@friendly_errors
def dict_train(
    model: ModelArg,
    kind: Annotated[str, typer.Option(help="sae, transcoder, skip_transcoder or clt.")] = "transcoder",
    activation: Annotated[str, typer.Option(help="relu, jumprelu, topk or batchtopk.")] = "topk",
    k: Annotated[int, typer.Option(help="Active features per token for topk / batchtopk.")] = 16,
    features: Annotated[int, typer.Option(help="Features per layer.")] = 512,
    layers: Annotated[str | None, typer.Option(help="Comma-separated layers (default: all).")] = None,
    steps: Annotated[int, typer.Option(help="Training steps per dictionary.")] = 500,
    batch_size: Annotated[int, typer.Option(help="Token rows per step.")] = 1024,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    out: Annotated[Path | None, typer.Option(help="Set folder (default <artifacts>/dictionaries/<name>).")] = None,
    activations: Annotated[str, typer.Option(help="live (stream from the model) or store (collect into "
                                                  "<artifacts>/activations first).")] = "live",
    n_sequences: Annotated[int, typer.Option(help="Sequences collected for --activations store.")] = 512,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="Train on cpu or cuda; under torchrun (python -m "
                                             "torch.distributed.run --nproc_per_node N -m workbench dict "
                                             "train ...) gloo on cpu, nccl on cuda.")] = "cpu",
    progress: ProgressOpt = True,
    artifacts: ArtifactsOpt = None,
):
    """Train one dictionary per layer (or one CLT) on a model folder; print FVU/L0 and spliced metrics."""
    from workbench.dictionaries.jobs import train_set
    from workbench.store import Catalog
    from workbench.store.model_files import load_model_folder

    result = train_set(load_model_folder(model), kind, activation, k, features, layers, steps, batch_size, lr, out,
                       activations, n_sequences, Catalog(artifacts), seed=seed, progress=progress, device=device)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 reports
    _echo_dict_metrics(result["metrics"])
    _echo_spliced(result)
    typer.echo(f"dictionary set {result['name']}: {result['folder']}")


@dict_app.command("eval")
@friendly_errors
def dict_eval(model: ModelArg, dict_folder: DictArg,
              n_eval: Annotated[int, typer.Option(help="Sequences per split for the spliced metrics.")] = 256):
    """Print FVU, L0, dead/dense fractions, spliced losses and agreement of a dictionary set."""
    from workbench.dictionaries.jobs import evaluate_set
    from workbench.store.model_files import load_model_folder

    result = evaluate_set(load_model_folder(model), dict_folder, n_eval)
    _echo_dict_metrics(result["metrics"])
    _echo_spliced(result)


@dict_app.command("features")
@friendly_errors
def dict_features(model: ModelArg, dict_folder: DictArg,
                  n_sequences: Annotated[int, typer.Option(help="Train sequences to read features on.")] = 128,
                  seed: int = 0, artifacts: ArtifactsOpt = None):
    """Write top contexts, histograms, densities and logit effects of every feature under the set folder."""
    from workbench.dictionaries.jobs import write_features
    from workbench.store import Catalog
    from workbench.store.model_files import load_model_folder

    s = write_features(load_model_folder(model), dict_folder, Catalog(artifacts), n_sequences, seed)
    typer.echo(f"{s['n_features']} features on {s['n_tokens']:,} tokens: {s['dead_features']} never fire, "
               f"mean density {s['mean_density']:.4f}; {s['n_contexts']} contexts")
    typer.echo(f"feature data: {s['folder']}")


@app.command("graph")
@friendly_errors
def graph_cmd(
    model: ModelArg,
    dict_folder: DictArg,
    prompt: Annotated[str, typer.Option(help="Space-separated tokens of the model's vocabulary (<bos> is added).")],
    node_threshold: Annotated[float, typer.Option(help="Keep nodes holding this share of the influence.")] = 0.8,
    edge_threshold: Annotated[float, typer.Option(help="Keep edges holding this share of the influence.")] = 0.98,
    max_feature_nodes: Annotated[int | None, typer.Option(help="Visit at most this many features, most "
                                                               "influential first (default: all).")] = None,
    max_n_logits: Annotated[int, typer.Option(help="Most logit targets.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Targets per backward pass.")] = 64,
    out: Annotated[Path | None, typer.Option(help="Graph folder (default <artifacts>/graphs/<name>).")] = None,
    name: Annotated[str | None, typer.Option(help="Catalog name (default <model>-<prompt>).")] = None,
    progress: ProgressOpt = True,
    artifacts: ArtifactsOpt = None,
):
    """Trace the attribution graph of a prompt; print its size, scores and top paths, and where it went."""
    from workbench.attribution.attribute import AttributionConfig
    from workbench.attribution.jobs import build_graph
    from workbench.store import Catalog
    from workbench.store.model_files import load_model_folder

    config = AttributionConfig(max_n_logits=max_n_logits, batch_size=batch_size, max_feature_nodes=max_feature_nodes)
    s = build_graph(load_model_folder(model), dict_folder, prompt, node_threshold=node_threshold,
                    edge_threshold=edge_threshold, config=config, out=out, catalog=Catalog(artifacts), name=name,
                    progress=progress)
    targets = ", ".join(f"{t['label']!r} {t['probability']:.3f}" for t in s["logits"])
    typer.echo(f"{s['n_tokens']} tokens -> targets {targets}")
    typer.echo(f"graph: {s['n_nodes']} nodes ({s['n_features']} features), {s['n_edges']} edges; pruned "
               f"(nodes {s['node_threshold']}, edges {s['edge_threshold']}): {s['pruned_nodes']} nodes, "
               f"{s['pruned_edges']} edges")
    typer.echo(f"replacement score {s['replacement_score']:.3f} (pruned {s['pruned_replacement_score']:.3f}), "
               f"completeness {s['completeness_score']:.3f} (pruned {s['pruned_completeness_score']:.3f})"
               + ("  [approximate]" if s["approximate"] else ""))
    for path in s["top_paths"]:
        typer.echo(f"  path {path['score']:.3f}: " + " -> ".join(path["labels"]))
    typer.echo(f"graph {s['name']}: {s['folder']}")


@app.command()
def tasks():
    """List the tasks and their parameters."""
    from workbench.tasks import make_task, task_names

    for name in task_names():
        typer.echo(f"{name:16s} {json.dumps(make_task(name).params())}")


@app.command()
def archs():
    """List the architectures and their default configs."""
    from workbench.architectures import DEFAULTS

    for name, defaults in sorted(DEFAULTS.items()):
        typer.echo(f"{name:16s} {json.dumps(defaults)}")


def launch_app(host: str, port: int, artifacts: str | None, models: str | None) -> None:
    from workbench.store import artifacts_root, models_root

    home = Path(__file__).resolve().parents[1] / "app" / "Home.py"
    if not home.is_file():
        raise FileNotFoundError(f"the app is missing: expected {home}")
    env = {**os.environ, "WB_ARTIFACTS": str(artifacts_root(artifacts)), "WB_MODELS": str(models_root(models))}
    cmd = [sys.executable, "-m", "streamlit", "run", str(home), "--server.address", host, "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    typer.echo(f"app on http://{host}:{port}  (Ctrl-C stops it)")
    raise typer.Exit(subprocess.call(cmd, env=env))


@app.command("app")
@friendly_errors
def app_cmd(
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean otherwise.")] = "127.0.0.1",
    port: int = 8501,
    artifacts: ArtifactsOpt = None,
    models: ModelsOpt = None,
):
    """Open the Streamlit app."""
    launch_app(host, port, artifacts, models)


@app.command()
@friendly_errors
def demo(host: str = "127.0.0.1", port: int = 8501, artifacts: ArtifactsOpt = None, models: ModelsOpt = None):
    """The main job: build the zoo's missing models, verify every model, then open the app."""
    from workbench.store import Catalog, models_root
    from workbench.zoo import build_zoo, verify_zoo
    from workbench.zoo.dictionaries import demo_graph, register_zoo_dictionaries

    catalog, models_dir = Catalog(artifacts), models_root(models)
    build_zoo(models_dir, catalog, log=typer.echo)
    rows = verify_zoo(models_dir, catalog)
    for row in rows:
        typer.echo(f"{'ok  ' if row.ok else 'FAIL'} {row.name}: {'; '.join(row.problems) or 'matches its card'}")
    typer.echo(f"{len(register_zoo_dictionaries(models_dir, catalog))} zoo dictionary sets catalogued")
    graph = demo_graph(models_dir, catalog)
    if graph:
        typer.echo(f"graph {graph['name']}: {graph['n_nodes']} nodes, replacement {graph['replacement_score']:.3f}, "
                   f"completeness {graph['completeness_score']:.3f}; open http://{host}:{port}/Attribution_graph")
    launch_app(host, port, artifacts, models)


if __name__ == "__main__":
    app()
