"""What the library's loss functions read: the loss weights, the transport term's settings and
the platform's way of running them, and the names of the loss terms. Frozen dataclasses of scalars, so they are hashable static jit
arguments; this module imports nothing, so a config can be read without JAX.

The trainer's config tree holds these sections as they are (`[loss]`, `[transport]` in TOML);
docs/results.md gives the measurement behind each default.
"""

from __future__ import annotations

from dataclasses import dataclass

# The terms `losses.loss_terms` returns, total first; each but the first has a weight
# `lambda_<term>` in LossWeights except recon, whose weight is 1.
LOSS_TERMS = ("total", "recon", "commit", "codebook", "wasserstein")

# Batches of encoder outputs that k-means initialisation clusters (`remedies.kmeans_init`).
KMEANS_BATCHES = 8


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    lambda_commit: float = 0.25  # commitment: pulls the encoder toward its codes
    lambda_codebook: float = 1.0  # codebook: moves each picked code toward its level's input
    lambda_wasserstein: float = 0.0  # the transport term: moves the codes no point picks


@dataclass(frozen=True, kw_only=True)
class Transport:
    epsilon: float = 0.05  # entropic regularization, a fraction of each level's mean cost
    iters: int = 200  # most Sinkhorn iterations per level per step
    tolerance: float = 0.005  # a solve stops once its row-marginal error (L1) is at most this
    overrelaxation: float = 1.6  # over-relaxed Sinkhorn updates once plain ones slow; 1: plain
    anchor_window: int = 20  # steps unpicked after which a code is stale, or, where a step
    #   quantizes fewer points than there are codes, the steps over which this many sweeps of
    #   the codebook pass: stale codes alone take the term's gradient, and are re-anchored on
    #   batch points drawn uniformly, every quarter window; 0: every code takes the gradient at
    #   every step and none is re-anchored
    encoder_grad: bool = False  # true: the term's gradient also reaches the encoder


@dataclass(frozen=True, kw_only=True)
class Platform:
    """How a step runs where it runs, decided once (`Platform.of`) and passed down: the trainer
    builds it from its devices, the library from `jax.default_backend()` in `quantizer_losses`,
    and `transport_schedule` hands `branch` on to `update_codebook` in its `Schedule`.

    On CPU the stabilized scaling loop and `lax.cond` branches are fastest (a branch runs one
    side, so steps with nothing to re-anchor skip the solve). On accelerators the log-domain loop,
    and selects instead of branches: there a branch reads its predicate back to the host, which
    would stall the device once per step (scripts/gpu_checks.sh measures the choice)."""

    solver: str = "scaling"  # Sinkhorn: "scaling" or "logdomain" (sinkhorn.SOLVERS)
    branch: bool = True  # decide "skip or not" with lax.cond; False: compute both, select

    @classmethod
    def of(cls, name: str) -> Platform:
        """The choice for a JAX platform name ("cpu", "gpu", "tpu")."""
        accelerator = name != "cpu"
        return cls(solver="logdomain" if accelerator else "scaling", branch=not accelerator)
