import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from rqvae.losses import compute_losses, sinkhorn_loss, sinkhorn_plan, squared_distances

SQUARE = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
FAR_CODES = jnp.array([[5.0, 5.0], [6.0, 5.0], [5.0, 6.0], [6.0, 6.0]])


def exact_cost(points, codes):
    cost = np.asarray(squared_distances(points, codes))
    rows, cols = linear_sum_assignment(cost)
    return cost[rows, cols].mean()


def test_points_against_themselves_cost_almost_nothing():
    assert float(sinkhorn_loss(SQUARE, SQUARE)) < 0.1


def test_far_codebook_costs_the_exact_transport_and_pulls_every_code():
    # C / epsilon is about 1200 here: the kernel exp(-C / epsilon) is exactly 0 in float32.
    points = SQUARE / 10
    value, grad = jax.value_and_grad(sinkhorn_loss, argnums=1)(points, FAR_CODES)
    assert value == pytest.approx(exact_cost(points, FAR_CODES), rel=0.01)
    assert value == pytest.approx(60.0, rel=0.01)
    assert bool(jnp.all(jnp.linalg.norm(grad, axis=1) > 1.0))
    # Every code is pulled toward the points, i.e. down and to the left.
    assert bool(jnp.all(grad > 0))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_plan_marginals_at_every_cost_scale(scale):
    points = jax.random.normal(jax.random.key(0), (12, 3)) * scale
    codes = jax.random.normal(jax.random.key(1), (5, 3)) * scale + scale
    plan, error, _ = sinkhorn_plan(squared_distances(points, codes), 0.05, 500)
    assert bool(jnp.all(jnp.isfinite(plan)))
    # The last update of every iteration is the codebook side: its marginal is exact.
    np.testing.assert_allclose(plan.sum(0), np.full(5, 1 / 5), rtol=1e-5)
    assert float(plan.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(error) == pytest.approx(float(jnp.abs(plan.sum(1) - 1 / 12).sum()), abs=1e-5)
    if scale <= 1:  # at C / epsilon ~ 1e7, float32 cannot resolve the point-side potentials
        np.testing.assert_allclose(plan.sum(1), np.full(12, 1 / 12), atol=2e-3)


def test_converged_cost_matches_the_exact_optimum():
    points = jax.random.normal(jax.random.key(0), (32, 8))
    codes = jax.random.normal(jax.random.key(1), (32, 8)) + 0.5
    value = float(sinkhorn_loss(points, codes, epsilon=0.05, num_iters=300))
    assert value == pytest.approx(exact_cost(points, codes), rel=0.01)


def test_sinkhorn_is_the_same_under_jit():
    points = jax.random.normal(jax.random.key(3), (9, 4))
    codes = jax.random.normal(jax.random.key(4), (6, 4))
    eager = sinkhorn_loss(points, codes)
    jitted = jax.jit(sinkhorn_loss, static_argnums=(2, 3))(points, codes, 0.05, 20)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5)


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
    losses = compute_losses(x, x_recon, z_e, z_q, codebook, z_q1, lambda_commit=0.25,
                            lambda_codebook=1.0, lambda_wasserstein=0.5, sinkhorn_epsilon=0.05)
    assert {"total", "recon", "commit", "codebook", "wasserstein"} <= set(losses)
    assert float(losses["recon"]) == pytest.approx(float(jnp.mean((x - x_recon) ** 2)))
    assert float(losses["commit"]) == pytest.approx(float(jnp.mean((z_e - z_q) ** 2)))
    expected_w = sinkhorn_loss(z_e, codebook[0]) + sinkhorn_loss(z_e - z_q1, codebook[1])
    assert float(losses["wasserstein"]) == pytest.approx(float(expected_w), rel=1e-5)
    total = (losses["recon"] + 0.25 * losses["commit"] + losses["codebook"]
             + 0.5 * losses["wasserstein"])
    assert float(losses["total"]) == pytest.approx(float(total), rel=1e-6)


def test_wasserstein_is_exactly_zero_and_absent_when_off():
    args = _batch()
    losses = compute_losses(*args, lambda_wasserstein=0.0)
    assert float(losses["wasserstein"]) == 0.0
    # Off means not computed: no Sinkhorn loop in the compiled program.
    text = jax.jit(lambda *a: compute_losses(*a)["total"]).lower(*args).as_text()
    assert "while" not in text
    on = jax.jit(lambda *a: compute_losses(*a, lambda_wasserstein=1.0)["total"]).lower(*args)
    assert "while" in on.as_text()


def test_wasserstein_moves_only_the_codebook_unless_asked():
    x, x_recon, z_e, z_q, codebook, z_q1 = _batch()

    def wasserstein(z_e, codebook, encoder_grad):
        return compute_losses(x, x_recon, z_e, z_q, codebook, z_q1, lambda_wasserstein=1.0,
                              wasserstein_encoder_grad=encoder_grad)["wasserstein"]

    g_points, g_codes = jax.grad(wasserstein, argnums=(0, 1))(z_e, codebook, False)
    assert float(jnp.abs(g_points).max()) == 0.0 and float(jnp.abs(g_codes).max()) > 0
    g_points, _ = jax.grad(wasserstein, argnums=(0, 1))(z_e, codebook, True)
    assert float(jnp.abs(g_points).max()) > 0


def test_general_levels_form_matches_the_two_level_keywords():
    x, x_recon, z_e, z_q, codebook, z_q1 = _batch()
    by_keywords = compute_losses(x, x_recon, z_e, z_q, codebook, z_q1, lambda_wasserstein=1.0)
    by_levels = compute_losses(x, x_recon, z_e, z_q, codebook, lambda_wasserstein=1.0,
                               level_inputs=jnp.stack([z_e, z_e - z_q1]))
    assert float(by_keywords["wasserstein"]) == pytest.approx(float(by_levels["wasserstein"]))
    x, x_recon, z_e, z_q, codebook, _ = _batch(levels=3)
    three = compute_losses(x, x_recon, z_e, z_q, codebook, lambda_wasserstein=1.0,
                           level_inputs=jnp.stack([z_e, z_e, z_e]), level_weights=(1.0, 0.0, 2.0))
    expected = sinkhorn_loss(z_e, codebook[0]) + 2 * sinkhorn_loss(z_e, codebook[2])
    assert float(three["wasserstein"]) == pytest.approx(float(expected), rel=1e-5)
