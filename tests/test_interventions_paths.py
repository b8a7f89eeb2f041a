"""Causal tracing, path patching and attribution patching (AtP, EAP, EAP-IG) on every architecture."""

from contextlib import contextmanager

import pytest
import torch
from conftest import TINY_CONFIGS, skip_unless_value_patchable

from workbench.architectures import architecture_names, build_model, model_config
from workbench.architectures.gate_form import record_gates
from workbench.interventions.attribution_patching import (
    agreement,
    attribution_scores,
    edge_attribution,
    real_edge_effects,
)
from workbench.interventions.causal_tracing import (
    causal_trace,
    make_noise,
    noised_logits,
    state_hooks,
    toyworld_subject_mask,
    toyworld_trace_prompts,
)
from workbench.interventions.metrics import answer_prob, logits_at
from workbench.interventions.pairs import PromptPairs
from workbench.interventions.patching import Site, patch_runs
from workbench.interventions.path_patching import path_patch, receivers, senders

VOCAB, CTX, F64 = 24, 16, torch.float64
ARCHS = architecture_names()
RECURRENT = [a for a in ARCHS if a not in ("transformer", "tokenformer", "ebt", "gyro")]  # the others carry state hooks


def tiny(arch: str, **overrides):
    return build_model(model_config(arch, VOCAB, CTX, seed=0, **{**TINY_CONFIGS[arch], **overrides})).to(F64).eval()


def pairs(n: int = 3, length: int = 9, changed: int = 2) -> PromptPairs:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, VOCAB, (n, length), generator=g)
    corrupted = clean.clone()
    corrupted[:, changed] = (corrupted[:, changed] + 5) % VOCAB
    answer = torch.randint(0, VOCAB, (n,), generator=g)
    return PromptPairs(clean, corrupted, answer, (answer + 1) % VOCAB, torch.full((n,), length - 1))


# --- attribution patching ---------------------------------------------------------------------------
@contextmanager
def linearised(model, tokens):
    """Every gate (attention pattern, norm scale, recurrent gate) and every MLP's ReLU mask frozen at the
    clean run's values, for any number of stacked copies of ``tokens``: the model is then affine in
    every residual value, so a first-order estimate is exact."""
    def tiled(value):
        return lambda act, hook: value.repeat(act.shape[0] // value.shape[0], *[1] * (value.dim() - 1))

    gates = record_gates(model, tokens)
    layers = range(model.cfg.n_layers)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{l}.mlp.hook_pre" for l in layers])
    pre: dict[str, torch.Tensor] = {}
    hooks = [(name, tiled(value)) for name, value in gates.items()]
    for l in layers:
        mask = (cache[f"blocks.{l}.mlp.hook_pre"] > 0).to(F64)
        hooks.append((f"blocks.{l}.mlp.hook_pre", lambda act, hook, l=l: pre.__setitem__(l, act)))
        hooks.append((f"blocks.{l}.mlp.hook_post",
                      lambda act, hook, l=l, mask=mask: pre[l] * tiled(mask)(act, hook)))
    with model.hooks(fwd_hooks=hooks):
        yield


@pytest.mark.parametrize("arch", ["transformer", "mingru", "mamba"])
def test_eap_equals_edge_patching_on_a_model_linear_in_the_patched_activations(arch):
    overrides = {"act_fn": "relu"} | ({"normalization_type": None} if arch == "transformer" else {})
    model, p = tiny(arch, **overrides), pairs()
    with linearised(model, p.clean):
        nodes, eap = attribution_scores(model, p)
        _, eap_ig = attribution_scores(model, p, steps=3)
        real = real_edge_effects(model, p, max_rows=7)  # several passes of stacked edges
    edge = ~torch.isnan(real)
    assert edge.sum() >= 15 and real[edge].abs().max() > 5e-5  # non-trivial effects (tiny Mamba's are small)
    assert torch.equal(edge, ~torch.isnan(eap))
    assert torch.allclose(eap[edge], real[edge], rtol=0, atol=1e-11)
    assert torch.allclose(eap_ig[edge], real[edge], rtol=0, atol=1e-11)
    # a node's patch adds its change to every later input: in an affine model, the sum of its edges
    assert torch.allclose(nodes, torch.nansum(real, 1), rtol=0, atol=1e-11)


@pytest.mark.parametrize("arch", ARCHS)
def test_atp_node_is_the_sum_of_its_edges_and_one_ig_step_is_eap(arch):
    model, p = tiny(arch), pairs()
    nodes, eap = attribution_scores(model, p)
    _, ig1 = attribution_scores(model, p, steps=1)
    _, ig4 = attribution_scores(model, p, steps=4, max_rows=6)  # two interpolation chunks
    assert torch.allclose(nodes, torch.nansum(eap, 1), atol=1e-12)
    assert torch.equal(ig1.isnan(), eap.isnan()) and torch.allclose(ig1.nan_to_num(), eap.nan_to_num(), atol=1e-12)
    assert not torch.allclose(ig4.nan_to_num(), eap.nan_to_num(), atol=1e-6)  # the model is not linear


def test_edge_attribution_tables_and_agreement():
    model, p = tiny("transformer"), pairs()
    result = edge_attribution(model, p, ig_steps=3, top_k=5)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    assert len(result.nodes) == 1 + n_layers * (n_heads + 1)  # embed, heads, MLPs
    assert set(result.edges.columns) >= {"sender", "receiver", "eap", "eap_ig", "real"}
    assert not result.edges[["eap", "eap_ig", "real"]].isna().any().any()
    # logits read every sender; a layer-1 head's first receiver is its own layer's MLP input
    assert (result.edges.receiver == "logits").sum() == len(result.nodes)
    assert result.edges[result.edges.sender == "L1 head 0"].receiver.tolist() == ["L1 mlp_in", "logits"]
    stats = result.agreement.set_index("method")
    assert stats.loc["eap", "k"] == 5 and stats.loc["eap", "n_edges"] == len(result.edges)
    assert stats.loc["eap", "spearman"] == pytest.approx(agreement(result.edges.eap, result.edges.real, 5)["spearman"])
    # the node table's real effects are activation patches of each sender
    head = result.nodes.set_index("node").loc["L0 head 1", "real"]
    values, clean, _, _ = patch_runs(model, p, [[Site("blocks.0.attn.hook_z", None, 1, 2, "head")]], direction="noise")
    assert head == pytest.approx(float((values - clean).mean()), abs=1e-12)


def test_agreement_statistics():
    real = [5.0, -4.0, 3.0, 0.5, 0.1]
    assert agreement([50, -40, 30, 5, 1], real, k=2) == {"spearman": pytest.approx(1.0), "top_k_overlap": 1.0,
                                                         "k": 2, "n_edges": 5}
    reverse = agreement([-5.0, 4.0, -3.0, -0.5, -0.1], real, k=3)
    assert reverse["spearman"] == pytest.approx(-1.0) and reverse["top_k_overlap"] == 1.0
    swapped = agreement([0.1, 0.5, 3.0, -4.0, 5.0], real, k=2)  # top two by |value| are edges 3 and 4
    assert swapped["top_k_overlap"] == 0.0
    assert agreement([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0])["n_edges"] == 2  # non-edges are left out
    with pytest.raises(ValueError, match="at least 2 scored edges"):
        agreement([1.0], [2.0])


# --- path patching ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_path_patching_limits(arch):
    model, p = tiny(arch), pairs()
    skip_unless_value_patchable(model)
    sender_list = senders(model, p.clean)
    last_mlp = next(c for c in sender_list if c.kind == "mlp" and c.layer == model.cfg.n_layers - 1)
    none = path_patch(model, p, sender_list, [])
    assert (none.effect == 0).all() and (none.patched == none.clean).all()
    # the logits as the only receiver of the last MLP, nothing in between: its full activation patch
    direct = path_patch(model, p, sender_list, ["hook_final"], max_rows=2 * len(p))  # chunked
    values, clean, _, _ = patch_runs(model, p, [[Site(last_mlp.hooks[0])]], direction="noise")
    row = direct[direct.sender == last_mlp.label].iloc[0]
    assert row.patched == pytest.approx(float(values.mean()), abs=1e-10) and abs(row.effect) > 1e-4
    assert row.clean == pytest.approx(float(clean.mean()), abs=1e-12)
    # batched senders equal one at a time
    one = path_patch(model, p, [sender_list[1]], ["hook_final"])
    assert one.patched.item() == pytest.approx(direct.patched.iloc[1], abs=1e-10)


def test_path_patching_reaches_a_receiver_only_directly():
    """Layer-0 MLP -> layer-1 mixer input only: the layer-1 MLP keeps its clean input, so the effect
    equals patching that mixer's input by the value it gets with only the layer-0 MLP corrupted."""
    model, p = tiny("mingru"), pairs()
    l0_mlp = next(c for c in senders(model, p.clean) if c.label == "L0 mlp")
    through = path_patch(model, p, [l0_mlp], ["blocks.1.hook_mixer_in"]).effect.item()
    with torch.no_grad():
        _, corrupted = model.run_with_cache(p.corrupted, names_filter=["blocks.0.hook_mlp_out"])
        with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda act, hook: corrupted["blocks.0.hook_mlp_out"])]):
            _, cache = model.run_with_cache(p.clean, names_filter=["blocks.1.hook_mixer_in"])
        patched = model.run_with_hooks(p.clean, fwd_hooks=[("blocks.1.hook_mixer_in",
                                                            lambda act, hook: cache["blocks.1.hook_mixer_in"])])
        clean = model(p.clean)
    diff = lambda logits: (logits_at(logits, p.positions).gather(1, p.answer[:, None])
                           - logits_at(logits, p.positions).gather(1, p.contrast[:, None])).mean()
    assert through == pytest.approx(float(diff(patched) - diff(clean)), abs=1e-10) and abs(through) > 1e-6


def test_path_patching_bad_inputs():
    model, p = tiny("transformer"), pairs()
    sender_list = senders(model, p.clean)
    with pytest.raises(KeyError, match="hook_mixer_in"):
        path_patch(model, p, sender_list, ["blocks.1.hook_mixr_in"])
    with pytest.raises(ValueError, match="head 7 out of range"):
        path_patch(model, p, sender_list, [("blocks.1.attn.hook_q", 7)])
    with pytest.raises(ValueError, match="at least one sender"):
        path_patch(model, p, [], ["hook_final"])
    with pytest.raises(ValueError, match="unknown metric"):
        path_patch(model, p, sender_list, ["hook_final"], metric_name="logit_dif")
    with pytest.raises(ValueError, match="no attention heads"):
        senders(tiny("rwkv"), p.clean, heads=True)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        attribution_scores(model, p, steps=0)
    with pytest.raises(ValueError, match="unknown receiver kind"):
        receivers(model)[0].__class__("resid", 0)


# --- causal tracing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_restoring_the_last_residual_everywhere_gives_clean_minus_noised(arch):
    model, toks = tiny(arch), pairs().clean
    skip_unless_value_patchable(model)
    answer, last, t = torch.tensor([1, 2, 3]), f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", toks.shape[1]
    noise = make_noise(model, toks, [2, 3], n_samples=4, seed=1)
    logits = noised_logits(model, toks, noise, [{}, {last: range(t)}])  # [2, S, N, T, V]
    prob = answer_prob(logits_at(logits, torch.full((3,), t - 1)), answer)  # [2, S, N]
    with torch.no_grad():
        clean = answer_prob(model(toks)[:, -1], answer)
    assert torch.allclose(logits[1], model(toks).expand_as(logits[1]), atol=1e-12)
    aie = (prob[1] - prob[0]).mean()
    assert float(aie) == pytest.approx(float(clean.mean() - prob[0].mean()), abs=1e-12)
    assert not torch.allclose(prob[0], clean.expand_as(prob[0]))  # the noise did something
    # the sweep: the last resid_post at the answer position is all the logits read
    result = causal_trace(model, toks, [2, 3], answer, n_samples=4, seed=1, max_rows=20)
    assert result.p_noised == pytest.approx(float(prob[0].mean()), abs=1e-12)
    assert result.aie["resid_post"][-1, -1] == pytest.approx(result.p_clean - result.p_noised, abs=1e-12)
    assert torch.allclose(result.aie["resid_post"][:, :2], torch.zeros(1, dtype=F64), atol=1e-12)  # before the subject
    expected = {"resid_post", "mixer_out", "mlp_out"} | ({"state"} if arch in RECURRENT else set())
    assert set(result.aie) == expected and not any(v.isnan().any() for v in result.aie.values())
    assert set(result.frame().kind) == expected


def test_noise_is_seeded_and_only_on_the_subject():
    model, toks = tiny("rwkv"), pairs().clean
    a, b = make_noise(model, toks, [2, 4], 3, seed=5), make_noise(model, toks, [2, 4], 3, seed=5)
    assert torch.equal(a.values, b.values) and a.scale == b.scale > 0
    assert not torch.equal(a.values, make_noise(model, toks, [2, 4], 3, seed=6).values)
    assert (a.values[:, :, [0, 1, 3, 5, 6, 7, 8]] == 0).all() and (a.values[:, :, [2, 4]] != 0).all()
    with torch.no_grad():
        embed = model.run_with_cache(toks, names_filter=["hook_embed"])[1]["hook_embed"][:, [2, 4]]
    assert a.scale == pytest.approx(3 * float(embed.std()))
    assert make_noise(model, toks, [2], 1, scale=0.5).scale == 0.5
    one = causal_trace(model, toks, [2], torch.tensor([1, 2, 3]), n_samples=2, seed=3)
    two = causal_trace(model, toks, [2], torch.tensor([1, 2, 3]), n_samples=2, seed=3)
    assert all(torch.equal(one.aie[k], two.aie[k]) for k in one.aie)


@pytest.mark.parametrize("arch", RECURRENT)
def test_restoring_a_state_at_t_changes_nothing_before_t(arch):
    model, toks, t = tiny(arch), pairs().clean, 5
    noise = make_noise(model, toks, [1, 2], n_samples=2)
    states = {name: [t] for name in state_hooks(model, 0)}
    logits = noised_logits(model, toks, noise, [{}, states])
    assert torch.equal(logits[1][..., :t, :], logits[0][..., :t, :])
    assert (logits[1][..., t + 1:, :] - logits[0][..., t + 1:, :]).abs().amax() > 1e-8


def test_toyworld_subject_positions_match_the_pairs():
    from workbench.tasks import make_task

    task = make_task("toyworld")
    for kind, template in [("two_hop", 0), ("two_hop", 1), ("profession", 2), ("capital", 1), ("acronym", 0)]:
        p, mask = toyworld_trace_prompts(task, kind, n=6, seed=1, template=template)
        changed = p.clean != p.corrupted
        assert (changed & ~mask).sum() == 0 and changed.any(1).all(), (kind, template)
        if kind != "acronym":  # single-token subjects: the changed tokens are the subject exactly
            assert torch.equal(mask, changed), (kind, template)
    assert toyworld_subject_mask("profession", 2, 12).nonzero().flatten().tolist() == [3, 9]


def test_causal_tracing_bad_inputs():
    model, toks = tiny("transformer"), pairs().clean
    answer = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="unknown causal-tracing kind 'resid'; choose one of"):
        causal_trace(model, toks, [2], answer, kinds=["resid"])
    with pytest.raises(ValueError, match="no 'state' hooks"):
        causal_trace(model, toks, [2], answer, kinds=["state"])
    with pytest.raises(ValueError, match="position 9 out of range"):
        causal_trace(model, toks, [9], answer)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        causal_trace(model, toks, [2], answer, layers=[2])
    with pytest.raises(ValueError, match=r"subject mask must be \[N, T\]"):
        causal_trace(model, toks, torch.ones(2, 9, dtype=torch.bool), answer)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        make_noise(model, toks, [2], 0)
    with pytest.raises(KeyError, match="nearest"):
        noised_logits(model, toks, make_noise(model, toks, [2], 1), [{"blocks.0.hook_resid_pst": [1]}])
    with pytest.raises(ValueError, match="noise was drawn for prompts"):
        noised_logits(model, toks[:, :5], make_noise(model, toks, [2], 1))
    with pytest.raises(ValueError, match="has no subject"):
        toyworld_subject_mask("arithmetic", 0, 10)
