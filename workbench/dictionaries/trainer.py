"""The dictionary trainer: one loop for SAEs, transcoders, skip transcoders and CLTs.

1. Check the activation source against the dictionary: its input and output hooks exist there and
   their widths equal ``d_in`` / ``d_out`` (errors name the hook and list what the source holds).
2. Build the dictionary from its config (seeded); Adam; learning rate: linear warm-up, constant, then
   linear decay to 0 over the last ``1 - decay_start`` of the run. Sparsity coefficient: linear
   warm-up from 0 over ``sparsity_warmup_steps``.
3. On a fresh start with ``normalize_activations``, estimate per-layer scales from the first
   ``normalization_batches`` minibatches so inputs and targets have mean squared norm ``d_in`` /
   ``d_out`` (the scales are buffers of the dictionary; hyper-parameters then mean the same thing on
   every architecture).
4. Step ``s`` reads minibatch ``s`` of the source's deterministic stream (``start_batch=s`` on resume).
   Loss = reconstruction + coef(s) * sparsity + pre-activation loss + AuxK (see :mod:`.losses`). Under
   the ``"unit"`` decoder norm the gradient along each decoder row is removed before the step and the
   rows renormalised after it. Dead features are tracked per token row; every ``resample_every`` steps
   they are resampled (optional, :mod:`.resampling`).
5. Every ``checkpoint_every`` steps an atomic checkpoint through the model trainer's
   :mod:`workbench.training.checkpoint` (weights incl. scales and dead counters, Adam state, RNG,
   curves, checksums). On start a checkpoint of the same config is resumed and the run ends in the
   same bytes. A resume may change the settings in ``RESUMABLE`` (learning rate and warm-up, the
   log / eval / checkpoint cadence: how the run is optimised and saved, not what is trained nor on
   which data); the change is noted in ``run_dir/train.log`` and the result. Any other difference is
   refused, naming it and the way to start over (``wb dict train --fresh``).
6. A non-finite loss or gradient raises :class:`TrainingDiverged`; the last good checkpoint stays, and
   the message says how to resume from it with a lower learning rate.
7. At the end, evaluate per-layer metrics and publish ``run_dir/dictionary`` (weights, config, card).

Data parallel (torchrun, :mod:`.distributed`): with ``data_shards`` ``D`` > 1 (default: the number of
processes) each step's global minibatch is the concatenation of minibatch ``s`` of the source's ``D``
parts (``batch_size / D`` rows each); each process reads only its parts, gradients and batch-wide
statistics are summed across processes, and rank 0 alone writes checkpoints and the dictionary. A
one-process run with the same ``D`` sees the same batches and reaches the same weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.dictionaries.activation_reader import mix_seed
from workbench.dictionaries.distributed import (
    Comm,
    batch_wide,
    current_comm,
    global_minibatches,
    source_parts,
)
from workbench.dictionaries.losses import (
    SPARSITY_PENALTIES,
    DeadFeatureTracker,
    auxk_loss,
    pre_activation_loss,
    reconstruction_mse,
    sparsity_penalty,
)
from workbench.dictionaries.metrics import evaluate_dictionary, fvu, l0
from workbench.dictionaries.models import Dictionary, DictionaryConfig, build_dictionary, save_dictionary
from workbench.dictionaries.resampling import resample_dead_features
from workbench.training.checkpoint import (
    TrainingDiverged,
    check_finite,
    fingerprint,
    note_resume,
    resume_run,
    save_checkpoint,
)
from workbench.training.strict_config import StrictConfig

NORMALIZATION_SALT, EVAL_SALT, RESAMPLE_SALT = 101, 202, 303
RESUMABLE = ("lr", "warmup_steps", "log_every", "checkpoint_every", "keep_checkpoints", "eval_batches")
RESUME_ADVICE = (f"A resume may change only {', '.join(RESUMABLE)}. Start over with `wb dict train ... --fresh` "
                 "(deletes the set's run checkpoints), or train into another --out.")
DIVERGED_ADVICE = ("Check the activations for NaN/inf; then resume from the last good checkpoint with a lower "
                   "learning rate (`wb dict train ... --lr <lower>`: a resume may change lr and warm-up), or start "
                   "over with `wb dict train ... --fresh`.")


@dataclass
class DictTrainConfig(StrictConfig):
    label = "dictionary train config"
    steps: int = 2000
    batch_size: int = 1024  # token rows
    lr: float = 1e-3
    warmup_steps: int = 50
    decay_start: float = 0.8  # fraction of the run after which the lr decays linearly to 0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    sparsity: str | None = None  # None: tanh for jumprelu, l1 for relu, none for topk / batchtopk
    sparsity_coef: float = 1e-2
    sparsity_warmup_steps: int = 100
    tanh_scale: float = 4.0
    pre_act_coef: float = 0.0
    pre_act_dead_only: bool = True
    auxk_coef: float | None = None  # None: 1/32 for topk / batchtopk, else 0
    aux_k: int = 256
    dead_window_tokens: int = 100_000
    resample_every: int = 0  # 0: never
    normalize_activations: bool = True
    normalization_batches: int = 4
    eval_batches: int = 8
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    data_shards: int | None = None  # parts of the source per global batch; None: the number of processes

    def resolved(self, dictionary: DictionaryConfig, world: int = 1) -> DictTrainConfig:
        """A copy with the activation- and process-dependent defaults filled in and checked."""
        topk = dictionary.activation in ("topk", "batchtopk")
        default_sparsity = "none" if topk else ("tanh" if dictionary.activation == "jumprelu" else "l1")
        sparsity = self.sparsity or default_sparsity
        if sparsity not in SPARSITY_PENALTIES:
            raise ValueError(f"unknown sparsity penalty {sparsity!r}; choose one of: {', '.join(SPARSITY_PENALTIES)}")
        if sparsity == "l0" and dictionary.activation != "jumprelu":
            raise ValueError(f"sparsity 'l0' needs activation 'jumprelu' (got {dictionary.activation!r}); "
                             "choose l1 or tanh, or a jumprelu dictionary")
        auxk = (1 / 32 if topk else 0.0) if self.auxk_coef is None else self.auxk_coef
        shards = world if self.data_shards is None else self.data_shards
        if shards < 1 or self.batch_size % shards:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by data_shards ({shards}); "
                             f"choose a batch_size that is a multiple of {shards}")
        return DictTrainConfig(**{**asdict(self), "sparsity": sparsity, "auxk_coef": auxk, "data_shards": shards})

    def recorded(self) -> dict:
        """The config as checkpoints and cards record it (``data_shards`` only when it shards)."""
        values = asdict(self)
        if values.get("data_shards") == 1:
            del values["data_shards"]
        return values


@dataclass
class _Run:
    """What one training call works with: state, optimizer, settings, processes, device, folder."""
    state: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: DictTrainConfig
    comm: Comm
    device: torch.device
    run_dir: Path


@dataclass
class DictTrainResult:
    dictionary: Dictionary
    metrics: dict
    curves: pd.DataFrame
    run_dir: Path
    steps: int
    tokens: int
    elapsed_s: float
    resumed_from: int | None = None
    extra: dict = field(default_factory=dict)


class _TrainingState(nn.Module):
    """What a checkpoint's ``model.safetensors`` holds: the dictionary and the dead-feature counters."""

    def __init__(self, dictionary: Dictionary, tracker: DeadFeatureTracker):
        super().__init__()
        self.dictionary, self.tracker = dictionary, tracker


def lr_at(step: int, cfg: DictTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_from = int(cfg.decay_start * cfg.steps)
    if step < decay_from:
        return cfg.lr
    return cfg.lr * max(0.0, (cfg.steps - step) / max(1, cfg.steps - decay_from))


def sparsity_coef_at(step: int, cfg: DictTrainConfig) -> float:
    if cfg.sparsity_warmup_steps <= 0:
        return cfg.sparsity_coef
    return cfg.sparsity_coef * min(1.0, (step + 1) / cfg.sparsity_warmup_steps)


def check_source(config: DictionaryConfig, source) -> None:
    """Step 1: hooks present in the source, widths equal to the dictionary's."""
    if not config.input_hooks or not config.output_hooks:
        raise ValueError("the dictionary config names no input_hooks/output_hooks; set them to the hooks it "
                         "reads and writes, e.g. ['blocks.0.hook_mlp_in'] and ['blocks.0.hook_mlp_out']")
    for hooks, width, side in ((config.input_hooks, config.d_in, "d_in"), (config.output_hooks, config.d_out, "d_out")):
        for name in hooks:
            if name not in source.widths:
                raise KeyError(f"activation source has no hook {name!r}; it holds: {', '.join(source.hooks)}")
            if source.widths[name] != width:
                raise ValueError(f"hook {name!r} has width {source.widths[name]} in the activation source but the "
                                 f"dictionary's {side} is {width}; build the dictionary with {side}={source.widths[name]}")


def stack_layers(batch: dict[str, torch.Tensor], hooks: list[str]) -> torch.Tensor:
    return torch.stack([batch[name].float() for name in hooks], dim=1)


def _stream(parts: list, config: DictionaryConfig, cfg: DictTrainConfig, seed: int, start: int = 0):
    hooks = list(dict.fromkeys(config.input_hooks + config.output_hooks))
    return global_minibatches(parts, cfg.batch_size, cfg.data_shards, seed, start, hooks)


@torch.no_grad()
def estimate_scales(parts: list, config: DictionaryConfig, cfg: DictTrainConfig,
                    comm: Comm | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3: per-layer scales with mean squared norm ``d`` after scaling (means over global batches)."""
    comm = comm or Comm()
    stream = _stream(parts, config, cfg, mix_seed(cfg.seed, NORMALIZATION_SALT))
    sq_in, sq_out = torch.zeros(config.n_layers), torch.zeros(config.n_layers)
    for _, batch in zip(range(max(1, cfg.normalization_batches)), stream, strict=False):
        sq_in += comm.mean_rows(stack_layers(batch, config.input_hooks).to(comm.device).pow(2).sum(-1)).cpu()
        sq_out += comm.mean_rows(stack_layers(batch, config.output_hooks).to(comm.device).pow(2).sum(-1)).cpu()
    n = max(1, cfg.normalization_batches)
    return ((config.d_in / (sq_in / n).clamp_min(1e-12)).sqrt(), (config.d_out / (sq_out / n).clamp_min(1e-12)).sqrt())


def _losses(d: Dictionary, tracker: DeadFeatureTracker, x_n, y_n, cfg: DictTrainConfig, step: int,
            comm: Comm, weight: float):
    """The step's loss; ``weight`` is this process's share of the global rows (1 in one process)."""
    recon, acts, pre = d.forward_normalized(x_n)
    dead = tracker.dead()
    parts = {"mse": reconstruction_mse(recon, y_n),
             "sparsity": sparsity_penalty(cfg.sparsity, acts, pre, d.decoder_norms(), d.activation, cfg.tanh_scale)}
    total = parts["mse"] + sparsity_coef_at(step, cfg) * parts["sparsity"]
    if cfg.pre_act_coef > 0:
        parts["pre_act"] = pre_activation_loss(pre, dead if cfg.pre_act_dead_only else None)
        total = total + cfg.pre_act_coef * parts["pre_act"]
    if weight != 1.0:  # means over this process's rows -> its share of the global batch's mean
        total = total * weight
    if cfg.auxk_coef > 0:  # normalised by the global batch: the processes' terms add up
        parts["auxk"] = auxk_loss(d, pre, y_n - recon, dead, cfg.aux_k, comm)
        total = total + cfg.auxk_coef * parts["auxk"]
    return total, parts, recon, acts


def _train_step(run: _Run, batch: dict, step: int) -> tuple[dict, int]:
    cfg, comm = run.cfg, run.comm
    d, tracker, c = run.state.dictionary, run.state.tracker, run.state.dictionary.config
    x_n = d.normalize_input(stack_layers(batch, c.input_hooks).to(run.device))
    y_n = stack_layers(batch, c.output_hooks).to(run.device) * d.output_scale[:, None]
    global_rows = comm.total(x_n.shape[0])
    weight = x_n.shape[0] / global_rows
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    with batch_wide(d, comm):
        total, parts, recon, acts = _losses(d, tracker, x_n, y_n, cfg, step, comm, weight)
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    loss = comm.sum_grads_and(list(d.parameters()), total.detach().reshape(1))[0]  # the global batch's loss
    unit = c.decoder_norm == "unit"
    if unit:
        d.remove_parallel_decoder_grad()
    grad_norm = torch.nn.utils.clip_grad_norm_(d.parameters(), cfg.grad_clip)
    check_finite(loss, grad_norm, step, run.run_dir, DIVERGED_ADVICE)
    run.optimizer.step()
    if unit:
        d.normalize_decoder()
    tracker.update(acts.detach(), comm)
    if cfg.resample_every and (step + 1) % cfg.resample_every == 0:
        generator = torch.Generator().manual_seed(mix_seed(cfg.seed, step, RESAMPLE_SALT))
        x_all, y_all, r_all = (comm.gather_rows(t) for t in (x_n, y_n, recon.detach()))
        resample_dead_features(d, run.optimizer, tracker, x_all, y_all, r_all, generator)
    return _step_stats(parts, loss, recon, y_n, acts, tracker, comm, weight), global_rows


@torch.no_grad()
def _step_stats(parts: dict, loss, recon, y_n, acts, tracker, comm: Comm, weight: float) -> dict:
    """Curve values of a step; across processes, row-weighted means (FVU: of the processes' FVUs)."""
    values = {**parts, "fvu": fvu(recon, y_n).mean(), "l0": l0(acts).mean()}
    if comm.distributed:
        scaled = [v.detach().float() * (1.0 if name == "auxk" else weight) for name, v in values.items()]
        values = dict(zip(values, comm.sum_(torch.stack(scaled)), strict=True))
    stats = {name: values[name].item() for name in parts}
    stats.update(loss=loss.item(), fvu=values["fvu"].item(), l0=values["l0"].item(),
                 dead_fraction=tracker.dead_fraction().mean().item())
    return stats


def _start(config: DictionaryConfig, source, cfg: DictTrainConfig, run_dir: Path, comm: Comm,
           device: torch.device):
    check_source(config, source)
    run_config = {"dictionary": config.to_dict(), "train": cfg.recorded(), "source": source.fingerprint()}
    dictionary = build_dictionary(DictionaryConfig.from_dict(config.to_dict())).train()
    tracker = DeadFeatureTracker(config.n_layers, config.n_features, cfg.dead_window_tokens)
    state = _TrainingState(dictionary, tracker).to(device)
    optimizer = torch.optim.Adam(dictionary.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)
    # no global RNG to restore: init and resampling use seeded generators; the lr is set every step
    start, saved = resume_run(run_dir, run_config, state, optimizer, "dictionary checkpoint", restore_rng=False,
                              may_change=frozenset(f"train.{k}" for k in RESUMABLE), advice=RESUME_ADVICE)
    changes = saved["changes"]
    if changes and comm.is_writer:
        note_resume(run_dir, start, changes)
    parts = source_parts(source, cfg.data_shards, comm)
    if start == 0 and cfg.normalize_activations:
        scale_in, scale_out = estimate_scales(parts, config, cfg, comm)
        dictionary.input_scale.copy_(scale_in)
        dictionary.output_scale.copy_(scale_out)
    comm.barrier()  # every process has read the checkpoint before rank 0 may write the next
    return run_config, _Run(state, optimizer, cfg, comm, device, run_dir), parts, start, saved, changes


def train_dictionary(config: DictionaryConfig, source, cfg: DictTrainConfig, run_dir: str | Path,
                     progress: bool = True, stop_after: int | None = None, comm: Comm | None = None,
                     device: str | torch.device | None = None) -> DictTrainResult:
    """Train (or resume) a dictionary on an activation source (an :class:`ActivationStore`,
    :class:`LiveActivations` or :class:`TensorActivations`); steps in the module docstring.
    ``stop_after`` ends the call at that step after a checkpoint, as a kill would. ``comm``: the
    processes (default: the started torch.distributed group, else this process alone); ``device``:
    where to train (default: the comm's device, the CPU unless started for CUDA). The returned
    dictionary is on the CPU."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    comm = comm or current_comm(device)
    cfg = cfg.resolved(config, comm.world)
    run_config, run, parts, start, saved, changes = _start(config, source, cfg, run_dir, comm,
                                                           torch.device(device) if device else comm.device)
    curves, tokens, elapsed = list(saved["curves"]), int(saved["tokens"]), float(saved["elapsed_s"])
    stream = _stream(parts, config, cfg, cfg.seed, start)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress or not comm.is_writer,
               desc=f"train {config.kind}", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in range(start, end):
        stats, rows = _train_step(run, next(stream), step)
        tokens += rows
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            curves += [{"step": done, "tokens": tokens, "metric": k, "value": v} for k, v in stats.items()]
            bar.set_postfix(fvu=f"{stats['fvu']:.3f}", l0=f"{stats['l0']:.1f}", dead=f"{stats['dead_fraction']:.2f}")
        if (done % cfg.checkpoint_every == 0 or done == end) and comm.is_writer:
            save_checkpoint(run_dir, done, run.state, run.optimizer, {
                "config": run_config, "fingerprint": fingerprint(run_config), "curves": curves, "tokens": tokens,
                "elapsed_s": elapsed + time.perf_counter() - t0}, keep=cfg.keep_checkpoints)
        bar.update(1)
    bar.close()
    elapsed += time.perf_counter() - t0
    dictionary = run.state.dictionary.cpu().eval()
    metrics = _finish(run, source, cfg, run_config, end, tokens) if end == cfg.steps else {}
    comm.barrier()  # the checkpoint and dictionary are on disk before any process returns
    frame = pd.DataFrame(curves, columns=["step", "tokens", "metric", "value"])
    return DictTrainResult(dictionary, metrics, frame, run_dir, end, tokens, elapsed, resumed_from=start or None,
                           extra={"resume_changes": changes} if changes else {})


def _finish(run: _Run, source, cfg: DictTrainConfig, run_config: dict, steps: int, tokens: int) -> dict:
    """Step 7 on rank 0 (metrics on the whole source, the dictionary published); every process gets
    the metrics."""
    metrics: dict = {}
    if run.comm.is_writer:
        run.state.cpu()
        metrics = _final_metrics(run.state, source, cfg, list(dict.fromkeys(
            run.state.dictionary.config.input_hooks + run.state.dictionary.config.output_hooks)))
        save_dictionary(run.run_dir / "dictionary", run.state.dictionary, {
            "metrics": metrics, "train": cfg.recorded(), "source": run_config["source"], "steps": steps,
            "tokens": tokens})
    return run.comm.broadcast_object(metrics)


def _final_metrics(state: _TrainingState, source, cfg: DictTrainConfig, hooks: list[str]) -> dict:
    c = state.dictionary.config
    stream = source.minibatches(cfg.batch_size, seed=mix_seed(cfg.seed, EVAL_SALT), hooks=hooks)
    metrics = evaluate_dictionary(state.dictionary, stream, c.input_hooks, c.output_hooks, cfg.eval_batches)
    metrics["dead_fraction_window"] = state.tracker.dead_fraction().tolist()
    metrics["fvu_mean"] = float(sum(metrics["fvu"]) / len(metrics["fvu"]))
    metrics["l0_mean"] = float(sum(metrics["l0"]) / len(metrics["l0"]))
    if any(math.isnan(v) for v in metrics["fvu"]):
        raise TrainingDiverged(f"dictionary evaluation gave FVU {metrics['fvu']}; the activations hold NaN")
    return metrics
