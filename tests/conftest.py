"""Shared fixtures: every test gets its own artifacts root and zoo folder, never the checkout's."""

import pytest
import torch

# Tests use tiny tensors: one thread avoids contention on the 2-core machines (10-60x slowdowns seen
# with the default two threads while anything else runs).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("WB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("WB_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    yield


TINY_TRANSFORMER = {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_mlp": 64}

# Tiny configs per architecture for the cross-architecture tests; every registered architecture
# must have an entry (tests/test_architectures_common.py checks that).
TINY_CONFIGS = {
    "transformer": TINY_TRANSFORMER | {"n_layers": 2},
    "mingru": {"n_layers": 2, "d_model": 16, "d_mlp": 32, "expand": 2},
    "lstm": {"n_layers": 2, "d_model": 16, "d_mlp": 32},
    "mamba": {"n_layers": 2, "d_model": 16, "d_mlp": 32, "d_state": 4, "expand": 2, "d_conv": 3},
    "rwkv": {"n_layers": 2, "d_model": 16, "d_mlp": 32},
    "xlstm": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_mlp": 32, "slstm_at": [1]},
}


@pytest.fixture
def running_app():
    """Start ``wb app`` on a free loopback port; yields (base URL, health-check body), then stops it.
    Reads whatever WB_MODELS / WB_ARTIFACTS say when called (set them with monkeypatch first)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, body, deadline = f"http://127.0.0.1:{port}", "", time.time() + 60
    try:
        while time.time() < deadline and not body:
            try:
                body = urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read().decode()
            except OSError:
                time.sleep(0.5)
        yield url, body
    finally:
        proc.terminate()
        proc.wait(timeout=20)
