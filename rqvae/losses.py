"""Loss terms as pure functions of arrays: reconstruction, VQ commit and codebook, and the
Wasserstein term (each level's entropic OT cost to its codebook, solved by `rqvae.sinkhorn`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from rqvae.config import LossConfig
from rqvae.sinkhorn import (effective_epsilon, sinkhorn_plan, sinkhorn_plan_logdomain,
                            squared_distances)

sg = lax.stop_gradient


def _sinkhorn_cost(points_NxD, codebook_MxD, epsilon, num_iters, init_g=None, unroll=False,
                   solver="scaling", epsilon_mode="absolute", tolerance=0.0, cost_NxM=None,
                   overrelaxation=1.0, movable_M=None):
    """sum(plan * C), the row-marginal error, the codebook-side potential, the effective
    epsilon and each point's transport cost (N,), sum_j plan_ij C_ij / (1 / N), held out of the
    gradient. `movable_M` (bool): the codes the cost's gradient reaches; None: every code.
    `cost_NxM`: the squared distances, if already computed (the model's); the unrolled solve
    differentiates through them, so it computes its own.

    By default the plan is held fixed in the backward pass: at the entropic optimum the gradient
    of the OT cost is that of sum(plan * C) with the plan constant (Danskin's envelope theorem),
    so nothing of the iterations is stored and memory is O(points x codes) whatever num_iters.
    """
    points_NxD, codebook_MxD = points_NxD.astype(jnp.float32), codebook_MxD.astype(jnp.float32)
    if cost_NxM is None or unroll:
        cost_NxM = squared_distances(points_NxD, codebook_MxD)
    epsilon = effective_epsilon(cost_NxM, epsilon, epsilon_mode)
    if unroll:
        result = sinkhorn_plan_logdomain(cost_NxM, epsilon, num_iters, unroll=True,
                                         tolerance=tolerance, overrelaxation=overrelaxation)
        per_point_N = jnp.sum(result.plan * cost_NxM, axis=1)
        return (jnp.sum(per_point_N), result.marginal_error, sg(result.g), epsilon,
                sg(per_point_N) * cost_NxM.shape[0])
    result = sinkhorn_plan(sg(cost_NxM), epsilon, num_iters, init_g, solver, tolerance,
                           overrelaxation)
    plan_NxM = sg(result.plan)
    # sum(P * C) expanded as sum_i r_i |x_i|^2 + sum_j s_j |c_j|^2 - 2 sum_j c_j . (P^T x)_j, with
    # r, s the plan's marginals: its gradient needs no further pass over the N x M plan. The value
    # itself is taken from the direct sum, which has no cancellation.
    if movable_M is not None:
        codebook_MxD = jnp.where(movable_M[:, None], codebook_MxD, sg(codebook_MxD))
    transported_MxD = jnp.einsum("nm,nd->md", plan_NxM, points_NxD)
    expanded = (
        jnp.sum(jnp.sum(plan_NxM, axis=1) * jnp.sum(points_NxD**2, axis=1))
        + jnp.sum(jnp.sum(plan_NxM, axis=0) * jnp.sum(codebook_MxD**2, axis=1))
        - 2.0 * jnp.sum(codebook_MxD * transported_MxD)
    )
    per_point_N = jnp.sum(plan_NxM * sg(cost_NxM), axis=1)
    direct = jnp.sum(per_point_N)
    return (sg(direct - expanded) + expanded, result.marginal_error, result.g, epsilon,
            per_point_N * cost_NxM.shape[0])


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
    cost_LxBxK: jax.Array | None = None,
    overrelaxation: float = 1.0,
    movable_LxK: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Per-level OT cost between what each level quantized and its codebook, in one batched solve.

    `epsilon_mode`, `tolerance` and `overrelaxation` are as in `effective_epsilon` and
    `sinkhorn_plan`; each level
    gets its own effective epsilon and stops on its own. `cost_LxBxK`: the squared distances
    between the inputs and the codes, if already at hand (the model's `level_distances`); held
    out of the gradient either way, except by `unroll`. Returns the cost (L,), the plan's
    row-marginal error (L,), the codebook-side potentials (L, K) for a warm start of the next
    solve, the effective epsilon (L,) and each point's transport cost (L, N). `movable_LxK`: the
    codes each level's cost moves (None: all).
    """
    solve = functools.partial(_sinkhorn_cost, epsilon=epsilon, num_iters=num_iters, unroll=unroll,
                              solver=solver, epsilon_mode=epsilon_mode, tolerance=tolerance,
                              overrelaxation=overrelaxation)
    return jax.vmap(solve)(level_inputs_LxBxD, codebook_LxKxD, init_g=init_g_LxK,
                           cost_NxM=cost_LxBxK, movable_M=movable_LxK)


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
               queue=None, stale_LxK=None) -> dict[str, jax.Array]:
    """All loss terms of a forward pass and their weighted total.

    `aux` is the model's: z_e and z_q (B, D), codebook (L, K, D), level_inputs (L, B, D), what
    each level quantized, and level_codes (L, B, D), what it picked. Keys: total, recon (MSE),
    commit and codebook (`cfg.codebook_loss` "per_level": `vq_per_level`; "sum": mean
    ||z_e - sg(z_q)||^2 and mean ||sg(z_e) - z_q||^2 on the sum of the codes), wasserstein (the
    levels' Sinkhorn costs, weighted and summed), wasserstein_levels (L,) the unweighted
    per-level costs (`cfg.wasserstein_scale` "per_element": sum(plan * C) / latent_dim, a mean
    squared difference per latent dimension like commit and codebook; "whole": sum(plan * C)),
    sinkhorn_marginal_error (L,), sinkhorn_epsilon (L,) the effective epsilon of each level's
    solve, and sinkhorn_g (L, K), the potentials to warm-start the next solve with. `queue`:
    (the queued level inputs (L, Q, D), how many are filled), transported with the batch's
    (`with_queue`). The level inputs are held out of the gradient unless
    `cfg.wasserstein_encoder_grad`, so by default the OT term moves only the codebook. With
    `cfg.wasserstein_levels` n > 0 only the first n levels are solved (the others log zeros). At
    `cfg.lambda_wasserstein == 0` the term is not computed at all. `stale_LxK` (bool): the codes
    the term's gradient reaches (`wasserstein_anchor_window`: codes the nearest-code rule has
    left); None: every code. With the term on, transport_row_cost (L, B): each batch point's
    transport cost under its level's plan (ones where a level is not solved), which the
    re-anchoring draws rows by.
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
        # The levels the term covers (`cfg.wasserstein_levels`); the others are not solved and
        # log zeros, their warm-start potentials kept as they were.
        solved = cfg.wasserstein_levels or num_levels
        level_inputs_LxBxD = aux["level_inputs"][:solved]
        if not cfg.wasserstein_encoder_grad:
            level_inputs_LxBxD = sg(level_inputs_LxBxD)
        solved_codebook_LxKxD = codebook_LxKxD[:solved]
        cost_LxBxK = aux.get("level_distances")
        if cost_LxBxK is not None:
            cost_LxBxK = cost_LxBxK[:solved]
        if queue is not None:
            queue_LxQxD, filled = queue
            level_inputs_LxBxD = with_queue(level_inputs_LxBxD, queue_LxQxD[:solved], filled)
            if cost_LxBxK is not None:  # the queued points' distances, then the batch's
                queued_LxQxD = level_inputs_LxBxD[:, :queue_LxQxD.shape[1]]
                cost_LxBxK = jnp.concatenate(
                    [jax.vmap(squared_distances)(sg(queued_LxQxD), sg(solved_codebook_LxKxD)),
                     cost_LxBxK], axis=1)
        weights_L = jnp.asarray(cfg.wasserstein_level_weights or (1.0,) * num_levels, jnp.float32)
        movable_LxK = None if stale_LxK is None else stale_LxK[:solved]
        per_level_L, marginal_error_L, g_LxK, epsilon_L, row_cost_LxN = wasserstein_levels(
            level_inputs_LxBxD, solved_codebook_LxKxD, cfg.sinkhorn_epsilon, cfg.sinkhorn_iters,
            sinkhorn_g_LxK[:solved] if cfg.sinkhorn_warm_start else None, cfg.sinkhorn_unroll,
            cfg.solver, cfg.sinkhorn_epsilon_mode, cfg.sinkhorn_tolerance, cost_LxBxK,
            cfg.sinkhorn_overrelaxation, movable_LxK)
        if cfg.wasserstein_scale == "per_element":
            per_level_L = per_level_L / codebook_LxKxD.shape[-1]
        unsolved = num_levels - solved
        per_level_L, marginal_error_L, epsilon_L = (
            jnp.pad(a, (0, unsolved)) for a in (per_level_L, marginal_error_L, epsilon_L))
        if unsolved:
            g_LxK = jnp.concatenate([g_LxK, jnp.zeros((unsolved, num_codes), jnp.float32)
                                     if sinkhorn_g_LxK is None else sinkhorn_g_LxK[solved:]])
        losses["wasserstein"] = jnp.sum(weights_L * per_level_L)
        losses["wasserstein_levels"] = per_level_L
        losses["sinkhorn_marginal_error"] = marginal_error_L
        losses["sinkhorn_epsilon"] = epsilon_L
        losses["sinkhorn_g"] = g_LxK
        row_cost_LxB = row_cost_LxN[:, -aux["level_inputs"].shape[1]:]  # the batch's, not queued
        losses["transport_row_cost"] = jnp.concatenate(
            [row_cost_LxB, jnp.ones((unsolved, row_cost_LxB.shape[1]), jnp.float32)])
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
    sinkhorn_overrelaxation: float = 1.0,
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
    original one: epsilon in squared latent units, all `sinkhorn_iters` plain Sinkhorn
    iterations, the cost of whole squared distances.
    """
    num_levels = codebook.shape[0]
    if level_inputs is None and lambda_wasserstein != 0:
        if num_levels != 2 or z_q1 is None:
            raise ValueError("pass level_inputs (L, B, D) unless there are two levels and z_q1")
        level_inputs = jnp.stack([z_e, z_e - z_q1])
    cfg = LossConfig(
        codebook_loss="sum", wasserstein_scale="whole", lambda_commit=lambda_commit,
        lambda_codebook=lambda_codebook, lambda_wasserstein=lambda_wasserstein,
        sinkhorn_epsilon=sinkhorn_epsilon, sinkhorn_iters=sinkhorn_iters,
        sinkhorn_epsilon_mode=sinkhorn_epsilon_mode, sinkhorn_tolerance=sinkhorn_tolerance, sinkhorn_overrelaxation=sinkhorn_overrelaxation,
        wasserstein_level_weights=tuple(level_weights or ()), wasserstein_levels=0,
        wasserstein_encoder_grad=wasserstein_encoder_grad,
        sinkhorn_warm_start=sinkhorn_init_g is not None, sinkhorn_unroll=sinkhorn_unroll,
        solver=solver)
    aux = {"z_e": z_e, "z_q": z_q, "codebook": codebook, "level_inputs": level_inputs}
    return loss_terms(x, x_recon, aux, cfg, sinkhorn_init_g)
