"""The loss terms (rqvae.quantizer.losses, and the first release's in first_release): their keys
and weights, the original `compute_losses` call, which parameters each term moves, the per-level codebook loss, the envelope gradient of the
transport term and its per-element scale."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rqvae.quantizer.first_release import compute_losses, sinkhorn_loss, wasserstein_levels
from rqvae.quantizer.losses import loss_terms, solved_rows, vq_per_level
from rqvae.quantizer.settings import LossWeights, Transport

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
    from rqvae.quantizer.residual import quantize

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

    def grad_fn(iters):
        return jax.grad(lambda c: wasserstein_levels(points[None], c[None], 0.05, iters)[0][0])

    matrix = 128 * 96 * 4
    envelope = [_temp_bytes(grad_fn(n), codes) for n in (10, 100)]
    assert envelope[1] == envelope[0] and envelope[0] < 12 * matrix




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


def test_the_transport_cost_is_per_latent_dimension():
    # Each level's sum(plan * C) is divided by latent_dim, so a latent twice as wide with the same
    # per-dimension distances costs the same, as commit and codebook do.
    level_inputs, codebook, x = _levels_problem(2, seed=3)
    D = level_inputs.shape[-1]

    def terms(inputs, codes):
        losses = loss_terms(x, x, _aux(inputs, codes), LossWeights(lambda_wasserstein=1.0),
                            Transport())
        return losses["wasserstein"], losses["transport_cost"]

    @jax.jit  # one compilation for both
    def both(inputs, codes):
        # Every dimension repeated twice: whole squared distances double, per element they stay.
        return terms(inputs, codes), terms(jnp.repeat(inputs, 2, -1), jnp.repeat(codes, 2, -1))

    (total, per_level), (_, wide) = both(level_inputs, codebook)
    whole = jax.jit(lambda inputs, codes: wasserstein_levels(
        inputs, codes, Transport().epsilon, Transport().iters, epsilon_mode="relative",
        tolerance=Transport().tolerance, overrelaxation=Transport().overrelaxation)[0])(
        level_inputs, codebook)
    np.testing.assert_allclose(per_level, whole / D, rtol=1e-5)
    assert float(total) == pytest.approx(float(whole.sum()) / D, rel=1e-5)
    np.testing.assert_allclose(wide, per_level, rtol=1e-4)


def test_a_solve_takes_at_most_four_points_a_code_evenly_spaced():
    # 40 points for 8 codes: the solve takes 32 evenly spaced rows; its cost is the cost of
    # those rows alone.
    level_inputs, codebook, x = _levels_problem(2, seed=5, B=40, K=8)
    rows = np.asarray(solved_rows(40, 8))
    assert len(rows) == 32 == len(set(rows.tolist())) and rows[0] == 0 and rows[-1] == 38
    assert solved_rows(32, 8) is None  # at most four a code: every row

    @jax.jit
    def both(inputs, codes):
        weights = LossWeights(lambda_wasserstein=1.0)
        return (loss_terms(x, x, _aux(inputs, codes), weights, Transport()),
                loss_terms(x[rows], x[rows], _aux(inputs[:, rows], codes), weights, Transport()))

    capped, subset = both(level_inputs, codebook)
    np.testing.assert_allclose(capped["transport_cost"], subset["transport_cost"], rtol=1e-6)
