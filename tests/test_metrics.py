import jax.numpy as jnp
import numpy as np

from rqvae.quantizer import metrics


def test_counts_used_and_perplexity():
    indices = jnp.array([[0, 1, 2, 3], [2, 2, 2, 2]])
    counts = metrics.code_counts(indices, 5)
    np.testing.assert_array_equal(counts, [[1, 1, 1, 1, 0], [0, 0, 4, 0, 0]])
    np.testing.assert_array_equal(metrics.codes_used(counts), [4, 1])
    np.testing.assert_allclose(metrics.perplexity(counts), [4.0, 1.0], rtol=1e-6)
    # Weights: padding (0) is not counted, the rest as often as its weight says.
    weighted = metrics.code_counts(indices, 5, jnp.array([1, 0, 2, 1]))
    np.testing.assert_array_equal(weighted, [[1, 0, 2, 1, 0], [0, 0, 4, 0, 0]])


def test_dead_in_window_counts_codes_unused_for_the_window():
    last_used = jnp.full((1, 4), -1)
    counts = jnp.array([[1, 0, 0, 2]])
    last_used = metrics.update_last_used(last_used, counts, step=0)
    last_used = metrics.update_last_used(last_used, jnp.array([[0, 3, 0, 0]]), step=5)
    np.testing.assert_array_equal(last_used, [[0, 5, -1, 0]])
    assert int(metrics.dead_in_window(last_used, step=5, window=10)[0]) == 1  # only code 2
    assert int(metrics.dead_in_window(last_used, step=10, window=10)[0]) == 3  # 0, 2, 3
