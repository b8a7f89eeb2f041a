"""``python -m workbench`` is the ``wb`` command (useful where another package also installs a ``wb``)."""

from workbench.cli import app

app(prog_name="wb")
