"""The Transformer answers to the shared hook names, and pretrained GPT-2-shaped weights load locally."""

import json

import pytest
import torch

from workbench.architectures import build_model, model_config, shared_hook_names
from workbench.architectures.transformer import load_pretrained_local


@pytest.fixture
def model():
    return build_model(model_config("transformer", d_vocab=40, n_ctx=16, seed=0))


def test_run_with_cache_returns_every_shared_hook(model):
    tokens = torch.randint(0, 40, (3, 12))
    _, cache = model.run_with_cache(tokens)
    missing = [n for n in shared_hook_names(model.cfg.n_layers) if n not in cache.cache_dict]
    assert missing == []
    assert cache["blocks.0.hook_mlp_in"].shape == (3, 12, model.cfg.d_model)
    # aliases are views of the native hook points, not copies of other activations
    assert torch.equal(cache["blocks.1.hook_mixer_out"], cache["blocks.1.hook_attn_out"])
    assert torch.equal(cache["hook_final"], cache["ln_final.hook_normalized"])


def test_shared_names_filter_and_patch(model):
    tokens = torch.randint(0, 40, (2, 10))
    clean = model(tokens)
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_mlp_in"])
    assert "blocks.0.hook_mlp_in" in cache.cache_dict and "blocks.0.hook_mlp_out" not in cache.cache_dict
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_mixer_in"))
    assert {"blocks.0.hook_mixer_in", "blocks.1.hook_mixer_in"} <= set(cache.cache_dict)

    def zero_last(t, hook):
        t = t.clone()
        t[:, -1] = 0
        return t

    patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_in", zero_last)])
    assert torch.allclose(patched[:, :-1], clean[:, :-1], atol=1e-6)  # causal: earlier positions untouched
    assert not torch.allclose(patched[:, -1], clean[:, -1])


def test_unknown_hook_name_is_a_clear_error(model):
    with pytest.raises(KeyError, match="no hook named 'blocks.0.hook_mlp_outt'"):
        model.run_with_cache(torch.zeros(1, 4, dtype=torch.long), names_filter=["blocks.0.hook_mlp_outt"])


def test_gate_and_scale_hooks_are_listed(model):
    assert model.hook_names("pattern") == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    assert "blocks.0.ln2.hook_scale" in model.hook_names("scale")


def test_pretrained_gpt2_loads_from_a_local_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32, vocab_size=64)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    before = (tmp_path / "config.json").read_text()
    model = load_pretrained_local(tmp_path)
    tokens = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        assert torch.allclose(model(tokens), hf(tokens).logits, atol=1e-4)
    assert (tmp_path / "config.json").read_text() == before  # the user's folder is never modified
    _, cache = model.run_with_cache(tokens)
    assert "blocks.1.hook_mlp_in" in cache.cache_dict
    assert json.loads(before)["n_layer"] == 2


def test_pretrained_refuses_pickled_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_pretrained_local(tmp_path)


def test_config_errors_name_choices():
    with pytest.raises(ValueError, match="unknown architecture 'rwvk'; choose one of: .*transformer"):
        model_config("rwvk", d_vocab=10, n_ctx=8)
    with pytest.raises(ValueError, match="unknown transformer config field"):
        model_config("transformer", d_vocab=10, n_ctx=8, d_modle=3)
