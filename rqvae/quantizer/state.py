"""What the transport term keeps across steps, and the codebook's upkeep after each step.

`CodebookState` is the step at which each code was last picked, and the step count: a pytree of
two int32 arrays that checkpoints with the rest of a train state. `transport_schedule` reads it
to decide which codes the term moves at a step and whether the step must solve at all;
`update_codebook` records the step's picks and re-anchors the stale codes (and, as a comparator,
restarts dead ones).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from rqvae.quantizer import codebook
from rqvae.quantizer.metrics import update_last_used
from rqvae.quantizer.settings import LossWeights, Transport

# Stale codes are re-anchored, and take the term's gradient, at every `window //
# ANCHOR_PERIODS`-th step, or as soon as a step's worth of them waits: a stale code waits at most
# a quarter of its window more, and the steps between skip the solve (docs/results.md, "Why this
# design").
ANCHOR_PERIODS = 4
# The variable collection a `ResidualVQ(keep_state=True)` keeps its CodebookState in.
STATE_COLLECTION = "codebook_state"


@flax.struct.dataclass
class CodebookState:
    """The codes' use across steps. `last_used` (L, K) int32: the step at which each code was
    last picked, -1 never; `step` int32: steps taken. `shared`: the quantizer's
    `shared_codebook` (static), where a code is stale only when no level picks it."""

    last_used: jax.Array
    step: jax.Array
    shared: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def create(cls, num_levels: int, num_codes: int, shared_codebook: bool = False):
        return cls(jnp.full((num_levels, num_codes), -1, jnp.int32), jnp.zeros((), jnp.int32),
                   shared_codebook)

    def picked_last(self) -> jax.Array:
        """(L, K), or (1, K) for a shared codebook: when each code was last picked by any level
        it serves."""
        return jnp.max(self.last_used, axis=0, keepdims=True) if self.shared else self.last_used


@flax.struct.dataclass
class Schedule:
    """What the transport term does at a step, decided once by `transport_schedule` and read by
    the losses, `update_codebook` and the step's metrics. The default: no re-anchoring, the term
    (if on) moving every code at every step."""

    anchor_now: jax.Array | None = None  # bool: re-anchor stale codes after this step; None: never
    movable: jax.Array | None = None  # (L, K) bool: the codes the term's gradient reaches; None: all
    solve: jax.Array | None = None  # bool: whether the step solves; None: always
    # Steps a code may go unpicked before it is stale (`anchor_window`); 0: nothing is.
    window: int = flax.struct.field(pytree_node=False, default=0)
    # Decide "re-anchor or not" with `lax.cond` (`Platform.branch`), or compute both and select.
    branch: bool = flax.struct.field(pytree_node=False, default=True)

    def stale(self, last_used_LxK: jax.Array, step) -> jax.Array:
        """(L, K) bool: the codes no step picked over the window up to and including `step`,
        from a `last_used` (L, K): the schedule passes `CodebookState.picked_last`'s, so that a
        shared code is stale only when no level picked it; the step's `anchor_stale` metric
        counts per level. The one definition of stale (`codebook.stale_codes`, which restart
        and re-anchoring apply with their thresholds); all False without a window."""
        if not self.window:
            return jnp.zeros(last_used_LxK.shape, bool)
        return codebook.stale_codes(last_used_LxK, step, self.window)


def points_per_step(num_points: int, num_levels: int, shared: bool) -> int:
    """The points each codebook is offered a step: the batch's latents, times the levels for a
    shared codebook."""
    return num_points * (num_levels if shared else 1)


def reanchors(weights: LossWeights, transport: Transport) -> bool:
    """Whether the transport term is on and re-anchors stale codes."""
    return weights.lambda_wasserstein > 0 and transport.anchor_window > 0


def anchor_window(transport: Transport, num_codes: int, points: int) -> int:
    """The steps a code may go unpicked before the term takes it as stale: `anchor_window`
    steps, longer where a step offers fewer points than there are codes
    (`codebook.stale_window`)."""
    return codebook.stale_window(transport.anchor_window, num_codes, points)


def transport_schedule(state: CodebookState, weights: LossWeights, transport: Transport, *,
                       num_codes: int, points: int, logged=True, branch: bool) -> Schedule:
    """Which codes the transport term moves at this step, whether stale codes are re-anchored
    after it, and whether it must solve.

    Without the term or with `transport.anchor_window = 0` the term (if on) moves every code at
    every step and nothing is re-anchored. Otherwise anchor steps come every
    `window // ANCHOR_PERIODS` steps, and at any step where some level has `points` stale codes
    waiting. At an anchor step the term's gradient reaches the codes unpicked over the window
    before it; at other steps none (without a codebook loss, pure Wasserstein, every code at
    every step: the served codes move by the term alone). Codes the nearest-code rule serves
    follow the codebook loss: a term that also pulled them toward an even share of the batch
    would trade reconstruction for balance (docs/results.md).

    `branch` (`Platform.branch`): a step whose term moves nothing and re-anchors nothing skips
    the solve (a `lax.cond`) unless `logged`. What a run computes never depends on `logged`.
    """
    if not reanchors(weights, transport):
        return Schedule(branch=branch)
    window = anchor_window(transport, num_codes, points)
    picked_LxK = jnp.broadcast_to(state.picked_last(), state.last_used.shape)
    stale = Schedule(window=window, branch=branch).stale
    stale_by_end_LxK = stale(picked_LxK, state.step)  # unless this step picks them
    anchor_now = ((state.step % max(1, window // ANCHOR_PERIODS) == 0)
                  | jnp.any(jnp.sum(stale_by_end_LxK, axis=1) >= points))
    if weights.lambda_codebook == 0:
        return Schedule(anchor_now, window=window, branch=branch)
    movable = anchor_now & stale(picked_LxK, state.step - 1)  # stale before this step's picks
    solve = None
    if not transport.encoder_grad and branch:
        solve = logged | (anchor_now & jnp.any(stale_by_end_LxK))
    return Schedule(anchor_now, movable, solve, window=window, branch=branch)


def update_codebook(params, opt_state, state: CodebookState, aux: dict, losses: dict,
                    key: jax.Array, *, restart_threshold: int = 0,
                    restart_key: jax.Array | None = None, quantizer: str | None = None
                    ) -> tuple[Any, Any, CodebookState]:
    """The codebook's upkeep after the optimizer's update: records which codes the step picked,
    then re-anchors the stale codes when the step's schedule says so (`losses["schedule"]`, as
    `quantizer_losses` with a `state` returns it): each on its own batch point, drawn uniformly
    (points where the data is dense, whose codes serve many: docs/results.md, "Large
    codebooks"), with fresh optimizer moments. Returns params, opt_state and the state one step
    on.

    `params` holds one leaf named `codebook` (the `ResidualVQ`'s), or, for a model with
    several quantizers, one under the module named `quantizer` (call it once per quantizer, each
    with its own state, aux and losses); `opt_state` is any
    optax optimizer's state: the moments it keeps for the codebook are reset where codes are
    re-seeded (`codebook.reset_moments`). `restart_threshold` > 0 adds the comparator remedy first:
    codes unpicked for that many steps re-seeded on random batch points (`restart_key`, by
    default `key`).
    """
    schedule = losses.get("schedule", Schedule())
    step = state.step
    last_used = update_last_used(state.last_used, aux["counts"], step)
    if restart_threshold:
        params, opt_state, last_used = codebook.reseed_codes(
            params, opt_state, last_used, step, aux["level_inputs"],
            key if restart_key is None else restart_key, threshold=restart_threshold,
            shared=state.shared, quantizer=quantizer)
    if schedule.anchor_now is not None:
        def anchor():
            return codebook.reseed_codes(
                params, opt_state, last_used, step, aux["level_inputs"], key,
                threshold=schedule.window, shared=state.shared, quantizer=quantizer)

        current = (params, opt_state, last_used)
        if schedule.branch:
            params, opt_state, last_used = jax.lax.cond(schedule.anchor_now, anchor,
                                                        lambda: current)
        else:
            params, opt_state, last_used = jax.tree.map(
                lambda new, old: jnp.where(schedule.anchor_now, new, old), anchor(), current)
    return params, opt_state, state.replace(last_used=last_used, step=step + 1)


def upkeep(variables, opt_state, aux: dict, losses: dict, key: jax.Array, *,
           restart_threshold: int = 0, quantizer: str | None = None) -> tuple[Any, Any]:
    """`update_codebook` for a layer that keeps its state (`ResidualVQ(keep_state=True)`): the
    state comes from `aux`, the codebook from `variables["params"]`, and the new params and the
    state one step on go back into `variables`. Returns variables and opt_state. With several
    such quantizers, call it once per quantizer with its name, as `update_codebook`."""
    params, opt_state, state = update_codebook(
        variables["params"], opt_state, aux[STATE_COLLECTION], aux, losses, key,
        restart_threshold=restart_threshold, quantizer=quantizer)
    kept = variables[STATE_COLLECTION]
    owners = {path[:-1] for path, _ in jax.tree_util.tree_flatten_with_path(kept)[0]
              if codebook.under(path, quantizer)}
    if len(owners) != 1:
        where = f" under a module named '{quantizer}'" if quantizer else ""
        raise ValueError(f"variables['{STATE_COLLECTION}'] hold {len(owners)} quantizers' "
                         f"states{where}; pass quantizer= with the name of the ResidualVQ")
    new = {"last_used": state.last_used, "step": state.step}
    kept = jax.tree_util.tree_map_with_path(
        lambda path, leaf: new[path[-1].key] if path[:-1] in owners else leaf, kept)
    return {**variables, "params": params, STATE_COLLECTION: kept}, opt_state
