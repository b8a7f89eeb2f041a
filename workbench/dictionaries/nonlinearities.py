"""Feature nonlinearities: ReLU, JumpReLU, TopK and BatchTopK.

Every nonlinearity maps pre-activations ``[batch, layers, features]`` to feature activations of the
same shape. Dictionaries of one layer use ``layers == 1``; a cross-layer transcoder has one row of
features per layer, and TopK / BatchTopK / thresholds act per layer.

JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead") with a threshold ``theta`` per feature:

1. Forward: ``JumpReLU(z) = z * H(z - theta)``; ``H`` is the Heaviside step, strict (``z > theta``).
2. Backward to ``z``: ``H(z - theta)`` (the step itself passes no gradient to ``z``).
3. Backward to ``theta`` (straight-through estimator with a kernel ``K`` of bandwidth ``eps``):
   ``d JumpReLU / d theta = -(theta / eps) * K((z - theta) / eps)``, and for the L0 count
   ``d H(z - theta) / d theta = -(1 / eps) * K((z - theta) / eps)``; ``K`` is the rectangle
   ``K(u) = 1 if |u| < 1/2 else 0``.
4. The threshold is stored as ``log_threshold`` (kept positive under Adam, as in the paper's code);
   autograd multiplies the ``theta`` gradient by ``theta``.

TopK (Gao et al. 2024): keep the ``k`` largest pre-activations of each row, zero the rest, then ReLU
(with ``relu=False`` exactly ``k`` entries per row are nonzero whatever their sign).

BatchTopK (Bussmann et al. 2024): ReLU, then keep the ``k * batch`` largest activations of the whole
batch (per layer), so ``k`` is an average per row. In data-parallel training the batch is the global
one: the kept set is everything at or above the ``k * N``-th largest activation over all processes. For inference :meth:`BatchTopK.to_jumprelu` turns it
into a JumpReLU whose threshold does not depend on the batch:

1. For each calibration batch, run BatchTopK and take the smallest positive activation it kept.
2. ``method="global"`` (the paper's estimator): one threshold per layer, the mean over calibration
   batches of those minima. ``method="per_feature"``: each feature's threshold is the smallest
   positive activation BatchTopK kept for it over the calibration batches; a feature never kept gets
   the global threshold.
3. The threshold is lowered by a relative ``1e-6`` so the smallest kept value itself passes the strict
   ``z > theta`` (and survives the ``exp(log(theta))`` round trip).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

NONLINEARITIES = ("relu", "jumprelu", "topk", "batchtopk")
THRESHOLD_SLACK = 1e-6  # relative; see step 3 of the BatchTopK conversion


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel ``K(u) = 1`` for ``|u| < 1/2``, else 0."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _sum_to_shape(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo broadcasting: sum ``grad`` over the leading dimensions ``shape`` lacks."""
    extra = grad.dim() - len(shape)
    return grad.sum(dim=tuple(range(extra))) if extra > 0 else grad


class _JumpReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, threshold, bandwidth: float):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad_out * (z > threshold).to(z.dtype)
        grad_theta = grad_out * (-(threshold / eps) * rectangle((z - threshold) / eps))
        return grad_z, _sum_to_shape(grad_theta, threshold.shape), None


class _StepFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, threshold, bandwidth: float):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = grad_out * (-(1.0 / eps) * rectangle((z - threshold) / eps))
        return torch.zeros_like(z), _sum_to_shape(grad_theta, threshold.shape), None


def jumprelu(z: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``z * H(z - threshold)`` with the straight-through threshold gradient (module docstring)."""
    return _JumpReLUFunction.apply(z, threshold, bandwidth)


def heaviside_step(z: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``H(z - threshold)`` with the straight-through threshold gradient; its sum is the L0."""
    return _StepFunction.apply(z, threshold, bandwidth)


class ReLU(nn.Module):
    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)


class JumpReLU(nn.Module):
    """JumpReLU with a learned threshold per (layer, feature)."""

    def __init__(self, n_layers: int, n_features: int, init_threshold: float = 1e-3, bandwidth: float = 1e-3):
        super().__init__()
        if init_threshold <= 0 or bandwidth <= 0:
            raise ValueError(f"JumpReLU needs init_threshold > 0 and bandwidth > 0; got {init_threshold}, {bandwidth}")
        self.bandwidth = float(bandwidth)
        self.log_threshold = nn.Parameter(torch.full((n_layers, n_features), math.log(init_threshold)))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return jumprelu(pre, self.threshold, self.bandwidth)

    def step(self, pre: torch.Tensor) -> torch.Tensor:
        """1 where a feature fires; summing it gives the L0 penalty with a threshold gradient."""
        return heaviside_step(pre, self.threshold, self.bandwidth)


class TopK(nn.Module):
    """Keep the ``k`` largest pre-activations per row and layer, then ReLU (unless ``relu=False``)."""

    def __init__(self, k: int, n_features: int, relu: bool = True):
        super().__init__()
        if not 1 <= k <= n_features:
            raise ValueError(f"TopK needs 1 <= k <= n_features ({n_features}); got k={k}")
        self.k, self.relu = k, relu

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = pre.topk(self.k, dim=-1, sorted=False)  # the order is irrelevant to scatter
        if self.relu:
            values = torch.relu(values)
        return torch.zeros_like(pre).scatter(-1, indices, values)


class BatchTopK(nn.Module):
    """ReLU, then the ``k * batch`` largest activations of the batch per layer (module docstring)."""

    def __init__(self, k: int, n_features: int):
        super().__init__()
        if not 1 <= k <= n_features:
            raise ValueError(f"BatchTopK needs 1 <= k <= n_features ({n_features}); got k={k}")
        self.k = k
        self.batch_comm = None  # set by distributed training: the batch spans every process

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        if pre.dim() != 3:
            raise ValueError(f"BatchTopK expects pre-activations [batch, layers, features]; got {tuple(pre.shape)}")
        batch, n_layers, n_features = pre.shape
        per_layer = torch.relu(pre).transpose(0, 1).reshape(n_layers, batch * n_features)
        if self.batch_comm is not None and self.batch_comm.distributed:
            kept = self._keep_over_processes(per_layer, batch, n_features)
        else:
            values, indices = per_layer.topk(min(self.k * batch, batch * n_features), dim=-1, sorted=False)
            kept = torch.zeros_like(per_layer).scatter(-1, indices, values)
        return kept.reshape(n_layers, batch, n_features).transpose(0, 1)

    def _keep_over_processes(self, per_layer: torch.Tensor, batch: int, n_features: int) -> torch.Tensor:
        """Keep what is at least the ``k * N``-th largest activation of the global batch (``N`` rows
        over all processes): every process contributes its largest ``min(k * N, rows * features)``,
        which holds its share of the global top."""
        comm = self.batch_comm
        global_rows = comm.total(batch)
        keep = min(self.k * global_rows, global_rows * n_features)
        local_top = per_layer.detach().topk(min(keep, batch * n_features), dim=-1, sorted=False).values
        candidates = comm.gather_rows(local_top.T.contiguous()).T  # [layers, sum of m]
        threshold = candidates.topk(keep, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        return per_layer * (per_layer >= threshold).to(per_layer.dtype)

    @torch.no_grad()
    def calibrate_thresholds(self, calibration_pre: Iterable[torch.Tensor], method: str = "global") -> torch.Tensor:
        """Thresholds ``[layers, features]`` estimated from pre-activation batches (module docstring)."""
        if method not in ("global", "per_feature"):
            raise ValueError(f"unknown BatchTopK threshold method {method!r}; choose one of: global, per_feature")
        batch_minima, feature_minima = [], None
        for pre in calibration_pre:
            kept = self.forward(pre)
            positive = torch.where(kept > 0, kept, torch.full_like(kept, math.inf))
            batch_minima.append(positive.amin(dim=(0, 2)))  # [layers]
            per_feature = positive.amin(dim=0)  # [layers, features]
            feature_minima = per_feature if feature_minima is None else torch.minimum(feature_minima, per_feature)
        if not batch_minima:
            raise ValueError("BatchTopK calibration needs at least one batch of pre-activations")
        minima = torch.stack(batch_minima)
        if torch.isinf(minima).any():
            raise ValueError("a calibration batch kept no positive activation in some layer; "
                             "calibrate on real activations, not an all-negative batch")
        global_threshold = minima.mean(dim=0)[:, None].expand_as(feature_minima)
        if method == "global":
            thresholds = global_threshold.clone()
        else:
            thresholds = torch.where(torch.isinf(feature_minima), global_threshold, feature_minima)
        return thresholds * (1 - THRESHOLD_SLACK)

    def to_jumprelu(self, calibration_pre: Iterable[torch.Tensor], method: str = "global",
                    bandwidth: float = 1e-3) -> JumpReLU:
        thresholds = self.calibrate_thresholds(calibration_pre, method)
        module = JumpReLU(thresholds.shape[0], thresholds.shape[1], bandwidth=bandwidth)
        with torch.no_grad():
            module.log_threshold.copy_(thresholds.log())
        return module


def make_nonlinearity(name: str, n_layers: int, n_features: int, k: int | None = None,
                      init_threshold: float = 1e-3, bandwidth: float = 1e-3, topk_relu: bool = True) -> nn.Module:
    """The nonlinearity named ``name`` (one of :data:`NONLINEARITIES`) for a dictionary's shape."""
    if name == "relu":
        return ReLU()
    if name == "jumprelu":
        return JumpReLU(n_layers, n_features, init_threshold, bandwidth)
    if name in ("topk", "batchtopk"):
        if k is None:
            raise ValueError(f"activation {name!r} needs k (the number of active features per row)")
        return TopK(k, n_features, topk_relu) if name == "topk" else BatchTopK(k, n_features)
    raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(NONLINEARITIES)}")
