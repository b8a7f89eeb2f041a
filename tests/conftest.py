"""Shared fixtures: every test gets its own artifacts root and zoo folder, never the checkout's."""

import pytest
import torch


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
}
