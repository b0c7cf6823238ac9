"""Loss terms as pure functions of arrays: reconstruction, VQ commit and codebook, and the
transport term (each level's entropic OT cost to its codebook, solved by `sinkhorn`)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rqvae.quantizer.settings import LOSS_TERMS, LossWeights, Platform, Transport
from rqvae.quantizer.sinkhorn import effective_epsilon, sinkhorn_plan, squared_distances
from rqvae.quantizer.state import (
    STATE_COLLECTION,
    CodebookState,
    Schedule,
    points_per_step,
    transport_schedule,
)

__all__ = ["LOSS_TERMS", "loss_terms", "quantizer_losses", "vq_per_level"]

sg = lax.stop_gradient


class PlanSummary(NamedTuple):
    """What the cost and its gradient need of a plan, O(N + M x D): its row and column sums,
    the points it carries to each code (plan^T x, differentiable in the points only), its
    per-point costs sum_j plan_ij C_ij, and the solve's row-marginal error and epsilon."""

    row_mass: jax.Array
    code_mass: jax.Array
    transported: jax.Array
    point_cost: jax.Array
    marginal_error: jax.Array
    epsilon: jax.Array


def plan_summary(points_NxD, codebook_MxD, epsilon, num_iters, *, solver, epsilon_mode,
                  tolerance, cost_NxM, overrelaxation) -> PlanSummary:
    points_NxD, codebook_MxD = points_NxD.astype(jnp.float32), codebook_MxD.astype(jnp.float32)
    if cost_NxM is None:
        cost_NxM = squared_distances(sg(points_NxD), sg(codebook_MxD))
    epsilon = effective_epsilon(cost_NxM, epsilon, epsilon_mode)
    result = sinkhorn_plan(sg(cost_NxM), epsilon, num_iters, None, solver, tolerance,
                           overrelaxation)
    plan_NxM = sg(result.plan)
    return PlanSummary(jnp.sum(plan_NxM, axis=1), jnp.sum(plan_NxM, axis=0),
                        jnp.einsum("nm,nd->md", plan_NxM, points_NxD),
                        jnp.sum(plan_NxM * sg(cost_NxM), axis=1), result.marginal_error, epsilon)


def cost_of_plan(points_NxD, codebook_MxD, summary: PlanSummary, movable_M=None):
    """The transport cost of a plan from its summary (differentiable in the points and codes),
    the row-marginal error, the epsilon and each point's cost x N. sum(P * C) expanded as
    sum_i r_i |x_i|^2 + sum_j s_j |c_j|^2 - 2 sum_j c_j . (P^T x)_j, with r, s the plan's
    marginals: its gradient needs no pass over the N x M plan. The value itself is the direct
    sum, which has no cancellation."""
    points_NxD, codebook_MxD = points_NxD.astype(jnp.float32), codebook_MxD.astype(jnp.float32)
    if movable_M is not None:
        codebook_MxD = jnp.where(movable_M[:, None], codebook_MxD, sg(codebook_MxD))
    expanded = (
        jnp.sum(summary.row_mass * jnp.sum(points_NxD**2, axis=1))
        + jnp.sum(summary.code_mass * jnp.sum(codebook_MxD**2, axis=1))
        - 2.0 * jnp.sum(codebook_MxD * summary.transported)
    )
    direct = jnp.sum(summary.point_cost)
    return (sg(direct - expanded) + expanded, summary.marginal_error, summary.epsilon,
            summary.point_cost * points_NxD.shape[0])


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


# A level's solve takes at most this many points a code: evenly spaced rows of the batch's
# (a grid's positions) beyond it. A plan gives each code 1 / K of the mass, so 4 points a code
# leave it room to choose; the rest is redundant positions (docs/results.md, "The grid step").
SOLVE_POINTS_PER_CODE = 4


def solved_rows(num_points: int, num_codes: int):
    """The rows a level's solve takes: None for all of them, or evenly spaced indices when
    there are more than SOLVE_POINTS_PER_CODE x num_codes."""
    cap = SOLVE_POINTS_PER_CODE * num_codes
    if num_points <= cap:
        return None
    return (jnp.arange(cap) * num_points) // cap


def quantizer_losses(aux: dict, weights: LossWeights = LossWeights(),
                     transport: Transport = Transport(), *, state: CodebookState | None = None,
                     logged=True, platform: Platform | None = None) -> dict:
    """The quantizer's loss terms from a `ResidualVQ`'s aux, and their weighted sum `total`:
    add your reconstruction loss to it.

    Keys: commit and codebook (`vq_per_level`); wasserstein, the transport term: the levels'
    transport costs summed; per level (L,): transport_cost, each level's sum(plan * C) /
    latent_dim, a mean squared difference per latent dimension like commit and codebook;
    sinkhorn_marginal_error; solve_epsilon, the epsilon each solve used in squared latent units.
    Beyond SOLVE_POINTS_PER_CODE points a code, a level's solve takes evenly spaced rows of the
    batch (`solved_rows`). With a `state`, also schedule: the step's
    `Schedule` (`transport_schedule`), which `update_codebook` reads. At
    `weights.lambda_wasserstein == 0` the term is not computed at all (its values are zeros).

    `state`: the `CodebookState` across steps, which `transport_schedule` reads: the term's
    gradient then reaches only stale codes, at anchor steps, and steps with nothing to move skip
    the solve unless `logged`; by default the aux's, from a `ResidualVQ(keep_state=True)`.
    Without one the term moves every code at every step and nothing is re-anchored (the term as
    it was). `platform`: the solver and branching to use (default:
    `Platform.of(jax.default_backend())`). The level inputs are held out of the term's gradient
    unless `transport.encoder_grad`.
    """
    platform = Platform.of(jax.default_backend()) if platform is None else platform
    state = aux.get(STATE_COLLECTION) if state is None else state  # a layer that keeps it
    if state is None:
        schedule = Schedule(branch=platform.branch)
    else:
        schedule = transport_schedule(
            state, weights, transport, num_codes=aux["codebook"].shape[1],
            points=points_per_step(aux["indices"].shape[1], aux["indices"].shape[0],
                                   state.shared),
            logged=logged, branch=platform.branch)
    losses = _quantizer_terms(aux, weights, transport, platform.solver, schedule.movable,
                              schedule.solve)
    if state is not None:
        losses["schedule"] = schedule
    return losses


def loss_terms(x_BxP, x_recon_BxP, aux: dict, weights: LossWeights, transport: Transport, *,
               solver: str = "scaling", stale_LxK=None, solve=None) -> dict[str, jax.Array]:
    """All loss terms of a forward pass: recon (MSE), the quantizer's terms (`quantizer_losses`)
    and their weighted total (LOSS_TERMS), with the transport term's gradient on `stale_LxK`
    (bool; None: every code) and, where `solve` (traced bool) is False, no solve at all (its
    values zeros; None: always solve)."""
    recon = jnp.mean((x_BxP - x_recon_BxP) ** 2)
    losses = _quantizer_terms(aux, weights, transport, solver, stale_LxK, solve)
    return {**losses, "recon": recon, "total": recon + losses["total"]}


def _quantizer_terms(aux, weights, transport, solver, movable_LxK, solve):
    """`quantizer_losses` for a given `movable_LxK` (the codes the term's gradient reaches; None:
    all) and `solve` (traced bool: where False, no solve, the term's values zeros; None:
    always)."""
    z_e, codebook_LxKxD = aux["z_e"], aux["codebook"]
    losses = vq_per_level(z_e, aux["level_inputs"], aux["level_codes"])
    num_levels, _, latent_dim = codebook_LxKxD.shape
    if weights.lambda_wasserstein == 0:
        cost_L = marginal_error_L = epsilon_L = jnp.zeros((num_levels,), jnp.float32)
    else:
        level_inputs_LxBxD = aux["level_inputs"]
        if not transport.encoder_grad:
            level_inputs_LxBxD = sg(level_inputs_LxBxD)
        summarize = jax.vmap(functools.partial(
            plan_summary, epsilon=transport.epsilon, num_iters=transport.iters, solver=solver,
            epsilon_mode="relative", tolerance=transport.tolerance,
            overrelaxation=transport.overrelaxation))
        rows_S = solved_rows(level_inputs_LxBxD.shape[1], codebook_LxKxD.shape[1])
        points_LxSxD = level_inputs_LxBxD if rows_S is None else level_inputs_LxBxD[:, rows_S]
        if solve is None:  # the model's distances serve as the cost matrices
            distances = aux.get("level_distances")
            summary = summarize(points_LxSxD, codebook_LxKxD, cost_NxM=(
                distances if distances is None or rows_S is None else distances[:, rows_S]))
        else:  # in a branch, which recomputes its cost matrices: passed in, XLA would keep the
            # model's B x K distances at every step instead of fusing them away
            solved = functools.partial(summarize, sg(points_LxSxD), sg(codebook_LxKxD),
                                       cost_NxM=None)
            summary = lax.cond(solve, solved, lambda: jax.tree.map(
                lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(solved)))
        # The cost and its gradient from the plans' O(N + K D) summaries.
        cost_L, marginal_error_L, epsilon_L, _ = jax.vmap(cost_of_plan)(
            points_LxSxD, codebook_LxKxD, summary, movable_LxK)
        cost_L = cost_L / latent_dim
    losses.update(wasserstein=jnp.sum(cost_L), transport_cost=cost_L,
                  sinkhorn_marginal_error=marginal_error_L, solve_epsilon=epsilon_L)
    losses["total"] = (weights.lambda_commit * losses["commit"]
                       + weights.lambda_codebook * losses["codebook"]
                       + weights.lambda_wasserstein * losses["wasserstein"])
    return losses
