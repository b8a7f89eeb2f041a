"""Shared fixtures: every test gets its own artifacts root and zoo folder, never the checkout's."""

import functools

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
    "tokenformer": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_mlp": 32, "n_param_tokens": 24},
    "ebt": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_mlp": 32, "inference_steps": 3},
    "gyro": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_mlp": 32},
}


def assert_carried_state_matches(model, toks: torch.Tensor, atol: float):
    """The forward split after 1, 4 and 9 tokens, and token by token, each piece continuing from the carried
    state, equals the full forward within ``atol``; returns the state after the last token."""
    with torch.no_grad():
        full = model(toks)
        for k in (1, 4, 9):
            first, state = model(toks[:, :k], return_state=True)
            rest, _ = model(toks[:, k:], state=state, return_state=True)
            assert torch.allclose(torch.cat([first, rest], 1), full, atol=atol), f"split at {k}"
        state, steps = None, []
        for t in range(toks.shape[1]):
            logits, state = model(toks[:, t:t + 1], state=state, return_state=True)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=atol)
    return state


def skip_unless_value_patchable(model) -> None:
    """Skip a test of an identity that restores logits by patching values, on a model that declares
    ``value_patching_note`` (the EBT: its logits follow from the gradient of its hooked pass, so a
    patched value also changes that gradient and upstream values still shape it)."""
    note = getattr(model, "value_patching_note", None)
    if note:
        pytest.skip(note)


@pytest.fixture
def running_app():
    """Start ``wb app`` on a free loopback port; yields (base URL, health-check body), then stops it.
    Reads whatever WB_MODELS / WB_ARTIFACTS say when called (set them with monkeypatch first)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # its own session: `wb app` runs streamlit as a child, and stopping only `wb` would orphan it
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url, body, deadline = f"http://127.0.0.1:{port}", "", time.time() + 60
    try:
        while time.time() < deadline and not body:
            try:
                body = urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read().decode()
            except OSError:
                time.sleep(0.5)
        yield url, body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


TINY_FEATURE_BINS = 6


@functools.cache
def tiny_feature_frames(kind: str) -> dict:
    """Real feature data (features.py's own output) of untrained dictionaries (``transcoder``: one per
    layer, or ``clt``) of 12 features on a 2-layer tiny model: what `wb dict features` writes."""
    from workbench.architectures import build_model, model_config
    from workbench.dictionaries import DictionaryConfig, build_dictionary
    from workbench.dictionaries.features import feature_data
    from workbench.tasks import make_task

    task = make_task("recall")
    model = build_model(model_config("transformer", task.tokenizer.vocab_size, task.seq_len, seed=0, n_layers=2,
                                     d_model=16, n_heads=2, d_mlp=32)).eval()
    ins, outs = [f"blocks.{l}.hook_mlp_in" for l in range(2)], [f"blocks.{l}.hook_mlp_out" for l in range(2)]
    common = {"d_in": 16, "n_features": 12, "d_out": 16, "activation": "topk", "k": 3}
    if kind == "clt":
        dictionaries = {"clt": build_dictionary(DictionaryConfig("clt", n_layers=2, input_hooks=ins, output_hooks=outs,
                                                                 **common))}
    else:
        dictionaries = {f"layer{l}": build_dictionary(DictionaryConfig(
            "transcoder", input_hooks=[ins[l]], output_hooks=[outs[l]], **common)) for l in range(2)}
    tokens = task.sample("train", 8, 0).tokens
    return feature_data(model, dictionaries, tokens, task.tokenizer, n_logits=5, n_bins=TINY_FEATURE_BINS)


def write_feature_set(name: str, kind: str = "transcoder", edit=None):
    """A set folder ``<artifacts>/dictionaries/<name>`` holding only feature data (``edit`` may change
    the frames first), catalogued under ``name``; returns the folder."""
    from workbench.dictionaries.features import write_feature_data
    from workbench.store import Catalog

    catalog = Catalog()
    folder = catalog.root / "dictionaries" / name
    frames = {k: v.copy() for k, v in tiny_feature_frames(kind).items()}
    if edit:
        edit(frames)
    f = frames["features"]
    write_feature_data(folder, frames, {"n_features": len(f), "n_sequences": 8, "n_tokens": 224,
                                        "dead_features": int((f["density"] == 0).sum()), "model": "models/tiny",
                                        "histogram_bins": TINY_FEATURE_BINS})
    catalog.register("dictionary", name, folder, {"kind": kind, "activation": "topk",
                                                  "features": {"n_features": len(f)}})
    return folder


@pytest.fixture
def feature_frames():
    """``(kind) -> {"features", "contexts", "histograms"}``, computed once per session (see above)."""
    return tiny_feature_frames


@pytest.fixture
def feature_set():
    """``(name, kind="transcoder", edit=None) -> folder``: a catalogued set with feature data in this
    test's artifacts root (request it after anything that sets WB_ARTIFACTS)."""
    return write_feature_set


@pytest.fixture
def recall_zoo(tmp_path, monkeypatch):
    """A zoo (WB_MODELS) holding only a copy of the committed transformer-recall: weights, card and
    tokenizer, without its dictionaries."""
    import shutil
    from pathlib import Path

    models = tmp_path / "models"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "transformer-recall",
                    models / "transformer-recall", ignore=shutil.ignore_patterns("dictionaries"))
    monkeypatch.setenv("WB_MODELS", str(models))
    return models
