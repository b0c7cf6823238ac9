"""Loss terms as pure functions of arrays: reconstruction, VQ commit and codebook, and the
transport term (each level's entropic OT cost to its codebook, solved by `sinkhorn`)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rqvae.quantizer.settings import LOSS_TERMS, LossWeights, Transport
from rqvae.quantizer.state import CodebookState, Schedule, points_per_step, transport_schedule
from rqvae.quantizer.sinkhorn import effective_epsilon, sinkhorn_plan, squared_distances

__all__ = ["LOSS_TERMS", "compute_losses", "loss_terms", "quantizer_losses", "sinkhorn_loss",
           "vq_per_level", "wasserstein_levels"]

sg = lax.stop_gradient


def _sinkhorn_cost(points_NxD, codebook_MxD, epsilon, num_iters, *, solver="scaling",
                   epsilon_mode="absolute", tolerance=0.0, cost_NxM=None, overrelaxation=1.0,
                   movable_M=None):
    """sum(plan * C), the row-marginal error, the effective epsilon and each point's transport
    cost (N,), sum_j plan_ij C_ij / (1 / N), held out of the gradient. `movable_M` (bool): the
    codes the cost's gradient reaches; None: every code. `cost_NxM`: the squared distances, if
    already computed (the model's).

    The plan is held fixed in the backward pass: at the entropic optimum the gradient of the OT
    cost is that of sum(plan * C) with the plan constant (Danskin's envelope theorem), so nothing
    of the iterations is stored and memory is O(points x codes) whatever num_iters.
    """
    summary = _plan_summary(points_NxD, codebook_MxD, epsilon, num_iters, solver=solver,
                            epsilon_mode=epsilon_mode, tolerance=tolerance, cost_NxM=cost_NxM,
                            overrelaxation=overrelaxation)
    return _cost_of_plan(points_NxD, codebook_MxD, summary, movable_M)


class _PlanSummary(NamedTuple):
    """What the cost and its gradient need of a plan, O(N + M x D): its row and column sums,
    the points it carries to each code (plan^T x, differentiable in the points only), its
    per-point costs sum_j plan_ij C_ij, and the solve's row-marginal error and epsilon."""

    row_mass: jax.Array
    code_mass: jax.Array
    transported: jax.Array
    point_cost: jax.Array
    marginal_error: jax.Array
    epsilon: jax.Array


def _plan_summary(points_NxD, codebook_MxD, epsilon, num_iters, *, solver, epsilon_mode,
                  tolerance, cost_NxM, overrelaxation) -> _PlanSummary:
    points_NxD, codebook_MxD = points_NxD.astype(jnp.float32), codebook_MxD.astype(jnp.float32)
    if cost_NxM is None:
        cost_NxM = squared_distances(sg(points_NxD), sg(codebook_MxD))
    epsilon = effective_epsilon(cost_NxM, epsilon, epsilon_mode)
    result = sinkhorn_plan(sg(cost_NxM), epsilon, num_iters, None, solver, tolerance,
                           overrelaxation)
    plan_NxM = sg(result.plan)
    return _PlanSummary(jnp.sum(plan_NxM, axis=1), jnp.sum(plan_NxM, axis=0),
                        jnp.einsum("nm,nd->md", plan_NxM, points_NxD),
                        jnp.sum(plan_NxM * sg(cost_NxM), axis=1), result.marginal_error, epsilon)


def _cost_of_plan(points_NxD, codebook_MxD, summary: _PlanSummary, movable_M=None):
    """The `_sinkhorn_cost` outputs from a plan's summary. sum(P * C) expanded as
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
    solver: str = "scaling",
    epsilon_mode: str = "absolute",
    tolerance: float = 0.0,
    cost_LxBxK: jax.Array | None = None,
    overrelaxation: float = 1.0,
    movable_LxK: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Per-level OT cost between what each level quantized and its codebook, in one batched solve.

    `epsilon_mode`, `tolerance` and `overrelaxation` are as in `effective_epsilon` and
    `sinkhorn_plan`; each level gets its own effective epsilon and stops on its own.
    `cost_LxBxK`: the squared distances between the inputs and the codes, if already at hand
    (the model's `level_distances`); held out of the gradient either way. Returns the cost (L,),
    the plan's row-marginal error (L,), the effective epsilon (L,) and each point's transport
    cost (L, N). `movable_LxK`: the codes each level's cost moves (None: all).
    """
    solve = functools.partial(_sinkhorn_cost, epsilon=epsilon, num_iters=num_iters,
                              solver=solver, epsilon_mode=epsilon_mode, tolerance=tolerance,
                              overrelaxation=overrelaxation)
    return jax.vmap(solve)(level_inputs_LxBxD, codebook_LxKxD, cost_NxM=cost_LxBxK,
                           movable_M=movable_LxK)


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
# leave it room to choose, and re-anchoring draws from 4 K candidates; the rest is redundant
# positions (docs/results.md, "The grid step").
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
                     logged=True, branch: bool | None = None,
                     solver: str | None = None) -> dict[str, jax.Array]:
    """The quantizer's loss terms from a `ResidualVQ`'s aux, and their weighted sum `total`:
    add your reconstruction loss to it.

    Keys: commit and codebook (`vq_per_level`); wasserstein, the transport term: the levels'
    transport costs summed; per level (L,): transport_cost, each level's sum(plan * C) /
    latent_dim, a mean squared difference per latent dimension like commit and codebook;
    sinkhorn_marginal_error; solve_epsilon, the epsilon each solve used in squared latent units.
    With the term on, also transport_row_cost (L, N), each point's transport cost under its
    level's plan (0 for the points the solve left out: beyond SOLVE_POINTS_PER_CODE a code, it
    takes evenly spaced rows, `solved_rows`), and with a `state`, anchor_now: whether
    `update_codebook` re-anchors stale
    codes after this step. At `weights.lambda_wasserstein == 0` the term is not computed at all
    (its values are zeros).

    `state`: the `CodebookState` across steps, which `transport_schedule` reads: the term's
    gradient then reaches only stale codes, at anchor steps, and steps with nothing to move skip
    the solve unless `logged`. Without it the term moves every code at every step and nothing is
    re-anchored (the term as it was). `branch`: allow `lax.cond` (default: on CPU). `solver`:
    "scaling" (default on CPU) or "logdomain" (elsewhere). The level inputs are held out of the
    term's gradient unless `transport.encoder_grad`.
    """
    cpu = jax.default_backend() == "cpu"
    branch = cpu if branch is None else branch
    solver = ("scaling" if cpu else "logdomain") if solver is None else solver
    schedule = Schedule(None, None, None) if state is None else transport_schedule(
        state, weights, transport, num_codes=aux["codebook"].shape[1],
        points=points_per_step(aux["indices"].shape[1], aux["indices"].shape[0], state.shared),
        logged=logged, branch=branch)
    losses = _quantizer_terms(aux, weights, transport, solver, schedule.movable, schedule.solve)
    if schedule.anchor_now is not None:
        losses["anchor_now"] = schedule.anchor_now
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
            _plan_summary, epsilon=transport.epsilon, num_iters=transport.iters, solver=solver,
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
        cost_L, marginal_error_L, epsilon_L, row_cost_LxS = jax.vmap(_cost_of_plan)(
            points_LxSxD, codebook_LxKxD, summary, movable_LxK)
        cost_L = cost_L / latent_dim
        losses["transport_row_cost"] = row_cost_LxS if rows_S is None else jnp.zeros(
            level_inputs_LxBxD.shape[:2], row_cost_LxS.dtype).at[:, rows_S].set(row_cost_LxS)
    losses.update(wasserstein=jnp.sum(cost_L), transport_cost=cost_L,
                  sinkhorn_marginal_error=marginal_error_L, solve_epsilon=epsilon_L)
    losses["total"] = (weights.lambda_commit * losses["commit"]
                       + weights.lambda_codebook * losses["codebook"]
                       + weights.lambda_wasserstein * losses["wasserstein"])
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
    level_inputs=None,
    level_weights: tuple[float, ...] | None = None,
    wasserstein_encoder_grad: bool = False,
    solver: str = "scaling",
) -> dict[str, jax.Array]:
    """The original entry point, with its original meaning: commit mean ||z_e - sg(z_q)||^2 and
    codebook mean ||sg(z_e) - z_q||^2 on the sum of the codes, and the Wasserstein term the sum
    over levels of `level_weights[l]` (default 1) times `sinkhorn_loss` (epsilon in squared
    latent units, all `sinkhorn_iters` plain iterations, whole squared distances).

    Level l's points are `level_inputs[l]`; with two levels they can be given as z_e and z_q1
    instead (level 2 quantizes z_e - z_q1). `lambda_wasserstein` must be a Python number.
    Keys: the LOSS_TERMS and wasserstein_levels (L,), the unweighted per-level costs.
    """
    losses = {"recon": jnp.mean((x - x_recon) ** 2), "commit": jnp.mean((z_e - sg(z_q)) ** 2),
              "codebook": jnp.mean((sg(z_e) - z_q) ** 2)}
    num_levels = codebook.shape[0]
    if lambda_wasserstein == 0:
        per_level_L = jnp.zeros((num_levels,), jnp.float32)
    else:
        if level_inputs is None:
            if num_levels != 2 or z_q1 is None:
                raise ValueError("pass level_inputs (L, B, D) unless there are two levels and "
                                 "z_q1")
            level_inputs = jnp.stack([z_e, z_e - z_q1])
        if not wasserstein_encoder_grad:
            level_inputs = sg(level_inputs)
        per_level_L = wasserstein_levels(level_inputs, codebook, sinkhorn_epsilon,
                                         sinkhorn_iters, solver)[0]
    weights_L = jnp.asarray(level_weights or (1.0,) * num_levels, jnp.float32)
    losses["wasserstein"] = jnp.sum(weights_L * per_level_L)
    losses["wasserstein_levels"] = per_level_L
    losses["total"] = (losses["recon"] + lambda_commit * losses["commit"]
                       + lambda_codebook * losses["codebook"]
                       + lambda_wasserstein * losses["wasserstein"])
    return losses
