"""Spliced metrics: how well a model runs with its MLPs replaced by dictionaries.

A *replacement set* is a list of dictionaries, each reading its ``input_hooks`` and writing its
``output_hooks`` (per-layer transcoders: one of each per dictionary; a CLT: every layer's
``hook_mlp_in`` and ``hook_mlp_out``). Splicing runs ONE forward pass with hooks that

- capture every input hook's live value (so with earlier replacements active, layer ``l``'s input
  already carries their effect), and
- overwrite the chosen output hooks with the dictionary's reconstruction from the captured inputs
  (a CLT's output at layer ``t`` decodes the features of layers ``<= t``).

Metrics, over the evaluated batch (rows in chunks of ``batch_size``, no per-token Python loops):

- ``loss_original``: mean next-token cross-entropy of the unmodified model over the task's targets
  (``loss_mask[:, 1:]``, the same targets as the model's own training loss).
- ``loss_replaced[hook]``: the same loss with only that output hook replaced (all other hooks clean).
- ``loss_all_replaced``: the same loss with every output hook replaced in the same pass.
- ``agreement``: share of the predicting positions of those targets (position ``t`` predicts target
  ``t + 1``) where the all-replaced model's argmax next token equals the original model's. Only
  positions the model was trained to predict count: a recall row's prompt tokens and every row's last
  real token (whose next token is padding) carry no trained prediction, and their near-tied argmax
  would flip under any change (counting them put transformer-recall at 92% although it agrees on
  every answer).

The caller chooses the rows: :func:`workbench.dictionaries.jobs.spliced` measures held-out rows of the
distribution the dictionaries were trained on, and separately the task's test split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from workbench.dictionaries.models import Dictionary


@dataclass
class SplicedMetrics:
    loss_original: float
    loss_replaced: dict[str, float]
    loss_all_replaced: float
    agreement: float
    n_targets: int
    n_positions: int

    def to_dict(self) -> dict:
        return asdict(self)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def check_replacement_set(dictionaries: list[Dictionary]) -> list[str]:
    """The output hooks the set writes, in order; each hook written by exactly one dictionary."""
    if not dictionaries:
        raise ValueError("the replacement set holds no dictionary")
    outputs: list[str] = []
    for d in dictionaries:
        c = d.config
        if not c.input_hooks or not c.output_hooks:
            raise ValueError(f"a {c.kind} in the replacement set names no input_hooks/output_hooks; "
                             "it cannot be spliced into a model")
        outputs += c.output_hooks
    twice = sorted({h for h in outputs if outputs.count(h) > 1})
    if twice:
        raise ValueError(f"hooks written by more than one dictionary: {', '.join(twice)}")
    return outputs


def _reconstruct_at(d: Dictionary, captured: dict[str, torch.Tensor], target: int) -> torch.Tensor:
    """Dictionary ``d``'s reconstruction of its output hook ``target`` from the inputs captured so
    far, as ``[rows, d_out]``; inputs of later layers (not yet run) are zeros and their features are
    dropped, as causality requires."""
    c = d.config
    sample = captured[c.input_hooks[0]]
    xs = [captured[h] if h in captured else torch.zeros_like(sample) for h in c.input_hooks[:target + 1]]
    xs += [torch.zeros_like(sample)] * (c.n_layers - target - 1)
    x = torch.stack(xs, dim=1).to(d.W_enc.dtype)  # [rows, layers, d_in]
    acts = d.encode(x if c.n_layers > 1 else x[:, 0])
    if c.n_layers > 1:
        acts = acts.clone()
        acts[:, target + 1:] = 0
    y = d.decode(acts, x if c.n_layers > 1 else x[:, 0])
    return y[:, target] if c.n_layers > 1 else y


def replacement_hooks(dictionaries: list[Dictionary], replace: set[str]) -> list[tuple[str, callable]]:
    """``fwd_hooks`` for ``run_with_hooks``: capture every input hook, overwrite the hooks in ``replace``."""
    captured: dict[str, torch.Tensor] = {}
    hooks: list[tuple[str, callable]] = []

    def capturer(name: str):
        # keyed by the name asked for: an aliased hook reports its native name as ``hook.name``
        def capture(act, hook):
            captured[name] = act.reshape(-1, act.shape[-1])
        return capture

    def writer(d: Dictionary, target: int):
        def write(act, hook):
            y = _reconstruct_at(d, captured, target)
            return y.reshape(act.shape).to(act.dtype)
        return write

    inputs = list(dict.fromkeys(h for d in dictionaries for h in d.config.input_hooks))
    hooks += [(h, capturer(h)) for h in inputs]
    for d in dictionaries:
        hooks += [(h, writer(d, t)) for t, h in enumerate(d.config.output_hooks) if h in replace]
    return hooks


@torch.no_grad()
def spliced_logits(model, dictionaries: list[Dictionary], tokens: torch.Tensor, replace: set[str]) -> torch.Tensor:
    """Logits of one forward pass with the output hooks in ``replace`` spliced (empty: the original)."""
    tokens = tokens.to(_model_device(model))
    if not replace:
        return model(tokens)
    hooks = replacement_hooks(dictionaries, replace)
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


def _nll_sum(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return float(nll[mask[:, 1:]].sum())


@torch.no_grad()
def spliced_metrics(model, dictionaries: list[Dictionary], tokens: torch.Tensor, loss_mask: torch.Tensor,
                    batch_size: int = 32) -> SplicedMetrics:
    """The metrics of the module docstring on ``tokens`` ``[B, T]`` with targets ``loss_mask`` (target view)."""
    outputs = check_replacement_set(dictionaries)
    was_training = model.training
    model.eval()
    for d in dictionaries:
        d.eval()
    device = _model_device(model)
    tokens, loss_mask = tokens.to(device), loss_mask.to(device)
    n_targets = int(loss_mask[:, 1:].sum())
    if n_targets == 0:
        raise ValueError("the evaluation batch has no target tokens under its loss mask")
    sums = {"original": 0.0, "all": 0.0, **{h: 0.0 for h in outputs}}
    agree, positions = 0, 0
    try:
        for s in range(0, tokens.shape[0], batch_size):
            tok, mask = tokens[s:s + batch_size], loss_mask[s:s + batch_size]
            original = spliced_logits(model, dictionaries, tok, set())
            spliced = spliced_logits(model, dictionaries, tok, set(outputs))
            sums["original"] += _nll_sum(original, tok, mask)
            sums["all"] += _nll_sum(spliced, tok, mask)
            for h in outputs:
                sums[h] += _nll_sum(spliced_logits(model, dictionaries, tok, {h}), tok, mask)
            predicting = mask[:, 1:]  # position t predicts target t + 1
            same = original[:, :-1].argmax(-1) == spliced[:, :-1].argmax(-1)
            agree += int((same & predicting).sum())
            positions += int(predicting.sum())
    finally:
        model.train(was_training)
    return SplicedMetrics(loss_original=sums["original"] / n_targets,
                          loss_replaced={h: sums[h] / n_targets for h in outputs},
                          loss_all_replaced=sums["all"] / n_targets,
                          agreement=agree / max(1, positions), n_targets=n_targets, n_positions=positions)


__all__ = ["SplicedMetrics", "check_replacement_set", "replacement_hooks", "spliced_logits", "spliced_metrics"]
