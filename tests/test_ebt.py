"""The Energy-Based Transformer: no leak across positions, thinking, second-order training, per-step
hooks, carried state, and the 3-token toy landscape. (The cross-architecture checks run on it too:
tests/test_architectures_common.py and the intervention and attribution suites.)"""

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIGS, assert_carried_state_matches

from workbench.architectures import build_model, model_config
from workbench.tasks.base import Batch, masked_token_loss
from workbench.training.evaluate import evaluate_batch

VOCAB, CTX = 24, 16
F64 = torch.float64


def tiny(**overrides):
    config = model_config("ebt", VOCAB, CTX, seed=0, **(TINY_CONFIGS["ebt"] | overrides))
    return build_model(config).to(F64).eval()


def tokens(batch=2, length=11, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_changing_token_t_changes_nothing_before_t():
    """Energies at every step and predictions before t are bit-identical when token t changes; the
    prediction at t changes (it reads token t)."""
    model, toks, t = tiny(), tokens(), 6
    changed = toks.clone()
    changed[:, t] = (changed[:, t] + 5) % VOCAB
    a, b = model.think(toks, steps=4), model.think(changed, steps=4)
    assert torch.equal(a.energies[:, :, :t], b.energies[:, :, :t])
    assert torch.equal(a.yhat[:, :, :t], b.yhat[:, :, :t])
    assert torch.equal(a.logits[:, :t], b.logits[:, :t])
    assert not torch.allclose(a.logits[:, t], b.logits[:, t])


def test_no_gradient_reaches_a_prediction_from_another_position():
    """dE_s / dz_t = 0 for s != t: the prediction streams are independent (the leak the design avoids:
    a later position, which sees token t+1, sending gradient into y^_t)."""
    model, toks = tiny(), tokens(1, 8)
    kv = model.read_context(toks)
    z = torch.randn(1, 8, VOCAB, dtype=F64, requires_grad=True)
    energy = model.energy_of(z, kv)
    (grad,) = torch.autograd.grad(energy[0, 5], z)
    assert grad[0, 5].abs().sum() > 0
    assert grad[0, torch.arange(8) != 5].abs().max() == 0


def test_think_shapes_and_the_kept_energy_never_rises():
    model, toks = tiny(), tokens()
    thought = model.think(toks, steps=5)
    assert thought.energies.shape == (6, 2, 11) and thought.yhat.shape == (6, 2, 11, VOCAB)
    assert thought.grads.shape == (5, 2, 11, VOCAB) and thought.best_step.shape == (2, 11)
    best = thought.best_energy
    assert (best[1:] <= best[:-1]).all()
    kept = thought.energies.gather(0, thought.best_step[None])[0]
    assert torch.equal(kept, thought.energies.min(0).values)
    assert torch.allclose(thought.logits.exp(), thought.yhat.gather(
        0, thought.best_step[None, ..., None].expand(1, 2, 11, VOCAB))[0])
    # the descent does descend at the start: step 1's energy is below the random start's on average
    assert thought.energies[1].mean() < thought.energies[0].mean()
    assert torch.allclose(thought.yhat.sum(-1), torch.ones((), dtype=F64))


def test_eval_forward_is_think_with_the_configured_steps():
    model, toks = tiny(), tokens()
    with torch.no_grad():
        out = model(toks)
    assert torch.equal(out, model.think(toks, steps=TINY_CONFIGS["ebt"]["inference_steps"]).logits)
    assert not torch.equal(out, model.think(toks, steps=1).logits)
    with pytest.raises(ValueError, match="steps >= 1"):
        model.think(toks, steps=0)


def test_second_order_training_step_reduces_the_loss_on_a_tiny_batch():
    """Training mode unrolls the descent with create_graph: the loss depends on the step size through
    the steps (a gradient reaches log_alpha only through the unrolled descent), and Adam on one
    batch lowers the loss the shared trainer would compute."""
    model = build_model(model_config("ebt", VOCAB, CTX, seed=0, **TINY_CONFIGS["ebt"])).train()
    toks = tokens(4, 12)
    batch = Batch(tokens=toks, loss_mask=torch.ones_like(toks, dtype=torch.bool),
                  answer_mask=torch.zeros_like(toks, dtype=torch.bool))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = evaluate_batch(model, batch)["loss"]  # the shared evaluator: eval descent under no_grad
    losses = []
    for _ in range(15):
        loss = masked_token_loss(model(toks), batch)
        optimizer.zero_grad()
        loss.backward()
        assert model.log_alpha.grad is not None and model.log_alpha.grad != 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    after = evaluate_batch(model, batch)["loss"]
    assert model.training and after < before, (before, after)


def test_training_draws_are_a_function_of_the_batch():
    """Randomised steps, step size and start come from a generator seeded by the tokens: the same batch
    gives the same logits (a resumed run redraws alike), another batch other draws."""
    model = tiny().train()
    toks = tokens()
    with torch.no_grad():
        assert torch.equal(model(toks), model(toks))


def test_energy_hooks_fire_once_per_step_and_shared_hooks_once():
    model, toks, steps = tiny(), tokens(), 4
    calls = {"energy.hook_energy": 0, "energy.hook_yhat": 0, "energy.hook_grad": 0, "blocks.1.hook_resid_post": 0,
             "blocks.0.mixer.hook_pattern": 0}

    def count(act, hook):
        calls[hook.name] += 1

    with torch.no_grad(), model.hooks(fwd_hooks=[(name, count) for name in calls]):
        model.think(toks, steps=steps)
    assert calls == {"energy.hook_energy": steps + 1, "energy.hook_yhat": steps + 1, "energy.hook_grad": steps,
                     "blocks.1.hook_resid_post": 1, "blocks.0.mixer.hook_pattern": 1}


def test_steering_the_gradient_hook_changes_the_descent():
    model, toks = tiny(), tokens()
    plain = model.think(toks, steps=3).logits
    with model.hooks(fwd_hooks=[("energy.hook_grad", lambda g, hook: torch.zeros_like(g))]):
        frozen = model.think(toks, steps=3)
    assert not torch.allclose(plain, frozen.logits)
    assert torch.allclose(frozen.yhat[0], frozen.yhat[-1])  # zero gradient: y^ never moves


def test_carried_state_equals_the_full_forward():
    assert_carried_state_matches(tiny(), tokens(), atol=1e-10)


def test_graph_metadata_says_approximate_and_why():
    """The attribution code marks a model approximate when it declares ``linearization_note`` (the
    graph suite checks the flag on a real graph); the note says what the graph explains and why."""
    note = tiny().linearization_note
    assert "log(y^)" in note and "y^ frozen" in note and "W_U hook_final" in note


def test_bad_config_names_the_fields():
    with pytest.raises(ValueError, match="train_steps_min=3 exceeds train_steps_max=2"):
        tiny(train_steps_min=3, train_steps_max=2)


# --- the 3-token toy and the Energy page -----------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    from workbench.zoo import ebt_toy

    return ebt_toy.train_toy(steps=60)


def test_toy_landscape_has_its_minimum_where_the_descent_ends(toy):
    """After token a the toy's data make b the likely next token: the landscape's lowest grid point and
    every descent path's end put most mass on b, and every path's kept energy is near that minimum."""
    from workbench.zoo.ebt_toy import descent_paths, landscape, simplex_grid, simplex_xy

    grid = simplex_grid(20)
    assert grid.shape == (171, 3) and torch.allclose(grid.sum(1), torch.ones(171, dtype=F64)) and (grid > 0).all()
    land = landscape(toy, [2, 0], resolution=20)
    lowest = land["y"][land["energy"].argmin()]
    assert lowest.argmax() == 1
    paths = descent_paths(toy, [2, 0], steps=12)
    assert [p.label for p in paths] == ["seeded start", "start near token 0", "start near token 1", "start near token 2"]
    for path in paths:
        assert path.y.shape == (13, 3) and path.energy.shape == (13,)
        assert path.y[-1].argmax() == 1, path
        assert path.energy.min() <= land["energy"].min() + 0.05
    xs, ys = simplex_xy(torch.eye(3, dtype=F64))
    assert xs == [0.0, 1.0, 0.5] and ys[:2] == [0.0, 0.0] and abs(ys[2] - 3 ** 0.5 / 2) < 1e-12


def test_energy_page_draws_the_landscape_and_paths(toy, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from workbench.zoo import ebt_toy

    monkeypatch.setattr(ebt_toy, "train_toy", lambda: toy)  # the page's cached training, without the wait
    page = str(Path(__file__).resolve().parents[1] / "app" / "pages" / "6_Energy.py")
    at = AppTest.from_file(page, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [trace.get("name") for trace in figure["data"]]
    assert names[:5] == ["energy", "seeded start", "start near token 0", "start near token 1", "start near token 2"]
    assert len(figure["data"][0]["x"]) == len(ebt_toy.simplex_grid(30))
    assert len(figure["data"][1]["x"]) == 9  # the default 8 steps: start + 8
    assert any("No zoo model has a thinking section" in i.value for i in at.info)
    at.slider(key="energy_steps").set_value(3).run()
    assert len(json.loads(at.get("plotly_chart")[0].proto.spec)["data"][1]["x"]) == 4
    at.text_input(key="energy_context").set_value("a x").run()
    assert "unknown token" in at.error[0].value and "choose from" in at.error[0].value


def test_steps_figure_draws_the_ebt_curve_and_the_flat_baseline():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
    import energy_view

    thinking = {"steps_curve": [{"inference_steps": k, "accuracy": a, "loss": 1 / k} for k, a in ((1, 0.1), (4, 0.3))],
                "baseline": {"accuracy": 0.5, "loss": 0.7}}
    fig = energy_view.steps_figure(thinking)
    assert [list(t.y) for t in fig.data] == [[0.1, 0.3], [0.5, 0.5], [1.0, 0.25], [0.7, 0.7]]


def test_thinking_section_counts_flops_and_matches_the_baseline(tmp_path):
    """The card section on a tiny EBT: an EBT step costs more FLOPs than a Transformer step of the same
    size; the baseline's steps are the FLOP-matched count (capped where asked); one curve row per step count."""
    from workbench.training.trainer import TrainConfig
    from workbench.zoo.build import task_from_spec
    from workbench.zoo.ebt_steps import STEPS, thinking_section

    task = task_from_spec({"name": "recall", "n_pairs": 2})
    config = model_config("ebt", task.tokenizer.vocab_size, task.seq_len, **TINY_CONFIGS["ebt"])
    model = build_model({**config, "seed": 0}).eval()
    train_cfg = TrainConfig(steps=2, batch_size=4, eval_every=1, checkpoint_every=2, eval_examples=8, seed=0)
    section = thinking_section(model, config, task, task, train_cfg, tmp_path / "baseline", eval_examples=16,
                               max_baseline_steps=5)
    flops = section["train_flops"]
    assert flops["ebt_per_step"] > 2 * flops["transformer_per_step"] > 0
    base = section["baseline"]
    assert base["flop_matched_steps"] == round(flops["ebt_per_step"] * 2 / flops["transformer_per_step"])
    assert base["train_steps"] == min(5, base["flop_matched_steps"]) and base["capped"] == (base["flop_matched_steps"] > 5)
    assert [r["inference_steps"] for r in section["steps_curve"]] == list(STEPS)
    assert model.cfg.inference_steps == TINY_CONFIGS["ebt"]["inference_steps"]  # restored


def test_entropy_weight_adds_minus_tau_times_the_entropy():
    """E with entropy_weight tau = E without - tau H(y^): same weights (same seed), same inputs."""
    plain, tempered = tiny(), tiny(entropy_weight=0.5)
    toks = tokens(1, 6)
    z = torch.randn(1, 6, VOCAB, dtype=F64)
    y = torch.softmax(z, -1)
    entropy = -(y * y.log()).sum(-1)
    e0, e1 = plain.energy_of(z, plain.read_context(toks)), tempered.energy_of(z, tempered.read_context(toks))
    assert torch.allclose(e1, e0 - 0.5 * entropy, atol=1e-12)
