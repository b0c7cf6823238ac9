"""Evaluation over whole splits, in padded chunks."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from rqvae.trainer import evaluate, step
from rqvae.trainer.config import step_config


def test_evaluate_counts_dead_codes_over_the_training_split(tiny_cfg, digits):
    cfg = step_config(tiny_cfg)
    state = step.init_state(cfg, len(digits.train))
    result = evaluate.evaluate(state.params, digits, cfg)
    levels = tiny_cfg.model.num_levels
    assert len(result["train_dead"]) == len(result["train_used"]) == levels
    assert all(u + d == tiny_cfg.model.num_codes
               for u, d in zip(result["train_used"], result["train_dead"]))
    assert 0 < result["heldout_recon"] < 1
    # The same counts by a direct pass, for comparison with the chunked one.
    _, aux = step.make_model(cfg).apply(state.params, jnp.asarray(digits.train))
    direct = [len(np.unique(level)) for level in np.asarray(aux["indices"])]
    assert result["train_used"] == direct




def test_chunks_cover_the_split_in_one_shape(monkeypatch, tiny_cfg, digits):
    # Chunks of 500 over 1438 images: three calls of one shape, the last padded, and the same
    # codes and counts as one call over everything.
    cfg = step_config(tiny_cfg)
    params = step.init_state(cfg, len(digits.train)).params
    whole = evaluate.encode(params, digits.train, cfg)
    monkeypatch.setattr(evaluate, "EVAL_CHUNK", 500)
    shapes = [x.shape for x, _ in evaluate._chunks(digits.train)]
    assert shapes == [(500, 64)] * 3
    np.testing.assert_array_equal(evaluate.encode(params, digits.train, cfg), whole)
    assert whole.shape == (len(digits.train), cfg.model.num_levels)


def test_a_shared_codebook_is_dead_where_no_level_picks_a_code(tiny_cfg, digits):
    shared = step_config(dataclasses.replace(
        tiny_cfg, model=dataclasses.replace(tiny_cfg.model, shared_codebook=True)))
    state = step.init_state(shared, len(digits.train))
    result = evaluate.evaluate(state.params, digits, shared)
    _, aux = step.make_model(shared).apply(state.params, jnp.asarray(digits.train))
    picked_by_any = len(np.unique(np.asarray(aux["indices"])))
    assert result["shared_dead"] == tiny_cfg.model.num_codes - picked_by_any
    # Per level, each level's own count, which can only be as high or higher.
    assert min(result["train_dead"]) >= result["shared_dead"]
    unshared = step_config(tiny_cfg)
    assert "shared_dead" not in evaluate.evaluate(
        step.init_state(unshared, len(digits.train)).params, digits, unshared)
