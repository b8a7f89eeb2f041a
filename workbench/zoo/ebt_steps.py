"""An EBT card's "thinking" section: accuracy and loss against inference steps, beside a Transformer of
equal size trained with equal training FLOPs.

1. Training FLOPs per step, counted by ``torch.utils.flop_counter.FlopCounterMode`` on one training
   batch (forward, the unrolled descent with its second-order terms, backward): for the EBT averaged
   over its randomised step counts (uniform on [train_steps_min, train_steps_max], as training draws
   them), for the Transformer one ordinary step. Times the entry's steps: the EBT's training FLOPs.
2. The baseline: a Transformer with the EBT's n_layers, d_model, n_heads, d_mlp and act_fn (rotary
   positions, as the EBT), trained by the shared trainer with the entry's recipe for
   ``round(EBT FLOPs / Transformer FLOPs per step)`` steps (at most ``max_baseline_steps``; the card
   says when the cap cut it short, and the FLOPs both actually used).
3. On the entry's evaluation batch: the EBT with 1, 2, 4, 8, 16 inference steps (its ``think``), and the
   Transformer once (it has no steps: a flat line beside the EBT's curve).

This is compared FLOP-matched, not step-matched (SEEDS.md): an EBT training step costs an inner
optimisation plus the backward through it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from workbench.architectures import build_model, model_config
from workbench.tasks import Task
from workbench.tasks.base import masked_token_loss
from workbench.training.evaluate import EVAL_SEED, evaluate_batch
from workbench.training.trainer import TrainConfig, train

STEPS = (1, 2, 4, 8, 16)
BASELINE_FIELDS = ("n_layers", "d_model", "n_heads", "d_mlp", "act_fn")


def step_flops(model: torch.nn.Module, batch) -> float:
    """FLOPs of one training step (forward and backward) of ``model`` on ``batch``."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        masked_token_loss(model(batch.tokens), batch).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def ebt_step_flops(config: dict, batch) -> float:
    """Step 1 for the EBT: the mean over its training step counts (each counted with that count fixed)."""
    counts = range(config["train_steps_min"], config["train_steps_max"] + 1)
    flops = [step_flops(build_model({**config, "train_steps_min": k, "train_steps_max": k, "seed": 0}), batch)
             for k in counts]
    return sum(flops) / len(flops)


@torch.no_grad()
def steps_curve(model, batch, steps=STEPS) -> list[dict]:
    """Step 3: ``{inference_steps, accuracy, loss}`` per step count (the model's config restored after)."""
    saved, rows = model.cfg.inference_steps, []
    try:
        for k in steps:
            model.cfg._values["inference_steps"] = k
            m = evaluate_batch(model, batch)
            rows.append({"inference_steps": k, "accuracy": round(m["accuracy"], 4), "loss": round(m["loss"], 4)})
    finally:
        model.cfg._values["inference_steps"] = saved
    return rows


def thinking_section(model, config: dict, task: Task, eval_task: Task, train_cfg: TrainConfig, run_dir: Path,
                     eval_examples: int = 500, max_baseline_steps: int = 6000, progress: bool = False) -> dict:
    """The card section (module docstring): both FLOP counts, the baseline's steps and metrics, the curve."""
    probe = task.sample("train", train_cfg.batch_size, 0)
    ebt_flops = ebt_step_flops(config, probe)
    baseline_config = model_config("transformer", config["d_vocab"], config["n_ctx"], positional_embedding_type="rotary",
                                   **{k: config[k] for k in BASELINE_FIELDS})
    tf_flops = step_flops(build_model({**baseline_config, "seed": 0}), probe)
    matched = max(1, round(ebt_flops * train_cfg.steps / tf_flops))
    steps = min(matched, max_baseline_steps)
    baseline = train(baseline_config, task, replace(train_cfg, steps=steps), run_dir, progress=progress).model
    batch = eval_task.sample("test", eval_examples, EVAL_SEED)
    flat = evaluate_batch(baseline, batch)
    return {
        "steps_curve": steps_curve(model, batch),
        "baseline": {"architecture": "transformer", "model_config": baseline_config, "train_steps": steps,
                     "flop_matched_steps": matched, "capped": steps < matched,
                     "accuracy": round(flat["accuracy"], 4), "loss": round(flat["loss"], 4),
                     "parameters": sum(p.numel() for p in baseline.parameters())},
        "train_flops": {"ebt_per_step": ebt_flops, "transformer_per_step": tf_flops,
                        "ebt_total": ebt_flops * train_cfg.steps, "transformer_total": tf_flops * steps,
                        "ratio_per_step": round(ebt_flops / tf_flops, 2)},
        "eval_examples": eval_examples,
        "note": "accuracy = single-query exact match (recall) or answer exact match; loss = mean next-token "
                "loss on the eval batch; the Transformer has no inference steps, so its numbers are one line",
    }


def card_section(entry, model, config: dict, task: Task, eval_task: Task, runs_dir: Path) -> dict:
    """What ``wb zoo build`` calls for an entry that names this section (``ZooEntry.card_sections``)."""
    return {"thinking": thinking_section(model, config, task, eval_task, entry.train,
                                         runs_dir / f"{entry.name}-baseline", eval_examples=min(entry.eval_examples, 500),
                                         max_baseline_steps=entry.train.steps * 20)}


__all__ = ["STEPS", "card_section", "ebt_step_flops", "step_flops", "steps_curve", "thinking_section"]
