"""`wb zoo build | dicts | verify | checksums | list`: the committed model zoo."""

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
