"""Linear probes: how well each RASP variable decodes from a model's residual stream, layer by layer.

Works on every architecture: the residual stream is read at the shared hooks
``blocks.{l}.hook_resid_pre`` (the input to layer ``l``; layer 0's is the embedding) and, after the
last layer, ``blocks.{L-1}.hook_resid_post``, so a model of ``L`` layers has ``L + 1`` probe sites.

Algorithm:

1. Run the model on the inputs' token rows and cache the residual stream at every site.
2. Gather the vectors at the program's positions (program position ``i`` of input ``b`` sits at token
   position ``offset + i`` of row ``b``; ``offset = 1`` skips ``<bos>``), flattened in (input,
   position) order, the order :func:`workbench.compare.variables.evaluate_variables` uses.
3. Split by input, not by position: the first ``train_fraction`` of the inputs train the probe, the
   rest test it, so no test position shares a sequence with a training position.
4. Standardise each dimension with the training rows' mean and standard deviation.
5. Categorical variable: multinomial logistic regression (softmax of an affine map, cross-entropy plus
   an L2 penalty on the weights) fitted by full-batch L-BFGS for a few hundred steps; report held-out
   accuracy beside the majority-class baseline (the most common training class, scored on the test
   rows; also on the test rows where the variable is not ``None``, which an aggregate that selects
   nothing leaves at most positions). Numerical variable: ridge regression in closed form; report held-out R^2 (baseline 0: the
   training mean).
6. A variable with one value on the training rows has nothing to decode; it is reported with its
   baseline and score NaN.
7. A categorical variable that exists only at some positions (an aggregate that selects nothing
   elsewhere, e.g. recall's answer only at the query) gets a second probe trained and tested on those
   positions alone: ``score_defined`` / ``baseline_defined``. A probe fitted on every position would
   mostly learn the empty class there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench.architectures.hooked import hook_name
from workbench.compare.variables import Variable


def probe_sites(n_layers: int) -> list[tuple[int, str]]:
    """``(layer index, hook)`` per site: the stream entering each layer, then the last layer's output."""
    sites = [(layer, hook_name("resid_pre", layer)) for layer in range(n_layers)]
    return sites + [(n_layers, hook_name("resid_post", n_layers - 1))]


@torch.no_grad()
def residual_streams(model, tokens: torch.Tensor, batch_size: int = 256) -> dict[int, torch.Tensor]:
    """Step 1: ``{site layer: [rows, pos, d_model]}`` float32 on the CPU."""
    sites = probe_sites(model.cfg.n_layers)
    names = {hook for _, hook in sites}
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer, _ in sites}
    device = next(model.parameters()).device
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start:start + batch_size].to(device),
                                        names_filter=lambda n: n in names)
        for layer, hook in sites:
            parts[layer].append(cache[hook].float().cpu())
    return {layer: torch.cat(chunks) for layer, chunks in parts.items()}


def gather_positions(stream: torch.Tensor, lengths: list[int], offset: int = 1) -> torch.Tensor:
    """Step 2: ``[sum(lengths), d]``: row ``b``'s positions ``offset .. offset + lengths[b] - 1``."""
    if stream.shape[0] != len(lengths):
        raise ValueError(f"{stream.shape[0]} residual rows for {len(lengths)} program inputs")
    if max(lengths, default=0) + offset > stream.shape[1]:
        raise ValueError(f"program inputs of length up to {max(lengths)} (+{offset}) do not fit the model's "
                         f"{stream.shape[1]} positions")
    return torch.cat([stream[b, offset:offset + n] for b, n in enumerate(lengths)])


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0), train.std(0, unbiased=False).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 200,
                 l2: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 5: ``(W [d, classes], b [classes])`` of an L2-penalised multinomial logistic regression."""
    torch.manual_seed(0)
    weight = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return weight.detach(), bias.detach()


def logistic_probe(x_train, y_train, x_test, y_test, n_classes: int, steps: int = 200,
                   l2: float = 1e-3, defined=None) -> dict:
    """Held-out accuracy of a logistic probe and the majority-class baseline (steps 4-5).

    ``defined`` (bool over the test rows) also scores the rows where the variable has a value
    (not ``None``): ``score_defined`` / ``baseline_defined``, the same probe on those rows only.
    """
    y_train, y_test = torch.as_tensor(y_train), torch.as_tensor(y_test)
    defined = torch.ones(len(y_test), dtype=torch.bool) if defined is None else torch.as_tensor(defined)
    majority = int(torch.bincount(y_train, minlength=n_classes).argmax())
    right_baseline = y_test == majority
    out = {"baseline": float(right_baseline.float().mean()),
           "baseline_defined": float(right_baseline[defined].float().mean())}
    if int(torch.unique(y_train).numel()) < 2:
        return {"score": float("nan"), "score_defined": float("nan"), "train_score": float("nan"), **out}
    x_train, x_test = _standardise(x_train, x_test)
    weight, bias = fit_logistic(x_train, y_train, n_classes, steps, l2)
    right = (x_test @ weight + bias).argmax(1) == y_test
    train_acc = float(((x_train @ weight + bias).argmax(1) == y_train).float().mean())
    return {"score": float(right.float().mean()), "score_defined": float(right[defined].float().mean()),
            "train_score": train_acc, **out}


def ridge_probe(x_train, y_train, x_test, y_test, l2: float = 1e-3) -> dict:
    """Held-out R^2 of a closed-form ridge regression (steps 4-5); baseline 0 is the training mean."""
    y_train = torch.as_tensor(y_train, dtype=torch.float64)
    y_test = torch.as_tensor(y_test, dtype=torch.float64)
    if float(y_train.std()) == 0.0:
        return {"score": float("nan"), "baseline": 0.0, "train_score": float("nan")}
    x_train, x_test = (t.double() for t in _standardise(x_train, x_test))
    design = torch.cat([x_train, torch.ones(len(x_train), 1, dtype=torch.float64)], 1)
    penalty = l2 * len(x_train) * torch.eye(design.shape[1], dtype=torch.float64)
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    coef = torch.linalg.solve(design.T @ design + penalty, design.T @ y_train)

    def r2(x, y):
        pred = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1) @ coef
        return float(1.0 - (y - pred).pow(2).sum() / (y - y_train.mean()).pow(2).sum().clamp_min(1e-12))

    return {"score": r2(x_test, y_test), "baseline": 0.0, "train_score": r2(x_train, y_train)}


def split_rows(lengths: list[int], train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Step 3: boolean masks over the flattened positions, train inputs first."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n_train = max(1, min(len(lengths) - 1, round(train_fraction * len(lengths))))
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return owner < n_train, owner >= n_train


def probe_table(streams: dict[int, torch.Tensor], variables: dict[str, Variable], lengths: list[int],
                offset: int = 1, train_fraction: float = 0.8, steps: int = 200, l2: float = 1e-3) -> pd.DataFrame:
    """Every variable at every site (steps 2-6): one row per (layer, variable)."""
    train, test = split_rows(lengths, train_fraction)
    rows = []
    for layer, stream in sorted(streams.items()):
        x = gather_positions(stream, lengths, offset)
        for name, var in variables.items():
            codes = var.codes()
            if len(codes) != len(x):
                raise ValueError(f"variable {name!r} has {len(codes)} values for {len(x)} positions")
            if var.numerical:
                result = ridge_probe(x[train], codes[train], x[test], codes[test], l2)
                metric = "r2"
            else:
                defined = np.array([v is not None for v in var.values])
                result = logistic_probe(x[train], codes[train], x[test], codes[test], len(var.classes), steps, l2,
                                        defined[test])
                if not defined.all():  # step 7: a probe of its own on the positions where the variable exists
                    tr, te = train & defined, test & defined
                    own = logistic_probe(x[tr], codes[tr], x[te], codes[te], len(var.classes), steps, l2)
                    result |= {"score_defined": own["score"], "baseline_defined": own["baseline"]}
                metric = "accuracy"
            rows.append({"layer": layer, "variable": name, "metric": metric,
                         "n_classes": 0 if var.numerical else len(var.classes), **result})
    return pd.DataFrame(rows)
