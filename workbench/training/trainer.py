"""The model trainer: one loop for every architecture and task.

1. Build the model from its config with the run's seed; AdamW (no decay on biases, norms, embeddings'
   position-free gains) with linear warm-up then cosine decay to ``min_lr_ratio * lr``; gradient
   clipping by global norm.
2. The batch of step ``s`` is ``task.sample("train", batch_size, seed=batch_seed(seed, s))``: the data
   position is the step number, so resuming needs no data-loader state.
3. Every ``eval_every`` steps: accuracy, loss and perplexity on a fixed test batch; every
   ``checkpoint_every`` steps an atomic checkpoint (weights, optimizer, RNG, curves so far).
4. On start, if the run folder holds a checkpoint of the same config, resume from it; a resumed run
   reaches bit-identical weights. A resume may change the settings in :data:`RESUMABLE` (the learning
   rate and its schedule, gradient clipping, the eval / checkpoint / log cadence: how the run is
   optimised and saved, not what it trains), noted in ``run_dir/train.log`` and passed to ``log``;
   ``steps`` may grow (training continues under the new schedule) or shrink to no less than the
   checkpoint's step. Any other difference (model, task, seed, batch size, weight decay, Adam betas:
   what is trained, on which data, or what the saved optimizer moments mean) is refused, naming it.
5. A non-finite loss or gradient stops the run with :class:`TrainingDiverged`; no checkpoint is
   written after the last good one.
6. Optional: ``eval_task`` is measured at each evaluation instead of the training task (a recall model
   trains on eight queries per row and is judged on one); with ``stop_at`` the run ends at the first
   evaluation whose accuracy reaches it (early stopping, as the Zoology sweeps), checkpointed and marked
   so that a resume of the stopped run with ``stop_at`` trains no further (without, it goes on).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.architectures import build_model
from workbench.fields import Field, check_values, field_for
from workbench.tasks.base import Task, masked_token_loss
from workbench.training.checkpoint import (
    check_finite,
    fingerprint,
    note_resume,
    resume_run,
    save_checkpoint,
)
from workbench.training.evaluate import EVAL_SEED, evaluate_batch
from workbench.training.strict_config import StrictConfig


@dataclass
class TrainConfig(StrictConfig):
    label = "train config"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_examples: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0

    def __post_init__(self):
        self.check()

    def check(self) -> TrainConfig:
        """Every field of its type and range (:mod:`workbench.fields`); ints in float fields become floats."""
        for name, value in check_values(train_fields(), asdict(self), "train config: ").items():
            setattr(self, name, value)
        return self


def train_fields() -> dict[str, Field]:
    return {f.name: field_for(f.name, f.default) for f in fields(TrainConfig)}


# What a resume may change (module docstring, step 4); ``steps`` is checked against the checkpoint.
RESUMABLE = ("steps", "lr", "min_lr_ratio", "warmup_steps", "grad_clip", "eval_every", "eval_examples",
             "checkpoint_every", "keep_checkpoints", "log_every")
RESUME_ADVICE = (f"A resume may change only {', '.join(RESUMABLE)}. Start over with `wb train ... --fresh` "
                 "(deletes the run folder's checkpoints), or train into another --run-dir")


@dataclass
class TrainResult:
    model: torch.nn.Module
    metrics: dict
    curves: pd.DataFrame
    run_dir: Path
    steps: int
    tokens: int
    elapsed_s: float
    resumed_from: int | None = None
    extra: dict = field(default_factory=dict)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def batch_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**62)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Matrices decay; vectors (biases, norm gains, per-channel decays) do not, as in nanoGPT, and
    neither does any parameter an architecture tags ``_no_weight_decay`` (Mamba's A_log and D, as in
    its reference implementation: decaying A_log would pull every decay rate towards one value)."""
    params = [p for p in model.parameters() if p.requires_grad]
    exempt = [p for p in params if p.dim() < 2 or getattr(p, "_no_weight_decay", False)]
    exempt_ids = {id(p) for p in exempt}
    decay = [p for p in params if id(p) not in exempt_ids]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": exempt, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)


def run_config(model_config: dict, task: Task, cfg: TrainConfig) -> dict:
    return {"model": model_config, "task": task.spec(), "train": asdict(cfg)}


def _train_step(model, optimizer, task: Task, cfg: TrainConfig, step: int, run_dir: Path) -> tuple[float, int]:
    batch = task.sample("train", cfg.batch_size, batch_seed(cfg.seed, step)).to(model_device(model))
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    loss = masked_token_loss(model(batch.tokens), batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    check_finite(loss.detach(), grad_norm, step, run_dir,
                 "Resume with a lower learning rate or a longer warm-up (`wb train ... --train lr=... "
                 "--train warmup_steps=...`: a resume accepts both), or start over with `wb train ... --fresh`.")
    optimizer.step()
    return loss.item(), int((batch.tokens != task.tokenizer.pad_id).sum())


def _resume(run_dir: Path, config: dict, model, optimizer, cfg: TrainConfig,
            log: Callable[[str], None] | None) -> tuple[int, dict]:
    """Step 4: the checkpoint's step and state; accepted setting changes noted in the log and ``log``."""
    start, state = resume_run(run_dir, config, model, optimizer, may_change=frozenset(f"train.{k}" for k in RESUMABLE),
                              advice=RESUME_ADVICE)
    if cfg.steps < start:
        raise ValueError(f"run folder {run_dir} holds a checkpoint at step {start}, past steps={cfg.steps}; "
                         f"give steps >= {start} to resume, or start over with `wb train ... --fresh`")
    if state["changes"]:
        note = note_resume(run_dir, start, state["changes"])
        if log is not None:
            log(f"{note} (noted in {run_dir / 'train.log'})")
    return start, state


def train(model_config: dict, task: Task, cfg: TrainConfig, run_dir: str | Path, progress: bool = True,
          stop_after: int | None = None, log: Callable[[str], None] | None = None,
          eval_task: Task | None = None, stop_at: float | None = None) -> TrainResult:
    """Train (or resume) a model; ``stop_after`` ends the call early at that step, as a kill would,
    after writing a checkpoint (for tests and for splitting long jobs); ``log`` receives notes
    (a resume that changed settings); ``eval_task`` and ``stop_at``: step 6."""
    run_dir = Path(run_dir)
    cfg.check()  # a dataclass can be changed after it was built
    config = run_config(model_config, task, cfg)
    torch.manual_seed(cfg.seed)
    model = build_model({**model_config, "seed": cfg.seed})  # before the folder: a bad config leaves none
    model.train()
    optimizer = make_optimizer(model, cfg)
    start, state = _resume(run_dir, config, model, optimizer, cfg, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    curves, tokens, elapsed = list(state["curves"]), int(state["tokens"]), float(state["elapsed_s"])
    eval_batch = (eval_task or task).sample("test", cfg.eval_examples, EVAL_SEED)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    stopped_early = state.get("stopped_early")
    if stopped_early is not None and stop_at is not None:
        end = start  # step 6: this run already reached its target
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc=f"train {model_config['architecture']}",
               unit="step", dynamic_ncols=True)
    t0, tokens_at_t0 = time.perf_counter(), tokens
    for step in range(start, end):
        loss, n_tok = _train_step(model, optimizer, task, cfg, step, run_dir)
        tokens += n_tok
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            curves.append({"step": done, "tokens": tokens, "split": "train", "metric": "loss", "value": loss})
            rate = (tokens - tokens_at_t0) / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            measured = evaluate_batch(model, eval_batch)
            for metric, value in measured.items():
                if metric in ("accuracy", "loss", "perplexity", "answer_loss"):
                    curves.append({"step": done, "tokens": tokens, "split": "test", "metric": metric, "value": value})
            if stop_at is not None and measured["accuracy"] >= stop_at:
                stopped_early, end = done, done
        if done % cfg.checkpoint_every == 0 or done == end:
            now = elapsed + time.perf_counter() - t0
            save_checkpoint(run_dir, done, model, optimizer, {
                "config": config, "fingerprint": fingerprint(config), "curves": curves,
                "tokens": tokens, "elapsed_s": now, "stopped_early": stopped_early}, keep=cfg.keep_checkpoints)
        bar.update(1)
        if done == end:
            break
    bar.close()
    elapsed += time.perf_counter() - t0
    metrics = evaluate_batch(model, eval_batch)
    return TrainResult(model.eval(), metrics, pd.DataFrame(curves, columns=["step", "tokens", "split", "metric", "value"]),
                       run_dir, end, tokens, elapsed, resumed_from=start or None,
                       extra={"resume_changes": state["changes"], "stopped_early": stopped_early})
