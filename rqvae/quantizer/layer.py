"""The residual quantizer as a Flax layer: drop it between your encoder and decoder."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rqvae.quantizer.metrics import code_counts
from rqvae.quantizer.residual import quantize
from rqvae.quantizer.state import STATE_COLLECTION, CodebookState


class ResidualVQ(nn.Module):
    """N-level residual vector quantization with a straight-through gradient.

    Level 1 picks the nearest code of codebook 1 to each latent, level l the nearest code of
    codebook l to what the levels before it left; the output is the sum of the picked codes.
    Its parameter is `codebook`, (L, K, D), or (1, K, D) with `shared_codebook` (one codebook
    seen by every level, its gradient the sum of the levels'), initialised uniformly in
    [-1/K, 1/K]: the classic VQ-VAE init, far from where an encoder's outputs go, which is what
    lets plain VQ training leave codes dead.

    Call it on latents of any leading shape, (..., D). Returns:
      - z_q (..., D): the quantized latents; the gradient reaches the input as if it were z
        (straight-through);
      - indices (..., L) int32: the code each level picked;
      - aux, over the N = prod(...) latents as rows: z_e (N, D), the input; z_q (N, D);
        codebook (L, K, D); level_inputs (L, N, D), what each level quantized (the residuals);
        level_codes (L, N, D); level_distances (L, N, K), held out of the gradient; indices
        (L, N); counts (L, K) int32, how often each code was picked; with `keep_state`,
        codebook_state, the layer's `CodebookState`. `quantizer_losses` and `update_codebook`
        (or `upkeep`) read it.

    `keep_state=True`: the layer keeps its `CodebookState` in the variable collection
    "codebook_state", as BatchNorm keeps "batch_stats": `init` creates it, the aux carries it to
    `quantizer_losses`, and `upkeep` writes it back after the optimizer, so a loop threads
    nothing of its own (docs/library.md).
    """

    num_levels: int
    num_codes: int
    latent_dim: int
    shared_codebook: bool = False
    keep_state: bool = False

    def setup(self):
        scale = 1.0 / self.num_codes
        self.codebook_param = self.param(
            "codebook",
            lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -scale, scale),
            (1 if self.shared_codebook else self.num_levels, self.num_codes, self.latent_dim),
        )
        if self.keep_state:
            start = CodebookState.create(self.num_levels, self.num_codes)
            self.last_used = self.variable(STATE_COLLECTION, "last_used", lambda: start.last_used)
            self.step = self.variable(STATE_COLLECTION, "step", lambda: start.step)

    @property
    def codebook(self) -> jax.Array:
        """(L, K, D): one codebook a level, or the shared one seen by every level."""
        return jnp.broadcast_to(self.codebook_param,
                                (self.num_levels, self.num_codes, self.latent_dim))

    def decode(self, indices: jax.Array) -> jax.Array:
        """The quantized latents (..., D) of code indices (..., L): each level's picked code,
        summed, as `__call__` returns them (without its straight-through gradient)."""
        codebook_LxKxD = self.codebook
        picked = [codebook_LxKxD[level][indices[..., level]] for level in range(self.num_levels)]
        return sum(picked[1:], picked[0])

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"ResidualVQ(latent_dim={self.latent_dim}) got latents of shape "
                             f"{z.shape}: the last axis must be the latent")
        z_NxD = z.reshape(-1, self.latent_dim)
        z_q_NxD, aux = quantize(z_NxD, self.codebook)
        aux.update(z_e=z_NxD, z_q=z_q_NxD, codebook=self.codebook,
                   counts=code_counts(aux["indices"], self.num_codes))
        if self.keep_state:
            aux[STATE_COLLECTION] = CodebookState(self.last_used.value, self.step.value,
                                                  self.shared_codebook)
        z_st_NxD = z_NxD + jax.lax.stop_gradient(z_q_NxD - z_NxD)
        indices = jnp.moveaxis(aux["indices"].reshape(self.num_levels, *z.shape[:-1]), 0, -1)
        return z_st_NxD.reshape(z.shape), indices.astype(jnp.int32), aux
