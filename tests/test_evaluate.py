"""Evaluation over whole splits, in padded chunks."""

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
