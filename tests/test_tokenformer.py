"""TokenFormer: Pattention against the paper's formula, carried state, own hooks, gate form of the FFN,
growth (exact with the old rescaling factor, not with the paper's), MLP zero-padding, training on after
growth, and transcoders through the shared `wb dict` path.

The cross-architecture checks (shared hooks, causality, mixer affinity, graph sum identity,
interventions) run on TokenFormer through tests/test_architectures_common.py, tests/test_attribution.py
and the interventions suites, which take every entry of conftest's TINY_CONFIGS.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIGS, assert_carried_state_matches
from typer.testing import CliRunner

from workbench.architectures import build_model, model_config
from workbench.architectures.gate_form import frozen_gates
from workbench.architectures.growth import continue_training, grow, logit_change, pad_mlp
from workbench.architectures.tokenformer import Pattention, pattentions

VOCAB, CTX, F64 = 24, 16, torch.float64


def tiny(**overrides):
    config = model_config("tokenformer", VOCAB, CTX, seed=0, **{**TINY_CONFIGS["tokenformer"], **overrides})
    return build_model(config).to(F64).eval()


def tokens(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_pattention_is_the_papers_l2_norm_gelu():
    torch.manual_seed(0)
    p = Pattention(5, 3, 7).to(F64)
    x = torch.randn(2, 4, 5, dtype=F64)
    s = x @ p.key_tokens.T
    expected = F.gelu(s / s.norm(dim=-1, keepdim=True) * math.sqrt(7)) @ p.value_tokens
    assert torch.allclose(p(x), expected, atol=1e-13)
    relu = Pattention(5, 3, 7, act="relu").to(F64)
    s = x @ relu.key_tokens.T
    assert torch.allclose(relu(x), F.relu(s / s.norm(dim=-1, keepdim=True) * math.sqrt(7)) @ relu.value_tokens,
                          atol=1e-13)
    with pytest.raises(ValueError, match="unknown activation 'tanh'; choose one of: gelu, relu, silu"):
        Pattention(5, 3, 7, act="tanh")


def test_generation_with_carried_state_equals_the_full_forward():
    state = assert_carried_state_matches(tiny(), tokens(), atol=1e-12)
    assert state[0][0].shape == (2, 12, 2, 8)  # the KV cache: [B, past, heads, d_head]


def test_parameter_token_hooks_and_gates():
    model = tiny()
    _, cache = model.run_with_cache(tokens())
    for part, n in [("attn.q_pattention", 24), ("attn.k_pattention", 24), ("attn.v_pattention", 24),
                    ("attn.o_pattention", 24), ("ffn", 32)]:
        assert cache[f"blocks.1.{part}.hook_scores"].shape == (2, 12, n)
        assert cache[f"blocks.1.{part}.hook_score_scale"].shape == (2, 12, 1)
        assert cache[f"blocks.1.{part}.hook_act_gate"].shape == (2, 12, n)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 2, 12, 12)
    assert cache["blocks.0.attn.hook_heads"].shape == (2, 12, 2, 8)
    # the weights are value x gate, the gate GeLU's Phi of the normalised scores
    s = cache["blocks.0.ffn.hook_scores"]
    u = s / cache["blocks.0.ffn.hook_score_scale"]
    assert torch.allclose(cache["blocks.0.ffn.hook_weights"], F.gelu(u), atol=1e-13)


def test_frozen_gates_make_the_ffn_linear():
    model, toks = tiny(), tokens()
    torch.manual_seed(1)
    u1, u2 = torch.randn(2, 2, 12, 16, dtype=F64)

    def ffn(u):
        out = {}
        model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_mlp_in", lambda act, hook: u),
                                              ("blocks.0.hook_mlp_out", lambda act, hook: out.setdefault("y", act))])
        return out["y"]

    with torch.no_grad(), frozen_gates(model, toks):
        assert torch.allclose(ffn(u1 + 3 * u2), ffn(u1) + 3 * ffn(u2), atol=1e-12)
    with torch.no_grad():
        assert not torch.allclose(ffn(u1 + 3 * u2), ffn(u1) + 3 * ffn(u2), atol=1e-3)


def test_growth_keeping_the_factor_is_exact_and_the_papers_is_not():
    model, toks = tiny(), tokens()
    with torch.no_grad():
        before = model(toks)
    grow(model, 8, layers=[1])
    assert model.cfg.grown == [0, 8]
    assert {p.n_tokens for p in pattentions(model, 1).values()} == {32, 40}  # attention 24 + 8, FFN 32 + 8
    assert {p.n_tokens for p in pattentions(model, 0).values()} == {24, 32}
    with torch.no_grad():
        assert torch.allclose(model(toks), before, rtol=0, atol=1e-14)
    # the paper's form: tau follows the token count, sqrt(n + m), and the function changes
    paper = logit_change(tiny(), toks, grow, n_new=8, preserve=False)
    kept = logit_change(tiny(), toks, grow, n_new=8, preserve=True)
    assert kept < 1e-13 and paper > 1e-2
    # the grown model's folder rebuilds (grown shapes from the config, tau from the weights)
    rebuilt = build_model(model.cfg.to_dict()).to(F64).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt(toks), before, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match=r"layer\(s\) \[5\] out of range"):
        grow(model, 2, layers=[5])
    with pytest.raises(ValueError, match="needs a tokenformer"):
        grow(build_model(model_config("mingru", VOCAB, CTX, seed=0, **TINY_CONFIGS["mingru"])), 2)


def _new_token_grads(new_values: str) -> tuple[float, float]:
    model, toks = tiny(), tokens()
    grow(model, 4, new_values=new_values)
    model(toks).logsumexp(-1).sum().backward()
    ffn = model.blocks[0].ffn
    return float(ffn.key_tokens.grad[-4:].abs().max()), float(ffn.value_tokens.grad[-4:].abs().max())


def test_zero_keys_and_zero_values_never_learn():
    key_grad, value_grad = _new_token_grads("zero")
    assert key_grad == 0.0 and value_grad == 0.0  # a saddle: each gradient multiplies the other zero
    key_grad, value_grad = _new_token_grads("random")
    assert key_grad > 1e-6 and value_grad == 0.0  # random values: the keys learn first, then the values


@pytest.mark.parametrize("arch", ["mingru", "transformer"])
def test_zero_padding_an_mlp_is_exact_as_well(arch):
    config = model_config(arch, VOCAB, CTX, seed=0, **TINY_CONFIGS[arch])
    model, toks = build_model(config).to(F64).eval(), tokens()
    with torch.no_grad():
        before = model(toks)
    pad_mlp(model, 8)
    assert model.cfg.d_mlp == TINY_CONFIGS[arch].get("d_mlp", config["d_mlp"]) + 8
    with torch.no_grad():
        assert torch.allclose(model(toks), before, rtol=0, atol=1e-14)
    if arch == "mingru":  # the grown config rebuilds the grown shapes
        rebuilt = build_model(model.cfg.to_dict()).to(F64).eval()
        rebuilt.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert torch.allclose(rebuilt(toks), before, rtol=0, atol=1e-14)


def test_a_grown_model_trains_on_from_where_it_stood():
    from workbench.tasks import make_task
    from workbench.training.trainer import TrainConfig

    task = make_task("sort")
    cfg = TrainConfig(steps=80, batch_size=16, lr=3e-3, warmup_steps=5, seed=0)
    config = model_config("tokenformer", task.tokenizer.vocab_size, task.seq_len, seed=0, **TINY_CONFIGS["tokenformer"])
    torch.manual_seed(0)
    model = build_model(config)
    first = continue_training(model, task, cfg, 40)
    batch = task.sample("train", 64, 123)
    from workbench.tasks.base import masked_token_loss

    with torch.no_grad():
        small = float(masked_token_loss(model.eval()(batch.tokens), batch))
        grown_loss = float(masked_token_loss(grow(model, 16).eval()(batch.tokens), batch))
    assert grown_loss == pytest.approx(small, abs=1e-5)  # the grown model starts where the small one stood
    after = continue_training(model, task, cfg, 40, start=40)
    assert after[-1] < first[0] - 0.3 and sum(after[-10:]) / 10 < sum(first[-10:]) / 10


def test_transcoders_train_on_a_tokenformer(tmp_path):
    from workbench.cli import app
    from workbench.store.model_files import save_model_folder
    from workbench.tasks import make_task

    task = make_task("recall")
    config = model_config("tokenformer", task.tokenizer.vocab_size, task.seq_len, seed=0, **TINY_CONFIGS["tokenformer"])
    folder = tmp_path / "tiny-tokenformer"
    save_model_folder(folder, build_model(config).eval(), config, task.tokenizer, {"name": "tiny", "task": task.spec()})
    out = tmp_path / "dicts"
    result = CliRunner().invoke(app, ["dict", "train", "--model", str(folder), "--kind", "transcoder",
                                      "--activation", "topk", "--k", "4", "--features", "32", "--layers", "0,1",
                                      "--steps", "3", "--batch-size", "64", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "layer1" in result.output and "FVU" in result.output and (out / "set.json").is_file()
