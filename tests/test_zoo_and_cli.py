"""The zoo builds, catalogs, tabulates and verifies; the CLI names choices and fails cleanly."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRANSFORMER
from typer.testing import CliRunner

from workbench.cli import app
from workbench.store import Catalog
from workbench.store.model_files import load_model_folder
from workbench.training import TrainConfig
from workbench.zoo import build, entries, verify_zoo
from workbench.zoo.entries import ZooEntry

runner = CliRunner()


@pytest.fixture
def tiny_zoo(monkeypatch, tmp_path):
    entry = ZooEntry(name="tiny-recall", architecture="transformer", task={"name": "recall", "n_pairs": 2},
                     model=TINY_TRANSFORMER, train=TrainConfig(steps=30, batch_size=16, eval_every=10,
                                                               eval_examples=64, checkpoint_every=10, seed=1),
                     targets={"accuracy": 0.0}, eval_examples=200)
    monkeypatch.setattr(entries, "ZOO", [entry])
    monkeypatch.setattr(build, "ZOO", [entry])
    models = tmp_path / "models"
    build.build_zoo(models, Catalog(), progress=False, log=lambda *_: None)
    return models


def test_zoo_build_writes_folder_card_table_and_catalog(tiny_zoo):
    folder = tiny_zoo / "tiny-recall"
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                                  "card.json", "curves.parquet", "checksums.json"}
    card = json.loads((folder / "card.json").read_text())
    assert card["task"] == {"name": "recall", **card["task"]} and card["task"]["n_pairs"] == 2
    assert card["training_tokens"] > 0 and card["parameters"] > 0
    assert "tiny-recall" in (tiny_zoo / "README.md").read_text()
    assert Catalog().get("model", "tiny-recall")["meta"]["parameters"] == card["parameters"]
    bundle = load_model_folder(folder)
    _, cache = bundle.model.run_with_cache(torch.zeros(1, 5, dtype=torch.long))
    assert "blocks.0.hook_mlp_out" in cache.cache_dict


def test_zoo_verify_passes_then_catches_a_tampered_card(tiny_zoo):
    assert all(row.ok for row in verify_zoo(tiny_zoo))
    card_path = tiny_zoo / "tiny-recall" / "card.json"
    card = json.loads(card_path.read_text())
    card["metrics"]["test_loss"] += 0.5
    card_path.write_text(json.dumps(card))
    (row,) = verify_zoo(tiny_zoo)
    assert not row.ok and any("test_loss" in p for p in row.problems)


def test_zoo_verify_reports_a_damaged_model_by_name(tiny_zoo):
    (tiny_zoo / "tiny-recall" / "model.safetensors").write_bytes(b"garbage")
    (row,) = verify_zoo(tiny_zoo)
    assert not row.ok and "model.safetensors" in row.problems[0]


def test_cli_help_lists_every_command():
    out = runner.invoke(app, ["--help"]).output
    for command in ("train", "eval", "zoo", "app", "demo", "tasks", "archs"):
        assert command in out
    assert all(c in runner.invoke(app, ["zoo", "--help"]).output for c in ("build", "verify", "list"))


def test_cli_unknown_names_list_the_choices():
    result = runner.invoke(app, ["train", "--arch", "rwvk"])
    from workbench.architectures import architecture_names

    choices = ", ".join(architecture_names())  # every registered one, zoo II and plug-ins included
    assert "rwkv" in choices and "xlstm" in choices
    assert result.exit_code == 2 and f"unknown architecture 'rwvk'; choose one of: {choices}" in result.output
    result = runner.invoke(app, ["train", "--task", "recal"])
    assert result.exit_code == 2 and "unknown task 'recal'; choose one of:" in result.output
    result = runner.invoke(app, ["zoo", "build", "--only", "nope"])
    assert result.exit_code == 2 and "unknown zoo model 'nope'" in result.output


def test_cli_train_resumes_and_saves(tmp_path):
    args = ["train", "--task", "recall", "--task-param", "n_pairs=2", "--set", "n_layers=1", "--set", "d_model=32",
            "--set", "n_heads=2", "--set", "d_mlp=64", "--train", "steps=20", "--train", "checkpoint_every=10",
            "--train", "eval_examples=32", "--run-dir", str(tmp_path / "run"), "--save", str(tmp_path / "m")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "test accuracy" in first.output
    result = runner.invoke(app, ["eval", str(tmp_path / "m"), "--n", "50"])
    assert result.exit_code == 0 and json.loads(result.output)["examples"] == 50
    lower = runner.invoke(app, args[:-4] + ["--train", "lr=0.001", "--train", "steps=30",
                                            "--run-dir", str(tmp_path / "run")])
    assert lower.exit_code == 0, lower.output
    note = "resumed at step 20 with changed settings: train.lr: 0.003 -> 0.001; train.steps: 20 -> 30"
    assert note in lower.output and note in (tmp_path / "run" / "train.log").read_text()
    assert "step 30: test accuracy" in lower.output
    changed = runner.invoke(app, args[:-4] + ["--train", "batch_size=8", "--run-dir", str(tmp_path / "run")])
    assert changed.exit_code == 2 and "refusing to resume" in changed.output
    assert "train.batch_size: 64 -> 8" in changed.output and "--fresh" in changed.output
    fresh = runner.invoke(app, args[:-4] + ["--train", "batch_size=8", "--run-dir", str(tmp_path / "run"), "--fresh"])
    assert fresh.exit_code == 0 and "step 20: test accuracy" in fresh.output


def test_cli_eval_on_missing_folder_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "no model folder" in result.output


def test_wb_app_serves_on_loopback(running_app):
    """`wb app` starts Streamlit bound to 127.0.0.1 and answers its health check."""
    import urllib.request

    url, body = running_app
    assert body == "ok"
    page = urllib.request.urlopen(f"{url}/", timeout=5).read().decode()
    assert "<title>" in page.lower() or "streamlit" in page.lower()


def _child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


def _port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port``: with SO_REUSEADDR as servers bind (Streamlit's
    included), so closed connections in TIME_WAIT do not count, only a live listener does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_wb_app_stops_its_streamlit_child_on_sigterm():
    """SIGTERM to `wb app` alone (same session, as a service manager sends it) stops the server too:
    the port is free again and the next `wb app` can start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        deadline, body = time.time() + 60, ""
        while time.time() < deadline and not body:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read().decode()
            except OSError:
                time.sleep(0.5)
        assert body == "ok"
        children = _child_pids(proc.pid)
        assert children, "wb app should run streamlit as its child"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) in (0, 128 + signal.SIGTERM)
        deadline = time.time() + 5
        while time.time() < deadline and not _port_is_free(port):
            time.sleep(0.2)
        assert _port_is_free(port)
        assert not any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
                       for pid in children)
    finally:  # a failed run must not leave a server behind: stop exactly the processes this test started
        for pid in [proc.pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
