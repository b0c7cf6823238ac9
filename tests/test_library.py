"""The quantizer as a library: the documented example, shapes, transformations, the state."""

import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import rqvae
from rqvae.quantizer.state import CodebookState
from rqvae.trainer import config, step
from rqvae.trainer.config import step_config

LIBRARY_DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def _example_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", LIBRARY_DOC.read_text(), re.S)


def test_the_documented_example_runs_and_keeps_its_codes_alive():
    namespace = {}
    for block in _example_blocks():
        exec(compile(block, str(LIBRARY_DOC), "exec"), namespace)
    picked, losses = namespace["picked"], namespace["losses"]
    # 256 codes a level from batches of 128 digits: the window is 40 steps, so over the last 100
    # steps every code the data can use is picked (measured: 256 and 256).
    assert picked.sum(axis=1).min() >= 250, picked.sum(axis=1)
    assert np.isfinite(float(losses["total"])) and float(losses["wasserstein"]) > 0
    # The same step with optax.sgd and momentum: its trace is reset where codes are re-seeded.
    sgd_codes, sgd_losses = namespace["sgd_codes"], namespace["sgd_losses"]
    assert np.isfinite(float(sgd_losses["total"]))
    assert int((sgd_codes.last_used >= 0).sum()) > 2 * 128  # more codes than one batch picks
    # Two named quantizers, each upkept with its own state: every code of both in use or
    # re-anchored (64 a level, a 20-step window, 60 steps).
    for codes in namespace["two_codes"]:
        assert (codes.last_used >= 0).sum(axis=1).tolist() == [64, 64]
    # The layer that keeps its own state counted every step, and its codes are in use.
    kept = namespace["variables"]["codebook_state"]["ResidualVQ_0"]
    assert int(kept["step"]) == 60 and int((kept["last_used"] >= 0).sum()) > 2 * 128


def test_a_layer_that_keeps_its_state_trains_what_the_threaded_state_trains(digits):
    # The same model, weights, batches and keys, 12 steps with far codes (re-anchored every 2nd
    # step): the collection path and the explicit one give the same parameters and state.
    import flax.linen as nn

    class Model(nn.Module):
        keep_state: bool

        @nn.compact
        def __call__(self, x):
            z_q, _, aux = rqvae.ResidualVQ(2, 128, 8, keep_state=self.keep_state)(nn.Dense(8)(x))
            return nn.Dense(x.shape[-1])(z_q), aux

    weights, transport = rqvae.LossWeights(lambda_wasserstein=0.5), rqvae.Transport(
        anchor_window=4)
    optimizer = optax.adam(1e-2)

    def loss(model, variables, params, x, state):
        x_hat, aux = model.apply({**variables, "params": params}, x)
        losses = rqvae.quantizer_losses(aux, weights, transport, state=state)
        return jnp.mean((x - x_hat) ** 2) + losses["total"], (losses, aux)

    @jax.jit
    def threaded(params, opt_state, state, x, key):
        grads, (losses, aux) = jax.grad(lambda p: loss(Model(False), {}, p, x, state),
                                        has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return rqvae.update_codebook(optax.apply_updates(params, updates), opt_state, state,
                                     aux, losses, key)

    @jax.jit
    def kept(variables, opt_state, x, key):
        grads, (losses, aux) = jax.grad(lambda p: loss(Model(True), variables, p, x, None),
                                        has_aux=True)(variables["params"])
        updates, opt_state = optimizer.update(grads, opt_state, variables["params"])
        variables = {**variables,
                     "params": optax.apply_updates(variables["params"], updates)}
        return rqvae.upkeep(variables, opt_state, aux, losses, key)

    images = jnp.asarray(digits.train[:64])
    variables = Model(True).init(jax.random.key(0), images)
    params = Model(False).init(jax.random.key(0), images)["params"]
    jax.tree.map(np.testing.assert_array_equal, params, variables["params"])
    opt_a, opt_b = optimizer.init(params), optimizer.init(params)
    state = CodebookState.create(2, 128)
    for i in range(12):
        params, opt_a, state = threaded(params, opt_a, state, images, jax.random.key(i))
        variables, opt_b = kept(variables, opt_b, images, jax.random.key(i))
    jax.tree.map(np.testing.assert_array_equal, params, variables["params"])
    kept_state = variables["codebook_state"]["ResidualVQ_0"]
    np.testing.assert_array_equal(kept_state["last_used"], state.last_used)
    assert int(kept_state["step"]) == int(state.step) == 12
    assert int((state.last_used >= 0).sum()) > 0


def test_the_example_step_is_the_trainers_step(tiny_cfg, digits):
    # The documented step with the trainer's model, weights and optimizer swapped in gives, from
    # the same state and batch, the trainer's losses, parameters and code use; over 12 steps
    # with far codes, so that codes go stale and are re-anchored (an 8-step window, anchor steps
    # every 2nd).
    cfg = step_config(config.replace(tiny_cfg, {
        "batch_size": 64, "model.num_codes": 128, "transport.anchor_window": 4}))
    namespace = {}
    exec(compile(_example_blocks()[0], str(LIBRARY_DOC), "exec"), namespace)
    namespace.update(model=step.make_model(cfg), optimizer=step.make_optimizer(cfg),
                     weights=cfg.loss, transport=cfg.transport)
    example_step = jax.jit(namespace["train_step"])
    trainer_step = jax.jit(step._update, static_argnames="cfg")
    images = jnp.asarray(digits.train)
    state = step.init_state(cfg, len(digits.train))
    state = state.replace(params=rqvae.with_codebook(
        state.params, state.params["params"]["codebook"] + 5.0))
    anchored = 0
    for _ in range(12):
        batch, perm = step.next_batch(state, images, cfg)
        state = state.replace(perm=perm)
        key = jax.random.fold_in(step.stream_key(cfg.seed, step.Stream.ANCHOR), state.step)
        params, _, codes, losses, _ = example_step(
            state.params, state.opt_state, CodebookState(state.last_used, state.step), batch, key)
        new_state, outcome = trainer_step(state, batch, cfg=cfg)
        for term in ("commit", "codebook", "wasserstein"):
            assert float(losses[term]) == pytest.approx(float(outcome[term]), rel=1e-5), term
        np.testing.assert_array_equal(codes.last_used, new_state.last_used)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                     params, new_state.params)
        anchored += int(jnp.sum(new_state.last_used == state.step)
                        - jnp.sum(outcome["counts"] > 0))
        state = new_state
    assert anchored > 0  # some code was re-anchored (last_used set without a pick)


@pytest.mark.parametrize("shape", [(24, 4), (4, 6, 4), (2, 3, 4, 4)])
def test_any_leading_shape_quantizes_as_its_rows(shape):
    layer = rqvae.ResidualVQ(num_levels=3, num_codes=16, latent_dim=4)
    z = jax.random.normal(jax.random.key(1), shape)
    params = layer.init(jax.random.key(0), z)
    # Codes spread like the data, so that every level has real choices to make.
    params = rqvae.with_codebook(params, jax.random.normal(jax.random.key(2), (3, 16, 4)))
    z_q, indices, aux = layer.apply(params, z)
    flat_q, flat_indices, _ = layer.apply(params, z.reshape(-1, 4))
    assert z_q.shape == shape and indices.shape == (*shape[:-1], 3)
    np.testing.assert_array_equal(indices.reshape(-1, 3), flat_indices)
    np.testing.assert_allclose(z_q.reshape(-1, 4), flat_q, rtol=1e-6)
    assert aux["counts"].shape == (3, 16) and int(aux["counts"].sum()) == 3 * 24
    assert len(np.unique(flat_indices[:, 0])) > 4


def test_jit_grad_and_vmap_over_the_public_functions():
    layer = rqvae.ResidualVQ(num_levels=2, num_codes=16, latent_dim=4)
    z_2xBxD = jax.random.normal(jax.random.key(1), (2, 32, 4))
    params = layer.init(jax.random.key(0), z_2xBxD[0])
    codes = rqvae.CodebookState.create(2, 16)
    weights = rqvae.LossWeights(lambda_wasserstein=0.5)

    def total(params, z):
        _, _, aux = layer.apply(params, z)
        return rqvae.quantizer_losses(aux, weights, rqvae.Transport(), state=codes)["total"]

    # vmap over two batches of latents is each batch on its own (the branch becomes a select).
    batched = jax.jit(jax.vmap(total, in_axes=(None, 0)))(params, z_2xBxD)
    one_by_one = [float(jax.jit(total)(params, z)) for z in z_2xBxD]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5)
    # The gradient reaches the codebook and the latents (straight-through), finite.
    grads = jax.jit(jax.grad(total, argnums=(0, 1)))(params, z_2xBxD[0])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads[0]["params"]["codebook"]).sum()) > 0
    # sinkhorn_loss over a batch of problems.
    points = jax.random.normal(jax.random.key(3), (3, 20, 4))
    book = jax.random.normal(jax.random.key(4), (3, 8, 4))
    single = jax.jit(rqvae.sinkhorn_loss)
    np.testing.assert_allclose(jax.jit(jax.vmap(rqvae.sinkhorn_loss))(points, book),
                               [float(single(p, c)) for p, c in zip(points, book)], rtol=1e-5)


def test_the_codebook_state_round_trips_through_a_pytree_checkpoint(tmp_path):
    state = rqvae.CodebookState.create(2, 8, shared_codebook=True)
    state = state.replace(last_used=jnp.arange(16, dtype=jnp.int32).reshape(2, 8) - 3,
                          step=jnp.int32(12))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "codes", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "codes",
                                        rqvae.CodebookState.create(2, 8, shared_codebook=True))
    assert restored.shared and restored.last_used.dtype == jnp.int32
    np.testing.assert_array_equal(restored.last_used, state.last_used)
    assert int(restored.step) == 12


def test_the_public_names_are_documented_and_load_without_jax_until_used():
    for name in rqvae.__all__:
        assert getattr(rqvae, name).__doc__, name
    probe = ("import sys, rqvae; assert 'jax' not in sys.modules; rqvae.ResidualVQ; "
             "assert 'jax' in sys.modules")
    subprocess.run([sys.executable, "-c", probe], check=True)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        rqvae.nothing  # noqa: B018


def test_the_layer_runs_in_flax_nnx_and_its_codebook_is_upkept_through_pure_dicts():
    from flax import nnx

    layer = nnx.bridge.ToNNX(rqvae.ResidualVQ(num_levels=2, num_codes=16, latent_dim=4),
                             rngs=nnx.Rngs(0))
    z = jax.random.normal(jax.random.key(1), (64, 4)) * 3.0  # far from the small initial codes
    nnx.bridge.lazy_init(layer, z)
    _, indices, aux = layer(z)
    assert indices.shape == (64, 2)
    state = nnx.state(layer, nnx.Param)
    params = nnx.to_pure_dict(state)
    optimizer = optax.adam(1e-3)
    # A window's worth of steps in which no code was picked: every code stale, then re-seeded.
    codes = rqvae.CodebookState.create(2, 16).replace(step=jnp.int32(100))
    losses = rqvae.quantizer_losses(aux, rqvae.LossWeights(lambda_wasserstein=0.5),
                                    rqvae.Transport(), state=codes,
                                    platform=rqvae.Platform(branch=False))
    new_params, _, _ = rqvae.update_codebook(params, optimizer.init(params), codes, aux, losses,
                                             jax.random.key(2))
    nnx.replace_by_pure_dict(state, new_params)
    nnx.update(layer, state)
    moved = nnx.state(layer, nnx.Param)["codebook"][...]
    assert not np.allclose(moved, params["codebook"])  # stale codes re-anchored on the data
    assert float(jnp.abs(moved).max()) > 1.0
