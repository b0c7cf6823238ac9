"""Loss terms as pure functions of arrays: reconstruction, VQ commit/codebook, Sinkhorn OT."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rqvae.config import LossConfig

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


def _sinkhorn_cost(points_NxD, codebook_MxD, epsilon, num_iters, init_g=None, unroll=False,
                   solver="scaling", epsilon_mode="absolute", tolerance=0.0):
    """sum(plan * C), the row-marginal error, the codebook-side potential and the effective
    epsilon.

    By default the plan is held fixed in the backward pass: at the entropic optimum the gradient
    of the OT cost is that of sum(plan * C) with the plan constant (Danskin's envelope theorem),
    so nothing of the iterations is stored and memory is O(points x codes) whatever num_iters.
    """
    points_NxD, codebook_MxD = points_NxD.astype(jnp.float32), codebook_MxD.astype(jnp.float32)
    cost_NxM = squared_distances(points_NxD, codebook_MxD)
    epsilon = effective_epsilon(cost_NxM, epsilon, epsilon_mode)
    if unroll:
        result = sinkhorn_plan_logdomain(cost_NxM, epsilon, num_iters, unroll=True,
                                         tolerance=tolerance)
        return jnp.sum(result.plan * cost_NxM), result.marginal_error, sg(result.g), epsilon
    result = sinkhorn_plan(sg(cost_NxM), epsilon, num_iters, init_g, solver, tolerance)
    plan_NxM = sg(result.plan)
    # sum(P * C) expanded as sum_i r_i |x_i|^2 + sum_j s_j |c_j|^2 - 2 sum_j c_j . (P^T x)_j, with
    # r, s the plan's marginals: its gradient needs no further pass over the N x M plan. The value
    # itself is taken from the direct sum, which has no cancellation.
    transported_MxD = jnp.einsum("nm,nd->md", plan_NxM, points_NxD)
    expanded = (
        jnp.sum(jnp.sum(plan_NxM, axis=1) * jnp.sum(points_NxD**2, axis=1))
        + jnp.sum(jnp.sum(plan_NxM, axis=0) * jnp.sum(codebook_MxD**2, axis=1))
        - 2.0 * jnp.sum(codebook_MxD * transported_MxD)
    )
    direct = jnp.sum(plan_NxM * sg(cost_NxM))
    return sg(direct - expanded) + expanded, result.marginal_error, result.g, epsilon


def sinkhorn_loss(
    points: jax.Array,
    codebook: jax.Array,
    epsilon: float = 0.05,
    num_iters: int = 20,
    solver: str = "scaling",
    *,
    epsilon_mode: str = "absolute",
    tolerance: float = 0.0,
) -> jax.Array:
    """Entropic optimal-transport cost between points (N, D) and codebook (M, D).

    Squared-Euclidean cost, uniform weights 1/N and 1/M, `num_iters` stabilized Sinkhorn
    iterations (fewer once the row-marginal error is at most `tolerance`); returns
    sum(plan * C). `epsilon` is in squared latent units, or with `epsilon_mode="relative"` a
    fraction of the mean cost. Gradients flow to both arguments through C.
    """
    return _sinkhorn_cost(points, codebook, epsilon, num_iters, solver=solver,
                          epsilon_mode=epsilon_mode, tolerance=tolerance)[0]


def wasserstein_levels(
    level_inputs_LxBxD: jax.Array,
    codebook_LxKxD: jax.Array,
    epsilon: float,
    num_iters: int,
    init_g_LxK: jax.Array | None = None,
    unroll: bool = False,
    solver: str = "scaling",
    epsilon_mode: str = "absolute",
    tolerance: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Per-level OT cost between what each level quantized and its codebook, in one batched solve.

    `epsilon_mode` and `tolerance` are as in `effective_epsilon` and `sinkhorn_plan`; each level
    gets its own effective epsilon and stops on its own. Returns the cost (L,), the plan's
    row-marginal error (L,), the codebook-side potentials (L, K) for a warm start of the next
    solve, and the effective epsilon (L,).
    """
    solve = functools.partial(_sinkhorn_cost, epsilon=epsilon, num_iters=num_iters, unroll=unroll,
                              solver=solver, epsilon_mode=epsilon_mode, tolerance=tolerance)
    return jax.vmap(solve)(level_inputs_LxBxD, codebook_LxKxD, init_g=init_g_LxK)


CODEBOOK_LOSSES = ("per_level", "sum")


def vq_per_level(z_e_BxD, level_inputs_LxBxD, level_codes_LxBxD) -> dict[str, jax.Array]:
    """The residual VQ losses as standard RVQ defines them, averaged over the levels.

    codebook: each level's picked codes pulled toward that level's own input (its residual),
    mean ||sg(r_l) - c_l||^2, as vector-quantize-pytorch's ResidualVQ gives each layer its own
    loss and kakaobrain's RQ-VAE updates each depth's codebook on that depth's residuals.
    commit: the encoder pulled toward the partial sums of the codes, mean ||z_e - sg(c_1 + ... +
    c_l)||^2 over l, kakaobrain RQ-VAE's commitment loss (equal to ResidualVQ's per-layer
    ||r_l - sg(c_l)||^2 with the residual chain detached).
    """
    partial_sums_LxBxD = jnp.cumsum(sg(level_codes_LxBxD), axis=0)
    return {
        "commit": jnp.mean((z_e_BxD[None] - partial_sums_LxBxD) ** 2),
        "codebook": jnp.mean((sg(level_inputs_LxBxD) - level_codes_LxBxD) ** 2),
    }


def with_queue(level_inputs_LxBxD, queue_LxQxD, filled) -> jax.Array:
    """The points each level's solve transports: the queue's (held out of the gradient) and the
    batch's, (L, Q + B, D). Queue slots not yet filled (the first `filled` are) hold copies of the
    batch's points, so every solve has Q + B points of equal mass from the first step on."""
    num_queued, batch = queue_LxQxD.shape[1], level_inputs_LxBxD.shape[1]
    copies_LxQxD = sg(level_inputs_LxBxD)[:, jnp.arange(num_queued) % batch]
    queued_LxQxD = jnp.where((jnp.arange(num_queued) < filled)[None, :, None],
                             sg(queue_LxQxD), copies_LxQxD)
    return jnp.concatenate([queued_LxQxD, level_inputs_LxBxD], axis=1)


def loss_terms(x_BxP, x_recon_BxP, aux: dict, cfg: LossConfig, sinkhorn_g_LxK=None,
               queue=None) -> dict[str, jax.Array]:
    """All loss terms of a forward pass and their weighted total.

    `aux` is the model's: z_e and z_q (B, D), codebook (L, K, D), level_inputs (L, B, D), what
    each level quantized, and level_codes (L, B, D), what it picked. Keys: total, recon (MSE),
    commit and codebook (`cfg.codebook_loss` "per_level": `vq_per_level`; "sum": mean
    ||z_e - sg(z_q)||^2 and mean ||sg(z_e) - z_q||^2 on the sum of the codes), wasserstein (the
    levels' Sinkhorn costs, weighted and summed), wasserstein_levels (L,) the unweighted
    per-level costs, sinkhorn_marginal_error (L,), sinkhorn_epsilon (L,) the effective epsilon
    of each level's solve, and sinkhorn_g (L, K), the potentials to warm-start the next solve
    with. `queue`: (the queued level inputs (L, Q, D), how many are filled), transported with the
    batch's (`with_queue`). The level inputs are held out of the gradient unless
    `cfg.wasserstein_encoder_grad`, so by default the OT term moves only the codebook. At
    `cfg.lambda_wasserstein == 0` the term is not computed at all.
    """
    z_e, z_q, codebook_LxKxD = aux["z_e"], aux["z_q"], aux["codebook"]
    losses = {"recon": jnp.mean((x_BxP - x_recon_BxP) ** 2)}
    if cfg.codebook_loss == "per_level":
        losses.update(vq_per_level(z_e, aux["level_inputs"], aux["level_codes"]))
    else:  # "sum": the original form, on the sum of the codes
        losses.update(commit=jnp.mean((z_e - sg(z_q)) ** 2),
                      codebook=jnp.mean((sg(z_e) - z_q) ** 2))
    num_levels, num_codes = codebook_LxKxD.shape[:2]
    if cfg.lambda_wasserstein == 0:
        losses["wasserstein"] = jnp.zeros((), jnp.float32)
        losses["wasserstein_levels"] = jnp.zeros((num_levels,), jnp.float32)
        losses["sinkhorn_marginal_error"] = jnp.zeros((num_levels,), jnp.float32)
        losses["sinkhorn_epsilon"] = jnp.zeros((num_levels,), jnp.float32)
        losses["sinkhorn_g"] = jnp.zeros((num_levels, num_codes), jnp.float32)
    else:
        level_inputs_LxBxD = aux["level_inputs"]
        if not cfg.wasserstein_encoder_grad:
            level_inputs_LxBxD = sg(level_inputs_LxBxD)
        if queue is not None:
            level_inputs_LxBxD = with_queue(level_inputs_LxBxD, *queue)
        weights_L = jnp.asarray(cfg.wasserstein_level_weights or (1.0,) * num_levels, jnp.float32)
        per_level_L, marginal_error_L, g_LxK, epsilon_L = wasserstein_levels(
            level_inputs_LxBxD, codebook_LxKxD, cfg.sinkhorn_epsilon, cfg.sinkhorn_iters,
            sinkhorn_g_LxK if cfg.sinkhorn_warm_start else None, cfg.sinkhorn_unroll, cfg.solver,
            cfg.sinkhorn_epsilon_mode, cfg.sinkhorn_tolerance)
        losses["wasserstein"] = jnp.sum(weights_L * per_level_L)
        losses["wasserstein_levels"] = per_level_L
        losses["sinkhorn_marginal_error"] = marginal_error_L
        losses["sinkhorn_epsilon"] = epsilon_L
        losses["sinkhorn_g"] = g_LxK
    losses["total"] = (
        losses["recon"]
        + cfg.lambda_commit * losses["commit"]
        + cfg.lambda_codebook * losses["codebook"]
        + cfg.lambda_wasserstein * losses["wasserstein"]
    )
    return losses


def compute_losses(
    x,
    x_recon,
    z_e,
    z_q,
    codebook,
    z_q1=None,
    lambda_commit: float = 0.25,
    lambda_codebook: float = 1.0,
    lambda_wasserstein: float = 0.0,
    sinkhorn_epsilon: float = 0.05,
    *,
    sinkhorn_iters: int = 20,
    sinkhorn_epsilon_mode: str = "absolute",
    sinkhorn_tolerance: float = 0.0,
    level_inputs=None,
    level_weights: tuple[float, ...] | None = None,
    wasserstein_encoder_grad: bool = False,
    sinkhorn_init_g=None,
    sinkhorn_unroll: bool = False,
    solver: str = "scaling",
) -> dict[str, jax.Array]:
    """`loss_terms` called with arrays and keywords: the original entry point, kept working with
    its original meaning (commit and codebook on the sum of the codes).

    Level l's points are `level_inputs[l]`; with two levels they can be given as z_e and z_q1
    instead (level 2 quantizes z_e - z_q1). `lambda_wasserstein` must be a Python number.
    `sinkhorn_init_g` (L, K) warm-starts the solves. Called the original way, the solve is the
    original one: epsilon in squared latent units, all `sinkhorn_iters` iterations.
    """
    num_levels = codebook.shape[0]
    if level_inputs is None and lambda_wasserstein != 0:
        if num_levels != 2 or z_q1 is None:
            raise ValueError("pass level_inputs (L, B, D) unless there are two levels and z_q1")
        level_inputs = jnp.stack([z_e, z_e - z_q1])
    cfg = LossConfig(
        codebook_loss="sum", lambda_commit=lambda_commit, lambda_codebook=lambda_codebook,
        lambda_wasserstein=lambda_wasserstein, sinkhorn_epsilon=sinkhorn_epsilon,
        sinkhorn_iters=sinkhorn_iters, sinkhorn_epsilon_mode=sinkhorn_epsilon_mode,
        sinkhorn_tolerance=sinkhorn_tolerance, wasserstein_level_weights=tuple(level_weights or ()),
        wasserstein_encoder_grad=wasserstein_encoder_grad,
        sinkhorn_warm_start=sinkhorn_init_g is not None, sinkhorn_unroll=sinkhorn_unroll,
        solver=solver)
    aux = {"z_e": z_e, "z_q": z_q, "codebook": codebook, "level_inputs": level_inputs}
    return loss_terms(x, x_recon, aux, cfg, sinkhorn_init_g)
