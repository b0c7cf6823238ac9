"""Entropic optimal transport between points and a codebook with uniform marginals: the
Sinkhorn solvers the Wasserstein term uses, pure functions of arrays.

Two solvers compute the same iterates: "scaling", a log-stabilized scaling loop that is fastest on
CPU, and "logdomain", the log-domain loop for accelerators (and the reference). Both stop once the
plan's row-marginal error is within a tolerance, and both end every iteration with the codebook-side
update, so each code carries exactly 1 / M of the mass.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

sg = lax.stop_gradient


def squared_distances(points_NxD: jax.Array, codebook_MxD: jax.Array) -> jax.Array:
    """C[i, j] = ||points[i] - codebook[j]||^2, clipped at 0 against cancellation."""
    cost = (
        jnp.sum(points_NxD**2, axis=-1)[:, None]
        - 2.0 * points_NxD @ codebook_MxD.T
        + jnp.sum(codebook_MxD**2, axis=-1)[None, :]
    )
    return jnp.maximum(cost, 0.0)


class Sinkhorn(NamedTuple):
    plan: jax.Array  # (N, M) transport plan; every column sums to exactly 1 / M
    marginal_error: jax.Array  # sum_i |plan[i].sum() - 1 / N|: 0 when converged, at most 2
    g: jax.Array  # (M,) codebook-side dual potential in cost units, to warm-start the next solve


# Scalings u, v are folded back into the log-domain potentials once |log u| or |log v| would pass
# this; e^30 keeps every product u * K * v far inside float32's range.
_LOG_SCALING_LIMIT = 30.0
# An iteration that moves no point-side scaling by more than this (relative) is a fixed point up
# to float32 rounding; the stabilized loop stops there.
_CONVERGED = 1e-6


SOLVERS = ("scaling", "logdomain")


def sinkhorn_plan(
    cost_NxM: jax.Array,
    epsilon: float | jax.Array,
    num_iters: int,
    init_g: jax.Array | None = None,
    solver: str = "scaling",
    tolerance: float = 0.0,
) -> Sinkhorn:
    """Entropic OT plan between uniform marginals after at most `num_iters` Sinkhorn iterations.

    Every iteration ends with the codebook-side update, so each column of the plan carries exactly
    1 / M of the mass whatever the convergence: every code is pulled toward some points.
    The solve stops at the first iterate whose row-marginal error is at most `tolerance` (0: run
    all `num_iters`); the test is free, since the next point-side update computes the row sums.
    `init_g` warm-starts the codebook-side potential (cost units), e.g. from the previous step.
    Nothing underflows at any cost scale. `solver` "scaling": the stabilized scaling loop (a few
    log-sum-exp passes, the rest matrix-vector products), fastest on CPU; "logdomain": the
    log-domain loop in unrolled blocks, for accelerators, where exp is cheap and every loop trip
    costs a kernel launch. Both compute the same iterates up to rounding, and stop at the same one.
    """
    if solver == "scaling":
        return _sinkhorn_stabilized(cost_NxM, epsilon, num_iters, init_g, tolerance)
    if solver == "logdomain":
        return sinkhorn_plan_logdomain(cost_NxM, epsilon, num_iters, init_g, tolerance=tolerance)
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


def _row_marginal_error(row_sums_over_a_N, a):
    """sum_i |row_sum_i - a| from the row sums in units of a; inf (never "converged") if a row
    sum overflowed."""
    return a * jnp.sum(jnp.abs(row_sums_over_a_N - 1.0))


def _sinkhorn_stabilized(cost_NxM, epsilon, num_iters, init_g, tolerance) -> Sinkhorn:
    """Log-stabilized scaling Sinkhorn (Schmitzer 2019).

    Each stage starts with one log-domain iteration, then builds the kernel
    K = exp((f + g - C) / epsilon) relative to the new potentials (its columns sum to 1 / M, so
    nothing overflows) and iterates u = a / (K v), v = b / (u K). When a scaling would leave
    [e^-30, e^30], it is absorbed into the potentials and a new stage starts. The loop stops at
    the first iterate whose row-marginal error is at most `tolerance`, or once an iteration leaves
    the scalings unchanged to float32 precision (later iterations would return the same plan).
    """
    num_points, num_codes = cost_NxM.shape
    a, b = 1.0 / num_points, 1.0 / num_codes
    ones_N, ones_M = jnp.ones(num_points, jnp.float32), jnp.ones(num_codes, jnp.float32)

    def stage(carry):
        f_N, g_M, _, u_N, v_M, done = carry
        f_N, g_M = f_N + epsilon * jnp.log(u_N), g_M + epsilon * jnp.log(v_M)  # absorb
        new_f = -epsilon * (jnp.log(num_points) + _lse((g_M[None, :] - cost_NxM) / epsilon, 1))
        # The current iterate's row sums are a * exp((f - new_f) / epsilon); none before the first.
        error = _row_marginal_error(jnp.exp((f_N - new_f) / epsilon), a)
        stop = (done > 0) & (error <= tolerance)
        new_g = -epsilon * (jnp.log(num_codes) + _lse((new_f[:, None] - cost_NxM) / epsilon, 0))
        f_N, g_M = jnp.where(stop, f_N, new_f), jnp.where(stop, g_M, new_g)
        # Exactly, every entry is at most 1 / M; the clip only stops rounding in f + g - C (large
        # when C / epsilon is near float32's precision limit) from overflowing.
        kernel_NxM = jnp.exp(jnp.minimum((f_N[:, None] + g_M[None, :] - cost_NxM) / epsilon, 0.0))

        def scaling_iteration(scalings):
            u_N, v_M, done, _ = scalings
            new_u = a / (kernel_NxM @ v_M)
            # The current plan's row sums are a * u / new_u: stop on it before moving on.
            within_tolerance = _row_marginal_error(u_N / new_u, a) <= tolerance
            new_v = b / (new_u @ kernel_NxM)  # u @ K: XLA's K.T @ u is many times slower on CPU
            ok = jnp.all(jnp.abs(jnp.log(new_u)) < _LOG_SCALING_LIMIT) & jnp.all(
                jnp.abs(jnp.log(new_v)) < _LOG_SCALING_LIMIT
            ) & ~within_tolerance
            # Converged to float32 precision: the remaining iterations would change nothing.
            converged = ok & (jnp.max(jnp.abs(new_u / u_N - 1.0)) < _CONVERGED)
            done = jnp.where(converged | within_tolerance, num_iters, done + ok)
            return jnp.where(ok, new_u, u_N), jnp.where(ok, new_v, v_M), done, ok

        u_N, v_M, done, _ = lax.while_loop(
            lambda scalings: scalings[3] & (scalings[2] < num_iters),
            scaling_iteration,
            (ones_N, ones_M, jnp.where(stop, num_iters, done + 1), jnp.array(True)),
        )
        return f_N, g_M, kernel_NxM, u_N, v_M, done

    g_M = jnp.zeros(num_codes, jnp.float32) if init_g is None else init_g.astype(jnp.float32)
    carry = (jnp.zeros(num_points, jnp.float32), g_M, jnp.zeros_like(cost_NxM), ones_N, ones_M,
             jnp.array(0))
    _, g_M, kernel_NxM, u_N, v_M, _ = lax.while_loop(lambda c: c[5] < num_iters, stage, carry)
    # The last update was the codebook side's, so the columns already sum to 1 / M up to rounding;
    # normalizing them makes that exact even where C / epsilon is beyond float32's precision.
    plan_NxM = u_N[:, None] * kernel_NxM * v_M[None, :]
    plan_NxM = plan_NxM * (b / jnp.maximum(jnp.sum(plan_NxM, axis=0), _TINY))
    marginal_error = jnp.sum(jnp.abs(jnp.sum(plan_NxM, axis=1) - a))
    return Sinkhorn(plan_NxM, marginal_error, g_M + epsilon * jnp.log(v_M))


# Where C / epsilon approaches 1e9, float32 cannot hold f - C to better than tens of units, and
# XLA may compute the same logits with different rounding in a max pass and an exp pass. Clipping
# the shifted exponent at 0 and the sum away from 0 keeps such a result finite.
_TINY = 1e-30


def _shifted(x, axis):
    """x minus its max along `axis`, clipped at 0 (by `where`, so the max keeps gradient 1)."""
    shifted = x - lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    return jnp.where(shifted > 0.0, 0.0, shifted)


def _lse(x, axis):
    """log(sum(exp(x))) along an axis, finite whatever the rounding of x between passes."""
    peak = lax.stop_gradient(jnp.max(x, axis=axis))
    return peak + jnp.log(jnp.maximum(jnp.sum(jnp.exp(_shifted(x, axis)), axis=axis), _TINY))


def _softmax(x, axis):
    unnormalized = jnp.exp(_shifted(x, axis))
    return unnormalized / jnp.maximum(jnp.sum(unnormalized, axis=axis, keepdims=True), _TINY)


def _final_codebook_update(f_N, cost_NxM, epsilon) -> Sinkhorn:
    """The plan after the codebook-side update for point potentials f, as a softmax over points.

    Each column sums to exactly 1 / M even where f and C / epsilon are too large for float32 to
    add without rounding.
    """
    num_points, num_codes = cost_NxM.shape
    logits_NxM = (f_N[:, None] - cost_NxM) / epsilon
    plan_NxM = _softmax(logits_NxM, axis=0) / num_codes
    g_M = -epsilon * (jnp.log(num_codes) + _lse(logits_NxM, axis=0))
    marginal_error = jnp.sum(jnp.abs(jnp.sum(plan_NxM, axis=1) - 1.0 / num_points))
    return Sinkhorn(plan_NxM, marginal_error, g_M)


# Log-domain iterations per trip of the accelerator loop: the convergence test reads a flag back
# to the host once per trip, not once per iteration.
_BLOCK = 10


def sinkhorn_plan_logdomain(
    cost_NxM: jax.Array,
    epsilon: float | jax.Array,
    num_iters: int,
    init_g: jax.Array | None = None,
    unroll: bool = False,
    tolerance: float = 0.0,
) -> Sinkhorn:
    """The plain log-domain Sinkhorn loop: the reference, and differentiable end to end.

    Stops at the first iterate whose row-marginal error is at most `tolerance` (0: runs all
    `num_iters`). Runs as a while loop over blocks of `_BLOCK` unrolled iterations (accelerators),
    or, with `unroll`, as one loop of `num_iters` trips that reverse-mode differentiation can go
    through (`sinkhorn_unroll`); the backward pass then stores one cost-sized matrix per
    iteration. Iterations after the stop change nothing in either form.
    """
    num_points, num_codes = cost_NxM.shape
    a = 1.0 / num_points

    def iteration(potentials):
        f_N, g_M, done = potentials
        new_f = -epsilon * (jnp.log(num_points) + _lse((g_M[None, :] - cost_NxM) / epsilon, 1))
        # The current iterate's row sums are a * exp((f - new_f) / epsilon); none before the first.
        error = _row_marginal_error(jnp.exp((f_N - new_f) / epsilon), a)
        stop = (done >= num_iters) | ((done > 0) & (error <= tolerance))
        new_g = -epsilon * (jnp.log(num_codes) + _lse((new_f[:, None] - cost_NxM) / epsilon, 0))
        return (jnp.where(stop, f_N, new_f), jnp.where(stop, g_M, new_g),
                jnp.where(stop, num_iters, done + 1))

    g_M = jnp.zeros(num_codes, cost_NxM.dtype) if init_g is None else init_g
    potentials = (jnp.zeros(num_points, cost_NxM.dtype), g_M, jnp.array(0))
    if unroll:
        potentials = lax.fori_loop(0, num_iters, lambda _, p: iteration(p), potentials)
    else:
        def block(p):
            for _ in range(min(_BLOCK, num_iters)):
                p = iteration(p)
            return p

        potentials = lax.while_loop(lambda p: p[2] < num_iters, block, potentials)
    return _final_codebook_update(potentials[0], cost_NxM, epsilon)


EPSILON_MODES = ("relative", "absolute")


def effective_epsilon(cost_NxM: jax.Array, epsilon: float, epsilon_mode: str) -> jax.Array:
    """The entropic regularization a solve uses: `epsilon` itself ("absolute", squared latent
    units), or `epsilon` times the mean of the cost matrix ("relative"), held out of the gradient.

    Relative, scaling the points and the codebook by any factor leaves the plan unchanged, and
    C / epsilon stays in the tens whatever the level, the number of codes or the latent scale the
    encoder learns, so a fixed iteration budget solves every level to the same accuracy. The mean
    and not the median (within 10% of it on training problems, but a sort of N x M entries) nor
    the nearest-code gap (which follows the codebook's spread, not the data's: at init it is 300
    times smaller than the mean, and C / epsilon then reaches 12000).
    """
    if epsilon_mode == "absolute":
        return jnp.asarray(epsilon, jnp.float32)
    if epsilon_mode == "relative":
        # The floor only keeps an all-zero cost matrix (any epsilon gives its plan) finite.
        return epsilon * jnp.maximum(jnp.mean(sg(cost_NxM)), _TINY)
    raise ValueError(f"epsilon_mode must be one of {EPSILON_MODES}, got {epsilon_mode!r}")
