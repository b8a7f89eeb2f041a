"""`wb dict train | eval | features`: dictionaries (SAEs, transcoders, CLTs) of a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import (
    ArtifactsOpt,
    DictArg,
    ModelArg,
    ProgressOpt,
    dict_app,
    friendly_errors,
)


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
    force: Annotated[bool, typer.Option("--force", help="Replace a set of another config that the folder already "
                                                        "holds, its checkpoints and feature data too (the same "
                                                        "config resumes without it).")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over: delete the set's run checkpoints first (and "
                                                        "replace the set).")] = False,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints (default min(100, "
                                                              "steps)); a resume may change it.")] = None,
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
                       activations, n_sequences, Catalog(artifacts), seed=seed, progress=progress, device=device,
                       force=force, fresh=fresh, checkpoint_every=checkpoint_every)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 reports
    for member, changes in result["resumed_with_changes"].items():
        typer.echo(f"note: {member} resumed with changed settings ({'; '.join(changes)}); noted in its train.log")
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
