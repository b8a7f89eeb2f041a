"""The ``wb`` command: train, evaluate, build and verify the zoo, dictionaries, graphs, the app.

One module per command group; each registers its commands on the shared Typer ``app`` in
:mod:`workbench.cli.common` when imported here.
"""

# imported in the order `wb --help` lists them
from workbench.cli import train, zoo, dicts, graph, interventions, study, store, rasp, arch, misc  # noqa: F401, I001  (registers the commands)
from workbench.cli.common import app, friendly_errors, parse_assignments

__all__ = ["app", "friendly_errors", "parse_assignments"]

if __name__ == "__main__":
    app()
