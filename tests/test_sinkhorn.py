"""The Sinkhorn solvers (rqvae.quantizer.sinkhorn) and `sinkhorn_loss`: plan properties, accuracy against
exact and float64 references, stability at every scale, relative epsilon, where the solvers stop,
and over-relaxation."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from rqvae.quantizer.first_release import sinkhorn_loss
from rqvae.quantizer.settings import Transport
from rqvae.quantizer.sinkhorn import effective_epsilon, sinkhorn_plan, squared_distances

SQUARE = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
FAR_CODES = jnp.array([[5.0, 5.0], [6.0, 5.0], [5.0, 6.0], [6.0, 6.0]])

# Compiled once per shape and setting: called eagerly, every call would trace and compile the
# solver's loops anew (the test of jit against eager below calls it eagerly on purpose).
_solve = jax.jit(sinkhorn_plan, static_argnames=("num_iters", "solver", "overrelaxation"))
_loss = jax.jit(sinkhorn_loss, static_argnames=("num_iters", "solver", "epsilon_mode"))
_loss_and_grad = jax.jit(jax.value_and_grad(sinkhorn_loss, argnums=1), static_argnums=3)


def exact_cost(points, codes):
    cost = np.asarray(squared_distances(points, codes))
    rows, cols = linear_sum_assignment(cost)
    return cost[rows, cols].mean()


def test_points_against_themselves_cost_almost_nothing():
    assert float(_loss(SQUARE, SQUARE)) < 0.1


def test_far_codebook_costs_the_exact_transport_and_pulls_every_code():
    # C / epsilon is about 1200 here: the kernel exp(-C / epsilon) is exactly 0 in float32.
    points = SQUARE / 10
    value, grad = _loss_and_grad(points, FAR_CODES)
    assert value == pytest.approx(exact_cost(points, FAR_CODES), rel=0.01)
    assert value == pytest.approx(60.0, rel=0.01)
    assert bool(jnp.all(jnp.linalg.norm(grad, axis=1) > 1.0))
    # Every code is pulled toward the points, i.e. down and to the left.
    assert bool(jnp.all(grad > 0))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_plan_marginals_at_every_cost_scale(scale):
    points = jax.random.normal(jax.random.key(0), (12, 3)) * scale
    codes = jax.random.normal(jax.random.key(1), (5, 3)) * scale + scale
    plan, error, *_ = _solve(squared_distances(points, codes), 0.05, num_iters=500)
    assert bool(jnp.all(jnp.isfinite(plan)))
    # The last update of every iteration is the codebook side: its marginal is exact.
    np.testing.assert_allclose(plan.sum(0), np.full(5, 1 / 5), rtol=1e-5)
    assert float(plan.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(error) == pytest.approx(float(jnp.abs(plan.sum(1) - 1 / 12).sum()), abs=1e-5)
    if scale <= 1:  # at C / epsilon ~ 1e7, float32 cannot resolve the point-side potentials
        np.testing.assert_allclose(plan.sum(1), np.full(12, 1 / 12), atol=2e-3)


def test_converged_cost_matches_the_exact_optimum():
    points = jax.random.normal(jax.random.key(0), (32, 8))
    codes = jax.random.normal(jax.random.key(1), (32, 8)) + 0.5
    value = float(_loss(points, codes, epsilon=0.05, num_iters=300))
    assert value == pytest.approx(exact_cost(points, codes), rel=0.01)


def test_sinkhorn_is_the_same_under_jit():
    points = jax.random.normal(jax.random.key(3), (9, 4))
    codes = jax.random.normal(jax.random.key(4), (6, 4))
    eager = sinkhorn_loss(points, codes)
    jitted = jax.jit(sinkhorn_loss, static_argnums=(2, 3))(points, codes, 0.05, 20)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5)


@pytest.mark.parametrize("cost_scale", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("epsilon", [1e-3, 0.05, 10.0])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_finite_value_and_gradient_at_every_scale(cost_scale, epsilon, dtype):
    points = jax.random.normal(jax.random.key(0), (16, 8)) * jnp.sqrt(cost_scale)
    codes = jax.random.normal(jax.random.key(1), (12, 8)) * jnp.sqrt(cost_scale)
    value, grad = _loss_and_grad(points.astype(dtype), codes.astype(dtype), epsilon, 20)
    assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))
    assert float(value) > 0


@pytest.mark.parametrize("points, codes", [
    (jnp.ones((1, 4)), jax.random.normal(jax.random.key(0), (7, 4))),  # batch of one
    (jax.random.normal(jax.random.key(0), (9, 4)), jnp.ones((1, 4))),  # one code
    (jnp.ones((8, 4)), jax.random.normal(jax.random.key(0), (5, 4))),  # all points duplicated
    (jnp.zeros((6, 4)), jnp.zeros((3, 4))),  # zero cost everywhere
])
def test_degenerate_problems(points, codes):
    plan, error, g, _ = _solve(squared_distances(points, codes), 0.05, num_iters=20)
    assert bool(jnp.all(jnp.isfinite(plan))) and bool(jnp.isfinite(error))
    np.testing.assert_allclose(plan.sum(0), 1 / codes.shape[0], rtol=1e-5)
    _, grad = _loss_and_grad(points, codes)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_stabilized_loop_follows_the_log_domain_iterates():
    points = jax.random.normal(jax.random.key(0), (64, 16))
    codes = 0.5 * jax.random.normal(jax.random.key(1), (96, 16))
    cost = squared_distances(points, codes)
    for iters in (1, 3, 20):
        fast = _solve(cost, 0.05, num_iters=iters)
        reference = _solve(cost, 0.05, num_iters=iters, solver="logdomain")
        np.testing.assert_allclose(fast.plan, reference.plan, atol=1e-6)
        assert float(fast.marginal_error) == pytest.approx(float(reference.marginal_error), abs=1e-4)


def test_64_dim_gaussian_clouds_within_2_percent_of_exact():
    points = jax.random.normal(jax.random.key(0), (256, 64))
    codes = 0.5 * jax.random.normal(jax.random.key(1), (256, 64))
    value = float(_loss(points, codes, 0.05, 20))
    assert value == pytest.approx(exact_cost(points, codes), rel=0.02)


def test_warm_start_from_converged_potentials_is_converged_at_once():
    points = jax.random.normal(jax.random.key(0), (64, 8))
    codes = 0.5 * jax.random.normal(jax.random.key(1), (32, 8))
    cost = squared_distances(points, codes)
    converged = _solve(cost, 0.05, num_iters=500)
    cold, warm = _solve(cost, 0.05, num_iters=1), _solve(cost, 0.05, num_iters=1, init_g=converged.g)
    assert float(warm.marginal_error) < 0.01 < float(cold.marginal_error)


DEFAULT = Transport()


# The problems below share one shape (48 x 16), so each solver compiles once per iteration count.


def _default_solve(cost, solver="scaling", epsilon_mode="relative", epsilon=DEFAULT.epsilon):
    epsilon = effective_epsilon(cost, epsilon, epsilon_mode)
    return _solve(cost, epsilon, num_iters=DEFAULT.iters, solver=solver,
                  tolerance=DEFAULT.tolerance,
                  overrelaxation=DEFAULT.overrelaxation)


@pytest.mark.parametrize("epsilon_mode,epsilon", [("relative", 0.05)])
@pytest.mark.parametrize("solver", ["scaling", "logdomain"])
def test_relative_epsilon_gives_the_same_plan_at_every_latent_scale(solver, epsilon_mode, epsilon):
    points = jax.random.normal(jax.random.key(0), (48, 6))
    codes = 0.7 * jax.random.normal(jax.random.key(1), (16, 6)) + 0.2
    cost = squared_distances(points, codes)
    solve = functools.partial(_default_solve, solver=solver, epsilon=epsilon)
    plan = solve(cost, epsilon_mode=epsilon_mode).plan
    for factor in (10.0, 0.1):
        scaled_cost = squared_distances(factor * points, factor * codes)
        np.testing.assert_allclose(solve(scaled_cost, epsilon_mode=epsilon_mode).plan, plan,
                                   rtol=1e-4, atol=1e-7)
        assert float(effective_epsilon(scaled_cost, epsilon, epsilon_mode)) == pytest.approx(
            factor**2 * float(effective_epsilon(cost, epsilon, epsilon_mode)), rel=1e-5)
        # An absolute epsilon is what makes the plan depend on the scale.
        absolute = solve(scaled_cost, epsilon_mode="absolute").plan
        assert float(jnp.abs(absolute - plan).max()) > 1e-3


def test_absolute_mode_keeps_the_original_numbers():
    # sinkhorn_loss and compute_losses called the original way: epsilon in squared latent units,
    # all 20 iterations. The value and gradient the solver gave before relative epsilon existed.
    points = jax.random.normal(jax.random.key(0), (24, 4))
    codes = 0.5 * jax.random.normal(jax.random.key(1), (10, 4)) + 0.3
    value, grad = jax.jit(jax.value_and_grad(sinkhorn_loss, argnums=1), static_argnums=(2, 3))(
        points, codes, 0.05, 20)
    assert float(value) == pytest.approx(2.018825054168701, rel=1e-6)
    np.testing.assert_allclose(grad[0], [0.0846288, -0.0205973, 0.0673404, -0.0043111],
                               rtol=1e-4, atol=1e-6)


def _float64_plan(cost, epsilon):
    """The converged entropic plan, by log-domain Sinkhorn in float64 (numpy)."""
    cost = np.asarray(cost, np.float64)
    num_points, num_codes = cost.shape
    f, g = np.zeros(num_points), np.zeros(num_codes)
    for _ in range(100):
        for _ in range(50):
            f = -epsilon * (np.log(num_points) + logsumexp((g[None] - cost) / epsilon, axis=1))
            g = -epsilon * (np.log(num_codes) + logsumexp((f[:, None] - cost) / epsilon, axis=0))
        plan = np.exp((f[:, None] + g[None] - cost) / epsilon)
        if np.abs(plan.sum(1) - 1 / num_points).sum() < 1e-9:
            return plan
    raise AssertionError("the float64 reference did not converge")


def _codebook_gradient(plan, points, codes):
    """d sum(P * C) / d codes with the plan held fixed (the envelope gradient)."""
    plan, points, codes = (np.asarray(a, np.float64) for a in (plan, points, codes))
    return 2 * (plan.sum(0)[:, None] * codes - plan.T @ points)


def _sharp_problem():
    """1-D points and codes with sharp plans, C / epsilon about 150 at the default relative
    epsilon: (points, codes, cost, epsilon)."""
    points = jax.random.normal(jax.random.key(10), (48, 1))
    codes = 0.5 * jax.random.normal(jax.random.key(11), (16, 1)) + 0.5
    cost = squared_distances(points, codes)
    return points, codes, cost, effective_epsilon(cost, DEFAULT.epsilon, "relative")


@pytest.mark.parametrize("solver", ["scaling", "logdomain"])
def test_default_solve_is_accurate_where_20_iterations_are_not(solver):
    points, codes, cost, epsilon = _sharp_problem()
    assert float(cost.max() / epsilon) > 100
    reference = _codebook_gradient(_float64_plan(cost, float(epsilon)), points, codes)

    def accuracy(result):
        grad = _codebook_gradient(result.plan, points, codes)
        cosine = np.sum(grad * reference) / np.linalg.norm(grad) / np.linalg.norm(reference)
        return float(result.marginal_error), cosine, np.linalg.norm(grad - reference) / np.linalg.norm(reference)

    error, cosine, relative = accuracy(_default_solve(cost, solver))
    assert error <= DEFAULT.tolerance <= 0.05
    assert cosine >= 0.99 and relative <= 0.1
    # The old budget, 20 iterations, on the same problem: the test can fail.
    error, _, relative = accuracy(_solve(cost, epsilon, num_iters=20, solver=solver))
    assert error > 0.05 and relative > 0.1


@pytest.mark.parametrize("num_points,num_codes", [(48, 16), (192, 256)])
def test_both_solvers_stop_at_the_same_iterate(num_points, num_codes):
    # 192 x 256 is past the size where the scaling loop checks the closed iterate in a branch.
    points = jax.random.normal(jax.random.key(0), (num_points, 16))
    codes = 0.5 * jax.random.normal(jax.random.key(1), (num_codes, 16))
    cost = squared_distances(points, codes)
    num_iters, epsilon = DEFAULT.iters, jnp.float32(0.5)
    for tolerance, overrelaxation in itertools.product((0.05, 0.01), (1.0, 1.6)):
        fast = _solve(cost, epsilon, num_iters=num_iters, tolerance=tolerance,
                      overrelaxation=overrelaxation)
        reference = _solve(cost, epsilon, num_iters=num_iters, solver="logdomain",
                           tolerance=tolerance, overrelaxation=overrelaxation)
        np.testing.assert_allclose(fast.plan, reference.plan, atol=1e-6)
        assert int(fast.iterations) == int(reference.iterations)
        # The returned plan is the iterate the check passed: every column exactly 1 / M.
        assert float(fast.marginal_error) <= tolerance
        np.testing.assert_allclose(fast.plan.sum(0), 1 / codes.shape[0], rtol=1e-5)
        assert float(fast.marginal_error) == pytest.approx(float(reference.marginal_error), abs=1e-4)
    fast = _solve(cost, epsilon, num_iters=num_iters, tolerance=tolerance)
    # The tolerance is what stopped them: without it the loop goes on toward 0.
    untouched = _solve(cost, epsilon, num_iters=num_iters, tolerance=0.0)
    assert float(untouched.marginal_error) < 0.5 * float(fast.marginal_error)


@pytest.mark.parametrize("solver", ["scaling", "logdomain"])
def test_overrelaxation_converges_faster_to_the_same_plan(solver):
    # The sharp problem, where plain Sinkhorn converges slowly.
    _, _, cost, epsilon = _sharp_problem()
    reference = _float64_plan(cost, float(epsilon))
    errors = {}
    for overrelaxation in (1.0, DEFAULT.overrelaxation, 1.95):
        result = _solve(cost, epsilon, num_iters=20, solver=solver, tolerance=0.0,
                        overrelaxation=overrelaxation)
        errors[overrelaxation] = float(result.marginal_error)
        # Given the iterations, every weight reaches the same plan.
        converged = _solve(cost, epsilon, num_iters=DEFAULT.iters, solver=solver,
                           tolerance=0.0, overrelaxation=overrelaxation)
        np.testing.assert_allclose(converged.plan, reference, atol=1e-5)
    # After 20 iterations, the default weight is an order of magnitude closer than plain Sinkhorn.
    assert errors[DEFAULT.overrelaxation] < 0.1 * errors[1.0]
    assert np.isfinite(errors[1.95])


@pytest.mark.parametrize("solver", ["scaling", "logdomain"])
def test_overrelaxation_waits_while_plain_iterations_converge_fast(solver):
    # A broad plan (C / epsilon about 5), where every plain iteration cuts the error by more than
    # the start rule's factor: the over-relaxed solve never starts relaxing, so it takes plain
    # Sinkhorn's iterations and returns its plan. Relaxing from the first iteration takes 14
    # iterations here, not 11 (at the same tolerance).
    points = jax.random.normal(jax.random.key(0), (48, 4))
    codes = 0.5 * jax.random.normal(jax.random.key(1), (16, 4))
    cost, epsilon = squared_distances(points, codes), jnp.float32(1.0)
    plain, relaxed = (_solve(cost, epsilon, num_iters=DEFAULT.iters, solver=solver,
                             tolerance=1e-4, overrelaxation=weight)
                      for weight in (1.0, DEFAULT.overrelaxation))
    assert int(plain.iterations) == int(relaxed.iterations) == 11
    np.testing.assert_array_equal(relaxed.plan, plain.plan)
