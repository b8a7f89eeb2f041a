"""What every ``wb`` command shares: the Typer apps, the option types, and the error policy.

Every command turns the workbench's errors (unknown names, damaged files, diverged runs) into one
line on stderr and exit code 2, instead of a traceback.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from workbench.fields import parse_assignments  # noqa: F401 (re-exported: the commands parse key=value with it)

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
        from workbench.store.catalog import CatalogError
        from workbench.training.checkpoint import TrainingDiverged

        try:
            return fn(*args, **kwargs)
        except (ValueError, KeyError, FileNotFoundError, FileExistsError, PermissionError, CorruptArtifactError, CatalogError,
                TrainingDiverged) as err:
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            typer.secho(f"error: {msg}", fg="red", err=True)
            raise typer.Exit(2) from None
    return wrapper


ModelArg = Annotated[Path, typer.Option("--model", help="A model folder (e.g. models/transformer-toyworld).")]
DictArg = Annotated[Path, typer.Option("--dict", help="A dictionary set folder written by `wb dict train`.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]

