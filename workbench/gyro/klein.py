"""The Beltrami-Klein ball (Einstein gyrovector space) and the gyro-midpoint, curvature -c.

    Poincare -> Klein:  k = 2 (x) p = 2p / (1 + c|p|^2)
    Klein -> Poincare:  p = 1/2 (x) k = k / (1 + sqrt(1 - c|k|^2))
    gamma_u            = 1 / sqrt(1 - c|u|^2)                (the Lorentz factor, Klein coordinates)
    u (+)_E v          = (u + v / gamma_u + c gamma_u / (1 + gamma_u) <u,v> u) / (1 + c<u,v>)

The two spaces are isomorphic through that conversion: ``klein(a (+)_M b) = klein(a) (+)_E klein(b)``
(the tests check it). The weighted Einstein midpoint of Klein points is the convex combination
``sum_i w_i gamma_i k_i / sum_i w_i gamma_i``. In Poincare coordinates, with gamma(klein(p)) =
lambda_p - 1 and gamma k = lambda_p p, that is the gyro-midpoint (Ungar; Shimizu et al. 2021):

1. numerator   n = sum_i w_i lambda_i p_i            (lambda_i the conformal factor of p_i)
2. denominator s = sum_i w_i (lambda_i - 1)
3. the Klein midpoint n / s, taken back to the ball: m = 1/2 (x) (n / s).

With the weights, the lambdas, s and the 1/2 (x) factor frozen, m is linear in the points: that is how
the gyro architecture's attention is in gate form. Non-negative weights (attention) keep n / s inside
the Klein ball; clamping follows ``poincare`` (its module docstring).
"""

from __future__ import annotations

import torch

from workbench.gyro.poincare import (
    MIN_NORM,
    check_curvature,
    conformal_factor,
    dot,
    mobius_scalar_mul,
    project_factor,
)


def poincare_to_klein(p: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    return 2 * p / (1 + check_curvature(c) * dot(p, p))


def klein_to_poincare(k: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    return k / (1 + (1 - check_curvature(c) * dot(k, k)).clamp_min(0).sqrt())


def lorentz_factor(k: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """``gamma_k = 1 / sqrt(1 - c|k|^2)`` for a Klein point, as ``[..., 1]``."""
    return (1 - check_curvature(c) * dot(k, k)).clamp_min(MIN_NORM).rsqrt()


def einstein_add(u: torch.Tensor, v: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    c = check_curvature(c)
    gamma, uv = lorentz_factor(u, c), dot(u, v)
    return (u + v / gamma + c * gamma / (1 + gamma) * uv * u) / (1 + c * uv)


def einstein_midpoint(k: torch.Tensor, weights: torch.Tensor | None = None, dim: int = -2,
                      c: float = 1.0) -> torch.Tensor:
    """Weighted Einstein midpoint of Klein points ``k`` reduced over ``dim`` (weights broadcast
    against ``k`` without its last dimension)."""
    gamma = lorentz_factor(k, c)
    w = gamma if weights is None else weights.unsqueeze(-1) * gamma
    return (w * k).sum(dim) / (w.sum(dim)).clamp_min(MIN_NORM)


def midpoint_parts(p: torch.Tensor, weights: torch.Tensor | None = None, dim: int = -2,
                   c: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2 of the module docstring: ``(n, s)`` for Poincare points ``p`` reduced over ``dim``."""
    lam = conformal_factor(p, c)
    w = torch.ones_like(lam) if weights is None else weights.unsqueeze(-1)
    return (w * lam * p).sum(dim), (w * (lam - 1)).sum(dim)


def gyro_midpoint(p: torch.Tensor, weights: torch.Tensor | None = None, dim: int = -2, c: float = 1.0,
                  project: bool = True) -> torch.Tensor:
    """The weighted gyro-midpoint of Poincare points ``p`` over ``dim`` (module docstring, steps 1-3)."""
    n, s = midpoint_parts(p, weights, dim, c)
    klein = n / s.clamp_min(MIN_NORM)
    klein = klein * project_factor(klein, c)  # a rounding step past the Klein boundary stays finite
    return mobius_scalar_mul(0.5, klein, c, project=project)


__all__ = ["einstein_add", "einstein_midpoint", "gyro_midpoint", "klein_to_poincare", "lorentz_factor",
           "midpoint_parts", "poincare_to_klein"]
