"""The two standard remedies against dead codes, as pure functions: k-means initialisation of a
residual codebook and restarting codes unused for a while from the current batch; re-seeding
codes in a params tree and an optimizer state (`reseed_codes`), which restart and the transport
term's re-anchoring share.

Both follow vector-quantize-pytorch (`kmeans_init`, `threshold_ema_dead_code`), so that runs with
them are fair comparators to the Wasserstein loss. Distances are nearest-code by squared distance,
as in `rqvae.trainer.model.quantize`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from rqvae.quantizer.residual import nearest_code, quantize

# -- k-means initialisation -------------------------------------------------------------------


def _kmeans(points_NxD: jax.Array, num_codes: int, key: jax.Array, iters: int) -> jax.Array:
    """Lloyd's k-means from `num_codes` points sampled from the data: (K, D).

    Sampled without replacement when there are enough points, with replacement otherwise. A code
    no point picks keeps its centroid (no division by zero), so duplicates of an N < K sample
    stay finite: they are ties the argmin always resolves to their first copy.
    """
    num_points = points_NxD.shape[0]
    index_K = jax.random.choice(key, num_points, (num_codes,), replace=num_points < num_codes)
    initial_KxD = jnp.take(points_NxD, index_K, axis=0)

    def lloyd_step(_, centroids_KxD):
        index_N = nearest_code(points_NxD, centroids_KxD)
        sums_KxD = jax.ops.segment_sum(points_NxD, index_N, num_segments=num_codes)
        counts_K = jnp.bincount(index_N, length=num_codes).astype(points_NxD.dtype)
        means_KxD = sums_KxD / jnp.maximum(counts_K, 1.0)[:, None]
        return jnp.where(counts_K[:, None] > 0, means_KxD, centroids_KxD)

    return lax.fori_loop(0, iters, lloyd_step, initial_KxD)


@functools.partial(jax.jit, static_argnames=("num_levels", "num_codes", "iters"))
def kmeans_codebooks(
    z_NxD: jax.Array, num_levels: int, num_codes: int, key: jax.Array, iters: int = 10
) -> jax.Array:
    """A residual codebook (L, K, D) float32 fitted by k-means, level by level.

    Level 1 clusters the encoder outputs `z_NxD`; level l > 1 clusters what is left after
    quantizing with the levels already fitted, so each level starts where the training would
    see it. Each level samples its initial centroids from its inputs with `fold_in(key, level)`
    and runs `iters` Lloyd iterations; `iters=0` returns the samples themselves.
    """
    residual_NxD = z_NxD.astype(jnp.float32)
    levels = []
    for level in range(num_levels):
        codebook_KxD = _kmeans(residual_NxD, num_codes, jax.random.fold_in(key, level), iters)
        levels.append(codebook_KxD)
        residual_NxD = residual_NxD - quantize(residual_NxD, codebook_KxD[None])[0]
    return jnp.stack(levels)


# -- dead-code restart ------------------------------------------------------------------------


def stale_codes(last_used_LxK: jax.Array, step, threshold: int) -> jax.Array:
    """Codes not picked at any of the last `threshold` steps up to and including `step`: (L, K).

    `last_used` is `metrics.update_last_used`'s: the step a code was last picked, -1 never. A
    never-picked code counts as picked just before step 0, so it gets the same `threshold`
    chances as a restarted one: steps 0 .. threshold - 1, and is stale from step threshold - 1
    on, i.e. once `threshold` steps have been taken. (`metrics.dead_in_window`, a health
    metric, counts never-picked codes as dead from the first step instead.)
    """
    return last_used_LxK <= step - threshold


def stale_window(window: int, num_codes: int, points_per_step: int) -> int:
    """The steps a code may go unpicked before it is stale: `window` steps, or, where a step
    quantizes fewer points than there are codes, the steps over which `window` x `num_codes`
    points pass. A code picked at its fair share, one point in `num_codes`, then expects
    `window` picks in the window whatever the codebook's size, so only codes used at a small
    fraction of it (about 1 / `window`) go stale; a window counted in steps alone would flag
    most codes of a large codebook (docs/results.md, "Why this design")."""
    return max(window, -(-window * num_codes // points_per_step))


@functools.partial(jax.jit, static_argnames="threshold")
def restart_dead_codes(
    codebook_LxKxD: jax.Array,
    last_used_LxK: jax.Array,
    step,
    level_inputs_LxBxD: jax.Array,
    key: jax.Array,
    *,
    threshold: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Re-seeds stale codes (see `stale_codes`) from rows of their level's inputs, one row each,
    taken in a uniformly random order: new codes land where the data is, in proportion to it.

    Call it after `metrics.update_last_used` has recorded this batch at `step`, with the same
    `step` and the batch's `level_inputs` (the encoder output at level 1, the residual below):
    codes are re-seeded where this batch's data is, each on a different row. With more stale
    codes than rows, the longest unpicked go first and the others stay stale until a later step:
    two codes seeded on one row would be duplicates, of which all but one die again. A
    restarted code's `last_used` becomes `step`, which gives it a fresh window of `threshold`
    steps. Every other code, and its `last_used`, is returned bitwise unchanged.

    Returns the codebook, last_used and which codes were restarted, (L, K) bool.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1 step, got {threshold}")
    stale_LxK = stale_codes(last_used_LxK, step, threshold)
    batch_size = level_inputs_LxBxD.shape[1]

    def reseed_level(codebook_KxD, stale_K, last_used_K, inputs_BxD, level_key):
        # The r-th restarted code by index takes the r-th row of a random order of the batch.
        restart_K = _oldest(stale_K, last_used_K, batch_size)
        rank_K = jnp.cumsum(restart_K) - 1
        rows_B = jax.random.permutation(level_key, batch_size)
        seeds_KxD = jnp.take(inputs_BxD, rows_B[jnp.clip(rank_K, 0, batch_size - 1)], axis=0)
        codebook_KxD = jnp.where(restart_K[:, None], seeds_KxD.astype(codebook_KxD.dtype),
                                 codebook_KxD)
        return codebook_KxD, restart_K

    level_keys = jax.random.split(key, codebook_LxKxD.shape[0])
    codebook_LxKxD, restart_LxK = jax.vmap(reseed_level)(
        codebook_LxKxD, stale_LxK, last_used_LxK, level_inputs_LxBxD, level_keys)
    last_used_LxK = jnp.where(restart_LxK, step, last_used_LxK).astype(last_used_LxK.dtype)
    return codebook_LxKxD, last_used_LxK, restart_LxK


def reseed_codes(params, opt_state, last_used_LxK, step, level_inputs_LxBxD, key, *,
                 threshold: int, shared: bool = False, quantizer: str | None = None):
    """Codes unpicked for `threshold` steps re-seeded on this batch's level inputs, one row
    each (drawn uniformly, `restart_dead_codes`), with fresh optimizer moments:
    dead-code restart, and the transport term's re-anchoring of stale codes. A shared code is
    stale when no level picks it, and is re-seeded on the encoder's outputs (level 1's inputs).
    Returns params, opt_state and last_used. `quantizer`: as in `codebook_of`."""
    codebook_array = codebook_of(params, quantizer)
    if shared:
        used_1xK = jnp.max(last_used_LxK, axis=0, keepdims=True)
        codebook_1xKxD, used_1xK, reseeded_1xK = restart_dead_codes(
            codebook_array, used_1xK, step, level_inputs_LxBxD[:1], key, threshold=threshold)
        return (with_codebook(params, codebook_1xKxD, quantizer),
                reset_moments(opt_state, reseeded_1xK, codebook_array.shape, quantizer),
                jnp.where(reseeded_1xK, used_1xK, last_used_LxK))
    codebook_LxKxD, last_used_LxK, reseeded_LxK = restart_dead_codes(
        codebook_array, last_used_LxK, step, level_inputs_LxBxD, key, threshold=threshold)
    return (with_codebook(params, codebook_LxKxD, quantizer),
            reset_moments(opt_state, reseeded_LxK, codebook_array.shape, quantizer),
            last_used_LxK)


def _oldest(stale_K: jax.Array, last_used_K: jax.Array, count: int) -> jax.Array:
    """The `count` stale codes picked longest ago, ties by index (all of them if fewer): (K,).

    A bisection on the step last picked, 32 counts over the codes, instead of a sort, which XLA
    does slowly on CPU: at 16,384 codes it would cost a restart run a sizable share of its step."""
    waited_K = jnp.where(stale_K, last_used_K, jnp.iinfo(jnp.int32).max).astype(jnp.int32)

    def halve(_, bounds):  # invariant: fewer than `count` codes waited_K <= lo, count or more <= hi
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(waited_K <= mid) >= count
        return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

    # last_used >= -1; with more stale codes than `count`, the last stale one has enough below.
    bounds = (jnp.int32(-2), jnp.max(jnp.where(stale_K, last_used_K, -2)).astype(jnp.int32))
    _, cutoff = jax.lax.fori_loop(0, 32, halve, bounds)  # the count-th smallest waited_K
    before_K = stale_K & (waited_K < cutoff)
    at_K = stale_K & (waited_K == cutoff)
    ties_K = at_K & (jnp.cumsum(at_K) <= count - jnp.sum(before_K))
    return jnp.where(jnp.sum(stale_K) <= count, stale_K, before_K | ties_K)


def reset_moments(opt_state, restarted_LxK: jax.Array, codebook_shape: tuple[int, ...],
                  quantizer: str | None = None):
    """Zeros the restarted codebook rows of every moment the optimizer keeps for the codebook;
    everything else unchanged. Works with any optax optimizer and state layout: Adam's mu and
    nu, SGD's momentum trace, an `optax.multi_transform` or chain of them; an optimizer that
    keeps no moments (plain SGD) has nothing to reset.

    A re-seeded code is a new parameter at a new place: its old first moment would push it along
    its previous (dead) trajectory, and its old second moment would scale its steps by gradients
    it saw elsewhere. Zeroed, it is treated exactly like a code never picked so far, whose
    moments are already zero under the VQ losses (an unpicked code gets no gradient). Counts
    (Adam's step count) are shared by all parameters and kept.

    A moment is a leaf of `opt_state` that sits at a key named `codebook` and has the
    codebook's shape `codebook_shape` (L, K, D). `restarted_LxK` is what `restart_dead_codes`
    returns last (its last_used alone cannot tell a restarted code from one picked at the same
    step). `quantizer`: of a model with several, the one whose moments these are (as in
    `codebook_of`).
    """
    def reset(path, leaf):
        if (_is_codebook(path, quantizer)
                and getattr(leaf, "shape", None) == tuple(codebook_shape)):
            return jnp.where(restarted_LxK[..., None], jnp.zeros_like(leaf), leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(reset, opt_state)


def codebook_of(params, quantizer: str | None = None) -> jax.Array:
    """The leaf of a params tree named `codebook` (the `ResidualVQ`'s), wherever the model
    nests it; of a model with several quantizers, the one under the module named `quantizer`
    (its name in your model, e.g. "tokens_a")."""
    found = {_path_text(path): leaf for path, leaf in
             jax.tree_util.tree_flatten_with_path(params)[0] if _is_codebook(path, quantizer)}
    if len(found) != 1:
        where = f" under a module named '{quantizer}'" if quantizer else ""
        paths = f" ({', '.join(found)})" if found else ""
        fix = ("; pass quantizer= with the name of the ResidualVQ to upkeep" if len(found) > 1
               else "; is the ResidualVQ's parameter in these params?")
        raise ValueError(f"params hold {len(found)} leaves named 'codebook'{where}{paths}; the "
                         f"codebook's upkeep takes one{fix}")
    return next(iter(found.values()))


def with_codebook(params, codebook_array: jax.Array, quantizer: str | None = None):
    """A params tree with its `codebook` leaf (under `quantizer`, if given) replaced."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: codebook_array if _is_codebook(path, quantizer) else leaf, params)


def _is_codebook(path, quantizer: str | None = None) -> bool:
    return bool(path) and getattr(path[-1], "key", None) == "codebook" and under(path, quantizer)


def under(path, quantizer: str | None) -> bool:
    """Whether a tree path runs through the module named `quantizer` (None: any path)."""
    return quantizer is None or any(getattr(k, "key", None) == quantizer for k in path[:-1])


def _path_text(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
