"""Evaluation of parameters over whole splits: held-out recon, code use, and the codes themselves.

Splits are walked in padded chunks of one shape, so each function compiles once per run.
Metric names and meanings are `rqvae.trainer.runlog`'s (eval records).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rqvae.quantizer import metrics
from rqvae.trainer.config import StepConfig
from rqvae.trainer.data import Dataset
from rqvae.trainer.model import RQVAE
from rqvae.trainer.step import make_model

EVAL_CHUNK = 4096  # images per compiled call


def _chunks(images_NxP: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(chunk, valid) pairs covering the split (images, or codes): every chunk has one shape,
    the last one padded with zeros that `valid` (int32, 1 for a real row) marks."""
    size = min(EVAL_CHUNK, len(images_NxP))
    for start in range(0, len(images_NxP), size):
        x = images_NxP[start : start + size]
        valid = np.ones(size, np.int32)
        if len(x) < size:
            valid[len(x) :] = 0
            x = np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)])
        yield x, valid


@functools.partial(jax.jit, static_argnames="cfg")
def _eval_chunk(params, x_BxP, valid_B, *, cfg: StepConfig):
    x_recon, aux = make_model(cfg).apply(params, x_BxP)
    positions = aux["indices"].shape[1] // x_BxP.shape[0]  # of a grid latent; 1 for a vector
    counts_LxK = metrics.code_counts(aux["indices"], cfg.model.num_codes,
                                     jnp.repeat(valid_B, positions))
    squared_error = jnp.sum(valid_B * jnp.mean((x_BxP - x_recon) ** 2, axis=-1))
    return counts_LxK, squared_error, aux["indices"]


def _pass(params, images_NxP: np.ndarray, cfg: StepConfig, with_codes: bool = False):
    """Code counts (L, K), summed per-image MSE and, `with_codes`, every image's codes (N, L)
    (vector latents) over a whole split."""
    counts, squared_error, codes = 0, 0.0, []
    for x, valid in _chunks(images_NxP):  # summed on the host: no eager device ops
        chunk_counts, chunk_error, indices_LxB = _eval_chunk(params, x, valid, cfg=cfg)
        chunk_counts, chunk_error = jax.device_get((chunk_counts, chunk_error))
        counts, squared_error = counts + chunk_counts, squared_error + float(chunk_error)
        if with_codes:  # fetched only where wanted: a grid's are one per position
            codes.append(np.asarray(indices_LxB).T[valid.astype(bool)])
    return counts, squared_error, np.concatenate(codes) if codes else None


@jax.jit
def _usage(train_counts_LxK, heldout_counts_LxK):
    return (metrics.codes_used(train_counts_LxK), metrics.perplexity(train_counts_LxK),
            metrics.codes_used(heldout_counts_LxK), metrics.perplexity(heldout_counts_LxK))


def evaluate(params, dataset: Dataset, cfg: StepConfig) -> dict:
    """Held-out recon MSE and PSNR, and per-level code use over full passes of both splits.

    The full pass of the training split is the definitive dead-code count: a code no training
    image picks is dead; of a shared codebook, a code no level picks (`shared_dead`).
    """
    train_counts, _, train_codes = _pass(params, dataset.train, cfg,
                                         with_codes=cfg.model.latent != "grid")
    heldout_counts, heldout_error, _ = _pass(params, dataset.heldout, cfg)
    train_used, train_perplexity, heldout_used, heldout_perplexity = (
        x.tolist() for x in jax.device_get(_usage(train_counts, heldout_counts)))
    mse = heldout_error / len(dataset.heldout)
    return {
        "heldout_recon": mse,
        "heldout_psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))),
        "constant_recon": constant_recon(dataset),
        "train_used": train_used,
        "train_dead": [cfg.model.num_codes - used for used in train_used],
        "train_perplexity": train_perplexity,
        "heldout_used": heldout_used,
        "heldout_perplexity": heldout_perplexity,
        **({} if train_codes is None else code_tuples(train_codes)),
        **({"shared_dead": int(np.sum(np.sum(train_counts, axis=0) == 0))}
           if cfg.model.shared_codebook else {}),
    }


def code_tuples(codes_NxL: np.ndarray) -> dict:
    """How the examples' code tuples collide (a vector latent's, as semantic IDs): the eval
    record's tuples_unique, tuples_shared (examples whose tuple another example has too) and
    tuples_largest_group."""
    _, counts = np.unique(codes_NxL, axis=0, return_counts=True)
    return {"tuples_unique": len(counts), "tuples_shared": int(counts[counts > 1].sum()),
            "tuples_largest_group": int(counts.max())}


def constant_recon(dataset: Dataset) -> float:
    """The held-out MSE of the training split's mean example: the lowest a model whose output
    ignores its input can reach (the best constant image, per pixel)."""
    mean_P = dataset.train.mean(axis=0, dtype=np.float64)
    return float(np.mean((dataset.heldout - mean_P) ** 2))


@functools.partial(jax.jit, static_argnames="cfg")
def _encode_chunk(params, x_BxP, *, cfg: StepConfig):
    return make_model(cfg).apply(params, x_BxP, method=RQVAE.encode)


@functools.partial(jax.jit, static_argnames="cfg")
def _decode_chunk(params, codes, *, cfg: StepConfig):
    return make_model(cfg).apply(params, codes, method=RQVAE.decode)


def decode(params, codes: np.ndarray, cfg: StepConfig) -> np.ndarray:
    """The reconstructions (N, P) float32 of codes as `encode` gives them, in chunks of one
    shape."""
    parts = [np.asarray(_decode_chunk(params, chunk, cfg=cfg))[valid.astype(bool)]
             for chunk, valid in _chunks(codes)]
    return np.concatenate(parts).astype(np.float32)


def encode(params, images_NxP: np.ndarray, cfg: StepConfig) -> np.ndarray:
    """Per-level code indices of every image: (N, L) int32, or (N, H', W', L) for a grid."""
    parts = [np.asarray(_encode_chunk(params, x, cfg=cfg))[valid.astype(bool)]
             for x, valid in _chunks(images_NxP)]
    return np.concatenate(parts).astype(np.int32)
