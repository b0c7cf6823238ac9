"""The first release's loss functions, with their first meaning: `sinkhorn_loss` (epsilon in
squared latent units, all iterations), `compute_losses` (commit and codebook on the sum of the
codes) and `wasserstein_levels`, the per-level cost they sum. Public and tested; the library's
losses (`losses.quantizer_losses`) and the trainer do not use them."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from rqvae.quantizer.losses import cost_of_plan, plan_summary

__all__ = ["compute_losses", "sinkhorn_loss", "wasserstein_levels"]

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
    summary = plan_summary(points_NxD, codebook_MxD, epsilon, num_iters, solver=solver,
                            epsilon_mode=epsilon_mode, tolerance=tolerance, cost_NxM=cost_NxM,
                            overrelaxation=overrelaxation)
    return cost_of_plan(points_NxD, codebook_MxD, summary, movable_M)


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
