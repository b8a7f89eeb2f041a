"""`wb study run | list | methods`: declarative intervention studies (YAML spec -> tables and figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import ArtifactsOpt, ModelsOpt, app, friendly_errors

study_app = typer.Typer(help="Run and list intervention studies (a YAML spec -> parquet tables and plotly "
                             "figures in the store).", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("run")
@friendly_errors
def study_run(
    spec: Annotated[Path, typer.Argument(help="A study spec (YAML), e.g. studies/examples/patch.yaml.")],
    quick: Annotated[bool, typer.Option(help="Run the spec's quick variant (its 'quick' overrides), under "
                                             "<name>-quick.")] = False,
    fresh: Annotated[bool, typer.Option(help="Delete this study's earlier results first instead of "
                                             "resuming.")] = False,
    publish: Annotated[bool, typer.Option(help="Also copy the finished results beside the spec "
                                               "(<spec folder>/results), to commit with it.")] = False,
    models: ModelsOpt = None,
    artifacts: ArtifactsOpt = None,
):
    """Run a study deterministically; a stopped run resumes from its finished units."""
    from workbench.store import Catalog
    from workbench.studies import run_study
    from workbench.studies.runner import publish_study

    result = run_study(spec, Catalog(artifacts), quick=quick, fresh=fresh, models_dir=models, log=typer.echo)
    typer.echo(f"study {result.name}: {len(result.units)} units ({result.resumed} from an earlier run); "
               f"tables and figures in {result.folder}")
    if publish:
        typer.echo(f"published to {publish_study(result.folder, spec.parent / 'results')}")


@study_app.command("list")
@friendly_errors
def study_list(artifacts: ArtifactsOpt = None):
    """The catalogued studies."""
    from workbench.store import Catalog

    for row in Catalog(artifacts).list("study"):
        meta = row["meta"]
        typer.echo(f"{row['name']:32s} {meta.get('n_units', '?'):>3} units  {', '.join(meta.get('methods', []))}  "
                   f"{row['path']}")


@study_app.command("methods")
def study_methods():
    """The methods a study step can name, with their parameters and defaults."""
    from workbench.studies.methods import METHODS, load_adapters

    load_adapters()
    for name, m in sorted(METHODS.items()):
        typer.echo(f"{name}: {m.doc}")
        typer.echo("    " + ", ".join(f"{k}={v!r}" for k, v in m.params.items() if k != "label"))
