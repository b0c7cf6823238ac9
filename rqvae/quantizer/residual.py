"""Residual quantization: each level picks the nearest code of its codebook to what the levels
before it left, with the squared distances the transport term reuses."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def nearest_code(points_NxD: jax.Array, codebook_KxD: jax.Array) -> jax.Array:
    """Index of each point's nearest code by squared distance, ties to the lowest index."""
    return jnp.argmin(_distances_without_points_norm(points_NxD, codebook_KxD), axis=-1)


def _distances_without_points_norm(points_NxD, codebook_KxD):
    """||p - c||^2 without its ||p||^2 term, which does not change the argmin; no (N, K, D)
    intermediate."""
    return jnp.sum(codebook_KxD**2, axis=-1) - 2.0 * points_NxD @ codebook_KxD.T


def quantize(z_e_BxD: jax.Array, codebook_LxKxD: jax.Array) -> tuple[jax.Array, dict]:
    """Residual quantization: level l picks the nearest code of codebook l to what is left.

    Returns the sum of the picked codes (no straight-through applied) and, per level, the inputs
    each level quantized (L, B, D), the picked codes (L, B, D), their indices (L, B) and the
    squared distances from each input to every code (L, B, K), held out of the gradient (the
    transport term's cost matrix; under jit it costs nothing when unused).
    """
    residual = z_e_BxD
    level_inputs, level_codes, indices, distances = [], [], [], []
    for codebook_KxD in codebook_LxKxD:
        distance_BxK = _distances_without_points_norm(residual, codebook_KxD)
        index_B = jnp.argmin(distance_BxK, axis=-1)
        code_BxD = jnp.take(codebook_KxD, index_B, axis=0)
        level_inputs.append(residual)
        level_codes.append(code_BxD)
        indices.append(index_B)
        # Clipped at 0 against cancellation.
        squared_norm_Bx1 = jnp.sum(residual.astype(jnp.float32) ** 2, axis=-1, keepdims=True)
        distances.append(jnp.maximum(jax.lax.stop_gradient(distance_BxK + squared_norm_Bx1), 0.0))
        # Detached, as in ResidualVQ: a later level's input moves no earlier level's codes.
        residual = residual - jax.lax.stop_gradient(code_BxD)
    level_codes_LxBxD = jnp.stack(level_codes)
    aux = {
        "level_inputs": jnp.stack(level_inputs),
        "level_codes": level_codes_LxBxD,
        "indices": jnp.stack(indices),
        "level_distances": jnp.stack(distances),
    }
    return jnp.sum(level_codes_LxBxD, axis=0), aux
