"""The zoo trainer, the dictionary trainer and attribution go through the kernel dispatcher: what each
produces on the default path (CPU: the fastest torch paths) equals what it produces with every kernel
forced to its pure-torch reference (``WORKBENCH_KERNELS=reference``), up to float32 rounding.

Models are trained in float64 (the default dtype set around the run: the zoo trainer builds its model
in it), so Adam, which turns a gradient's sign into a full step, cannot amplify rounding noise in
near-zero gradients; the dictionary trainer works in float32 (as the sparse kernels do), and a few
steps keep its rounding differences small. Each test also checks that the dispatcher really is
on the path (its operation is called), so a comparison of two identical dense runs cannot pass.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CONFIGS
from test_dictionaries import sparse_dataset, tiny_train_config, transcoder_config
from workbench.kernels import dispatch

from workbench.architectures import build_model, model_config
from workbench.attribution.attribute import AttributionConfig, attribute
from workbench.dictionaries import train_dictionary
from workbench.dictionaries.models import DictionaryConfig, build_dictionary
from workbench.tasks import make_task
from workbench.training import TrainConfig, train

SCAN_OPERATIONS = {"xlstm": "mlstm", "rwkv": "wkv", "mamba": "selective_scan"}  # the scan each one runs


def counting(monkeypatch, name: str) -> list:
    """Count calls of ``dispatch.<name>`` (the callers look it up on the module at call time)."""
    calls, original = [], getattr(dispatch, name)
    monkeypatch.setattr(dispatch, name, lambda *a, **kw: calls.append(1) or original(*a, **kw))
    return calls


def on_both_paths(monkeypatch, run):
    """``run()`` with the default backends, then with every kernel forced to its reference."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    default = run()
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    return default, run()


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def assert_same_state(a: dict, b: dict, rtol=1e-3, atol=1e-5):
    assert a.keys() == b.keys()
    for name, value in a.items():
        got, want = value.double(), b[name].double()
        assert torch.allclose(got, want, rtol=rtol, atol=atol), (name, (got - want).abs().max())


@pytest.mark.parametrize("arch", [a for a in SCAN_OPERATIONS if hasattr(dispatch, SCAN_OPERATIONS[a])])
def test_a_model_trained_through_the_dispatcher_matches_the_reference_path(arch, monkeypatch, tmp_path, float64_default):
    calls = counting(monkeypatch, SCAN_OPERATIONS[arch])
    task = make_task("recall", n_pairs=2)
    mcfg = model_config(arch, task.tokenizer.vocab_size, task.seq_len, **TINY_CONFIGS[arch])
    cfg = TrainConfig(steps=3, batch_size=8, lr=3e-3, warmup_steps=1, eval_every=3, eval_examples=8,
                      checkpoint_every=3, log_every=1, seed=1)
    runs = iter(range(2))
    default, reference = on_both_paths(monkeypatch, lambda: train(
        mcfg, task, cfg, tmp_path / f"run{next(runs)}", progress=False).model.state_dict())
    assert calls, f"{arch} training did not call dispatch.{SCAN_OPERATIONS[arch]}"
    initial = build_model({**mcfg, "seed": cfg.seed}).state_dict()
    assert any(not torch.equal(initial[k], default[k]) for k in initial)  # training moved the weights
    assert default[next(iter(default))].dtype == torch.float64
    assert_same_state(default, reference, rtol=1e-6, atol=1e-7)  # the scans may compute in float32


def test_a_transcoder_trained_through_the_dispatcher_matches_the_reference_path(monkeypatch, tmp_path):
    calls = counting(monkeypatch, "sparse_decode")
    config = transcoder_config("topk", k=4, seed=2)
    data, cfg = sparse_dataset(n=1024), tiny_train_config(steps=10, auxk_coef=0.0)
    runs = iter(range(2))
    default, reference = on_both_paths(monkeypatch, lambda: train_dictionary(
        config, data, cfg, tmp_path / f"run{next(runs)}", progress=False).dictionary.state_dict())
    assert calls
    fresh = build_dictionary(config).state_dict()
    assert not torch.allclose(fresh["W_enc"], default["W_enc"])
    assert_same_state(default, reference)


@pytest.mark.parametrize("arch", ["transformer", "xlstm"])
def test_an_attribution_graph_is_the_same_on_both_paths(arch, monkeypatch):
    calls = counting(monkeypatch, "sparse_encode")
    torch.manual_seed(0)
    model = build_model(model_config(arch, d_vocab=20, n_ctx=32, **TINY_CONFIGS[arch])).eval()
    tokens = torch.randint(2, 20, (1, 7))
    dicts = []
    for layer in range(model.cfg.n_layers):
        d = build_dictionary(DictionaryConfig(
            "transcoder", d_in=model.cfg.d_model, d_out=model.cfg.d_model, n_features=24, activation="topk", k=4,
            init_norm=1.0, seed=layer, input_hooks=[f"blocks.{layer}.hook_mlp_in"],
            output_hooks=[f"blocks.{layer}.hook_mlp_out"]))
        with torch.no_grad():
            d.b_enc.normal_(0, 0.3)
        dicts.append(d.eval())
    default, reference = on_both_paths(monkeypatch, lambda: attribute(
        model, dicts, tokens, progress=False, config=AttributionConfig(batch_size=16)))
    assert calls
    assert torch.equal(default.active_features, reference.active_features) and len(default.active_features) > 0
    for name in ("activations", "values", "bias", "adjacency"):
        got, want = getattr(default, name), getattr(reference, name)
        got, want = (x.to_dense() if x.is_sparse else x for x in (got, want))
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (name, (got - want).abs().max())
