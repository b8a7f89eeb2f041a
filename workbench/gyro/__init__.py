"""Gyrovector-space mathematics: the Poincare ball (Mobius) and the Beltrami-Klein ball (Einstein).

``poincare``: Mobius addition, gyration, Mobius scalar multiplication, distance, exp/log maps at 0 and
at x, the Mobius matrix-vector product, projection; each map also as its data-dependent scalar
factors (gate form). ``klein``: the Poincare <-> Klein conversion, Einstein addition, the Einstein
midpoint and the weighted gyro-midpoint (attention's aggregation). Curvature is -c with c > 0, a
parameter of every function. Clamping near the boundary is documented in ``poincare``.

The package imports nothing from the rest of the workbench, so architectures can build on it.
"""

from workbench.gyro.klein import (
    einstein_add,
    einstein_midpoint,
    gyro_midpoint,
    klein_to_poincare,
    lorentz_factor,
    midpoint_parts,
    poincare_to_klein,
)
from workbench.gyro.poincare import (
    ARTANH_EPS,
    BALL_EPS,
    artanh_ratio,
    check_curvature,
    conformal_factor,
    dist,
    expmap,
    expmap0,
    expmap0_gate,
    gyration,
    logmap,
    logmap0,
    logmap0_gate,
    max_norm,
    mobius_add,
    mobius_add_coefficients,
    mobius_matvec,
    mobius_neg,
    mobius_scalar_mul,
    project,
    project_factor,
    scalar_mul_gate,
    tanh_ratio,
)

__all__ = [
    "ARTANH_EPS", "BALL_EPS", "artanh_ratio", "check_curvature", "conformal_factor", "dist", "einstein_add",
    "einstein_midpoint", "expmap", "expmap0", "expmap0_gate", "gyration", "gyro_midpoint", "klein_to_poincare",
    "logmap", "logmap0", "logmap0_gate", "lorentz_factor", "max_norm", "midpoint_parts", "mobius_add",
    "mobius_add_coefficients", "mobius_matvec", "mobius_neg", "mobius_scalar_mul", "poincare_to_klein",
    "project", "project_factor", "scalar_mul_gate", "tanh_ratio",
]
