"""Activation patching on every architecture: identities, batching, TransformerLens parity, bad input."""

from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIGS, skip_unless_value_patchable

from workbench.architectures import build_model, model_config
from workbench.interventions.hooks import check_positions, resolve_hook
from workbench.interventions.metrics import logit_diff, logits_at, normalised_score  # noqa: F401
from workbench.interventions.pairs import PromptPairs, pairs_from_text, task_pairs
from workbench.interventions.patching import (
    Site,
    patch,
    patch_runs,
    sweep_channels,
    sweep_heads,
    sweep_layer_position,
)

REPO = Path(__file__).resolve().parents[1]
VOCAB, T = 20, 10
# One recurrent state hook per architecture (block 0); xLSTM's block 0 is an mLSTM (matrix memory C).
STATE_HOOKS = {
    "mingru": "blocks.0.mixer.hook_state",
    "lstm": "blocks.0.mixer.hook_state",
    "mamba": "blocks.0.mixer.ssm.hook_state",
    "rwkv": "blocks.0.time_mix.hook_state_num",
    "xlstm": "blocks.0.mixer.cell.hook_C",
    "tokenformer": "blocks.0.attn.hook_heads",  # no recurrent state: its heads' values (no additive hook_z)
    "gyro": "blocks.0.attn.hook_midpoint",  # no recurrent state: its heads' gyro-midpoints
}


def tiny(arch: str):
    return build_model(model_config(arch, VOCAB, 16, seed=3, **TINY_CONFIGS[arch])).eval()


def random_pairs(n: int = 3, seed: int = 0, same: bool = False) -> PromptPairs:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(2, VOCAB, (n, T), generator=gen)
    corrupted = clean.clone()
    if not same:
        corrupted[:, 2] = (clean[:, 2] + 1 + torch.arange(n)) % (VOCAB - 2) + 2
    answer, contrast = torch.tensor([3, 4, 5])[:n], torch.tensor([6, 7, 8])[:n]
    return PromptPairs(clean, corrupted, answer, contrast, torch.full((n,), T - 1))


def answer_logits(model, tokens, positions):
    with torch.no_grad():
        return logits_at(model(tokens), positions)


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_patching_a_hook_with_its_own_value_changes_nothing(arch):
    model, pairs = tiny(arch), random_pairs(same=True)
    skip_unless_value_patchable(model)
    hooks = ["resid_pre", "mixer_out", "mlp_out", "resid_post"]
    runs = [(Site(f"blocks.{layer}.hook_{h}", pos),) for layer in range(2) for h in hooks for pos in (0, 4, None)]
    runs += [(Site(STATE_HOOKS.get(arch, "blocks.0.attn.hook_z"), 5),), (Site("hook_embed"),), (Site("hook_final", 9),)]
    _, _, _, logits = patch_runs(model, pairs, runs, direction="noise", chunk_rows=12, band=3)
    clean = answer_logits(model, pairs.clean, pairs.positions)
    assert logits.shape == (len(runs), 3, VOCAB)
    torch.testing.assert_close(logits, clean.expand_as(logits), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_full_denoising_patch_of_the_last_residual_recovers_clean_logits(arch):
    model, pairs = tiny(arch), random_pairs()
    skip_unless_value_patchable(model)
    clean = answer_logits(model, pairs.clean, pairs.positions)
    corrupted = answer_logits(model, pairs.corrupted, pairs.positions)
    assert (clean - corrupted).abs().max() > 1e-4  # the corruption matters, so recovery means something
    for hook in ("blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"):
        _, _, _, logits = patch_runs(model, pairs, [(Site(hook),)])
        torch.testing.assert_close(logits[0], clean, atol=1e-5, rtol=0)
    result = patch(model, pairs, "resid_pre", layers=[1])
    torch.testing.assert_close(result.values, result.clean, atol=1e-5, rtol=0)
    assert (result.clean - result.corrupted).abs().max() > 1e-6


@pytest.mark.parametrize("arch", ["transformer", "mamba", "rwkv", "xlstm"])
def test_batched_sweep_equals_one_at_a_time(arch):
    model, pairs = tiny(arch), random_pairs()
    sweep = sweep_layer_position(model, pairs, "resid_pre", chunk_rows=7, band=4)
    assert sweep.values.shape == (2, T, 3)
    for layer in range(2):
        for pos in range(T):
            one = patch(model, pairs, f"blocks.{layer}.hook_resid_pre", positions=pos)
            torch.testing.assert_close(sweep.values[layer, pos], one.values, atol=1e-5, rtol=0)
    # positions at or after the corruption matter, earlier ones cannot (the models are causal)
    assert sweep.values[0, :2].sub(sweep.corrupted).abs().max() < 1e-5
    assert sweep.values[0, 2].sub(sweep.corrupted).abs().max() > 1e-4


def test_head_and_channel_sweeps_equal_single_patches():
    model, pairs = tiny("transformer"), random_pairs()
    heads = sweep_heads(model, pairs)
    assert heads.values.shape == (2, 2, 3)
    one = patch(model, pairs, "blocks.1.attn.hook_z", index=1, dim=2)
    torch.testing.assert_close(heads.values[1, 1], one.values, atol=1e-5, rtol=0)
    _, cache = model.run_with_cache(pairs.clean, names_filter=["blocks.1.attn.hook_z"])

    def put_head(act, hook):  # the same patch by hand: head 1 at every position
        act = act.clone()
        act[:, :, 1] = cache[hook.name][:, :, 1]
        return act

    with torch.no_grad():
        by_hand = logits_at(model.run_with_hooks(pairs.corrupted, fwd_hooks=[("blocks.1.attn.hook_z", put_head)]),
                            pairs.positions)
    torch.testing.assert_close(one.values, logit_diff(by_hand, pairs.answer, pairs.contrast), atol=1e-5, rtol=0)
    assert (one.values - one.corrupted).abs().max() > 1e-6
    mamba = tiny("mamba")
    channels = sweep_channels(mamba, pairs, "blocks.{l}.mixer.ssm.hook_state", dim=2, position=4, chunk_rows=10)
    assert channels.values.shape == (2, 32, 3)
    one = patch(mamba, pairs, "blocks.0.mixer.ssm.hook_state", positions=4, index=7, dim=2)
    torch.testing.assert_close(channels.values[0, 7], one.values, atol=1e-5, rtol=0)


def _zoo_transformer_pairs(n: int, seed: int):
    """The committed zoo Transformer, ``n`` recall pairs (key corrupted) and their mean logit difference."""
    from workbench.store.model_files import load_model_folder
    from workbench.tasks import make_task

    folder = REPO / "models" / "transformer-recall"
    if not folder.is_dir():
        pytest.skip("the zoo Transformer is not built")
    bundle = load_model_folder(folder)
    pairs = task_pairs(make_task(**bundle.card["task"]), n, seed=seed, corrupt="key")

    def metric(logits):
        return logit_diff(logits_at(logits, pairs.positions), pairs.answer, pairs.contrast).mean()

    return bundle, pairs, metric


def test_resid_patching_matches_transformer_lens_on_the_zoo_transformer():
    import transformer_lens.patching as tl_patching

    bundle, pairs, metric = _zoo_transformer_pairs(4, 2)
    ours = sweep_layer_position(bundle.model, pairs).mean()

    _, cache = bundle.model.run_with_cache(pairs.clean)
    theirs = tl_patching.get_act_patch_resid_pre(bundle.model, pairs.corrupted, cache, metric)
    assert ours.shape == theirs.shape == (2, 27)
    assert theirs.abs().max() > 1  # a real map, not zeros
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(STATE_HOOKS))
def test_patching_a_recurrent_state_at_t_changes_nothing_before_t(arch):
    model, t = tiny(arch), 5
    clean, other = random_pairs().clean, random_pairs(seed=1).clean
    hook = STATE_HOOKS[arch]
    _, cache = model.run_with_cache(other, names_filter=[hook])

    def put(act, hook):
        act = act.clone()
        act[:, t] = cache[hook.name][:, t]
        return act

    with torch.no_grad():  # the base run hooks the state too: a hooked state may take another code path
        base = model.run_with_hooks(clean, fwd_hooks=[(hook, lambda act, hook: act)])
        patched = model.run_with_hooks(clean, fwd_hooks=[(hook, put)])
    assert torch.equal(patched[:, :t], base[:, :t])
    assert (patched[:, t:] - base[:, t:]).abs().max() > 1e-5
    # the engine (positions before t skipped, carried state from a prefix pass) agrees at every position
    rows = torch.arange(T)
    pairs = PromptPairs(clean[:1].repeat(T, 1), other[:1].repeat(T, 1), torch.zeros(T, dtype=torch.long),
                        torch.ones(T, dtype=torch.long), rows)
    _, _, _, logits = patch_runs(model, pairs, [(Site(hook, t),)], direction="noise", band=1)
    torch.testing.assert_close(logits[0], patched[0, rows], atol=1e-5, rtol=0)


def test_pairs_are_deterministic_and_equal_length():
    from workbench.tasks import make_task

    recall = make_task("recall")
    a, b = task_pairs(recall, 6, seed=4, corrupt="value"), task_pairs(recall, 6, seed=4, corrupt="value")
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupted, b.corrupted)
    assert a.clean.shape == (6, 27) and ((a.clean != a.corrupted).sum(1) == 1).all()
    assert (a.answer != a.contrast).all()
    world = task_pairs(make_task("toyworld"), 5, seed=1, corrupt="two_hop")
    assert world.clean.shape == world.corrupted.shape and (world.answer != world.contrast).all()
    assert "containing" in world.clean_text[0]


def test_bad_input_is_a_clear_error():
    model, pairs = tiny("transformer"), random_pairs()
    with pytest.raises(ValueError, match="clean prompts have 10 tokens but corrupted prompts have 9"):
        PromptPairs(pairs.clean, pairs.clean[:, :9], pairs.answer, pairs.contrast, pairs.positions)
    from workbench.tasks import make_task

    tok = make_task("toyworld").tokenizer
    with pytest.raises(ValueError, match="clean prompt has 6 tokens .* corrupted prompt has 7"):
        pairs_from_text(tok, ["the capital of texas is"], ["the capital city of texas is"], ["austin"], ["albany"])
    with pytest.raises(KeyError, match="nearest: blocks.0.hook_resid_pre"):
        resolve_hook(model, "blocks.0.hook_resid_pr")
    with pytest.raises(KeyError, match="blocks.1.hook_resid_pre"):
        patch(model, pairs, "blocks.1.hook_resid_pr")
    with pytest.raises(ValueError, match=r"position 10 out of range: 10 positions, valid 0..9"):
        patch(model, pairs, "blocks.0.hook_resid_pre", positions=10)
    with pytest.raises(ValueError, match=r"head 2 out of range: 2 heads, valid 0..1"):
        sweep_heads(model, pairs, heads=[0, 2])
    with pytest.raises(ValueError, match=r"channel 40 out of range: 32 channels"):
        patch(tiny("mingru"), pairs, "blocks.0.mixer.hook_state", index=40)
    with pytest.raises(ValueError, match=r"layer 2 out of range: 2 layers"):
        sweep_layer_position(model, pairs, layers=[2])
    with pytest.raises(ValueError, match="unknown patching direction 'nosie'; choose one of: denoise, noise"):
        patch(model, pairs, "blocks.0.hook_resid_pre", direction="nosie")
    assert check_positions(-1, 10) == [9]


ANSWER_PATH_MODELS = [(arch, {}) for arch in sorted(TINY_CONFIGS)] + [
    ("transformer", {"positional_embedding_type": "rotary"}),  # as the zoo's: cached keys come rotated
    ("transformer", {"n_layers": 3, "positional_embedding_type": "rotary"}),  # a middle layer too
]


@pytest.mark.parametrize(("arch", "extra"), ANSWER_PATH_MODELS,
                         ids=[arch + "".join(f"-{k}={v}" for k, v in extra.items()) for arch, extra in ANSWER_PATH_MODELS])
@pytest.mark.parametrize("answer", [T - 1, 6])
def test_answer_path_equals_the_plain_path_in_float64(arch, extra, answer):
    from workbench.interventions.patch_engine import PatchEngine

    model = build_model(model_config(arch, VOCAB, 16, seed=3, **(TINY_CONFIGS[arch] | extra))).eval().double()
    skip_unless_value_patchable(model)  # the answer-only fast path replays blocks on values
    pairs = random_pairs()
    layers = model.cfg.n_layers
    runs = [(Site(f"blocks.{layer}.hook_resid_pre", pos),) for layer in range(layers) for pos in range(T)]
    runs += [(Site(f"blocks.{layer}.hook_resid_pre"),) for layer in range(layers)]
    runs += [(Site("blocks.0.hook_resid_pre", 3), Site(f"blocks.{layers - 1}.hook_resid_pre", 5),)]
    runs += [(Site(resolve_hook(model, f"blocks.{layer}.hook_{kind}"), pos),)
             for layer in range(layers) for kind in ("mixer_out", "mlp_out") for pos in (None, 4)]
    if arch in STATE_HOOKS:
        runs += [(Site(STATE_HOOKS[arch], 3),)]
    hooks = list(dict.fromkeys(site.hook for run in runs for site in run))
    positions = torch.full((3,), answer)
    fast = PatchEngine(model, pairs.corrupted, pairs.clean, positions, hooks)
    plain = PatchEngine(model, pairs.corrupted, pairs.clean, positions, hooks, answer_path=False)
    taken = [chunk[2] for chunk in fast.chunks(runs, 256, None)]
    assert plain.answer is None and not any(chunk[2] for chunk in plain.chunks(runs, 256, None))
    if arch in ("rwkv", "gyro"):  # RWKV: its channel-mix reads the previous position; gyro: no BlockLM
        assert fast.answer is None and not any(taken)
    else:
        assert fast.answer == answer and sum(taken) >= 2  # the fast path really runs
    for chunk_rows, band in ((256, None), (7, 3)):
        ours, reference = fast.run(runs, chunk_rows, band), plain.run(runs, chunk_rows, band)
        torch.testing.assert_close(ours, reference, atol=1e-10, rtol=0)
    assert (reference - plain.base_logits).abs().amax((1, 2)).gt(1e-6).sum() > len(runs) // 3  # real effects
    # sites after the answer cannot change it: those runs keep the base logits, unrun
    late = [i for i, run in enumerate(runs) if run[0].position is not None and run[0].position > answer]
    assert len(late) == layers * (T - 1 - answer) + (answer < 5)
    if fast.kind == "generic":  # (gyro) no layer structure the engine trusts: late runs do run, equal to rounding
        torch.testing.assert_close(ours[late], fast.base_logits.expand(len(late), -1, -1), atol=1e-10, rtol=0)
    else:
        assert torch.equal(ours[late], fast.base_logits.expand(len(late), -1, -1))


def test_answer_path_rounds_as_transformer_lens_on_the_zoo_transformer():
    """float32, 64 tokens, one prompt: where transformer_lens's own rounding error (~2e-5 against
    float64) exceeds 1e-5, our sweep still equals its values, because every operation is its."""
    import transformer_lens.patching as tl_patching

    bundle, pairs, metric = _zoo_transformer_pairs(2, 5)
    ours = sweep_layer_position(bundle.model, pairs).mean()

    with torch.no_grad():
        _, cache = bundle.model.run_with_cache(pairs.clean, names_filter=lambda name: name.endswith("resid_pre"))
        theirs = tl_patching.get_act_patch_resid_pre(bundle.model, pairs.corrupted, cache, metric)
    assert theirs.abs().max() > 1
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_auto_band_balances_chunk_cost_against_wasted_rows():
    from workbench.interventions.patch_engine import CHUNK_COST_ROWS, auto_band

    assert auto_band(list(range(64)), 1) == round((2 * CHUNK_COST_ROWS) ** 0.5)
    assert auto_band(list(range(64)), 8) == round((2 * CHUNK_COST_ROWS / 8) ** 0.5)
    assert auto_band([p for p in range(10) for _ in range(4)], 1) == round((2 * CHUNK_COST_ROWS / 4) ** 0.5)
    assert auto_band([0], 10_000) == 1


def test_patching_an_attention_pattern_equals_patching_it_by_hand():
    """A hook whose dim 1 is not the position (heads) keeps the plain path and its own shape."""
    model, pairs = tiny("transformer"), random_pairs()
    hook = "blocks.0.attn.hook_pattern"
    _, _, _, logits = patch_runs(model, pairs, [(Site(hook, index=2, dim=3, what="key position"),), (Site(hook),)])
    _, cache = model.run_with_cache(pairs.clean, names_filter=[hook])
    for run, key in ((0, 2), (1, slice(None))):
        def put(act, hook, key=key):
            act = act.clone()
            act[..., key] = cache[hook.name][..., key]
            return act

        with torch.no_grad():
            by_hand = logits_at(model.run_with_hooks(pairs.corrupted, fwd_hooks=[(hook, put)]), pairs.positions)
        torch.testing.assert_close(logits[run], by_hand, atol=1e-5, rtol=0)
        assert (logits[run] - answer_logits(model, pairs.corrupted, pairs.positions)).abs().max() > 1e-4
