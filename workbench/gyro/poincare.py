"""The Poincare ball of curvature -c (c > 0) as a Mobius gyrovector space, in torch.

Points are vectors of norm < 1/sqrt(c) along the last dimension; every function broadcasts over the
leading ones. Formulas (Ungar; Ganea et al. 2018, "Hyperbolic Neural Networks"; geoopt's conventions):

    x (+) y   = ((1 + 2c<x,y> + c|y|^2) x + (1 - c|x|^2) y) / (1 + 2c<x,y> + c^2 |x|^2 |y|^2)
    gyr[u,v]w = (-(u (+) v)) (+) (u (+) (v (+) w))        (closed form below, as geoopt)
    r (x) x   = tanh(r artanh(sqrt(c)|x|)) x / (sqrt(c)|x|)
    d(x, y)   = (2 / sqrt(c)) artanh(sqrt(c) |(-x) (+) y|)
    exp_0(v)  = tanh(sqrt(c)|v|) v / (sqrt(c)|v|),   log_0(y) = artanh(sqrt(c)|y|) y / (sqrt(c)|y|)
    exp_x(u)  = x (+) exp_0(lambda_x u / 2),          log_x(y) = (2 / lambda_x) log_0((-x) (+) y)
    M (x) x   = exp_0(M log_0(x))                      (Mobius matrix-vector product)
    lambda_x  = 2 / (1 - c|x|^2)                       (the conformal factor)

Gate form. Every map above is "a vector times a data-dependent scalar" (or, for (+), two scalars):
:func:`expmap0_gate`, :func:`logmap0_gate`, :func:`scalar_mul_gate`, :func:`mobius_add_coefficients`.
The maps are built from those factors, so a model that puts the factors behind hooks computes exactly
what this module computes, and with the factors frozen the map is linear.

Clamping (float64-safe near the boundary), per dtype:

1. Norms are clamped below at ``MIN_NORM`` (1e-15) before any division by a norm.
2. :func:`project` pulls a point of norm > (1 - eps)/sqrt(c) back onto that sphere, with
   ``BALL_EPS[dtype]``: float64 1e-5, float32 4e-3 (geoopt's values), float16 / bfloat16 1e-2.
   :func:`mobius_add`, :func:`expmap0`, :func:`expmap`, :func:`mobius_matvec` and
   :func:`mobius_scalar_mul` project their result by default (``project=False`` turns it off).
3. The argument of artanh (sqrt(c)|y| in log_0, dist, r (x) y) is clamped to at most
   1 - ``ARTANH_EPS[dtype]``: float64 1e-15, float32 1e-7, float16 / bfloat16 1e-3, so a point
   that rounding put on or past the boundary has a finite logarithm.
4. tanh(z)/z and artanh(z)/z use their series 1 - z^2/3 and 1 + z^2/3 for |z| < 1e-4, so the
   factors are exact and differentiable at 0.
"""

from __future__ import annotations

import torch

MIN_NORM = 1e-15
BALL_EPS = {torch.float64: 1e-5, torch.float32: 4e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}
ARTANH_EPS = {torch.float64: 1e-15, torch.float32: 1e-7, torch.float16: 1e-3, torch.bfloat16: 1e-3}
_SERIES_BELOW = 1e-4


def check_curvature(c: float) -> float:
    """``c`` as a float, or a ValueError: the ball of curvature -c needs c > 0."""
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0:
        raise ValueError(f"curvature c must be a number > 0 (the ball has curvature -c); got {c!r}")
    return float(c)


def _eps(table: dict, dtype: torch.dtype) -> float:
    if dtype not in table:
        raise ValueError(f"no clamping constant for dtype {dtype}; choose one of: {', '.join(map(str, table))}")
    return table[dtype]


def norm(x: torch.Tensor) -> torch.Tensor:
    """``|x|`` over the last dimension, kept as ``[..., 1]`` and clamped below at ``MIN_NORM``."""
    return x.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)


def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x * y).sum(-1, keepdim=True)


def tanh_ratio(z: torch.Tensor) -> torch.Tensor:
    """``tanh(z) / z`` (1 at 0); the unused ``torch.where`` branch divides by a safe 1."""
    small = z.abs() < _SERIES_BELOW
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 - z * z / 3, torch.tanh(safe) / safe)


def artanh_ratio(z: torch.Tensor) -> torch.Tensor:
    """``artanh(z) / z`` for ``0 <= z``, ``z`` clamped to ``1 - ARTANH_EPS`` (1 at 0)."""
    z = z.clamp(max=1 - _eps(ARTANH_EPS, z.dtype))
    small = z.abs() < _SERIES_BELOW
    safe = torch.where(small, torch.full_like(z, 0.5), z)
    return torch.where(small, 1 + z * z / 3, torch.atanh(safe) / safe)


def max_norm(c: float, dtype: torch.dtype) -> float:
    return (1 - _eps(BALL_EPS, dtype)) / check_curvature(c) ** 0.5


def project_factor(x: torch.Tensor, c: float) -> torch.Tensor:
    """``[..., 1]``: 1 inside the ball of radius (1 - eps)/sqrt(c), else the factor that puts x on it."""
    return (max_norm(c, x.dtype) / norm(x)).clamp(max=1.0)


def project(x: torch.Tensor, c: float) -> torch.Tensor:
    return x * project_factor(x, c)


def conformal_factor(x: torch.Tensor, c: float) -> torch.Tensor:
    """``lambda_x = 2 / (1 - c|x|^2)``, as ``[..., 1]``."""
    return 2 / (1 - c * dot(x, x)).clamp_min(MIN_NORM)


def mobius_add_coefficients(x: torch.Tensor, y: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)``, each ``[..., 1]``, with ``x (+) y = a x + b y`` (unprojected)."""
    c = check_curvature(c)
    xy, x2, y2 = dot(x, y), dot(x, x), dot(y, y)
    denominator = (1 + 2 * c * xy + c * c * x2 * y2).clamp_min(MIN_NORM)
    return (1 + 2 * c * xy + c * y2) / denominator, (1 - c * x2) / denominator


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float = 1.0, project: bool = True) -> torch.Tensor:
    a, b = mobius_add_coefficients(x, y, c)
    out = a * x + b * y
    return out * project_factor(out, c) if project else out


def mobius_neg(x: torch.Tensor) -> torch.Tensor:
    """The gyrogroup inverse: ``(-x) (+) x = 0``."""
    return -x


def gyration(u: torch.Tensor, v: torch.Tensor, w: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """``gyr[u,v]w``, closed form: ``w + 2 (A u + B v) / D`` with (geoopt's, for curvature -c)
    A = -c^2 <u,w>|v|^2 + c<v,w> + 2c^2 <u,v><v,w>, B = -c^2 <v,w>|u|^2 - c<u,w>,
    D = 1 + 2c<u,v> + c^2 |u|^2 |v|^2. It equals the definition (-(u (+) v)) (+) (u (+) (v (+) w))
    (tests check both), without the three nested additions' rounding."""
    c = check_curvature(c)
    uv, uw, vw, u2, v2 = dot(u, v), dot(u, w), dot(v, w), dot(u, u), dot(v, v)
    a = -c * c * uw * v2 + c * vw + 2 * c * c * uv * vw
    b = -c * c * vw * u2 - c * uw
    d = (1 + 2 * c * uv + c * c * u2 * v2).clamp_min(MIN_NORM)
    return w + 2 * (a * u + b * v) / d


def scalar_mul_gate(r: torch.Tensor | float, x: torch.Tensor, c: float) -> torch.Tensor:
    """``[..., 1]``: the factor g with ``r (x) x = g x``, i.e. tanh(r artanh(s)) / s, s = sqrt(c)|x|."""
    s = check_curvature(c) ** 0.5 * x.norm(dim=-1, keepdim=True)
    rate = r * artanh_ratio(s)  # r artanh(s) / s
    return rate * tanh_ratio(rate * s)


def mobius_scalar_mul(r: torch.Tensor | float, x: torch.Tensor, c: float = 1.0, project: bool = True) -> torch.Tensor:
    out = scalar_mul_gate(r, x, c) * x
    return out * project_factor(out, c) if project else out


def dist(x: torch.Tensor, y: torch.Tensor, c: float = 1.0, keepdim: bool = False) -> torch.Tensor:
    """Hyperbolic distance ``(2/sqrt(c)) artanh(sqrt(c)|(-x) (+) y|)``."""
    sqrt_c = check_curvature(c) ** 0.5
    s = sqrt_c * mobius_add(-x, y, c, project=False).norm(dim=-1, keepdim=True)
    out = 2 / sqrt_c * s * artanh_ratio(s)
    return out if keepdim else out.squeeze(-1)


def expmap0_gate(v: torch.Tensor, c: float) -> torch.Tensor:
    """``[..., 1]``: tanh(sqrt(c)|v|) / (sqrt(c)|v|), so ``exp_0(v) = gate * v`` (before projection)."""
    return tanh_ratio(check_curvature(c) ** 0.5 * v.norm(dim=-1, keepdim=True))


def logmap0_gate(y: torch.Tensor, c: float) -> torch.Tensor:
    """``[..., 1]``: artanh(sqrt(c)|y|) / (sqrt(c)|y|), so ``log_0(y) = gate * y``."""
    return artanh_ratio(check_curvature(c) ** 0.5 * y.norm(dim=-1, keepdim=True))


def expmap0(v: torch.Tensor, c: float = 1.0, project: bool = True) -> torch.Tensor:
    out = expmap0_gate(v, c) * v
    return out * project_factor(out, c) if project else out


def logmap0(y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    return logmap0_gate(y, c) * y


def expmap(x: torch.Tensor, u: torch.Tensor, c: float = 1.0, project: bool = True) -> torch.Tensor:
    """The exponential map at ``x``: ``x (+) exp_0(lambda_x u / 2)``."""
    return mobius_add(x, expmap0(conformal_factor(x, c) * u / 2, c, project=False), c, project=project)


def logmap(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """The logarithmic map at ``x``: ``(2 / lambda_x) log_0((-x) (+) y)``."""
    return 2 / conformal_factor(x, c) * logmap0(mobius_add(-x, y, c, project=False), c)


def mobius_matvec(m: torch.Tensor, x: torch.Tensor, c: float = 1.0, project: bool = True) -> torch.Tensor:
    """``M (x) x = exp_0(M log_0(x))`` for ``m [out, in]`` and ``x [..., in]``."""
    return expmap0(logmap0(x, c) @ m.transpose(-1, -2), c, project=project)


__all__ = [
    "ARTANH_EPS", "BALL_EPS", "MIN_NORM", "artanh_ratio", "check_curvature", "conformal_factor", "dist", "dot",
    "expmap", "expmap0", "expmap0_gate", "gyration", "logmap", "logmap0", "logmap0_gate", "max_norm",
    "mobius_add", "mobius_add_coefficients", "mobius_matvec", "mobius_neg", "mobius_scalar_mul", "norm",
    "project", "project_factor", "scalar_mul_gate", "tanh_ratio",
]
