import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rqvae.quantizer import metrics
from rqvae.quantizer.codebook import (
    codebook_of,
    kmeans_codebooks,
    reset_moments,
    restart_dead_codes,
    stale_codes,
    with_codebook,
)
from rqvae.quantizer.residual import quantize

# Four tight, well-separated clusters in 2-D, 32 points each, and a Gaussian blob in 4-D. The tests
# reuse their shapes (and always fit two levels), so each k-means variant compiles once.
CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], np.float32)
_rng = np.random.default_rng(0)
CLUSTER_OF = np.repeat(np.arange(4), 32)
CLUSTERS = (CENTRES[CLUSTER_OF] + 0.1 * _rng.standard_normal((128, 2))).astype(np.float32)
CLUSTER_MEANS = np.stack([CLUSTERS[CLUSTER_OF == c].mean(0) for c in range(4)])
BLOB = _rng.standard_normal((256, 4)).astype(np.float32)


@jax.jit
def _quantization_error(z_NxD, codebook_LxKxD):
    z_q, _ = quantize(z_NxD, codebook_LxKxD)
    return jnp.mean(jnp.sum((z_NxD - z_q) ** 2, axis=-1))


def quantization_error(z_NxD, codebook_LxKxD):
    return float(_quantization_error(z_NxD, codebook_LxKxD))


def nearest_centre(points_NxD, centres_CxD):
    """Index of each point's nearest centre, ties to the first, in NumPy."""
    distance_NxC = ((np.asarray(points_NxD)[:, None] - centres_CxD[None]) ** 2).sum(-1)
    return np.argmin(distance_NxC, axis=1)


def test_kmeans_recovers_separated_centres_from_an_init_that_seeds_every_cluster():
    seeded_every_cluster = 0
    for seed in range(8):
        key = jax.random.key(seed)
        initial = np.asarray(kmeans_codebooks(CLUSTERS, 2, 4, key, iters=0))[:1]
        fitted = np.asarray(kmeans_codebooks(CLUSTERS, 2, 4, key, iters=10))[:1]
        assert fitted.shape == (1, 4, 2) and fitted.dtype == np.float32
        # The initial centroids are data points, and Lloyd never increases the error.
        assert all((CLUSTERS == row).all(-1).any() for row in initial[0])
        assert quantization_error(CLUSTERS, fitted) <= quantization_error(CLUSTERS, initial)
        if len(set(nearest_centre(initial[0], CENTRES))) == 4:
            seeded_every_cluster += 1
            order = nearest_centre(fitted[0], CENTRES)
            assert sorted(order) == [0, 1, 2, 3]
            np.testing.assert_allclose(fitted[0], CLUSTER_MEANS[order], atol=1e-5)
    assert seeded_every_cluster >= 1, "no seed sampled one point per cluster; pick other seeds"


def test_kmeans_lowers_the_error_of_its_random_sample_init():
    for seed in range(2):
        initial = np.asarray(kmeans_codebooks(BLOB, 2, 8, jax.random.key(seed), iters=0))
        fitted = np.asarray(kmeans_codebooks(BLOB, 2, 8, jax.random.key(seed), iters=10))
        assert quantization_error(BLOB, fitted[:1]) < 0.9 * quantization_error(BLOB, initial[:1])
        assert quantization_error(BLOB, fitted) < 0.9 * quantization_error(BLOB, initial)


def test_deeper_level_is_a_kmeans_fixed_point_on_the_residuals():
    # Converged: the fixed point holds to float rounding (10 iterations are not always enough).
    codebook = np.asarray(kmeans_codebooks(BLOB, 2, 8, jax.random.key(0), iters=30))
    assert quantization_error(BLOB, codebook) < 0.6 * quantization_error(BLOB, codebook[:1])
    # Every level-2 code that some residual picks is the mean of the residuals picking it.
    residual = BLOB - codebook[0][nearest_centre(BLOB, codebook[0])]
    picked = nearest_centre(residual, codebook[1])
    assert len(set(picked)) >= 6
    for k in set(picked):
        np.testing.assert_allclose(codebook[1, k], residual[picked == k].mean(0), atol=1e-5)


def test_kmeans_with_fewer_points_than_codes_is_finite():
    z, key = BLOB[:5], jax.random.key(3)
    initial = np.asarray(kmeans_codebooks(z, 2, 8, key, iters=0))
    codebook = np.asarray(kmeans_codebooks(z, 2, 8, key))
    assert codebook.shape == (2, 8, 4) and np.isfinite(codebook).all()
    # Sampled with replacement, some codes are copies; the argmin always picks the first copy,
    # so the others are empty clusters, kept where they were instead of divided by zero.
    assert len(np.unique(initial[0], axis=0)) < 8
    assert all((z == row).all(-1).any() for row in initial[0])
    assert quantization_error(z, codebook[:1]) <= quantization_error(z, initial[:1])


# -- restart ----------------------------------------------------------------------------------

# Four stale codes per level at STEP; a batch of six rows has enough for them but not for all K.
L, K, D, B, THRESHOLD, STEP = 2, 8, 3, 6, 5, 20
LAST_USED = jnp.array([[20, -1, 15, 16, 3, 19, 15, 20],
                       [-1, -1, 20, 20, 14, 16, 20, 0]], jnp.int32)


def _restart(step=STEP, last_used=LAST_USED):
    rng = np.random.default_rng(step)
    codebook = rng.standard_normal((L, K, D)).astype(np.float32)
    inputs = (rng.standard_normal((L, B, D)) + 10.0).astype(np.float32)
    return codebook, inputs, restart_dead_codes(codebook, last_used, step, inputs,
                                                jax.random.key(step), threshold=THRESHOLD)


def test_restart_reseeds_exactly_the_stale_codes_from_their_level_inputs():
    codebook, inputs, (new_codebook, new_last_used, restarted) = _restart()
    stale = np.asarray(LAST_USED) <= STEP - THRESHOLD  # used at or before step 15, or never
    np.testing.assert_array_equal(stale_codes(LAST_USED, STEP, THRESHOLD), stale)
    np.testing.assert_array_equal(restarted, stale)
    assert new_codebook.dtype == codebook.dtype and new_last_used.dtype == jnp.int32
    for level in range(L):
        sources = np.asarray(inputs[level])
        seeds = np.asarray(new_codebook[level])[stale[level]]
        # Each restarted code is a row of its own level's inputs, all different rows (4 <= B).
        matches = [np.flatnonzero((sources == row).all(-1)) for row in seeds]
        assert all(len(m) == 1 for m in matches)
        assert len({int(m[0]) for m in matches}) == len(seeds)
    np.testing.assert_array_equal(np.asarray(new_codebook)[~stale], np.asarray(codebook)[~stale])
    np.testing.assert_array_equal(new_last_used, np.where(stale, STEP, LAST_USED))


def test_restart_with_more_stale_codes_than_batch_rows_seeds_each_row_once_oldest_first():
    # Eight stale codes, six rows: the six longest unpicked take one row each; the two picked
    # most recently (at step 4, then 3 and 3 by index) wait, stale, for a later step.
    last_used = jnp.array([[4, -1, 0, 1, -1, 2, 3, 3]] * L, jnp.int32)
    codebook, inputs, (new_codebook, new_last_used, restarted) = _restart(last_used=last_used)
    expected = np.array([[False, True, True, True, True, True, True, False]] * L)
    np.testing.assert_array_equal(restarted, expected)
    np.testing.assert_array_equal(new_last_used, np.where(expected, STEP, last_used))
    for level in range(L):
        rows = np.asarray(inputs[level])
        seeds = np.asarray(new_codebook[level])[expected[level]]
        assert sorted(int(np.flatnonzero((rows == seed).all(-1))[0]) for seed in seeds) == [
            *range(B)]
        np.testing.assert_array_equal(np.asarray(new_codebook[level])[~expected[level]],
                                      codebook[level][~expected[level]])
    # At the next step the two that waited are re-seeded, and nothing else is stale.
    _, _, (_, _, restarted) = _restart(STEP + 1, new_last_used)
    np.testing.assert_array_equal(restarted, ~expected)


@pytest.mark.parametrize("seed", range(5))
def test_restart_takes_the_longest_unpicked_stale_codes_ties_by_index(seed):
    rng = np.random.default_rng(seed)
    last_used = rng.integers(-1, 12, (L, 40)).astype(np.int32)  # many ties; about 30 of 40 stale
    codebook = rng.standard_normal((L, 40, D)).astype(np.float32)
    inputs = rng.standard_normal((L, B, D)).astype(np.float32)
    _, _, restarted = restart_dead_codes(codebook, jnp.asarray(last_used), 20, inputs,
                                         jax.random.key(seed), threshold=12)
    for level in range(L):
        stale = np.flatnonzero(last_used[level] <= 8)
        oldest = stale[np.lexsort((stale, last_used[level][stale]))][:B]
        np.testing.assert_array_equal(np.flatnonzero(restarted[level]), np.sort(oldest))


def test_never_picked_codes_get_threshold_steps_before_a_restart():
    # Steps 0 .. THRESHOLD - 1 are the window; the restart comes at the last of them, unless the
    # code was picked, which update_last_used records at that step first.
    never = jnp.full((L, K), -1, jnp.int32)
    for step in range(THRESHOLD - 1):
        codebook, _, (new_codebook, new_last_used, restarted) = _restart(step, never)
        np.testing.assert_array_equal(new_codebook, codebook)
        np.testing.assert_array_equal(new_last_used, never)
        assert not restarted.any()
    counts = jnp.zeros((L, K), jnp.int32).at[0, 2].set(4)
    picked_at_end = metrics.update_last_used(never, counts, THRESHOLD - 1)
    _, _, (_, new_last_used, restarted) = _restart(THRESHOLD - 1, picked_at_end)
    np.testing.assert_array_equal(restarted.sum(-1), [B, B])  # one code per batch row
    assert not restarted[0, 2]
    np.testing.assert_array_equal(new_last_used[restarted], THRESHOLD - 1)


def test_restarted_code_gets_a_fresh_window():
    restarted = np.asarray(stale_codes(LAST_USED, STEP, THRESHOLD))
    _, _, (_, last_used, _) = _restart()
    for step in range(STEP + 1, STEP + THRESHOLD):
        assert not np.asarray(stale_codes(last_used, step, THRESHOLD))[restarted].any()
    # Still unpicked THRESHOLD steps after the restart, they are stale again.
    assert np.asarray(stale_codes(last_used, STEP + THRESHOLD, THRESHOLD))[restarted].all()


def test_restart_rejects_a_threshold_below_one():
    with pytest.raises(ValueError, match="threshold"):
        restart_dead_codes(jnp.zeros((L, K, D)), LAST_USED, STEP, jnp.zeros((L, B, D)),
                           jax.random.key(0), threshold=0)


@pytest.mark.parametrize("optimizer", ["adam", "sgd-momentum", "multi_transform", "sgd"])
def test_reset_moments_zeros_only_the_restarted_rows_of_any_optimizer(optimizer):
    params = {"params": {"codebook": jnp.ones((L, K, D)), "encoder": {"kernel": jnp.ones((3, 2))}}}
    tx = {"adam": optax.adam(1e-3), "sgd-momentum": optax.sgd(0.1, momentum=0.9),
          "sgd": optax.sgd(0.1),
          "multi_transform": optax.multi_transform(
              {"vq": optax.adam(1e-3), "net": optax.sgd(0.1, momentum=0.9)},
              {"params": {"codebook": "vq", "encoder": {"kernel": "net"}}})}[optimizer]
    # Every moment leaf made distinct, so a reset of the wrong rows shows.
    opt_state = jax.tree.map(
        lambda x: np.arange(1, x.size + 1, dtype=np.float32).reshape(x.shape)
        if jnp.issubdtype(x.dtype, jnp.floating) else x, tx.init(params))
    stale = np.asarray(stale_codes(LAST_USED, STEP, THRESHOLD))
    reset = reset_moments(opt_state, stale, (L, K, D))
    assert jax.tree.structure(reset) == jax.tree.structure(opt_state)
    changed = 0
    for (path, before), after in zip(jax.tree_util.tree_flatten_with_path(opt_state)[0],
                                     jax.tree.leaves(reset)):
        if getattr(path[-1], "key", None) == "codebook":
            assert (np.asarray(after)[stale] == 0).all()
            np.testing.assert_array_equal(np.asarray(after)[~stale], before[~stale])
            changed += 1
        else:
            np.testing.assert_array_equal(after, before)
    assert changed == {"adam": 2, "sgd-momentum": 1, "multi_transform": 2, "sgd": 0}[optimizer]


def test_several_quantizers_are_told_apart_by_name_and_errors_say_what_is_there():
    params = {"params": {"tokens_a": {"codebook": jnp.zeros((L, K, D))},
                         "tokens_b": {"codebook": jnp.ones((L, K, D))}}}
    with pytest.raises(ValueError, match=r"2 leaves named 'codebook' \(params/tokens_a/codebook, "
                                         r"params/tokens_b/codebook\); .* pass quantizer="):
        codebook_of(params)
    assert float(codebook_of(params, "tokens_b").sum()) == L * K * D
    replaced = with_codebook(params, jnp.full((L, K, D), 2.0), "tokens_a")
    assert float(replaced["params"]["tokens_a"]["codebook"][0, 0, 0]) == 2.0
    assert float(replaced["params"]["tokens_b"]["codebook"][0, 0, 0]) == 1.0
    with pytest.raises(ValueError, match="0 leaves named 'codebook' under a module named 'c'"):
        codebook_of(params, "c")
