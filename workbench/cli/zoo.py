"""`wb zoo build | dicts | verify | checksums | list | recall-sweep | promote`: the committed model zoo."""

from __future__ import annotations

from typing import Annotated

import typer

from workbench.cli.common import (
    ArtifactsOpt,
    ModelsOpt,
    ProgressOpt,
    friendly_errors,
    zoo_app,
)


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
    features: Annotated[bool, typer.Option("--features", help="Rewrite the feature data of dictionaries already "
                                                              "present (no retraining).")] = False,
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
                                 remeasure_only=remeasure, refeature=features)
        write_zoo_readme(models_dir)
    typer.echo(zoo_table(models_dir))


@zoo_app.command("verify")
@friendly_errors
def zoo_verify(models: ModelsOpt = None, artifacts: ArtifactsOpt = None):
    """Re-evaluate every committed model and check it against its card and targets; check every model's
    and dictionary's checksums. Each bad entry fails its own row; exit 1 if any failed."""
    from workbench.store import Catalog, models_root
    from workbench.zoo import verify_zoo

    rows = verify_zoo(models_root(models), Catalog(artifacts))
    for row in rows:
        status = typer.style("ok  ", fg="green") if row.ok else typer.style("FAIL", fg="red")
        acc, ppl = row.metrics.get("test_accuracy"), row.metrics.get("test_perplexity")
        detail = f"accuracy {acc:.4f}, perplexity {ppl:.3f}" if acc is not None and ppl is not None else row.detail
        typer.echo(f"{status} {row.name:32s} {detail}")
        for problem in row.problems:
            typer.echo(f"       - {problem}")
    if not all(r.ok for r in rows):
        raise typer.Exit(1)


@zoo_app.command("checksums")
@friendly_errors
def zoo_checksums(
    force: Annotated[bool, typer.Option(help="Rewrite existing checksums too, accepting every file as it is now "
                                             "(after a deliberate edit; check the files first).")] = False,
    models: ModelsOpt = None,
):
    """Write checksums.json into every model and dictionary folder of the zoo that lacks one."""
    from workbench.store import models_root
    from workbench.zoo.build import write_zoo_checksums

    models_dir = models_root(models)
    written = write_zoo_checksums(models_dir, force)
    for folder in written:
        typer.echo(f"wrote {folder / 'checksums.json'}")
    typer.echo(f"{len(written)} folder(s) checksummed" + ("" if force else " (existing checksums kept; --force rewrites)"))


@zoo_app.command("list")
def zoo_list(models: ModelsOpt = None):
    """Print the zoo table from the committed cards."""
    from workbench.store import models_root
    from workbench.zoo import zoo_table

    typer.echo(zoo_table(models_root(models)))


@zoo_app.command("recall-sweep")
@friendly_errors
def zoo_recall_sweep(
    variant: Annotated[list[str] | None, typer.Option("--variant", help="Variants (default: the four recurrent "
                                                      "mixers, RWKV, minGRU and LSTM with conv, and the references).")] = None,
    width: Annotated[list[int] | None, typer.Option("--width", help="d_model values (default 64, 128, 256).")] = None,
    lr: Annotated[list[float] | None, typer.Option("--lr", help="Learning rates (default 3e-4, 1e-3, 3e-3, 1e-2).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Step budget per run (early stop at 99%; the grid's is 2000, "
                                                   "longer ones are reported apart).")] = 2000,
    fresh: Annotated[bool, typer.Option("--fresh", help="Train --steps from scratch as runs of their own "
                                        "(named -s<steps>; one learning-rate schedule, promotable into the zoo) "
                                        "instead of resuming the shorter runs to it.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Processes sharing the grid (one thread each).")] = 1,
    table_only: Annotated[bool, typer.Option("--table", help="Only collect and print the table.")] = False,
    publish: Annotated[bool, typer.Option(help="Also copy the table beside the zoo (models/recall-sweep.parquet), "
                                               "for the Models page and the README.")] = False,
    models: ModelsOpt = None,
    artifacts: ArtifactsOpt = None,
    progress: ProgressOpt = True,
):
    """Issue #16's recall sweep (Zoology's protocol): train the grid's runs not yet finished (resumable;
    several processes share it), then write the table and figure to <artifacts>/sweeps/recall/."""
    import subprocess
    import sys

    import torch

    from workbench.store import Catalog
    from workbench.zoo import recall_grid

    catalog = Catalog(artifacts)
    runs = recall_grid.grid(variant, tuple(width or recall_grid.WIDTHS), tuple(lr) if lr else None, steps, fresh)
    if not table_only and workers > 1:
        args = without_option(sys.argv[1:], "--workers")
        children = [subprocess.Popen([sys.executable, "-m", "workbench", *args, "--workers", "1"])
                    for _ in range(workers)]
        for child in children:
            child.wait()
    elif not table_only:
        torch.set_num_threads(1)
        for i, spec in enumerate(runs, 1):
            typer.echo(f"[{i}/{len(runs)}] {spec.name}")
            row = recall_grid.run_one(spec, catalog.root, progress)
            if row is None:
                typer.echo("  held by another process; skipped")
            else:
                typer.echo(f"  accuracy {row['accuracy']:.1%} after {row['steps_trained']} steps")
    table = recall_grid.sweep_table(catalog.root)
    if len(table):
        folder = recall_grid.save_outputs(catalog.root, table)
        catalog.register("sweep", "recall", folder, {"runs": len(table), "variants": sorted(table.variant.unique())})
        if publish:
            from workbench.store import models_root

            for name in recall_grid.publish(models_root(models), table):
                typer.echo(f"  {name}: card's recall_grid section updated")
    typer.echo(recall_grid.markdown_table(table))


@zoo_app.command("promote")
@friendly_errors
def zoo_promote(
    name: Annotated[str, typer.Argument(help="A zoo entry made from a recall-sweep run (from_sweep in entries.py).")],
    replace: Annotated[bool, typer.Option(help="Move the entry's existing run folder aside "
                                               "(<name>.replaced-<time>) instead of refusing.")] = False,
    artifacts: ArtifactsOpt = None,
):
    """Hand a finished recall-sweep run to its zoo entry: `wb zoo build --only NAME --force` then resumes
    at the run's last step and trains nothing (a fresh machine retrains the entry from its recipe)."""
    from workbench.store import Catalog
    from workbench.zoo import recall_grid
    from workbench.zoo.entries import zoo_entry

    entry = zoo_entry(name)
    target = recall_grid.promote_entry(Catalog(artifacts).root, entry, replace)
    typer.echo(f"{entry.sweep_run.name} -> {target}")
    typer.echo(f"next: wb zoo build --only {name} --force, then wb zoo dicts --force --only {name}")


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--workers 2`` or ``--workers=2``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out
