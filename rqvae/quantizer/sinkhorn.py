"""Entropic optimal transport between points and a codebook with uniform marginals: the Sinkhorn
solvers of the transport term, pure functions of arrays. "scaling", a log-stabilized scaling loop
(fastest on CPU), and "logdomain", the log-domain loop (accelerators, and the reference), compute
the same iterates and stop at the same one."""

from __future__ import annotations

import functools
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
    iterations: jax.Array  # the Sinkhorn iterations the returned plan took


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
    overrelaxation: float = 1.0,
) -> Sinkhorn:
    """Entropic OT plan between uniform marginals after at most `num_iters` Sinkhorn iterations.

    The plan is closed by a plain codebook-side update, so each column carries exactly 1 / M of
    the mass whatever the convergence; the solve stops at the first such iterate whose
    row-marginal error is at most `tolerance` (0: run all `num_iters`). `init_g` warm-starts the
    codebook-side potential (cost units). `solver` "scaling" (fastest on CPU) or "logdomain"
    (accelerators): the same iterates up to rounding, the same stop; `Sinkhorn.iterations`
    counts them. `overrelaxation` w in [1, 2): once plain iterations slow down (`_SLOW`), each
    iteration moves the potentials w times as far as a Sinkhorn update (Thibault et al. 2017;
    ott-jax's momentum), falling back to w = 1 should the error pass `_DIVERGING` times the
    smallest seen. docs/transport.md gives the measurements behind these choices.
    """
    if solver == "scaling":
        return _sinkhorn_stabilized(cost_NxM, epsilon, num_iters, init_g, tolerance,
                                    overrelaxation)
    if solver == "logdomain":
        return sinkhorn_plan_logdomain(cost_NxM, epsilon, num_iters, init_g, tolerance=tolerance,
                                       overrelaxation=overrelaxation)
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


# The error, as a multiple of the smallest seen in the solve, beyond which over-relaxation is
# dropped for the rest of it.
_DIVERGING = 2.0


# Over-relaxed, the closed iterate's error costs a matrix-vector product of its own; it is computed
# only once the over-relaxed iterate's error (free: the next update computes its row sums) is
# within this multiple of the tolerance.
_CHECK_GATE = 2.0
# Below this many kernel entries a branch costs more than the product it skips (on CPU, where the
# scaling loop runs): the closed iterate's error is then computed every iteration, which gives
# the same stops.
_BRANCH_MIN_ENTRIES = 2**15


# Over-relaxation starts once an iteration leaves more than this fraction of the smallest error
# seen: plain Sinkhorn is then in its slow linear phase, where over-relaxation gains most (early,
# while plain iterations converge fast, over-relaxing overshoots).
_SLOW = 0.7


def _schedule(relax, best, error, overrelaxation):
    """The over-relaxation state and smallest error after an iteration whose current iterate has
    `error`. The state is the weight of the updates, 0 standing for 1 before over-relaxation has
    started: it starts (`overrelaxation`) once the error exceeds `_SLOW` times the smallest seen,
    and falls back to 1 for the rest of the solve once it exceeds `_DIVERGING` times it."""
    starts = (relax == 0.0) & (error > _SLOW * best)
    diverges = (relax > 1.0) & (error > _DIVERGING * best)
    relax = jnp.where(starts, overrelaxation, jnp.where(diverges, 1.0, relax))
    return relax, jnp.minimum(best, error)


def _weight(relax):
    """The weight of the updates in over-relaxation state `relax` (`_schedule`)."""
    return jnp.where(relax == 0.0, 1.0, relax)


def _relaxed(old, plain, weight):
    """old + weight * (plain - old), and exactly `plain` at weight 1 (log-domain potentials)."""
    return jnp.where(weight == 1.0, plain, old + weight * (plain - old))


def _relaxed_scaling(old, plain, weight):
    """old^(1 - weight) * plain^weight, and exactly `plain` at weight 1 (scalings)."""
    # exp and log: XLA:CPU vectorizes them, not `power`.
    return jnp.where(weight == 1.0, plain,
                     jnp.exp((1.0 - weight) * jnp.log(old) + weight * jnp.log(plain)))


def _point_side(f_N, g_M, closed_M, cost_NxM, epsilon, overrelaxation, relaxing, started,
                tolerance, relax, best):
    """The point-side half of an iteration from potentials (f, g), in the log domain: the plain
    update of f from g, whether to stop (`_stops`) at the iterate closed by a plain codebook-side
    update, (f, g_closed) (the same as (f, g) until over-relaxation starts; none before the first
    iteration), and the over-relaxation after it (`_schedule`): (plain_f, stop, weight, relax,
    best), the first iteration never relaxed. `relaxing`: whether the solve may over-relax at
    all, and has a closed iterate of its own."""
    num_points = cost_NxM.shape[0]
    if relaxing:
        lse_2xN = _lse((jnp.stack([g_M, closed_M])[:, None, :] - cost_NxM) / epsilon, 2)
        plain_f, closed_f = -epsilon * (jnp.log(num_points) + lse_2xN)
    else:
        plain_f = closed_f = -epsilon * (
            jnp.log(num_points) + _lse((g_M[None, :] - cost_NxM) / epsilon, 1))
    # An iterate (f, g)'s row sums are a * exp((f - f') / epsilon), f' the update from g.
    error = _row_marginal_error(jnp.exp((f_N - plain_f) / epsilon), 1.0 / num_points)
    closed_error = (_row_marginal_error(jnp.exp((f_N - closed_f) / epsilon), 1.0 / num_points)
                    if relaxing else error)
    relax, best = jax.tree.map(lambda new, old: jnp.where(started, new, old),
                               _schedule(relax, best, error, overrelaxation), (relax, best))
    stop = started & _stops(error, closed_error, tolerance)
    return plain_f, stop, jnp.where(started, _weight(relax), 1.0), relax, best


def _stops(error, closed_error, tolerance):
    """Whether a solve stops at the closed iterate, given the current iterate's row-marginal
    error and the closed one's (`_CHECK_GATE`; the same rule in both solvers)."""
    return (error <= _CHECK_GATE * tolerance) & (closed_error <= tolerance)


def _row_marginal_error(row_sums_over_a_N, a):
    """sum_i |row_sum_i - a| from the row sums in units of a; inf (never "converged") if a row
    sum overflowed."""
    return a * jnp.sum(jnp.abs(row_sums_over_a_N - 1.0))


def _sinkhorn_stabilized(cost_NxM, epsilon, num_iters, init_g, tolerance,
                         overrelaxation=1.0) -> Sinkhorn:
    """Log-stabilized scaling Sinkhorn (Schmitzer 2019).

    The first iteration runs in the log domain and builds the kernel K = exp((f + g - C) / e)
    relative to its potentials (the column softmax of (f - C) / epsilon over M, from the same
    pass of exponentials as the codebook-side update: its columns sum to 1 / M, so nothing
    overflows). The rest iterate u = a / (K v), v = b / (u K) on matrix-vector products,
    over-relaxed as in `sinkhorn_plan`. When a scaling would leave [e^-30, e^30], the scalings
    are absorbed into the potentials and a new stage starts with a log-domain iteration. The
    loop stops at the first iterate whose row-marginal error is at most `tolerance` (as in
    `sinkhorn_plan`), or once an iteration leaves the scalings unchanged to float32 precision
    (later iterations would return the same plan).

    The iterate checked and returned is always the one closed by a plain codebook-side update
    (`v_closed`, every column exactly 1 / M); over-relaxed, the loop carries it next to the
    relaxed scaling.
    """
    num_points, num_codes = cost_NxM.shape
    a, b = 1.0 / num_points, 1.0 / num_codes
    relaxing = overrelaxation != 1.0
    ones_N, ones_M = jnp.ones(num_points, jnp.float32), jnp.ones(num_codes, jnp.float32)

    def scaling_iteration(kernel_NxM, scalings):
        u_N, v_M, closed_M, done, iterations, _, relax, best = scalings
        # The current iterate's row sums are u * (K v), the closed one's u * (K v_closed): stop
        # on the closed iterate before moving on. Until over-relaxation starts the two are the
        # same; after, K v_closed is a matrix-vector product of its own, made only once the
        # current iterate is near the tolerance (`_CHECK_GATE`).
        to_u_N = kernel_NxM @ v_M
        error = _row_marginal_error(u_N * to_u_N / a, a)

        def closed_iterate_error():
            return _row_marginal_error(u_N * (kernel_NxM @ closed_M) / a, a)

        if not relaxing:
            closed_error = error
        elif kernel_NxM.size >= _BRANCH_MIN_ENTRIES:
            closed_error = lax.cond((relax != 0.0) & (error <= _CHECK_GATE * tolerance),
                                    closed_iterate_error,
                                    lambda: jnp.where(relax == 0.0, error, jnp.inf))
        else:
            closed_error = jnp.where(relax == 0.0, error, closed_iterate_error())
        within_tolerance = _stops(error, closed_error, tolerance)
        relax, best = _schedule(relax, best, error, overrelaxation)
        weight = _weight(relax)
        new_u = _relaxed_scaling(u_N, a / to_u_N, weight)
        new_closed = b / (new_u @ kernel_NxM)  # u @ K: XLA's K.T @ u is many times slower on CPU
        new_v = _relaxed_scaling(v_M, new_closed, weight) if relaxing else new_closed
        ok = (jnp.all(jnp.abs(jnp.log(new_u)) < _LOG_SCALING_LIMIT)
              & jnp.all(jnp.abs(jnp.log(new_v)) < _LOG_SCALING_LIMIT)
              & jnp.all(jnp.abs(jnp.log(new_closed)) < _LOG_SCALING_LIMIT) & ~within_tolerance)
        # Converged to float32 precision: the remaining iterations would change nothing.
        converged = ok & (jnp.max(jnp.abs(new_u / u_N - 1.0)) < _CONVERGED)
        done = jnp.where(converged | within_tolerance, num_iters, done + ok)
        keep = functools.partial(jnp.where, ok)
        return _Scalings(keep(new_u, u_N), keep(new_v, v_M), keep(new_closed, closed_M), done,
                         iterations + ok, ok, relax, best)

    def iterate(f_N, g_M, kernel_NxM, scalings):
        """Scaling iterations on one kernel, until the stop or a scaling at its limit."""
        scalings = lax.while_loop(lambda s: s.ok & (s.done < num_iters),
                                  functools.partial(scaling_iteration, kernel_NxM),
                                  scalings._replace(ok=jnp.array(True)))
        return f_N, g_M, kernel_NxM, scalings

    def log_step(f_N, g_M, closed_M, scalings, first=False):
        """One log-domain iteration from potentials (f, g), whose closed iterate is
        (f, g_closed), then the kernel relative to the new ones and the scaling iterations on it.
        It starts the solve (`first`: no iterate to check, so no closed one to update from), and
        every stage after a scaling reached its limit."""
        started = scalings.done > 0
        plain_f, stop, weight, relax, best = _point_side(
            f_N, g_M, closed_M, cost_NxM, epsilon, overrelaxation, relaxing and not first,
            started, tolerance, scalings.relax, scalings.best)
        new_f = jnp.where(stop, f_N, _relaxed(f_N, plain_f, weight))
        # The codebook-side update and the kernel relative to the new potentials come from one
        # pass of exponentials: the column softmax of (f - C) / epsilon over M.
        kernel_NxM, lse_M = _softmax_and_lse((new_f[:, None] - cost_NxM) / epsilon, axis=0)
        plain_g = -epsilon * (jnp.log(num_codes) + lse_M)
        # Scalings carry the kernel to the relaxed potential and to the closed one (on a stop:
        # back to the current iterate; all near 1).
        v_M = _bounded_exp((jnp.where(stop, g_M, _relaxed(g_M, plain_g, weight)) - plain_g)
                           / epsilon)
        closed_M = jnp.where(stop, _bounded_exp((closed_M - plain_g) / epsilon), ones_M)
        return iterate(new_f, plain_g, kernel_NxM / num_codes, scalings._replace(
            u=ones_N, v=v_M, closed=closed_M, done=jnp.where(stop, num_iters, scalings.done + 1),
            iterations=scalings.iterations + ~stop, relax=relax, best=best))

    def restage(f_N, g_M, _, scalings):
        """A scaling at its limit: absorb the scalings into the potentials, then a log-domain
        iteration."""
        return log_step(f_N + epsilon * jnp.log(scalings.u), g_M + epsilon * jnp.log(scalings.v),
                        g_M + epsilon * jnp.log(scalings.closed), scalings)

    g_M = jnp.zeros(num_codes, jnp.float32) if init_g is None else init_g.astype(jnp.float32)
    scalings = _Scalings(ones_N, ones_M, ones_M, jnp.array(0), jnp.array(0), jnp.array(True),
                         jnp.array(0.0, jnp.float32), jnp.array(jnp.inf, jnp.float32))
    carry = log_step(jnp.zeros(num_points, jnp.float32), g_M, g_M, scalings, first=True)
    _, g_M, kernel_NxM, scalings = lax.while_loop(lambda c: c[3].done < num_iters,
                                                  lambda c: restage(*c), carry)
    # The closed iterate: the column sums, from one matrix-vector product, scale every column to
    # exactly 1 / M.
    u_N = scalings.u
    v_M = scalings.closed * (b / jnp.maximum((u_N @ kernel_NxM) * scalings.closed, _TINY))
    plan_NxM = u_N[:, None] * kernel_NxM * v_M[None, :]
    marginal_error = _row_marginal_error(u_N * (kernel_NxM @ v_M) / a, a)
    return Sinkhorn(plan_NxM, marginal_error, g_M + epsilon * jnp.log(v_M), scalings.iterations)


class _Scalings(NamedTuple):
    """The scaling loop's carry: u, v (over-relaxed), the codebook-side scaling that closes the
    current iterate with a plain update, the loop counter (num_iters once stopped), the
    iterations taken, whether the last one was, the over-relaxation state (`_schedule`) and the
    smallest error seen."""

    u: jax.Array
    v: jax.Array
    closed: jax.Array
    done: jax.Array
    iterations: jax.Array
    ok: jax.Array
    relax: jax.Array
    best: jax.Array


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


def _softmax_and_lse(x, axis):
    """softmax(x) and log(sum(exp(x))) along an axis, from one pass of exponentials."""
    peak = lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    unnormalized = jnp.exp(_shifted(x, axis))
    total = jnp.maximum(jnp.sum(unnormalized, axis=axis, keepdims=True), _TINY)
    return unnormalized / total, jnp.squeeze(peak + jnp.log(total), axis)


def _bounded_exp(x):
    """exp(x) with x clipped to the scalings' range, [-30, 30]."""
    return jnp.exp(jnp.clip(x, -_LOG_SCALING_LIMIT, _LOG_SCALING_LIMIT))


def _final_codebook_update(f_N, cost_NxM, epsilon, iterations) -> Sinkhorn:
    """The plan after the codebook-side update for point potentials f, as a softmax over points.

    Each column sums to exactly 1 / M even where f and C / epsilon are too large for float32 to
    add without rounding.
    """
    num_points, num_codes = cost_NxM.shape
    plan_NxM, lse_M = _softmax_and_lse((f_N[:, None] - cost_NxM) / epsilon, axis=0)
    plan_NxM = plan_NxM / num_codes
    g_M = -epsilon * (jnp.log(num_codes) + lse_M)
    marginal_error = jnp.sum(jnp.abs(jnp.sum(plan_NxM, axis=1) - 1.0 / num_points))
    return Sinkhorn(plan_NxM, marginal_error, g_M, iterations)


# Log-domain iterations per trip of the accelerator loop: the convergence test reads a flag back
# to the host once per trip, not once per iteration.
_BLOCK = 10


def sinkhorn_plan_logdomain(
    cost_NxM: jax.Array,
    epsilon: float | jax.Array,
    num_iters: int,
    init_g: jax.Array | None = None,
    tolerance: float = 0.0,
    overrelaxation: float = 1.0,
) -> Sinkhorn:
    """The log-domain Sinkhorn loop: the reference, and the solver on accelerators.

    Stops at the first iterate whose row-marginal error is at most `tolerance` (0: runs all
    `num_iters`). Runs as a while loop over blocks of `_BLOCK` unrolled iterations; iterations
    after the stop change nothing. `overrelaxation` as in `sinkhorn_plan`.
    """
    num_points, num_codes = cost_NxM.shape
    relaxing = overrelaxation != 1.0

    def iteration(potentials):
        f_N, g_M, closed_M, done, iterations, relax, best = potentials
        started = done > 0
        plain_f, stop, weight, relax, best = _point_side(
            f_N, g_M, closed_M, cost_NxM, epsilon, overrelaxation, relaxing, started,
            tolerance, relax, best)
        stop = (done >= num_iters) | stop
        new_f = _relaxed(f_N, plain_f, weight)
        plain_g = -epsilon * (jnp.log(num_codes) + _lse((new_f[:, None] - cost_NxM) / epsilon, 0))
        new_g = _relaxed(g_M, plain_g, weight) if relaxing else plain_g
        keep = functools.partial(jnp.where, stop)
        return (keep(f_N, new_f), keep(g_M, new_g), keep(closed_M, plain_g),
                keep(num_iters, done + 1), iterations + ~stop, relax, best)

    g_M = jnp.zeros(num_codes, cost_NxM.dtype) if init_g is None else init_g
    potentials = (jnp.zeros(num_points, cost_NxM.dtype), g_M, g_M, jnp.array(0), jnp.array(0),
                  jnp.array(0.0, cost_NxM.dtype), jnp.array(jnp.inf, cost_NxM.dtype))

    def block(p):
        for _ in range(min(_BLOCK, num_iters)):
            p = iteration(p)
        return p

    potentials = lax.while_loop(lambda p: p[3] < num_iters, block, potentials)
    return _final_codebook_update(potentials[0], cost_NxM, epsilon, potentials[4])


EPSILON_MODES = ("relative", "absolute")


def effective_epsilon(cost_NxM: jax.Array, epsilon: float, epsilon_mode: str) -> jax.Array:
    """The entropic regularization a solve uses, held out of the gradient: `epsilon` itself
    ("absolute", squared latent units: the original `sinkhorn_loss`), or ("relative") `epsilon`
    times the mean cost, so that scaling the points and the codebook by any factor leaves the
    plan unchanged and C / epsilon stays in the tens whatever the level, the number of codes or
    the latent scale: a fixed iteration budget solves every level to the same accuracy.
    """
    if epsilon_mode == "absolute":
        return jnp.asarray(epsilon, jnp.float32)
    if epsilon_mode != "relative":
        raise ValueError(f"epsilon_mode must be one of {EPSILON_MODES}, got {epsilon_mode!r}")
    scale = jnp.mean(sg(cost_NxM))
    # The floor only keeps an all-zero scale (any epsilon gives its plan) finite.
    return epsilon * jnp.maximum(scale, _TINY)
