"""Gyrovector mathematics (workbench.gyro): property tests (hypothesis) and geoopt cross-checks, float64."""

import geoopt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench import gyro

F64 = torch.float64
CURVATURES = st.sampled_from([0.3, 1.0, 2.5])
MARGIN = 0.9  # points are drawn with |x| <= MARGIN / sqrt(c)
PROPERTY = settings(max_examples=60, deadline=None)


@st.composite
def points(draw, n: int = 1, dim: int = 3):
    """(c, [n points inside the ball of curvature -c, |x| <= MARGIN / sqrt(c)])."""
    c = draw(CURVATURES)
    out = []
    for _ in range(n):
        direction = draw(st.lists(st.floats(-1, 1), min_size=dim, max_size=dim))
        radius = draw(st.floats(0, MARGIN))
        v = torch.tensor(direction, dtype=F64)
        v = v / v.norm() if v.norm() > 1e-6 else torch.zeros(dim, dtype=F64)
        out.append(v * radius / c ** 0.5)
    return c, out


def close(a, b, atol=1e-9):
    return torch.allclose(a, b, rtol=1e-9, atol=atol)


# --- gyrogroup axioms and derived laws ---------------------------------------------------------------

@PROPERTY
@given(points(1))
def test_left_identity_and_left_inverse(cp):
    c, (a,) = cp
    assert close(gyro.mobius_add(torch.zeros_like(a), a, c), a)
    assert close(gyro.mobius_add(gyro.mobius_neg(a), a, c), torch.zeros_like(a))


@PROPERTY
@given(points(3))
def test_gyroassociativity(cp):
    c, (a, b, x) = cp
    left = gyro.mobius_add(a, gyro.mobius_add(b, x, c), c)
    right = gyro.mobius_add(gyro.mobius_add(a, b, c), gyro.gyration(a, b, x, c), c)
    assert close(left, right, atol=1e-8)


@PROPERTY
@given(points(3))
def test_gyration_closed_form_is_the_definition_and_an_automorphism(cp):
    c, (u, v, w) = cp
    definition = gyro.mobius_add(-gyro.mobius_add(u, v, c), gyro.mobius_add(u, gyro.mobius_add(v, w, c), c), c)
    assert close(gyro.gyration(u, v, w, c), definition, atol=1e-8)
    # an automorphism: it preserves (+) and the norm
    x = 0.5 * w
    lhs = gyro.gyration(u, v, gyro.mobius_add(w, x, c), c)
    rhs = gyro.mobius_add(gyro.gyration(u, v, w, c), gyro.gyration(u, v, x, c), c)
    assert close(lhs, rhs, atol=1e-8)
    assert close(gyro.gyration(u, v, w, c).norm(), w.norm())


@PROPERTY
@given(points(3))
def test_left_loop_property(cp):
    c, (a, b, x) = cp
    assert close(gyro.gyration(gyro.mobius_add(a, b, c), b, x, c), gyro.gyration(a, b, x, c), atol=1e-8)


@PROPERTY
@given(points(2))
def test_gyrocommutativity_and_equal_norms(cp):
    c, (a, b) = cp
    ab, ba = gyro.mobius_add(a, b, c), gyro.mobius_add(b, a, c)
    assert close(ab, gyro.gyration(a, b, ba, c), atol=1e-8)
    assert close(ab.norm(), ba.norm())


@PROPERTY
@given(points(1), st.integers(1, 6))
def test_scalar_multiplication_is_repeated_addition(cp, n):
    c, (a,) = cp
    assert close(gyro.mobius_scalar_mul(2.0, a, c), gyro.mobius_add(a, a, c), atol=1e-8)
    total = a
    for _ in range(n - 1):
        total = gyro.mobius_add(a, total, c, project=False)
    # n-fold sums leave the margin quickly; compare where the sum is not clamped
    if total.norm() * c ** 0.5 < 1 - 1e-4:
        assert close(gyro.mobius_scalar_mul(float(n), a, c, project=False), total, atol=1e-7)


@PROPERTY
@given(points(3))
def test_distance_is_invariant_under_left_translations(cp):
    c, (a, x, y) = cp
    before = gyro.dist(x, y, c)
    after = gyro.dist(gyro.mobius_add(a, x, c, project=False), gyro.mobius_add(a, y, c, project=False), c)
    assert torch.allclose(before, after, rtol=1e-7, atol=1e-8)
    # gyrations are isometries too (automorphisms of the disc fixing 0)
    rotated = gyro.dist(gyro.gyration(a, x, x, c), gyro.gyration(a, x, y, c), c)
    assert torch.allclose(before, rotated, rtol=1e-7, atol=1e-8)


@PROPERTY
@given(points(2))
def test_einstein_addition_is_mobius_addition_in_klein_coordinates(cp):
    c, (a, b) = cp
    klein = lambda p: gyro.poincare_to_klein(p, c)
    assert close(klein(gyro.mobius_add(a, b, c, project=False)), gyro.einstein_add(klein(a), klein(b), c), atol=1e-8)
    assert close(gyro.klein_to_poincare(klein(a), c), a)
    assert close(klein(a), gyro.mobius_scalar_mul(2.0, a, c, project=False))


@PROPERTY
@given(points(2))
def test_exp_and_log_invert_each_other(cp):
    c, (x, y) = cp
    assert close(gyro.expmap0(gyro.logmap0(y, c), c, project=False), y)
    assert close(gyro.expmap(x, gyro.logmap(x, y, c), c, project=False), y, atol=1e-8)


# --- geoopt cross-checks --------------------------------------------------------------------------------

def random_points(n, dim, c, radius=0.95, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dim, generator=g, dtype=F64)
    r = torch.rand(n, 1, generator=g, dtype=F64) * radius
    return v / v.norm(dim=-1, keepdim=True) * r / c ** 0.5


@pytest.mark.parametrize("c", [0.5, 1.0, 3.0])
def test_agrees_with_geoopt(c):
    # geoopt keeps c as softplus(a parameter): float64 and read back, so both sides use the same c
    ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=F64))
    c = float(ball.c)
    x, y, w = (random_points(50, 5, c, seed=s) for s in range(3))
    v = torch.randn(50, 5, dtype=F64, generator=torch.Generator().manual_seed(4))
    m = torch.randn(4, 5, dtype=F64, generator=torch.Generator().manual_seed(5))
    r = torch.linspace(-3, 3, 50, dtype=F64)[:, None]
    pairs = [
        (gyro.mobius_add(x, y, c), ball.mobius_add(x, y)),
        (gyro.mobius_scalar_mul(r, x, c), ball.mobius_scalar_mul(r, x)),
        (gyro.dist(x, y, c), ball.dist(x, y)),
        (gyro.expmap0(v, c), ball.expmap0(v)),
        (gyro.logmap0(x, c), ball.logmap0(x)),
        (gyro.expmap(x, v, c), ball.expmap(x, v)),
        (gyro.logmap(x, y, c), ball.logmap(x, y)),
        (gyro.mobius_matvec(m, x, c), ball.mobius_matvec(m, x)),
        (gyro.gyration(x, y, w, c), ball.gyration(x, y, w)),
        (gyro.conformal_factor(x, c), ball.lambda_x(x, keepdim=True)),
    ]
    for k, (ours, theirs) in enumerate(pairs):
        assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-10), f"pair {k}"
    weights = torch.rand(50, dtype=F64, generator=torch.Generator().manual_seed(6))
    ours = gyro.gyro_midpoint(x, weights, dim=0, c=c)
    theirs = ball.weighted_midpoint(x, weights, reducedim=[0])
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-10)


def test_midpoint_is_the_einstein_midpoint_and_equidistant_for_two_points():
    c = 1.7
    x = random_points(6, 4, c, seed=7)
    w = torch.rand(6, dtype=F64, generator=torch.Generator().manual_seed(8))
    klein = gyro.einstein_midpoint(gyro.poincare_to_klein(x, c), w, dim=0, c=c)
    assert torch.allclose(gyro.gyro_midpoint(x, w, dim=0, c=c), gyro.klein_to_poincare(klein, c), atol=1e-12)
    m = gyro.gyro_midpoint(x[:2], dim=0, c=c)
    assert torch.allclose(gyro.dist(m, x[0], c), gyro.dist(m, x[1], c), atol=1e-10)
    assert torch.allclose(2 * gyro.dist(m, x[0], c), gyro.dist(x[0], x[1], c), atol=1e-10)


def test_clamping_near_and_past_the_boundary():
    """Points on or past the boundary stay finite; projection lands at (1 - eps)/sqrt(c) per dtype."""
    c = 2.0
    for dtype in (torch.float32, F64):
        edge = torch.tensor([[1.0, 0.0], [3.0, 4.0]], dtype=dtype) / c ** 0.5  # on and past the boundary
        assert torch.isfinite(gyro.logmap0(edge, c)).all()
        assert torch.isfinite(gyro.dist(edge[:1], -edge[:1], c)).all()
        projected = gyro.project(edge, c)
        assert torch.allclose(projected.norm(dim=-1), torch.full((2,), gyro.max_norm(c, dtype), dtype=dtype))
        big = gyro.expmap0(torch.tensor([[40.0, 0.0]], dtype=dtype), c)
        assert big.norm() <= gyro.max_norm(c, dtype) * (1 + 1e-6)
    assert gyro.BALL_EPS[F64] == 1e-5 and gyro.BALL_EPS[torch.float32] == 4e-3
    zero = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    gyro.expmap0(zero, c).sum().backward()  # differentiable at 0: d exp_0 / dv = identity there
    assert torch.allclose(zero.grad, torch.ones_like(zero))


def test_gate_factors_compose_the_maps():
    c = 0.8
    x, y = random_points(5, 3, c, seed=9), random_points(5, 3, c, seed=10)
    a, b = gyro.mobius_add_coefficients(x, y, c)
    assert torch.allclose(a * x + b * y, gyro.mobius_add(x, y, c, project=False), atol=1e-14)
    assert torch.allclose(gyro.scalar_mul_gate(0.5, x, c) * x, gyro.mobius_scalar_mul(0.5, x, c), atol=1e-14)
    assert torch.allclose(gyro.logmap0_gate(x, c) * x, gyro.logmap0(x, c), atol=1e-14)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "1", True])
def test_curvature_must_be_positive(bad):
    with pytest.raises(ValueError, match="curvature c must be a number > 0"):
        gyro.mobius_add(torch.zeros(2), torch.zeros(2), bad)
