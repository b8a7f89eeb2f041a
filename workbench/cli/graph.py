"""`wb graph`: trace the attribution graph of a prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import (
    ArtifactsOpt,
    DictArg,
    ModelArg,
    ProgressOpt,
    app,
    friendly_errors,
)


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
    out: Annotated[Path | None, typer.Option(help="Graph folder, anywhere (default <artifacts>/graphs/<name>).")] = None,
    name: Annotated[str | None, typer.Option(help="Catalog name, a plain folder name under <artifacts>/graphs "
                                                  "(default <model>-<prompt>-<hash of model, set, prompt>).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the graph an explicit --name / --out already "
                                                        "holds.")] = False,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="Check the graph against the live "
                                                                            "model: ablate its top features.")] = True,
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
                    force=force, progress=progress, validate=validate)
    targets = ", ".join(f"{t['label']!r} {t['probability']:.3f}" for t in s["logits"])
    typer.echo(f"{s['n_tokens']} tokens -> targets {targets}")
    typer.echo(f"graph: {s['n_nodes']} nodes ({s['n_features']} features), {s['n_edges']} edges; pruned "
               f"(nodes {s['node_threshold']}, edges {s['edge_threshold']}): {s['pruned_nodes']} nodes, "
               f"{s['pruned_edges']} edges")
    typer.echo(f"replacement score {s['replacement_score']:.3f} (pruned {s['pruned_replacement_score']:.3f}), "
               f"completeness {s['completeness_score']:.3f} (pruned {s['pruned_completeness_score']:.3f})"
               + ("  [approximate]" if s["approximate"] else ""))
    v = s.get("validation") or {}
    if v.get("pearson") is not None:
        typer.echo(f"validation: ablating the top {v['n_features']} features, predicted vs live top-logit change: "
                   f"r {v['pearson']:.3f}, rank r {v['spearman']:.3f}")
    elif v.get("note"):
        typer.echo(f"validation: {v['note']}")
    for path in s["top_paths"]:
        typer.echo(f"  path {path['score']:.3f}: " + " -> ".join(path["labels"]))
    typer.echo(f"graph {s['name']}: {s['folder']}")
