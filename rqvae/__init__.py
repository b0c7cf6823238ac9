"""rqvae: residual-quantized VAEs whose codebooks stay alive.

The quantizer as a library (docs/library.md), for your own Flax model and optax loop:

- `ResidualVQ(num_levels, num_codes, latent_dim, shared_codebook=False)`: the Flax layer. Call
  it on latents (..., D); it returns the quantized latents (straight-through), the code indices
  (..., L) and an aux dict.
- `quantizer_losses(aux, weights, transport, state=...)`: commit, codebook and the transport
  term, and their weighted `total`, to add to your reconstruction loss.
- `CodebookState.create(num_levels, num_codes)`: what the transport term keeps across steps
  (when each code was last picked); `update_codebook(params, opt_state, state, aux, losses,
  key)` after each optimizer update records the picks and re-anchors stale codes. Or the
  layer keeps the state itself (`ResidualVQ(..., keep_state=True)`, in the "codebook_state"
  collection) and `upkeep(variables, opt_state, aux, losses, key)` does the same.
- `LossWeights`, `Transport`: the loss weights and the transport term's settings, with the
  defaults the `rqvae train` command uses; `Platform`: the solver and branching
  (`quantizer_losses(..., platform=)`; default: the one for `jax.default_backend()`).
- `kmeans_codebooks`, `with_codebook`: k-means initialisation of a residual codebook, and a
  params tree with its codebook replaced.
- `codes_used`, `perplexity`: codebook health from `aux["counts"]`.
- `sinkhorn_loss(points, codebook)`: the entropic OT cost between points and a codebook.
- `load_run(path, step=None)`: a run trained by `rqvae train`, with `.encode(examples)` (codes)
  and `.decode(codes)` (reconstructions).

Everything else is internal. The names load on first use, so the command line starts without
JAX.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ResidualVQ": "rqvae.quantizer.layer",
    "quantizer_losses": "rqvae.quantizer.losses",
    "sinkhorn_loss": "rqvae.quantizer.first_release",
    "CodebookState": "rqvae.quantizer.state",
    "update_codebook": "rqvae.quantizer.state",
    "upkeep": "rqvae.quantizer.state",
    "LossWeights": "rqvae.quantizer.settings",
    "Transport": "rqvae.quantizer.settings",
    "Platform": "rqvae.quantizer.settings",
    "kmeans_codebooks": "rqvae.quantizer.codebook",
    "with_codebook": "rqvae.quantizer.codebook",
    "codes_used": "rqvae.quantizer.metrics",
    "perplexity": "rqvae.quantizer.metrics",
    "load_run": "rqvae.trainer.trained",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rqvae' has no attribute {name!r}")


def __dir__():
    return __all__
