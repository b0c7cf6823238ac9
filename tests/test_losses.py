"""The loss terms (rqvae.losses): their keys and weights, the original `compute_losses` call,
which parameters each term moves, the per-level codebook loss, the envelope and unrolled
gradients of the transport term, its per-element scale and the levels it covers."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rqvae.config import TrainerConfig, step_config
from rqvae.losses import compute_losses, loss_terms, sinkhorn_loss, vq_per_level, wasserstein_levels

# Compiled: called eagerly, every call would trace and compile the Sinkhorn loops anew.
_sinkhorn_loss = jax.jit(sinkhorn_loss, static_argnames="num_iters")


def _compiled_losses(*args, **settings):
    """compute_losses(*args, **settings), compiled with the settings fixed."""
    return jax.jit(functools.partial(compute_losses, **settings))(*args)


def _batch(levels=2, batch=6, dim=3, codes=5):
    keys = jax.random.split(jax.random.key(7), 4)
    x = jax.random.uniform(keys[0], (batch, 10))
    x_recon = jax.random.uniform(keys[1], (batch, 10))
    z_e = jax.random.normal(keys[2], (batch, dim))
    codebook = jax.random.normal(keys[3], (levels, codes, dim))
    z_q1 = codebook[0, :batch % codes + 1].mean(0) + 0 * z_e
    z_q = z_q1 + codebook[1, 0]
    return x, x_recon, z_e, z_q, codebook, z_q1


def test_loss_keys_and_weighted_total():
    x, x_recon, z_e, z_q, codebook, z_q1 = _batch()
    losses = _compiled_losses(x, x_recon, z_e, z_q, codebook, z_q1, lambda_commit=0.25,
                              lambda_codebook=1.0, lambda_wasserstein=0.5, sinkhorn_epsilon=0.05)
    assert {"total", "recon", "commit", "codebook", "wasserstein"} <= set(losses)
    assert float(losses["recon"]) == pytest.approx(float(jnp.mean((x - x_recon) ** 2)))
    assert float(losses["commit"]) == pytest.approx(float(jnp.mean((z_e - z_q) ** 2)))
    expected_w = _sinkhorn_loss(z_e, codebook[0]) + _sinkhorn_loss(z_e - z_q1, codebook[1])
    assert float(losses["wasserstein"]) == pytest.approx(float(expected_w), rel=1e-5)
    # Per level, unweighted; called the original way, epsilon is absolute.
    assert float(losses["wasserstein_levels"].sum()) == pytest.approx(float(expected_w), rel=1e-5)
    np.testing.assert_allclose(losses["sinkhorn_epsilon"], [0.05, 0.05])
    total = (losses["recon"] + 0.25 * losses["commit"] + losses["codebook"]
             + 0.5 * losses["wasserstein"])
    assert float(losses["total"]) == pytest.approx(float(total), rel=1e-6)


def test_wasserstein_is_exactly_zero_and_absent_when_off():
    args = _batch()
    losses = compute_losses(*args, lambda_wasserstein=0.0)
    assert float(losses["wasserstein"]) == 0.0
    # Off means not computed: no exponential (the Sinkhorn loop's core) in the compiled program.
    text = jax.jit(lambda *a: compute_losses(*a)["total"]).lower(*args).as_text()
    assert "exponential" not in text
    on = jax.jit(lambda *a: compute_losses(*a, lambda_wasserstein=1.0)["total"]).lower(*args)
    assert "exponential" in on.as_text()


def test_wasserstein_moves_only_the_codebook_unless_asked():
    x, x_recon, z_e, z_q, codebook, z_q1 = _batch()

    def wasserstein(z_e, codebook, encoder_grad):
        return compute_losses(x, x_recon, z_e, z_q, codebook, z_q1, lambda_wasserstein=1.0,
                              wasserstein_encoder_grad=encoder_grad)["wasserstein"]

    grads = jax.jit(jax.grad(wasserstein, argnums=(0, 1)), static_argnums=2)
    g_points, g_codes = grads(z_e, codebook, False)
    assert float(jnp.abs(g_points).max()) == 0.0 and float(jnp.abs(g_codes).max()) > 0
    g_points, _ = grads(z_e, codebook, True)
    assert float(jnp.abs(g_points).max()) > 0


def test_general_levels_form_matches_the_two_level_keywords():
    x, x_recon, z_e, z_q, codebook, z_q1 = _batch()
    by_keywords = _compiled_losses(x, x_recon, z_e, z_q, codebook, z_q1, lambda_wasserstein=1.0)
    by_levels = _compiled_losses(x, x_recon, z_e, z_q, codebook, lambda_wasserstein=1.0,
                                 level_inputs=jnp.stack([z_e, z_e - z_q1]))
    assert float(by_keywords["wasserstein"]) == pytest.approx(float(by_levels["wasserstein"]))
    x, x_recon, z_e, z_q, codebook, _ = _batch(levels=3)
    three = _compiled_losses(x, x_recon, z_e, z_q, codebook, lambda_wasserstein=1.0,
                             level_inputs=jnp.stack([z_e, z_e, z_e]),
                             level_weights=(1.0, 0.0, 2.0))
    expected = _sinkhorn_loss(z_e, codebook[0]) + 2 * _sinkhorn_loss(z_e, codebook[2])
    assert float(three["wasserstein"]) == pytest.approx(float(expected), rel=1e-5)


def test_per_level_codebook_loss_pulls_each_level_toward_its_own_residual():
    # Two levels, a batch of 6 in 3 dimensions: the codebook gradient of level l is, for each
    # code, -2 / (L * B * D) times the sum over the points that picked it of (r_l - code).
    key = jax.random.key(7)
    z_e = jax.random.normal(key, (6, 3))
    codebook = jax.random.normal(jax.random.fold_in(key, 1), (2, 4, 3))
    from rqvae.model import quantize

    def codebook_term(codebook_LxKxD):
        _, aux = quantize(z_e, codebook_LxKxD)
        return vq_per_level(z_e, aux["level_inputs"], aux["level_codes"])["codebook"]

    _, aux = quantize(z_e, codebook)
    grad = jax.grad(codebook_term)(codebook)
    L, B, D = 2, 6, 3
    for level in range(L):
        expected = np.zeros((4, D))
        for b in range(B):
            k = int(aux["indices"][level, b])
            expected[k] += -2.0 / (L * B * D) * (aux["level_inputs"][level, b] - codebook[level, k])
        np.testing.assert_allclose(grad[level], expected, rtol=1e-5, atol=1e-7)
    # Level 1's own residual is z_e, level 2's is z_e minus level 1's code: neither is the sum
    # form's target (z_e minus the other level's code), so the forms differ.
    summed = compute_losses(z_e, z_e, z_e, aux["level_codes"].sum(0), codebook)["codebook"]
    assert float(summed) == pytest.approx(float(jnp.mean((z_e - aux["level_codes"].sum(0)) ** 2)))
    assert float(codebook_term(codebook)) != pytest.approx(float(summed))
    # The commitment: the encoder toward each partial sum of the codes, codes held fixed.
    commit_grad = jax.grad(lambda z: vq_per_level(z, aux["level_inputs"],
                                                  aux["level_codes"])["commit"])(z_e)
    partial = np.cumsum(np.asarray(aux["level_codes"]), axis=0)
    np.testing.assert_allclose(commit_grad, 2.0 / (L * B * D) * (L * z_e - partial.sum(0)),
                               rtol=1e-5, atol=1e-7)


def _temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_envelope_gradient_memory_does_not_grow_with_iterations():
    points = jax.random.normal(jax.random.key(0), (128, 16))
    codes = jax.random.normal(jax.random.key(1), (96, 16))

    def grad_fn(iters, unroll):
        loss = lambda c: wasserstein_levels(points[None], c[None], 0.05, iters, unroll=unroll)[0][0]
        return jax.grad(loss)

    matrix = 128 * 96 * 4
    envelope = [_temp_bytes(grad_fn(n, False), codes) for n in (10, 100)]
    assert envelope[1] == envelope[0] and envelope[0] < 12 * matrix
    unrolled = [_temp_bytes(grad_fn(n, True), codes) for n in (10, 100)]
    assert unrolled[1] > unrolled[0] + 50 * matrix  # one stored matrix per iteration, or more


def test_unrolled_gradient_is_the_derivative_of_the_unrolled_cost():
    points = jax.random.normal(jax.random.key(0), (32, 4))
    codes = jax.random.normal(jax.random.key(1), (16, 4))
    direction = jax.random.normal(jax.random.key(2), codes.shape)

    def loss(c, unroll=True):
        return wasserstein_levels(points[None], c[None], 0.5, 20, unroll=unroll)[0][0]

    # Compiled: eagerly, each of the solver's operations would be compiled on its own.
    grad, value = jax.jit(jax.grad(loss), static_argnums=1), jax.jit(loss)
    unrolled = grad(codes, True)
    h = 1e-2
    finite_difference = (value(codes + h * direction) - value(codes - h * direction)) / (2 * h)
    assert float(jnp.sum(unrolled * direction)) == pytest.approx(float(finite_difference), rel=2e-2)
    # The envelope gradient holds the plan fixed, so it differs at this large epsilon.
    envelope = grad(codes, False)
    assert float(jnp.abs(envelope - unrolled).max()) > 1e-3


DEFAULT_LOSS = step_config(TrainerConfig()).loss


def _levels_problem(num_levels, seed, B=32, K=8, D=4):
    """Random level inputs (L, B, D), codebooks (L, K, D) and images (B, 5) for `loss_terms`."""
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (num_levels, B, D)),
            0.5 * jax.random.normal(keys[1], (num_levels, K, D)), jax.random.normal(keys[2], (B, 5)))


def _aux(level_inputs, codes):
    """The model's aux for these level inputs, each point given code index (point mod K)."""
    B, K = level_inputs.shape[1], codes.shape[1]
    return {"z_e": level_inputs[0], "z_q": codes[:, :B].sum(0), "codebook": codes,
            "level_inputs": level_inputs, "level_codes": codes[:, jnp.arange(B) % K]}


def test_the_transport_cost_is_per_latent_dimension_by_default():
    # The default scale divides each level's sum(plan * C) by latent_dim, so a latent twice as wide
    # with the same per-dimension distances costs the same, as commit and codebook do; "whole"
    # keeps the original whole squared distances.
    level_inputs, codebook, x = _levels_problem(2, seed=3)
    D = level_inputs.shape[-1]

    def terms(inputs, codes, scale):
        aux = _aux(inputs, codes)
        cfg = dataclasses.replace(DEFAULT_LOSS, lambda_wasserstein=1.0, wasserstein_scale=scale)
        losses = loss_terms(x, x, aux, cfg)
        return losses["wasserstein"], losses["wasserstein_levels"]

    @jax.jit  # one compilation for the three
    def all_terms(inputs, codes):
        # Every dimension repeated twice: whole squared distances double, per element they stay.
        wide = terms(jnp.repeat(inputs, 2, -1), jnp.repeat(codes, 2, -1), "per_element")
        return terms(inputs, codes, "whole"), terms(inputs, codes, "per_element"), wide

    assert DEFAULT_LOSS.wasserstein_scale == "per_element"
    whole, per_element, wide = all_terms(level_inputs, codebook)
    np.testing.assert_allclose(per_element[1], whole[1] / D, rtol=1e-6)
    assert float(per_element[0]) == pytest.approx(float(whole[0]) / D, rel=1e-6)
    np.testing.assert_allclose(wide[1], per_element[1], rtol=1e-4)


def test_wasserstein_levels_solves_only_the_first_levels():
    level_inputs, codebook, x = _levels_problem(3, seed=4)
    previous_g = jnp.arange(codebook.shape[0] * codebook.shape[1], dtype=jnp.float32).reshape(
        codebook.shape[:2])

    @functools.partial(jax.jit, static_argnums=1)
    def terms_and_codebook_grad(codes, levels):
        def transport(codes):
            aux = _aux(level_inputs, codes)
            cfg = dataclasses.replace(DEFAULT_LOSS, lambda_wasserstein=1.0,
                                      wasserstein_levels=levels, sinkhorn_warm_start=True)
            losses = loss_terms(x, x, aux, cfg, previous_g)
            return losses["wasserstein"], losses
        return jax.grad(transport, has_aux=True)(codes)

    every_grad, every = terms_and_codebook_grad(codebook, 0)
    first_grad, first = terms_and_codebook_grad(codebook, 2)
    # The first two levels as when every level is solved; the third neither solved nor moved.
    for key in ("wasserstein_levels", "sinkhorn_marginal_error", "sinkhorn_epsilon", "sinkhorn_g"):
        np.testing.assert_allclose(first[key][:2], every[key][:2], rtol=1e-6, err_msg=key)
    assert float(jnp.abs(every["wasserstein_levels"][2])) > 0
    np.testing.assert_array_equal(first["wasserstein_levels"][2], 0.0)
    np.testing.assert_array_equal(first["sinkhorn_g"][2], previous_g[2])
    assert float(first["wasserstein"]) == pytest.approx(float(every["wasserstein_levels"][:2].sum()),
                                                        rel=1e-6)
    np.testing.assert_allclose(first_grad[:2], every_grad[:2], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(first_grad[2], 0.0)
    assert float(jnp.abs(every_grad[2]).max()) > 0
