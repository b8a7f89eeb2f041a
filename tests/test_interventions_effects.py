"""Ablation, steering, generation and feature interventions on every architecture (tiny models)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CONFIGS, skip_unless_value_patchable
from test_attribution import _setup

from workbench.architectures import build_model, model_config
from workbench.attribution.attribute import AttributionConfig, attribute
from workbench.interventions.ablation import (
    _stabilised_mean,
    ablate,
    ablated_logits,
    available_kinds,
    components,
)
from workbench.interventions.features import (
    FeatureEdit,
    FeatureSplice,
    generate_with_features,
    graph_prediction,
    logit_targets,
    swap_edits,
)
from workbench.interventions.generate import generate
from workbench.interventions.steering import (
    feature_direction,
    mean_difference,
    steer,
    steer_generate,
    steering_hooks,
)

VOCAB, N_POS = 20, 7
ARCHS = sorted(TINY_CONFIGS)
EXPECTED_STATE_KINDS = {"transformer": [], "rwkv": ["rwkv_channel"], "mamba": ["mamba_state_n", "mamba_state_d"],
                        "xlstm": ["mlstm_head", "slstm_head"], "mingru": ["mingru_unit"], "lstm": ["lstm_unit"],
                        "tokenformer": [], "ebt": [], "gyro": []}


def _model(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(model_config(arch, d_vocab=VOCAB, n_ctx=32, **TINY_CONFIGS[arch])).eval()


def _tokens(rows: int, seed: int, n_pos: int = N_POS) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, n_pos), generator=torch.Generator().manual_seed(seed))


def _sweep(model, tokens, comps, **kwargs) -> torch.Tensor:
    """``[K, B, T, V]``: the ablated logits of every component."""
    return torch.cat([logits for _, logits in ablated_logits(model, tokens, comps, **kwargs)])


# --- ablation -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_zero_mixer_ablation_equals_zeroed_hook_and_state_kinds_are_found(arch):
    model, tokens = _model(arch), _tokens(2, 1)
    kinds = available_kinds(model)
    assert [k for k in kinds if k not in ("head", "mixer", "mlp")] == EXPECTED_STATE_KINDS[arch]
    assert ("head" in kinds) == (arch == "transformer")
    comps = components(model, tokens, ["mixer"], layers=[1])
    ablated = _sweep(model, tokens, comps, method="zero")[0]
    zeroed = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mixer_out", lambda act, hook: torch.zeros_like(act))])
    assert torch.allclose(ablated, zeroed, atol=1e-6, rtol=0)
    assert (ablated - model(tokens)).abs().max() > 1e-3  # the ablation did something


@pytest.mark.parametrize("arch", ARCHS)
def test_ablation_at_a_position_leaves_earlier_positions_alone(arch):
    """Heads and state channels ablated from position 4 on: outputs before 4 are untouched (causal, and
    a patched recurrent state only carries forward), outputs from 4 on change."""
    model, tokens = _model(arch), _tokens(2, 1)
    kind = "head" if arch == "transformer" else (EXPECTED_STATE_KINDS[arch] or ["mixer"])[0]
    comps = components(model, tokens, [kind], layers=[0])
    logits = _sweep(model, tokens, comps, method="zero", positions=[4, 5, 6])
    clean = model(tokens)
    assert torch.allclose(logits[:, :, :4], clean[:, :4].expand_as(logits[:, :, :4]), atol=1e-5)
    assert (logits[:, :, 4:] - clean[:, 4:]).abs().amax(dim=(1, 2, 3)).gt(1e-6).all()


@pytest.mark.parametrize("arch", ["transformer", "rwkv"])
def test_mean_ablation_uses_the_reference_mean(arch):
    model, tokens, reference = _model(arch), _tokens(3, 1), _tokens(5, 2)
    comps = components(model, tokens, ["mlp"], layers=[0])
    ablated = _sweep(model, tokens, comps, method="mean", reference=reference)[0]
    _, cache = model.run_with_cache(reference, names_filter=["blocks.0.hook_mlp_out"])
    mean = cache["blocks.0.hook_mlp_out"].mean(0)
    expected = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_out", lambda act, hook: mean.expand_as(act))])
    assert torch.equal(ablated, expected)
    # over positions too, for a reference of another length
    over = _sweep(model, tokens, comps, method="mean", reference=_tokens(4, 3, n_pos=5), mean_positions=True)[0]
    assert not torch.allclose(over, ablated)
    with pytest.raises(ValueError, match="prompts have 7 tokens, the reference 5"):
        _sweep(model, tokens, comps, method="mean", reference=_tokens(4, 3, n_pos=5))


def test_stabilised_mean_averages_true_states():
    from workbench.interventions.ablation import LOG_SCALE, SCALED, Component

    g = torch.Generator().manual_seed(0)
    x, m = torch.randn(4, 3, 2, generator=g), torch.randn(4, 3, 2, generator=g) * 5
    comp = Component("rwkv_channel", 0, 1, ("p", "o"), (SCALED, LOG_SCALE), ("p",), 2)
    mean = _stabilised_mean({"p": x, "o": m}, comp, (0,))
    true_mean = (x.double() * m.double().exp()).mean(0)
    assert torch.allclose((mean["p"][0].double() * mean["o"][0].double().exp()), true_mean, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_ablating_with_a_prompts_own_values_changes_nothing(arch):
    """Mean over a reference that is the prompt itself, and resampling from it, patch every component
    (heads and every state family included) with its own values."""
    model, tokens = _model(arch), _tokens(1, 4)
    skip_unless_value_patchable(model)
    comps = components(model, tokens)
    clean = model(tokens)
    for method in ("mean", "resample"):
        logits = _sweep(model, tokens, comps, method=method, reference=tokens, chunk_size=64)
        assert torch.allclose(logits, clean.expand_as(logits), atol=1e-5), (method, (logits - clean).abs().max())


@pytest.mark.parametrize("arch", ["transformer", "mamba", "xlstm", "lstm"])
def test_batched_sweep_equals_one_at_a_time(arch):
    model, tokens, reference = _model(arch), _tokens(3, 1), _tokens(4, 2)
    comps = components(model, tokens)
    comps = comps[:: max(1, len(comps) // 12)]  # a spread of kinds and indices, kept small
    for method in ("zero", "mean"):
        batched = _sweep(model, tokens, comps, method=method, reference=reference, chunk_size=len(comps))
        single = _sweep(model, tokens, comps, method=method, reference=reference, chunk_size=1)
        assert torch.allclose(batched, single, atol=1e-5), (method, (batched - single).abs().max())
        assert (batched - model(tokens)).abs().amax(dim=(1, 2, 3)).gt(0).all()  # every component did something


def test_resample_is_seeded_and_the_table_is_tidy():
    model, tokens = _model("rwkv"), _tokens(4, 1)
    comps = components(model, tokens, ["rwkv_channel", "mlp"], layers=[1])
    answer, contrast = tokens[:, 0], tokens[:, 1]
    run = lambda seed: ablate(model, tokens, comps, answer, contrast, metrics=("logit_diff", "kl"),
                              method="resample", seed=seed)
    first, again, other = run(0), run(0), run(1)
    assert first.equals(again)
    assert not first["ablated"].equals(other["ablated"])
    assert list(first.columns) == ["component", "layer", "index", "label", "method", "metric", "clean", "ablated",
                                   "change"]
    assert len(first) == 2 * len(comps) and set(first["component"]) == {"rwkv_channel", "mlp"}
    assert first["index"].isna().sum() == 2 and first["index"].max() == 15  # the MLP rows, 16 channels
    kl = first[first.metric == "kl"]
    assert (kl["clean"] == 0).all() and (kl["ablated"] > 0).all()
    lp = first[first.metric == "logit_diff"]
    assert torch.allclose(torch.tensor((lp["ablated"] - lp["clean"]).values), torch.tensor(lp["change"].values))


# --- steering -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "hook"), [("transformer", "blocks.0.hook_resid_mid"),
                                            ("mamba", "blocks.0.mixer.ssm.hook_state"),
                                            ("lstm", "blocks.1.hook_mlp_out")])
def test_steering_adds_exactly_coef_times_direction(arch, hook):
    model, tokens = _model(arch), _tokens(2, 1)
    _, clean = model.run_with_cache(tokens, names_filter=[hook])
    direction = torch.randn(clean[hook].shape[2:], generator=torch.Generator().manual_seed(0))
    # hooking a Mamba state takes its materialised scan path: compare with the same hook doing nothing
    unsteered = model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: act)])
    assert torch.equal(steer(model, tokens, hook, direction, coef=0.0), unsteered)
    positions = None if "state" in hook else [2, 5]
    with model.hooks(fwd_hooks=steering_hooks(model, hook, direction, 1.5, positions)):
        logits, steered = model.run_with_cache(tokens, names_filter=[hook])
    change = steered[hook] - clean[hook]
    at = list(range(N_POS)) if positions is None else positions
    assert torch.allclose(change[:, at], (1.5 * direction).expand_as(change[:, at]), atol=1e-6)
    if positions is not None:
        assert torch.equal(change[:, :2], torch.zeros_like(change[:, :2]))  # causal: before the steer, nothing
    assert not torch.allclose(logits, model(tokens))


def test_steering_directions_from_features_and_mean_differences():
    model, _, dicts = _setup("transformer", "clt")
    clt = dicts[0]
    row = feature_direction(clt, 0, 3, write_layer=1)
    assert torch.equal(row, clt.W_dec[0][3, 1] / clt.output_scale[1])
    with pytest.raises(ValueError, match="out of range"):
        feature_direction(clt, 0, 99)
    a, b = _tokens(3, 5), _tokens(2, 6)
    diff = mean_difference(model, a, b, "blocks.1.hook_resid_pre", positions=[-1])
    _, ca = model.run_with_cache(a)
    _, cb = model.run_with_cache(b)
    expected = ca["blocks.1.hook_resid_pre"][:, -1].mean(0) - cb["blocks.1.hook_resid_pre"][:, -1].mean(0)
    assert torch.allclose(diff, expected, atol=1e-6)


# --- generation ---------------------------------------------------------------------------------------
def _greedy_carried(model, tokens, n):
    """Plain greedy decoding: transformer_lens's own generate, or BlockLM's carried state. (Its KV-cache
    path is left out: on these untrained weights it departs from its own uncached path by logit margins
    of 0.3, so it is not greedy decoding of the model's forward pass.)"""
    if hasattr(model, "W_U"):
        return model.generate(tokens, max_new_tokens=n, do_sample=False, stop_at_eos=False, verbose=False,
                              use_past_kv_cache=False)
    logits, state = model(tokens, return_state=True)
    out = tokens
    for _ in range(n):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
        logits, state = model(nxt, state=state, return_state=True)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_without_intervention_equals_plain_greedy(arch):
    model, tokens = _model(arch), _tokens(2, 3, n_pos=4)
    out = generate(model, tokens, 6)
    assert out.shape == (2, 10) and torch.equal(out[:, :4], tokens)
    assert torch.equal(out, _greedy_carried(model, tokens, 6))
    hook = "blocks.0.hook_resid_post"
    assert torch.equal(steer_generate(model, tokens, hook, torch.ones(model.cfg.d_model), 0.0, 6), out)


def test_sampling_is_seeded_and_steering_changes_generation():
    model, tokens = _model("mingru"), _tokens(3, 3, n_pos=4)
    sample = lambda seed: generate(model, tokens, 8, temperature=2.0, top_k=10, seed=seed)
    assert torch.equal(sample(0), sample(0)) and not torch.equal(sample(0), sample(1))
    W_U = model.unembed.weight  # steer the final residual toward token 5
    steered = steer_generate(model, tokens, "hook_final", W_U[5] / W_U[5].norm(), 50.0, 4)
    assert (steered[:, 4:] == 5).all()
    with pytest.raises(ValueError, match="exceed the model's context of 32"):
        generate(model, tokens, 40)


# --- feature interventions ----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_live_zero_change_reproduces_the_logits_exactly(arch):
    model, tokens, dicts = _setup(arch, "clt" if arch in ("transformer", "mamba") else "transcoder")
    skip_unless_value_patchable(model)
    splice = FeatureSplice(model, dicts, tokens)
    clean = model(tokens)
    edits = [FeatureEdit(l, f, "scale", 1.0) for l in splice.read_layers for f in range(0, 24, 5)]
    assert torch.equal(splice.run([], "live"), clean)
    assert torch.equal(splice.run(edits, "live"), clean)
    pos, index = (int(v) for v in (splice.activations(0)[0] != 0).nonzero()[0])
    assert not torch.allclose(splice.run([FeatureEdit(0, index, "ablate", positions=(pos,))], "live"), clean)


def _feature_edits(graph):
    """Ablate, scale and set a spread of the graph's features, and one two-feature edit."""
    nodes = graph.active_features[:: max(1, graph.n_features // 6)].tolist()
    edits = [[FeatureEdit(l, f, op, value, positions=(p,))] for l, p, f in nodes
             for op, value in (("ablate", 0.0), ("scale", 2.5), ("set", 0.4))]
    (l1, p1, f1), (l2, p2, f2) = graph.active_features[0].tolist(), graph.active_features[-1].tolist()
    return edits + [[FeatureEdit(l1, f1, "add", 0.3, positions=(p1,)), FeatureEdit(l2, f2, "ablate", positions=(p2,))]]


@pytest.mark.parametrize(("arch", "kind"), [("transformer", "transcoder"), ("transformer", "clt"),
                                            ("rwkv", "skip_transcoder"), ("mamba", "clt")])
def test_frozen_feature_intervention_equals_the_graph_prediction(arch, kind):
    model, tokens, dicts = _setup(arch, kind)
    graph = attribute(model, dicts, tokens, progress=False, config=AttributionConfig(batch_size=16))
    splice = FeatureSplice(model, dicts, tokens)
    clean = logit_targets(graph, model(tokens))[0]
    for edits in _feature_edits(graph):
        measured = logit_targets(graph, splice.run(edits, "frozen"))[0] - clean
        _, predicted = graph_prediction(graph, edits)
        scale = predicted.abs().max().clamp_min(1e-2)
        assert torch.allclose(measured, predicted, atol=2e-4 * scale, rtol=1e-3), (edits, measured, predicted)
    # the live model lets attention, gates and every feature respond: not the graph's linear answer
    l, p, f = graph.active_features[0].tolist()
    ablate_one = [FeatureEdit(l, f, "scale", 4.0, positions=(p,))]
    live = logit_targets(graph, splice.run(ablate_one, "live"))[0] - clean
    assert (live - graph_prediction(graph, ablate_one)[1]).abs().max() > 1e-5


def test_swapping_features_from_a_donor_prompt():
    model, tokens, dicts = _setup("transformer")
    splice = FeatureSplice(model, dicts, tokens)
    active = [tuple(int(v) for v in (0, p, f)) for p, f in (splice.activations(0)[0] != 0).nonzero()[:3]]
    # swapping a prompt's features for its own activations is no change at all
    same = swap_edits(active, active, splice)
    assert torch.equal(splice.run(same), model(tokens))
    donor = FeatureSplice(model, dicts, _tokens(1, 9, n_pos=tokens.shape[1]))
    donor_active = [(0, p, f) for p, f in (donor.activations(0)[0] != 0).nonzero()[:3].tolist()]
    swapped = swap_edits(active, donor_active, donor, strength=2.0)
    assert [e.op for e in swapped] == ["ablate"] * 3 + ["set"] * 3
    assert swapped[3].value == pytest.approx(2.0 * float(donor.activations(0)[0, donor_active[0][1], donor_active[0][2]]))
    assert not torch.allclose(splice.run(swapped), model(tokens))


@pytest.mark.parametrize("arch", ["transformer", "xlstm"])
def test_generation_with_feature_interventions(arch):
    model, tokens, dicts = _setup(arch)
    prompt = tokens[:, :5]
    plain = generate(model, prompt, 4)
    assert torch.equal(generate_with_features(model, dicts, prompt, [FeatureEdit(0, 2, "scale", 1.0)], 4), plain)
    boosted = [FeatureEdit(l, f, "set", 30.0) for l in (0, 1) for f in range(4)]
    assert not torch.equal(generate_with_features(model, dicts, prompt, boosted, 4), plain)


# --- bad input ----------------------------------------------------------------------------------------
def test_bad_input_names_the_choices():
    model, tokens, dicts = _setup("transformer")
    splice = FeatureSplice(model, dicts, tokens)
    with pytest.raises(ValueError, match=r"feature index 24 out of range for layer 0: the dictionary has 24 features \(0..23\)"):
        splice.run([FeatureEdit(0, 24)])
    with pytest.raises(ValueError, match=r"no dictionary reads layer 5; features live at layers \[0, 1\]"):
        splice.run([FeatureEdit(5, 0)])
    with pytest.raises(ValueError, match="unknown feature edit op 'zap'; choose one of: ablate, set, scale, add"):
        splice.run([FeatureEdit(0, 0, "zap")])
    with pytest.raises(ValueError, match="position 9 out of range"):
        splice.run([FeatureEdit(0, 0, positions=(9,))])
    with pytest.raises(ValueError, match="unknown intervention mode 'linear'; choose one of: live, frozen"):
        splice.run([], "linear")
    with pytest.raises(ValueError, match=r"head 2 out of range: 2 heads, valid 0..1"):
        components(model, tokens, ["head"], indices=[2])
    with pytest.raises(ValueError, match="has no mamba_state_n components; it has: head, mixer, mlp"):
        components(model, tokens, ["mamba_state_n"])
    with pytest.raises(ValueError, match="unknown component kind"):
        components(model, tokens, ["heads"])
    with pytest.raises(ValueError, match="unknown ablation method 'noise'; choose one of: zero, mean, resample"):
        _sweep(model, tokens, components(model, tokens, ["mlp"]), method="noise")
    with pytest.raises(KeyError, match="blocks.0.hook_mlp_out"):
        steering_hooks(model, "blocks.0.hook_mlp_ot", torch.zeros(32))
    with pytest.raises(ValueError, match=r"steering direction has shape \(7,\) but blocks.0.hook_mlp_out carries \(32,\)"):
        steer(model, tokens, "blocks.0.hook_mlp_out", torch.zeros(7))
