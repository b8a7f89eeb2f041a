"""`wb store list | reindex | clean`: show the artifacts catalog, rebuild it from its manifests, remove
the temporaries of killed writers."""

from __future__ import annotations

from typing import Annotated

import typer

from workbench.cli.common import ArtifactsOpt, app, friendly_errors

store_app = typer.Typer(help="The artifacts store: list its catalog, rebuild it, clean up after killed writers.",
                        no_args_is_help=True)
app.add_typer(store_app, name="store")


def _relative(path, root) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


@store_app.command("list")
@friendly_errors
def store_list(
    kind: Annotated[list[str] | None, typer.Option(help="Only this kind (repeatable): model, run, dictionary, "
                                                      "graph, study.")] = None,
    artifacts: ArtifactsOpt = None,
):
    """List the catalogued artifacts: kind, name, path."""
    from workbench.store import KINDS, Catalog

    catalog = Catalog(artifacts)
    for k in kind or KINDS:
        for row in catalog.list(k):
            typer.echo(f"{k:10s} {row['name']:40s} {_relative(row['path'], catalog.root)}")


@store_app.command("reindex")
@friendly_errors
def store_reindex(artifacts: ArtifactsOpt = None):
    """Rebuild catalog.duckdb from the published manifests (a damaged catalog is moved aside, not deleted)."""
    from workbench.store import Catalog

    catalog = Catalog(artifacts)
    done = catalog.reindex()
    if done.moved_aside:
        typer.echo(f"the unreadable catalog was moved aside to {done.moved_aside}")
    if done.migrated:
        typer.echo(f"{len(done.migrated)} row(s) of the old catalog got their manifest")
    if done.cleaned:
        typer.echo(f"{len(done.cleaned)} stale temporary file(s) or folder(s) removed")
    typer.echo(f"{len(done.restored)} row(s) restored into {catalog.path}")
    for manifest, why in done.skipped:
        typer.echo(f"skipped {_relative(manifest, catalog.root)}: {why}")


@store_app.command("clean")
@friendly_errors
def store_clean(artifacts: ArtifactsOpt = None):
    """Remove temporary files and staging folders whose writer is gone (PID not running, or no PID and an hour old)."""
    from workbench.store import artifacts_root, clean_stale_temporaries

    root = artifacts_root(artifacts)
    removed = clean_stale_temporaries(root)
    for path in removed:
        typer.echo(f"removed {_relative(path, root)}")
    typer.echo(f"{len(removed)} stale temporary file(s) or folder(s) removed under {root}")
