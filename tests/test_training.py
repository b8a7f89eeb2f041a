"""The trainer: exact resume (in-process and after kill -9), refusals, damaged checkpoints, NaN."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRANSFORMER

from workbench.architectures import model_config
from workbench.store import CorruptArtifactError
from workbench.tasks import make_task
from workbench.training import TrainConfig, TrainingDiverged, list_checkpoints, lr_at, train
from workbench.training import trainer as trainer_module

REPO = Path(__file__).resolve().parents[1]


def tiny_setup(steps=40, **train_overrides):
    task = make_task("recall", n_pairs=2)
    mcfg = model_config("transformer", task.tokenizer.vocab_size, task.seq_len, **TINY_TRANSFORMER)
    values = {"steps": steps, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10,
              "eval_examples": 64, "checkpoint_every": 10, "log_every": 5, "seed": 3}
    cfg = TrainConfig(**{**values, **train_overrides})
    return task, mcfg, cfg


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"tensor {k} differs"


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


def test_training_lowers_loss_and_logs_curves(tmp_path):
    task, mcfg, cfg = tiny_setup(steps=60)
    result = train(mcfg, task, cfg, tmp_path / "run", progress=False)
    train_loss = result.curves.query("split == 'train' and metric == 'loss'")["value"].tolist()
    assert train_loss[-1] < train_loss[0]
    assert set(result.curves.query("split == 'test'")["metric"]) == {"accuracy", "loss", "perplexity", "answer_loss"}
    assert result.tokens == 60 * 16 * task.seq_len


def test_resume_in_process_gives_identical_weights(tmp_path):
    task, mcfg, cfg = tiny_setup(steps=40)
    straight = train(mcfg, task, cfg, tmp_path / "a", progress=False)
    partial = train(mcfg, task, cfg, tmp_path / "b", progress=False, stop_after=20)
    assert partial.steps == 20
    resumed = train(mcfg, task, cfg, tmp_path / "b", progress=False)
    assert resumed.resumed_from == 20
    assert_same_weights(straight.model, resumed.model)
    assert straight.curves.equals(resumed.curves)


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_training import tiny_setup
from workbench.training import train
task, mcfg, cfg = tiny_setup(steps=4000, checkpoint_every=5)
train(mcfg, task, cfg, {run!r}, progress=False)
"""


def test_kill_9_then_resume_gives_identical_weights(tmp_path):
    run = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(REPO / "tests"), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while time.time() < deadline and not any(s >= 30 for s, _ in list_checkpoints(run)):
        assert proc.poll() is None, "the training process ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = list_checkpoints(run)[-1][0]
    assert 30 <= killed_at < 4000

    task, mcfg, cfg = tiny_setup(steps=4000, checkpoint_every=5)
    end = killed_at + 15
    resumed = train(mcfg, task, cfg, run, progress=False, stop_after=end)
    assert resumed.resumed_from == killed_at
    straight = train(mcfg, task, cfg, tmp_path / "straight", progress=False, stop_after=end)
    assert_same_weights(straight.model, resumed.model)


def test_resume_with_a_different_config_is_refused(tmp_path):
    """What is trained (model, task, seed, batch size, weight decay, betas) cannot change on resume."""
    task, mcfg, cfg = tiny_setup(steps=20)
    train(mcfg, task, cfg, tmp_path / "run", progress=False, stop_after=10)
    _, _, other = tiny_setup(steps=20, batch_size=8, lr=1e-2)
    with pytest.raises(ValueError, match=r"different config; refusing to resume\. Differences: "
                                         r"train\.batch_size: 16 -> 8\. A resume may change only steps, lr, .*"
                                         r"`wb train \.\.\. --fresh`.*another --run-dir"):
        train(mcfg, task, other, tmp_path / "run", progress=False)
    wider = {**mcfg, "d_mlp": 32}
    with pytest.raises(ValueError, match=r"Differences: model\.d_mlp: 64 -> 32; train\.seed: 3 -> 4\."):
        train(wider, task, tiny_setup(steps=20, seed=4)[2], tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"Differences: task\.n_pairs: 2 -> 3\."):
        train(mcfg, make_task("recall", n_pairs=3), cfg, tmp_path / "run", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [10]  # refusals write nothing


def test_resume_may_change_how_it_is_optimised_and_notes_it(tmp_path):
    task, mcfg, cfg = tiny_setup(steps=20)
    train(mcfg, task, cfg, tmp_path / "run", progress=False, stop_after=10)
    _, _, lower = tiny_setup(steps=30, lr=1e-3, warmup_steps=2, eval_every=5)
    notes = []
    resumed = train(mcfg, task, lower, tmp_path / "run", progress=False, log=notes.append)
    assert resumed.resumed_from == 10 and resumed.steps == 30  # steps grew: training went on
    changes = "train.eval_every: 10 -> 5; train.lr: 0.003 -> 0.001; train.steps: 20 -> 30; train.warmup_steps: 5 -> 2"
    assert resumed.extra["resume_changes"] == changes.split("; ")
    assert notes == [f"resumed at step 10 with changed settings: {changes} (noted in {tmp_path / 'run' / 'train.log'})"]
    (line,) = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert line.endswith(f" resumed at step 10 with changed settings: {changes}")
    # the checkpoints now carry the new settings: resuming under them again is no change
    again = train(mcfg, task, lower, tmp_path / "run", progress=False, log=notes.append)
    assert again.resumed_from == 30 and again.extra["resume_changes"] == [] and len(notes) == 1
    with pytest.raises(ValueError, match=r"holds a checkpoint at step 30, past steps=25; give steps >= 30"):
        train(mcfg, task, tiny_setup(steps=25, lr=1e-3, warmup_steps=2, eval_every=5)[2], tmp_path / "run",
              progress=False)


def test_corrupted_checkpoint_names_the_file(tmp_path):
    task, mcfg, cfg = tiny_setup(steps=20)
    train(mcfg, task, cfg, tmp_path / "run", progress=False, stop_after=10)
    _, folder = list_checkpoints(tmp_path / "run")[-1]
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match=r"step-00000010/model\.safetensors is corrupted"):
        train(mcfg, task, cfg, tmp_path / "run", progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    task, mcfg, cfg = tiny_setup(steps=30)
    real_loss = trainer_module.masked_token_loss
    calls = {"n": 0}

    def loss_turning_nan(logits, batch):
        calls["n"] += 1
        loss = real_loss(logits, batch)
        return loss * float("nan") if calls["n"] > 13 else loss

    monkeypatch.setattr(trainer_module, "masked_token_loss", loss_turning_nan)
    with pytest.raises(TrainingDiverged, match=r"loss nan at step 13.*step-00000010 \(step 10\)\. Resume with a "
                                               r"lower learning rate or a longer warm-up"):
        train(mcfg, task, cfg, tmp_path / "run", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [10]
    state = json.loads((list_checkpoints(tmp_path / "run")[-1][1] / "state.json").read_text())
    assert state["step"] == 10
    monkeypatch.setattr(trainer_module, "masked_token_loss", real_loss)
    _, _, lower = tiny_setup(steps=30, lr=1e-3)  # the advice works: a lower lr resumes from step 10
    assert train(mcfg, task, lower, tmp_path / "run", progress=False).resumed_from == 10


def test_checkpoints_are_pruned_to_keep(tmp_path):
    task, mcfg, cfg = tiny_setup(steps=50, keep_checkpoints=2)
    train(mcfg, task, cfg, tmp_path / "run", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [40, 50]


def test_unknown_train_field_lists_choices():
    with pytest.raises(ValueError, match="unknown train config field.*'stpes'.*choose from: steps"):
        TrainConfig.from_dict({"stpes": 3})
