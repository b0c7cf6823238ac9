"""Loss terms as pure functions of arrays: reconstruction, VQ commit/codebook, Sinkhorn OT."""

from __future__ import annotations

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


def sinkhorn_plan(cost_NxM: jax.Array, epsilon: float, num_iters: int) -> tuple[jax.Array, jax.Array]:
    """Entropic OT plan between uniform marginals, by log-domain Sinkhorn.

    The dual potentials f, g are updated with log-sum-exp, so nothing underflows however large
    cost / epsilon gets (the kernel form exp(-C / epsilon) is 0 past about C / epsilon = 100).
    Every iteration ends with the codebook-side update, so each column of the plan carries exactly
    1 / M of the mass whatever the convergence: every code is pulled toward some points.

    Returns the plan (N, M) and the L1 error of its row marginals, sum_i |plan[i].sum() - 1/N|.
    """
    num_points, num_codes = cost_NxM.shape
    log_a = -jnp.log(num_points)
    log_b = -jnp.log(num_codes)
    scaled_cost = cost_NxM / epsilon  # potentials are kept in units of epsilon too

    def iteration(_, potentials):
        f_N, g_M = potentials
        f_N = log_a - jax.nn.logsumexp(g_M[None, :] - scaled_cost, axis=1)
        g_M = log_b - jax.nn.logsumexp(f_N[:, None] - scaled_cost, axis=0)
        return f_N, g_M

    zeros = (jnp.zeros(num_points, cost_NxM.dtype), jnp.zeros(num_codes, cost_NxM.dtype))
    f_N, _ = lax.fori_loop(0, num_iters, iteration, zeros)
    # The plan after the final codebook-side update, written as a softmax over points: each
    # column sums to exactly 1 / M even when f and C / epsilon are too large for float32 to add
    # without rounding.
    plan_NxM = jax.nn.softmax(f_N[:, None] - scaled_cost, axis=0) / num_codes
    marginal_error = jnp.sum(jnp.abs(jnp.sum(plan_NxM, axis=1) - 1.0 / num_points))
    return plan_NxM, marginal_error


def _sinkhorn_cost(points_NxD, codebook_MxD, epsilon, num_iters):
    """sum(plan * C) with the plan held fixed (envelope gradient), and the marginal error."""
    cost_NxM = squared_distances(points_NxD.astype(jnp.float32), codebook_MxD.astype(jnp.float32))
    plan_NxM, marginal_error = sinkhorn_plan(sg(cost_NxM), epsilon, num_iters)
    # At the entropic optimum the gradient of the OT cost is that of sum(plan * C) with the plan
    # held fixed (Danskin), so the iterations are never differentiated or stored for backward.
    return jnp.sum(sg(plan_NxM) * cost_NxM), marginal_error


def sinkhorn_loss(
    points: jax.Array, codebook: jax.Array, epsilon: float = 0.05, num_iters: int = 20
) -> jax.Array:
    """Entropic optimal-transport cost between points (N, D) and codebook (M, D).

    Squared-Euclidean cost, uniform weights 1/N and 1/M, `num_iters` log-domain Sinkhorn
    iterations; returns sum(plan * C). Gradients flow to both arguments through C.
    """
    return _sinkhorn_cost(points, codebook, epsilon, num_iters)[0]


def wasserstein_levels(
    level_inputs_LxBxD: jax.Array,
    codebook_LxKxD: jax.Array,
    epsilon: float,
    num_iters: int,
) -> tuple[jax.Array, jax.Array]:
    """Per-level OT cost between what each level quantized and its codebook, in one batched solve.

    Returns the cost (L,) and the plan's row-marginal error (L,).
    """
    per_level = jax.vmap(_sinkhorn_cost, in_axes=(0, 0, None, None))
    return per_level(level_inputs_LxBxD, codebook_LxKxD, epsilon, num_iters)


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
    level_inputs=None,
    level_weights: tuple[float, ...] | None = None,
    wasserstein_encoder_grad: bool = False,
) -> dict[str, jax.Array]:
    """All loss terms and their weighted total.

    Keys: total, recon (MSE), commit (mean ||z_e - sg(z_q)||^2), codebook (mean
    ||sg(z_e) - z_q||^2), wasserstein (sum over levels of the Sinkhorn cost between the points a
    level quantized and its codebook) and sinkhorn_marginal_error (L,). Level l's points are
    `level_inputs[l]`; with two levels they can be given as z_e and z_q1 instead (level 2
    quantizes z_e - z_q1). The points are wrapped in stop_gradient unless
    `wasserstein_encoder_grad`, so by default the OT term moves only the codebook.
    `lambda_wasserstein` must be a Python number: at 0 the term is not computed at all.
    """
    num_levels = codebook.shape[0]
    losses = {
        "recon": jnp.mean((x - x_recon) ** 2),
        "commit": jnp.mean((z_e - sg(z_q)) ** 2),
        "codebook": jnp.mean((sg(z_e) - z_q) ** 2),
    }
    if lambda_wasserstein == 0:
        losses["wasserstein"] = jnp.zeros((), jnp.float32)
        losses["sinkhorn_marginal_error"] = jnp.zeros((num_levels,), jnp.float32)
    else:
        if level_inputs is None:
            if num_levels != 2 or z_q1 is None:
                raise ValueError("pass level_inputs (L, B, D) unless there are two levels and z_q1")
            level_inputs = jnp.stack([z_e, z_e - z_q1])
        if not wasserstein_encoder_grad:
            level_inputs = sg(level_inputs)
        weights = jnp.asarray(level_weights or (1.0,) * num_levels, jnp.float32)
        per_level, marginal_error = wasserstein_levels(
            level_inputs, codebook, sinkhorn_epsilon, sinkhorn_iters
        )
        losses["wasserstein"] = jnp.sum(weights * per_level)
        losses["sinkhorn_marginal_error"] = marginal_error
    losses["total"] = (
        losses["recon"]
        + lambda_commit * losses["commit"]
        + lambda_codebook * losses["codebook"]
        + lambda_wasserstein * losses["wasserstein"]
    )
    return losses
