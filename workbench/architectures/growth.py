"""Growing a trained model in place: TokenFormer parameter tokens, and an ordinary MLP's hidden width.

TokenFormer's claim (SEEDS.md): appending key/value parameter tokens with zero keys leaves the function
unchanged, so a grown model continues from where the small one stood. Checked honestly:

1. :func:`grow` appends ``n_new`` tokens to every Pattention of the chosen layers (Q, K, V, output and
   FFN). New keys are zero, so their scores are 0, their normalised scores 0 and GeLU(0) = 0: they
   contribute nothing *and* add nothing to ``||s||``. What remains is the rescaling factor
   ``tau = sqrt(n)``: the paper's code recomputes it from the current ``n``, so growth multiplies every
   old normalised score by ``sqrt((n + m) / n)`` and the function changes (``preserve=False``
   measures that). ``preserve=True`` keeps ``tau`` at its old value (a buffer saved with the weights),
   and the grown model computes exactly the same function.
2. New values: random by default (``new_values="random"``, the initialisation's scale). Zero keys *and*
   zero values are a saddle: every gradient reaching the new tokens is a product with one of the two
   zeros (dL/dV_new = w_new = 0, dL/dK_new is proportional to V_new = 0), so they never learn.
3. :func:`pad_mlp` is the critique: an ordinary MLP ``W_out act(W_in x + b)`` grows its hidden width by
   units with zero input weights and bias and random output weights; ``act(0) = 0`` for GeLU, ReLU and
   SiLU, so the function is unchanged just the same (and the new units learn through act'(0), which is
   1/2 for GeLU and SiLU; ReLU's is 0, so zero-in ReLU units stay dead, as zero-keyed tokens do under
   a ReLU Pattention).
4. :func:`logit_change` measures what a growth does to a model's logits (on a copy), and
   :func:`continue_training` trains a grown model on (the trainer's optimiser, schedule and loss).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from workbench.architectures.components import MLP, ArchConfig
from workbench.architectures.tokenformer import Pattention, pattentions

NEW_VALUES = ("random", "zero")
INIT_STD = 0.02  # the scale parameter tokens are initialised with (tokenformer.Pattention)


def _layers(layers, n_layers: int) -> list[int]:
    chosen = list(range(n_layers)) if layers is None else sorted({int(layer) for layer in layers})
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range; the model has layers 0..{n_layers - 1}")
    return chosen


def _appended(param: torch.Tensor, rows: torch.Tensor, dim: int = 0) -> nn.Parameter:
    return nn.Parameter(torch.cat([param.detach(), rows.to(param.dtype)], dim=dim))


def _new_rows(shape: tuple, like: torch.Tensor, new_values: str, generator: torch.Generator) -> torch.Tensor:
    if new_values not in NEW_VALUES:
        raise ValueError(f"unknown new_values {new_values!r}; choose one of: {', '.join(NEW_VALUES)}")
    if new_values == "zero":
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * INIT_STD).to(like.dtype).to(like.device)


@torch.no_grad()
def grow_pattention(p: Pattention, n_new: int, preserve: bool = True, new_values: str = "random",
                    generator: torch.Generator | None = None) -> None:
    """Append ``n_new`` zero-keyed parameter tokens to one Pattention (module docstring, steps 1-2)."""
    generator = generator or torch.Generator().manual_seed(0)
    p.key_tokens = _appended(p.key_tokens, torch.zeros(n_new, p.key_tokens.shape[1]))
    p.value_tokens = _appended(p.value_tokens, _new_rows((n_new, p.value_tokens.shape[1]), p.value_tokens,
                                                         new_values, generator))
    if not preserve:  # the paper's code: tau from the current number of tokens
        p.score_scale.fill_(math.sqrt(p.n_tokens))


def grow(model, n_new: int, layers=None, preserve: bool = True, new_values: str = "random", seed: int = 0):
    """Append ``n_new`` parameter tokens to every Pattention of ``layers`` (all when None) of a
    TokenFormer, in place; ``model.cfg.grown`` records the new shapes. Returns the model. Rebuild the
    optimiser afterwards: the grown tensors are new parameters."""
    if not isinstance(n_new, int) or n_new < 1:
        raise ValueError(f"n_new must be a positive integer, got {n_new!r}")
    if not (hasattr(model, "blocks") and pattentions(model, 0)):
        raise ValueError(f"grow() needs a tokenformer model (Pattention blocks); got {type(model).__name__}")
    chosen = _layers(layers, model.cfg.n_layers)
    generator = torch.Generator().manual_seed(seed)
    grown = list(model.cfg.get("grown") or [0] * model.cfg.n_layers)
    for layer in chosen:
        for p in pattentions(model, layer).values():
            grow_pattention(p, n_new, preserve, new_values, generator)
        grown[layer] += n_new
    model.cfg = ArchConfig({**model.cfg.to_dict(), "grown": grown})
    return model


def _mlps(model) -> list[tuple[nn.Module, str]]:
    """Every block's MLP and its layout: ``"linear"`` (components.MLP: ``nn.Linear`` W_in, W_out) or
    ``"tl"`` (transformer_lens: W_in [d, h], b_in, W_out [h, d])."""
    out = []
    for block in getattr(model, "blocks", []):
        mlp = getattr(block, "mlp", None)
        if isinstance(mlp, MLP):
            out.append((mlp, "linear"))
        elif mlp is not None and hasattr(mlp, "W_in") and hasattr(mlp, "b_in") and not hasattr(mlp, "W_gate"):
            out.append((mlp, "tl"))
        else:
            raise ValueError(f"pad_mlp grows ungated MLPs (the workbench's MLP, transformer_lens's MLP); "
                             f"block has {type(mlp).__name__}")
    return out


@torch.no_grad()
def pad_mlp(model, n_new: int, new_values: str = "random", seed: int = 0):
    """Widen every block's MLP by ``n_new`` hidden units with zero input weights and bias (module
    docstring, step 3), in place; ``model.cfg.d_mlp`` follows. Returns the model."""
    if not isinstance(n_new, int) or n_new < 1:
        raise ValueError(f"n_new must be a positive integer, got {n_new!r}")
    act = model.cfg.act_fn if hasattr(model.cfg, "act_fn") else model.cfg.get("act_fn")
    if act not in ("gelu", "gelu_new", "gelu_fast", "relu", "silu"):
        raise ValueError(f"pad_mlp preserves the function only where act(0) = 0 elementwise; "
                         f"act_fn {act!r} is not one of: gelu, gelu_new, gelu_fast, relu, silu")
    generator = torch.Generator().manual_seed(seed)
    for mlp, layout in _mlps(model):
        if layout == "linear":
            w_in, w_out = mlp.W_in, mlp.W_out
            w_in.weight = _appended(w_in.weight, torch.zeros(n_new, w_in.in_features))
            w_in.bias = _appended(w_in.bias, torch.zeros(n_new))
            w_out.weight = _appended(w_out.weight, _new_rows((w_out.out_features, n_new), w_out.weight,
                                                             new_values, generator), dim=1)
            w_in.out_features = w_out.in_features = w_in.weight.shape[0]
        else:
            mlp.W_in = _appended(mlp.W_in, torch.zeros(mlp.W_in.shape[0], n_new), dim=1)
            mlp.b_in = _appended(mlp.b_in, torch.zeros(n_new))
            mlp.W_out = _appended(mlp.W_out, _new_rows((n_new, mlp.W_out.shape[1]), mlp.W_out, new_values, generator))
    if isinstance(model.cfg, ArchConfig):
        model.cfg = ArchConfig({**model.cfg.to_dict(), "d_mlp": model.cfg.d_mlp + n_new})
    else:
        model.cfg.d_mlp += n_new
    return model


def _copy(model):
    """A copy of ``model``: rebuilt from its config and weights (a BlockLM's ArchConfig does not deep-copy)."""
    if not isinstance(model.cfg, ArchConfig):
        return copy.deepcopy(model)
    from workbench.architectures import build_model

    twin = build_model(model.cfg.to_dict())
    twin.load_state_dict(model.state_dict())
    return twin.to(next(model.parameters()).dtype).train(model.training)


@torch.no_grad()
def logit_change(model, tokens: torch.Tensor, grow_fn, **kwargs) -> float:
    """Largest absolute logit change ``grow_fn(copy, **kwargs)`` makes on ``tokens`` (model untouched)."""
    grown = grow_fn(_copy(model), **kwargs)
    return float((grown(tokens) - model(tokens)).abs().max())


def continue_training(model, task, cfg, steps: int, start: int = 0) -> list[float]:
    """``steps`` training steps on ``model`` as it is (grown or not) with the trainer's optimiser,
    learning-rate schedule (from step ``start`` of ``cfg``'s), batches and loss; the losses, in order."""
    from workbench.tasks.base import masked_token_loss
    from workbench.training.trainer import batch_seed, lr_at, make_optimizer

    model.train()
    optimizer = make_optimizer(model, cfg)
    losses = []
    for step in range(start, start + steps):
        batch = task.sample("train", cfg.batch_size, batch_seed(cfg.seed, step))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = masked_token_loss(model(batch.tokens), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return losses
