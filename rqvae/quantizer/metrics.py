"""Codebook health: how many codes a batch or a split uses, how evenly, and which are dead."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy


def code_counts(indices_LxB: jax.Array, num_codes: int, weights_B: jax.Array | None = None
                ) -> jax.Array:
    """How often each code was picked, per level: (L, num_codes) int32.

    `weights_B` (int) counts each item that many times, e.g. 0 for padding. A scatter-add: B
    updates, where a one-hot sum would compare every item with every code.
    """
    num_levels, batch = indices_LxB.shape
    weights_B = jnp.ones(batch, jnp.int32) if weights_B is None else weights_B.astype(jnp.int32)
    level_LxB = jnp.broadcast_to(jnp.arange(num_levels)[:, None], indices_LxB.shape)
    counts = jnp.zeros((num_levels, num_codes), jnp.int32)
    return counts.at[level_LxB, indices_LxB].add(jnp.broadcast_to(weights_B, indices_LxB.shape))


def codes_used(counts_LxK: jax.Array) -> jax.Array:
    """Codes picked at least once, per level."""
    return jnp.sum(counts_LxK > 0, axis=-1)


def perplexity(counts_LxK: jax.Array) -> jax.Array:
    """exp(entropy of code use), per level: num_codes when use is uniform, 1 when one code wins."""
    probs = counts_LxK / jnp.maximum(jnp.sum(counts_LxK, axis=-1, keepdims=True), 1)
    return jnp.exp(-jnp.sum(xlogy(probs, probs), axis=-1))


def update_last_used(last_used_LxK: jax.Array, counts_LxK: jax.Array, step) -> jax.Array:
    """The step at which each code was last picked (-1: never)."""
    return jnp.where(counts_LxK > 0, step, last_used_LxK)


def dead_in_window(last_used_LxK: jax.Array, step, window: int) -> jax.Array:
    """Codes not picked in the last `window` steps up to and including `step`, per level.

    A code never picked is dead from the first step on.
    """
    return jnp.sum((last_used_LxK < 0) | (last_used_LxK <= step - window), axis=-1)
