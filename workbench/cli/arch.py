"""`wb arch list | check`: the registered architectures, and the conformance kit a user's runs against.

``wb arch check TARGET`` takes a registered name, a ``.py`` file (or package folder) or an installed
module (which registers itself, or is registered by an entry point), builds a tiny model of each
architecture it brings, runs the shared checks (:mod:`workbench.architectures.conformance`) and
prints a report card. Exit code 0 when every check passed (or is approximate / not applicable), 1
when one failed, 2 when the target cannot be loaded.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from workbench.cli.common import app, friendly_errors, parse_assignments

arch_app = typer.Typer(help="Architectures: list the registered ones; check yours against the shared "
                            "conformance kit (docs/architectures.md).", no_args_is_help=True)
app.add_typer(arch_app, name="arch")


def echo_architectures() -> None:
    """One line per registered architecture: its name, where its builder lives, its defaults."""
    from workbench.architectures import ARCHITECTURES, DEFAULTS, architecture_names

    for name in architecture_names():
        origin = getattr(ARCHITECTURES[name], "__module__", "?")
        typer.echo(f"{name:16s} {origin:36s} {json.dumps(DEFAULTS[name])}")


@arch_app.command("list")
@friendly_errors
def arch_list():
    """List the registered architectures (built-in and plug-ins): name, module, default config."""
    echo_architectures()


@arch_app.command("check")
@friendly_errors
def arch_check(
    target: Annotated[str, typer.Argument(help="A registered architecture name, a .py file or package folder, "
                                               "or an installed module's dotted name.")],
    name: Annotated[str | None, typer.Option("--name", help="Check only this architecture of the module (or "
                                                            "the name to register a build/DEFAULTS module under).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="key=value override of the tiny model's config "
                                                                 "(repeatable).")] = None,
    check: Annotated[list[str] | None, typer.Option("--check", help="Run only this check (repeatable): hooks, "
                                                                    "causality, carried_state, gate_form, sum_identity, "
                                                                    "state_patching.")] = None,
):
    """Run the shared conformance checks on an architecture and print its report card."""
    from workbench.architectures import model_fields
    from workbench.architectures.conformance import run_checks
    from workbench.architectures.conformance_card import card_passed, format_card, load_architectures

    conforms = True
    for arch in load_architectures(target, name):
        fields = {k: v for k, v in model_fields(arch).items() if k not in ("d_vocab", "n_ctx", "seed")}
        results = run_checks(arch, parse_assignments(set_, "--set", fields, f"{arch} config field"), check)
        typer.echo(format_card(arch, results, target))
        conforms = conforms and card_passed(results)
    raise typer.Exit(0 if conforms else 1)
