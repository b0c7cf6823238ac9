import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rqvae import train

# One step of the tiny config on the first 16 training digits. Update these only for an intended
# change of the model, its init, the losses or the optimizer, never to make a refactor pass.
GOLDEN_TOTAL = 0.3785033
GOLDEN_STEP1_TOTAL = 0.3462415


def _first_batch(cfg, digits):
    return jnp.asarray(digits.train[: cfg.batch_size])


def test_golden_single_step(tiny_cfg, digits):
    state = train.init_state(tiny_cfg, len(digits.train))
    step = jax.jit(train.train_step, static_argnames="cfg")
    batch = _first_batch(tiny_cfg, digits)
    state, metrics = step(state, batch, cfg=tiny_cfg)
    _, metrics2 = step(state, batch, cfg=tiny_cfg)
    message = ("golden value changed: legitimate only if the model, init, losses or optimizer were "
               "changed on purpose; then update GOLDEN_* in tests/test_train.py")
    assert float(metrics["total"]) == pytest.approx(GOLDEN_TOTAL, rel=1e-5), message
    assert float(metrics2["total"]) == pytest.approx(GOLDEN_STEP1_TOTAL, rel=1e-5), message
    assert float(metrics2["total"]) < float(metrics["total"])


def test_step_is_the_same_with_and_without_jit(tiny_cfg, digits):
    # Without the OT term: eagerly, its loops would compile op by op (tested in test_losses).
    tiny_cfg = dataclasses.replace(tiny_cfg, lambda_wasserstein=0.0)
    batch = _first_batch(tiny_cfg, digits)
    eager_state, eager = train.train_step(train.init_state(tiny_cfg, 10), batch, cfg=tiny_cfg)
    jit_state, jitted = jax.jit(train.train_step, static_argnames="cfg")(
        train.init_state(tiny_cfg, 10), batch, cfg=tiny_cfg)
    for key in train.LOSS_TERMS:
        assert float(eager[key]) == pytest.approx(float(jitted[key]), rel=1e-4)
        assert np.isfinite(float(eager[key]))
    assert int(jit_state.step) == 1 and int(jit_state.failed_step) == -1
    assert jitted["used"].shape == jitted["dead"].shape == (tiny_cfg.model.num_levels,)


def test_non_finite_loss_freezes_the_state_and_names_the_step(tiny_cfg, digits):
    step = jax.jit(train.train_step, static_argnames="cfg")
    state = train.init_state(tiny_cfg, len(digits.train))
    batch = _first_batch(tiny_cfg, digits)
    state, _ = step(state, batch, cfg=tiny_cfg)
    good_params = jax.device_get(state.params)
    bad_state, metrics = step(state, batch.at[0, 0].set(jnp.nan), cfg=tiny_cfg)
    assert int(bad_state.failed_step) == 1 and int(bad_state.step) == 1
    failed = dict(zip(train.LOSS_TERMS, np.asarray(bad_state.failed_terms)))
    assert failed["recon"] and failed["total"]
    # Frozen: a good batch afterwards changes nothing.
    after, _ = step(bad_state, batch, cfg=tiny_cfg)
    assert int(after.failed_step) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.params), good_params)


def test_batches_follow_a_per_epoch_permutation(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, batch_size=4)
    images = jnp.arange(10, dtype=jnp.float32)[:, None]  # image i is the number i
    state = train.init_state(cfg, 10)
    seen = []
    for step in range(4):  # two epochs of two batches; the 2 left-over images are dropped
        batch, perm = train.next_batch(state.replace(step=jnp.int32(step)), images, cfg)
        state = state.replace(perm=perm)
        seen.append(np.asarray(batch[:, 0]).astype(int).tolist())
    epoch0, epoch1 = seen[0] + seen[1], seen[2] + seen[3]
    assert len(set(epoch0)) == 8 and len(set(epoch1)) == 8
    assert epoch0 != epoch1


def test_evaluate_counts_dead_codes_over_the_training_split(tiny_cfg, digits):
    state = train.init_state(tiny_cfg, len(digits.train))
    result = train.evaluate(state.params, digits, tiny_cfg)
    levels = tiny_cfg.model.num_levels
    assert len(result["dead"]) == len(result["used"]) == levels
    assert all(u + d == tiny_cfg.model.num_codes for u, d in zip(result["used"], result["dead"]))
    assert 0 < result["heldout_recon"] < 1
    # The same counts by a direct pass, for comparison with the chunked one.
    _, aux = train.make_model(tiny_cfg).apply(state.params, jnp.asarray(digits.train))
    direct = [len(np.unique(level)) for level in np.asarray(aux["indices"])]
    assert result["used"] == direct
