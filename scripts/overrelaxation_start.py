"""When should a Sinkhorn solve start over-relaxing? Matrix-vector products to the tolerance.

    python scripts/overrelaxation_start.py

Takes the transport problems of an MNIST-shaped hybrid run (`configs/mnist.toml` on the digits
upsampled to 28x28, as in `scripts/bench_sinkhorn.py`) at steps 200, 250, 300 and 1000 and of a
digits run with the hybrid's weights and the default solve (`bench_sinkhorn.hybrid`) at steps
200, 1000 and 3000: each level's inputs for one batch and its codebook, epsilon 0.05 of the mean
cost. On each it runs, in float64 numpy, the scaling iterations of `rqvae.quantizer.sinkhorn` (a log-domain
first iteration, then u = a / (K v), v = b / (u K)) to the default tolerance (0.005), plain or over-relaxed at 1.6 from the iteration
whose error exceeds a fraction of the smallest error seen (the start rule, `_SLOW`), with the
closed iterate checked once the current one is within twice the tolerance (`_CHECK_GATE`).
Prints iterations / matrix-vector products per problem and rule, their totals, and how many
iterations the gated check stopped after the first closed iterate within the tolerance.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

TOLERANCE, OVERRELAXATION, GATE = 0.005, 1.6, 2.0
RULES = {"plain": None, "at once": 0.0, "0.5": 0.5, "0.7": 0.7, "0.8": 0.8, "0.9": 0.9}


def problems():
    """{name: [(level inputs (B, D), codebook (K, D)) per level]} from two short hybrid runs: the
    digits one of `bench_sinkhorn.training_problems`, and an MNIST-shaped one."""
    import bench_sinkhorn
    import jax

    from rqvae.trainer import step

    found = {f"digits@{name.rsplit(' ', 1)[1]}": levels for name, levels in
             bench_sinkhorn.training_problems(64, (200, 1000, 3000)).items()}
    cfg, images = bench_sinkhorn.mnist_shaped(0.5), jax.device_put(
        np.asarray(bench_sinkhorn.mnist_like_images()))
    rng = np.random.default_rng(0)
    state, done = step.init_state(cfg, len(images)), 0
    for at in (200, 250, 300, 1000):
        state, _ = step.run_steps(state, images, at - done, cfg=cfg)
        done = at
        batch = images[rng.choice(len(images), cfg.batch_size, replace=False)]
        _, aux = step.make_model(cfg).apply(state.params, batch)
        # Copied now: the codebook is the parameters, which the next steps donate.
        found[f"mnist@{at}"] = (np.asarray(aux["level_inputs"]), np.asarray(aux["codebook"]))
    return {name: [(np.asarray(x, np.float64), np.asarray(c, np.float64)) for x, c in zip(*levels)]
            for name, levels in found.items()}


def solve(cost, epsilon, start, max_iters=500):
    """(iterations, matrix-vector products, iterations past the first closed iterate within the
    tolerance, what the gate costs) to the tolerance; `start` None: plain."""
    n, m = cost.shape
    a, b = 1 / n, 1 / m
    f = -epsilon * (np.log(n) + logsumexp(-cost / epsilon, 1))
    g = -epsilon * (np.log(m) + logsumexp((f[:, None] - cost) / epsilon, 0))
    kernel = np.exp((f[:, None] + g[None] - cost) / epsilon)
    u, v, closed = np.ones(n), np.ones(m), np.ones(m)
    products, weight, best, first_within = 2, 0.0, np.inf, None
    for iteration in range(1, max_iters):
        to_u = kernel @ v
        products += 1
        error = a * np.sum(np.abs(u * to_u / a - 1))
        closed_error = a * np.sum(np.abs(u * (kernel @ closed) / a - 1))  # for the report only
        if first_within is None and closed_error <= TOLERANCE:
            first_within = iteration
        if weight > 1:
            if error <= GATE * TOLERANCE:
                products += 1
                if closed_error <= TOLERANCE:
                    return iteration, products, iteration - first_within
        elif error <= TOLERANCE:
            return iteration, products, iteration - first_within
        if start is not None and weight == 0 and error > start * best:
            weight = OVERRELAXATION
        best = min(best, error)
        w = max(weight, 1.0)
        new_u = u ** (1 - w) * (a / to_u) ** w
        new_closed = b / (new_u @ kernel)
        products += 1
        v, u, closed = v ** (1 - w) * new_closed ** w, new_u, new_closed
    return max_iters, products, None


def main() -> None:
    totals, lags = dict.fromkeys(RULES, 0), []
    for name, levels in problems().items():
        cells = []
        for level, (x, c) in enumerate(levels, 1):
            cost = np.maximum((x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None], 0)
            results = {rule: solve(cost, 0.05 * cost.mean(), start)
                       for rule, start in RULES.items()}
            for rule, (_, products, _) in results.items():
                totals[rule] += products
            lags.append(results["0.7"][2])
            cells.append(f"L{level} " + " ".join(f"{rule}: {i}/{p}"
                                                 for rule, (i, p, _) in results.items()))
        print(f"{name:12s} " + " | ".join(cells))
    print("matrix-vector products in all: "
          + ", ".join(f"{rule} {total}" for rule, total in totals.items()))
    print(f"rule 0.7, closed iterate checked within {GATE:g}x the tolerance: stopped at most "
          f"{max(lags)} iterations after the first closed iterate within it")


if __name__ == "__main__":
    main()
