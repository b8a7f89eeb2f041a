"""Loss terms for dictionary training, and dead-feature bookkeeping.

Shapes: inputs, targets and reconstructions are ``[batch, layers, width]``; activations and
pre-activations ``[batch, layers, features]``; decoder norms ``[layers, features]``. Every term is a sum
over layers and features (or widths) and a mean over the batch's token rows.

- Reconstruction: ``sum_l ||y_l - y_hat_l||^2`` (Anthropic's CLT loss sums over the layers written).
- Sparsity, one of: ``l1`` = ``sum_i f_i ||d_i||``; ``tanh`` = ``sum_i tanh(c * f_i ||d_i||)``
  (Anthropic's penalty for JumpReLU CLTs); ``l0`` = ``sum_i H(pre_i - theta_i)`` through the JumpReLU
  straight-through estimator. ``||d_i||`` is 1 under the unit-norm constraint.
- Pre-activation loss (the attribution-graph papers' CLT training): ``sum_i ReLU(-pre_i)`` over dead
  features (or all), which pushes never-firing features back towards firing.
- AuxK (Gao et al. 2024) for TopK / BatchTopK:
  1. the residual ``e = y - y_hat`` (detached);
  2. keep the ``k_aux`` largest ReLU'd pre-activations among *dead* features per row and layer;
  3. decode them without biases: ``e_hat``;
  4. loss = ``||e - e_hat||^2 / ||e - mean(e)||^2`` over the batch (0 when no feature is dead).

Dead features (:class:`DeadFeatureTracker`): a feature is dead when it has not fired on any of the
last ``window_tokens`` token rows. The counters live in a buffer so checkpoints carry them.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.dictionaries.nonlinearities import JumpReLU

SPARSITY_PENALTIES = ("l1", "tanh", "l0", "none")


def reconstruction_mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (recon - target).pow(2).sum(dim=(-2, -1)).mean()


def l1_penalty(acts: torch.Tensor, decoder_norms: torch.Tensor) -> torch.Tensor:
    return (acts.abs() * decoder_norms).sum(dim=(-2, -1)).mean()


def tanh_penalty(acts: torch.Tensor, decoder_norms: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.tanh(scale * acts.abs() * decoder_norms).sum(dim=(-2, -1)).mean()


def l0_penalty(pre: torch.Tensor, activation: nn.Module) -> torch.Tensor:
    if not isinstance(activation, JumpReLU):
        raise TypeError(f"the l0 penalty needs a JumpReLU dictionary (its threshold gets the gradient); "
                        f"this one uses {type(activation).__name__}; choose l1 or tanh instead")
    return activation.step(pre).sum(dim=(-2, -1)).mean()


def sparsity_penalty(kind: str, acts: torch.Tensor, pre: torch.Tensor, decoder_norms: torch.Tensor,
                     activation: nn.Module, tanh_scale: float = 4.0) -> torch.Tensor:
    """The penalty named ``kind`` (one of :data:`SPARSITY_PENALTIES`)."""
    if kind == "l1":
        return l1_penalty(acts, decoder_norms)
    if kind == "tanh":
        return tanh_penalty(acts, decoder_norms, tanh_scale)
    if kind == "l0":
        return l0_penalty(pre, activation)
    if kind == "none":
        return acts.new_zeros(())
    raise ValueError(f"unknown sparsity penalty {kind!r}; choose one of: {', '.join(SPARSITY_PENALTIES)}")


def pre_activation_loss(pre: torch.Tensor, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_i ReLU(-pre_i)`` over the features where ``feature_mask`` ``[layers, features]`` is True."""
    negative = torch.relu(-pre)
    if feature_mask is not None:
        negative = negative * feature_mask.to(pre.dtype)
    return negative.sum(dim=(-2, -1)).mean()


def auxk_loss(dictionary, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, k_aux: int,
              comm=None) -> torch.Tensor:
    """The AuxK loss of the module docstring; ``dead`` is ``[layers, features]`` bool. Under
    distributed training (``comm``) the normaliser is the global batch's, so the processes' losses
    sum to the global batch's loss."""
    if not dead.any():
        return pre.new_zeros(())
    k = min(k_aux, int(dead.sum(dim=1).max()))
    candidates = torch.where(dead, torch.relu(pre), torch.full_like(pre, -1.0))  # live features never chosen
    values, indices = candidates.topk(k, dim=-1, sorted=False)
    aux_acts = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
    residual = residual.detach()
    error_hat = dictionary.decode_features(aux_acts)
    if comm is not None and comm.distributed:
        spread = comm.sum_((residual - comm.mean_rows(residual)).pow(2).sum())
    else:
        spread = (residual - residual.mean(dim=0, keepdim=True)).pow(2).sum()
    return (residual - error_hat).pow(2).sum() / spread.clamp_min(1e-12)


class DeadFeatureTracker(nn.Module):
    """Token rows since each feature last fired, per (layer, feature)."""

    def __init__(self, n_layers: int, n_features: int, window_tokens: int):
        super().__init__()
        if window_tokens < 1:
            raise ValueError(f"dead-feature window must be at least one token; got {window_tokens}")
        self.window_tokens = window_tokens
        self.register_buffer("tokens_since_fired", torch.zeros(n_layers, n_features, dtype=torch.int64))

    @torch.no_grad()
    def update(self, acts: torch.Tensor, comm=None) -> None:
        """Count ``acts``' rows; under distributed training (``comm``) the global batch's rows and
        "fired" mask, so every process keeps the same counters."""
        fired = (acts != 0).any(dim=0)
        rows = acts.shape[0]
        if comm is not None and comm.distributed:
            fired = comm.max_(fired.to(torch.int32)).bool()
            rows = comm.total(rows)
        self.tokens_since_fired.add_(rows).masked_fill_(fired, 0)

    def dead(self) -> torch.Tensor:
        """Bool ``[layers, features]``: silent for at least the whole window."""
        return self.tokens_since_fired >= self.window_tokens

    def dead_fraction(self) -> torch.Tensor:
        return self.dead().float().mean(dim=1)
