"""Per-layer quality of a dictionary: FVU, L0, dead and dense fractions.

- FVU (fraction of variance unexplained) at layer ``l``: ``sum ||y - y_hat||^2 / sum ||y - mean(y)||^2``
  over token rows, the mean taken over the same rows. 0 is perfect; 1 is no better than the mean.
  It is scale-free, so normalised and model units give the same value.
- L0: mean number of nonzero feature activations per token row.
- Dead fraction: features that never fired on the evaluated rows.
- Dense fraction: features that fired on more than ``dense_threshold`` of the rows (default 10%).

Rows at position 0 (the ``<bos>`` token every task starts with) are left out when the minibatches
carry positions (:func:`evaluate_dictionary`): the first token's activations are one constant outlier
vector per hook (on transformer-toyworld its ``hook_mlp_out`` has 10-30x the squared norm of any
other position), so counting it inflates the variance and flatters FVU several-fold (that model's
layer-1 transcoder: 0.002 with it, 0.017 without). SAELens's ``exclude_special_tokens`` and
circuit-tracer's dropping of position-0 nodes exclude it for the same reason.

:class:`DictionaryMetrics` accumulates sums over minibatches, so an evaluation over many batches
needs no more memory than one.
"""

from __future__ import annotations

import torch

DENSE_THRESHOLD = 0.1


def fvu(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-layer FVU ``[layers]`` of ``[batch, layers, width]`` tensors (``[batch, width]``: one layer)."""
    if target.dim() == 2:
        recon, target = recon.unsqueeze(1), target.unsqueeze(1)
    error = (target - recon).pow(2).sum(dim=(0, 2))
    spread = (target - target.mean(dim=0, keepdim=True)).pow(2).sum(dim=(0, 2))
    return error / spread.clamp_min(1e-12)


def l0(acts: torch.Tensor) -> torch.Tensor:
    """Per-layer mean count of nonzero activations per row ``[layers]``."""
    if acts.dim() == 2:
        acts = acts.unsqueeze(1)
    return (acts != 0).sum(dim=-1).float().mean(dim=0)


class DictionaryMetrics:
    """Streaming per-layer FVU, L0, dead and dense fractions over many minibatches."""

    def __init__(self, dense_threshold: float = DENSE_THRESHOLD):
        self.dense_threshold = dense_threshold
        self.rows = 0
        self.error = self.sum_y = self.sum_y2 = self.active_count = self.fire_count = None

    @torch.no_grad()
    def update(self, recon: torch.Tensor, target: torch.Tensor, acts: torch.Tensor) -> None:
        if target.dim() == 2:
            recon, target, acts = recon.unsqueeze(1), target.unsqueeze(1), acts.unsqueeze(1)
        recon, target, acts = recon.double(), target.double(), acts.double()
        parts = {"error": (target - recon).pow(2).sum(dim=(0, 2)), "sum_y": target.sum(dim=0),
                 "sum_y2": target.pow(2).sum(dim=(0, 2)), "active_count": (acts != 0).sum(dim=(0, 2)).double(),
                 "fire_count": (acts != 0).sum(dim=0).double()}
        for name, value in parts.items():
            current = getattr(self, name)
            setattr(self, name, value if current is None else current + value)
        self.rows += target.shape[0]

    def result(self) -> dict[str, list[float]]:
        """Per-layer lists: ``fvu``, ``l0``, ``dead_fraction``, ``dense_fraction``."""
        if self.rows == 0:
            raise ValueError("no minibatch was evaluated; DictionaryMetrics.update was never called")
        # sum ||y - mean||^2 = sum ||y||^2 - ||sum y||^2 / n, per layer
        spread = self.sum_y2 - self.sum_y.pow(2).sum(dim=1) / self.rows
        frequency = self.fire_count / self.rows
        return {"fvu": (self.error / spread.clamp_min(1e-12)).tolist(),
                "l0": (self.active_count / self.rows).tolist(),
                "dead_fraction": (frequency == 0).double().mean(dim=1).tolist(),
                "dense_fraction": (frequency > self.dense_threshold).double().mean(dim=1).tolist()}


@torch.no_grad()
def evaluate_dictionary(dictionary, minibatches, input_hooks: list[str], output_hooks: list[str],
                        n_batches: int, dense_threshold: float = DENSE_THRESHOLD) -> dict[str, list[float]]:
    """Per-layer metrics of ``dictionary`` (model units) over ``n_batches`` of an activation stream;
    rows at position 0 are skipped when the minibatches hold ``"position"`` (module docstring)."""
    metrics = DictionaryMetrics(dense_threshold)
    for i, batch in enumerate(minibatches):
        if i >= n_batches:
            break
        if "position" in batch:
            keep = batch["position"] != 0
            batch = {k: v[keep] for k, v in batch.items()}
        x = torch.stack([batch[h].float() for h in input_hooks], dim=1)
        y = torch.stack([batch[h].float() for h in output_hooks], dim=1)
        recon, acts = dictionary(x if dictionary.config.n_layers > 1 else x[:, 0])
        metrics.update(recon, y if dictionary.config.n_layers > 1 else y[:, 0], acts)
    return metrics.result()
