"""The gyro architecture (workbench/architectures/gyro.py): a residual stream in the Poincare ball.

Shared checks run through the conformance kit (causality, carried state, gate form, sum identity);
this file checks what is gyro's own: ball values, tangent hooks, the gyro-midpoint attention, Mobius
residual updates, tangent-view patching, the graph's metadata, and a transcoder trained on it."""

import geoopt
import pytest
import torch
from conftest import TINY_CONFIGS

from workbench import gyro
from workbench.architectures import build_model, model_config, shared_hook_names
from workbench.architectures.conformance import CHECKS
from workbench.architectures.gate_form import frozen_gates
from workbench.architectures.hooked import BLOCK_HOOKS

VOCAB, CTX, F64 = 24, 16, torch.float64


def tiny(**overrides):
    config = model_config("gyro", VOCAB, CTX, seed=0, **{**TINY_CONFIGS["gyro"], **overrides})
    return build_model(config).to(F64).eval()


def tokens(batch=2, length=11, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def ball_hooks(n_layers):
    return [n for n in shared_hook_names(n_layers) if n != "hook_final"]


def test_shapes_and_hooks_at_the_shared_and_tangent_names():
    model = tiny()
    logits, cache = model.run_with_cache(tokens())
    assert logits.shape == (2, 11, VOCAB)
    tangent = ["hook_embed_tangent"] + [f"blocks.{l}.hook_{k}_tangent" for l in range(2) for k in BLOCK_HOOKS]
    for name in shared_hook_names(2) + tangent:
        assert cache[name].shape == (2, 11, 16), name
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 2, 11, 11)
    assert cache["blocks.1.attn.hook_midpoint"].shape == (2, 11, 2, 8)


@pytest.mark.parametrize("c", [0.5, 1.0, 4.0])
def test_ball_values_lie_inside_the_ball_and_tangent_hooks_are_their_logarithms(c):
    model = tiny(curvature=c)
    with torch.no_grad():
        # large embeddings push points to the edge: the clamping keeps them inside
        model.embed.weight.mul_(20)
        _, cache = model.run_with_cache(tokens())
    radius = 1 / c ** 0.5
    for name in ball_hooks(2) + ["blocks.0.attn.hook_midpoint"]:
        assert (cache[name].norm(dim=-1) < radius).all(), name
    assert cache["hook_embed"].norm(dim=-1).max() > 0.99 * radius  # the test reached the edge
    for l in range(2):
        for kind in BLOCK_HOOKS:
            ball, tangent = cache[f"blocks.{l}.hook_{kind}"], cache[f"blocks.{l}.hook_{kind}_tangent"]
            assert torch.allclose(gyro.logmap0(ball, c), tangent, atol=1e-8), (l, kind)
    assert torch.allclose(gyro.expmap0(cache["hook_embed_tangent"], c), cache["hook_embed"], atol=1e-12)


def test_attention_is_the_gyro_midpoint_of_the_values_and_the_residual_is_mobius_addition():
    model, c = tiny(curvature=0.7), 0.7
    _, cache = model.run_with_cache(tokens())
    ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=F64))
    pattern, mid = cache["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_midpoint"]
    attn = model.blocks[0].attn
    values = attn.value_to_ball(attn.heads(attn.W_v(attn.ln(cache["blocks.0.hook_mixer_in_tangent"]))))
    b, h, t = 1, 1, 7
    expected = gyro.gyro_midpoint(values[b, :t + 1, h], pattern[b, h, t, :t + 1], dim=0, c=c)
    assert torch.allclose(mid[b, t, h], expected, atol=1e-12)
    theirs = ball.weighted_midpoint(values[b, :t + 1, h], pattern[b, h, t, :t + 1], reducedim=[0])
    assert torch.allclose(mid[b, t, h], theirs, atol=1e-10)
    mid_resid = gyro.mobius_add(cache["blocks.0.hook_resid_pre"], cache["blocks.0.hook_mixer_out"], c)
    assert torch.allclose(cache["blocks.0.hook_resid_mid"], mid_resid, atol=1e-12)
    post = ball.mobius_add(cache["blocks.1.hook_resid_mid"], cache["blocks.1.hook_mlp_out"])
    assert torch.allclose(cache["blocks.1.hook_resid_post"], post, atol=1e-10)


@pytest.mark.parametrize("check", ["causality", "carried_state", "gate_form", "state_patching"])
def test_shared_conformance_checks(check):
    result = CHECKS[check](tiny())
    assert result.status == "passed", result.detail


def test_carried_state_equals_the_full_forward_with_learned_positions_too():
    for model in (tiny(), tiny(rotary=False)):
        toks = tokens()
        with torch.no_grad():
            full = model(toks)
            first, state = model(toks[:, :5], return_state=True)
            rest = model(toks[:, 5:], state=state)
        assert torch.allclose(torch.cat([first, rest], 1), full, atol=1e-10)
    with pytest.raises(ValueError, match="n_ctx 16"):
        model(tokens(length=17))  # learned positions end at n_ctx; rotary ones do not
    assert tiny()(tokens(length=17)).shape == (2, 17, VOCAB)


def test_patching_a_tangent_view_moves_the_ball_value_at_that_position_only():
    model, toks, t = tiny(), tokens(), 4
    name = "blocks.1.hook_resid_pre_tangent"
    with torch.no_grad():
        clean, cache = model.run_with_cache(toks)
        target = torch.full((2, 16), 0.3, dtype=F64)

        def patch(act, hook):
            act[:, t] = target
            return act

        with model.hooks(fwd_hooks=[(name, patch)]):
            patched, seen = model.run_with_cache(toks, names_filter=["blocks.1.hook_mixer_in"])
    assert torch.allclose(seen["blocks.1.hook_mixer_in"][:, t], gyro.expmap0(target), atol=1e-12)
    assert torch.equal(seen["blocks.1.hook_mixer_in"][:, :t], cache["blocks.1.hook_mixer_in"][:, :t])
    assert torch.equal(patched[:, :t], clean[:, :t]) and not torch.allclose(patched[:, t], clean[:, t])


def test_frozen_gates_keep_the_logits():
    model, toks = tiny(), tokens()
    with torch.no_grad():
        live = model(toks)
        with frozen_gates(model, toks):
            frozen = model(toks)
    assert torch.allclose(live, frozen, atol=1e-12)


def mlp_activations(model, n_rows=96):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(batch=n_rows // 12, length=12, seed=3))
    return {k: cache[f"blocks.0.hook_mlp_{k}"].reshape(-1, 16).float() for k in ("in", "out")}


def test_a_transcoder_trains_on_it_and_the_graph_sum_identity_holds(tmp_path):
    from workbench.attribution.attribute import AttributionConfig, attribute
    from workbench.dictionaries import DictionaryConfig
    from workbench.dictionaries.activation_reader import TensorActivations
    from workbench.dictionaries.trainer import DictTrainConfig, train_dictionary

    model = tiny()
    acts = mlp_activations(model)
    hooks = {"input_hooks": ["blocks.0.hook_mlp_in"], "output_hooks": ["blocks.0.hook_mlp_out"]}
    config = DictionaryConfig("transcoder", d_in=16, d_out=16, n_features=32, activation="relu", **hooks)
    data = TensorActivations({"blocks.0.hook_mlp_in": acts["in"], "blocks.0.hook_mlp_out": acts["out"]})
    train = DictTrainConfig(steps=150, batch_size=48, lr=1e-2, warmup_steps=10, sparsity_warmup_steps=20,
                            checkpoint_every=1000, eval_batches=2, log_every=10, dead_window_tokens=500,
                            sparsity_coef=1e-3)
    result = train_dictionary(config, data, train, tmp_path / "tc", progress=False)
    loss = result.curves.query("metric == 'loss'")["value"].tolist()
    assert loss[-1] < 0.5 * loss[0]
    assert result.metrics["fvu"][0] < 0.5
    graph = attribute(model, [result.dictionary.double()], tokens(batch=1, length=9)[0],
                      config=AttributionConfig(max_n_logits=3, batch_size=16), progress=False)
    assert graph.metadata["approximate"] is False and graph.metadata["approximate_reason"] == ""
    assert graph.metadata["identity_error"] < 1e-5
    assert graph.active_features.shape[0] > 0


def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="curvature c must be a number > 0"):
        tiny(curvature=-1.0)
    with pytest.raises(ValueError, match="not divisible by n_heads 3"):
        tiny(n_heads=3)
