"""`wb tasks`, `wb archs`, `wb app` and `wb demo` (the README's main job)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Annotated

import typer

from workbench.cli.common import (
    ArtifactsOpt,
    ModelsOpt,
    app,
    friendly_errors,
)


@app.command()
def tasks():
    """List the tasks and their parameters."""
    from workbench.tasks import make_task, task_names

    for name in task_names():
        typer.echo(f"{name:16s} {json.dumps(make_task(name).params())}")


@app.command()
def archs():
    """List the architectures and their default configs (the same as `wb arch list`)."""
    from workbench.cli.arch import echo_architectures

    echo_architectures()


def launch_app(host: str, port: int, artifacts: str | None, models: str | None) -> None:
    from workbench.store import artifacts_root, models_root
    from workbench.store.catalog import REPO_ROOT

    home = REPO_ROOT / "app" / "Home.py"
    if not home.is_file():
        raise FileNotFoundError(f"the app is missing: expected {home}")
    env = {**os.environ, "WB_ARTIFACTS": str(artifacts_root(artifacts)), "WB_MODELS": str(models_root(models))}
    cmd = [sys.executable, "-m", "streamlit", "run", str(home), "--server.address", host, "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    typer.echo(f"app on http://{host}:{port}  (Ctrl-C stops it)")
    raise typer.Exit(run_forwarding_signals(cmd, env))


STOP_GRACE_S = 10.0  # after a forwarded signal, how long the child may take to stop before it is killed


def run_forwarding_signals(cmd: list[str], env: dict) -> int:
    """Run ``cmd`` as a child and pass SIGTERM and SIGINT on to it, so stopping ``wb app`` stops the
    server (else the orphan keeps the port); waits for the child and returns its exit code (128 + the
    signal's number when a signal ended it, as a shell reports it)."""
    child = subprocess.Popen(cmd, env=env)
    forwarded: list[float] = []

    def forward(signum, _frame):
        forwarded.append(time.monotonic())
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if forwarded and time.monotonic() - forwarded[0] > STOP_GRACE_S:
                    child.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


@app.command("app")
@friendly_errors
def app_cmd(
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean otherwise.")] = "127.0.0.1",
    port: int = 8501,
    artifacts: ArtifactsOpt = None,
    models: ModelsOpt = None,
):
    """Open the Streamlit app."""
    launch_app(host, port, artifacts, models)


@app.command()
@friendly_errors
def demo(host: str = "127.0.0.1", port: int = 8501, artifacts: ArtifactsOpt = None, models: ModelsOpt = None):
    """The main job: build the zoo's missing models, verify every model whose files changed since it last
    passed, then open the app."""
    from workbench.store import Catalog, models_root
    from workbench.store.catalog import REPO_ROOT
    from workbench.studies.runner import register_published_studies
    from workbench.zoo import build_zoo
    from workbench.zoo.dictionaries import demo_graph, register_zoo_dictionaries
    from workbench.zoo.verify_cache import verify_zoo_cached

    catalog, models_dir = Catalog(artifacts), models_root(models)
    build_zoo(models_dir, catalog, log=typer.echo)
    rows = verify_zoo_cached(models_dir, catalog)  # re-measures only models whose files changed
    for row in rows:
        said = "; ".join(row.problems) or "matches its card" + (" (unchanged since it last passed)"
                                                                 if "unchanged" in row.detail else "")
        typer.echo(f"{'ok  ' if row.ok else 'FAIL'} {row.name}: {said}")
    typer.echo(f"{len(register_zoo_dictionaries(models_dir, catalog))} zoo dictionary sets catalogued")
    studies = register_published_studies(REPO_ROOT / "studies", catalog)
    typer.echo(f"{len(studies)} published studies catalogued")
    graph = demo_graph(models_dir, catalog)
    if graph:
        typer.echo(f"graph {graph['name']}: {graph['n_nodes']} nodes, replacement {graph['replacement_score']:.3f}, "
                   f"completeness {graph['completeness_score']:.3f}; open http://{host}:{port}/Attribution_graph")
    launch_app(host, port, artifacts, models)
