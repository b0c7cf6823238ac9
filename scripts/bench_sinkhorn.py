"""Sinkhorn benchmark: speed against ott-jax, accuracy against exact OT, training-step overhead.

    pip install -e '.[bench]' && python scripts/bench_sinkhorn.py [--quick]

Prints four tables:
1. `sinkhorn_loss` against ott-jax's `Sinkhorn` at equal epsilon (0.05) and iterations (20), on
   Gaussian clouds of points x codes x dim, forward and forward+backward (gradient with respect
   to the codes; ott with the same envelope gradient, `use_danskin=True`, no implicit diff).
2. Accuracy: transport cost against the exact optimum (scipy's linear_sum_assignment) and against
   ott-jax at 20 and 2000 iterations.
3. The train step of the MNIST-shaped model (MLP 784-512-256, latent 64, 2 levels x 512 codes,
   batch 256, Adam) with lambda_wasserstein 0.5 against 0.
4. Convergence: the plan's row-marginal error in training on the digits (hybrid preset) with and
   without the warm start, and what epsilon scaling buys on a fresh problem at equal iterations.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from rqvae import config, rundir, step
from rqvae.losses import sinkhorn_loss, sinkhorn_plan, sinkhorn_plan_logdomain, squared_distances

EPSILON, ITERS = 0.05, 20


def timed(fn, *args, repeats: int) -> float:
    """Median wall time in ms of a compiled call, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def clouds(num_points, num_codes, dim, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (num_points, dim)), 0.5 * jax.random.normal(ky, (num_codes, dim))


def ott_solver(iters):
    from ott.solvers.linear import sinkhorn

    return sinkhorn.Sinkhorn(min_iterations=iters, max_iterations=iters, inner_iterations=iters,
                             threshold=-1.0, use_danskin=True, implicit_diff=None)


def ott_solve(points, codes, iters):
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem

    geom = pointcloud.PointCloud(points, codes, epsilon=EPSILON)
    return ott_solver(iters)(linear_problem.LinearProblem(geom))


def ott_cost(points, codes, iters=ITERS):
    out = ott_solve(points, codes, iters)
    return jnp.sum(out.matrix * squared_distances(points, codes))


def table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


def speed_against_ott(problems, repeats):
    ours_fwd = jax.jit(lambda x, y: sinkhorn_loss(x, y, EPSILON, ITERS))
    ours_bwd = jax.jit(jax.value_and_grad(lambda x, y: sinkhorn_loss(x, y, EPSILON, ITERS), 1))
    ott_fwd = jax.jit(lambda x, y: ott_solve(x, y, ITERS).reg_ot_cost)
    ott_bwd = jax.jit(jax.value_and_grad(lambda x, y: ott_solve(x, y, ITERS).reg_ot_cost, 1))
    ott_transport = jax.jit(ott_cost)
    rows = []
    for shape in problems:
        x, y = clouds(*shape)
        f_ours, f_ott = timed(ours_fwd, x, y, repeats=repeats), timed(ott_fwd, x, y, repeats=repeats)
        b_ours, b_ott = timed(ours_bwd, x, y, repeats=repeats), timed(ott_bwd, x, y, repeats=repeats)
        ours_cost, ott_value = float(ours_fwd(x, y)), float(ott_transport(x, y))
        rows.append(["x".join(map(str, shape)), f"{f_ours:.2f}", f"{f_ott:.2f}",
                     f"{f_ours / f_ott:.2f}", f"{b_ours:.2f}", f"{b_ott:.2f}",
                     f"{b_ours / b_ott:.2f}", f"{(ours_cost - ott_value) / ott_value:+.2e}"])
    table(f"1. sinkhorn_loss vs ott-jax Sinkhorn, epsilon {EPSILON}, {ITERS} iterations (ms, median)",
          ["points x codes x dim", "ours fwd", "ott fwd", "ratio", "ours f+b", "ott f+b", "ratio",
           "cost diff"], rows)


def accuracy():
    rows = []
    cases = {
        "gaussian 256x256x64": clouds(256, 256, 64),
        "gaussian 512x512x64": clouds(512, 512, 64, seed=1),
        "far apart 4x4x2": (jnp.array([[0.0, 0], [1, 0], [0, 1], [1, 1]]) / 10,
                            jnp.array([[5.0, 5], [6, 5], [5, 6], [6, 6]])),
    }
    for name, (x, y) in cases.items():
        cost = np.asarray(squared_distances(x, y))
        rows_idx, cols_idx = linear_sum_assignment(cost)
        exact = cost[rows_idx, cols_idx].mean()
        ours20, ours2k = (float(sinkhorn_loss(x, y, EPSILON, n)) for n in (ITERS, 2000))
        ott20, ott2k = (float(ott_cost(x, y, n)) for n in (ITERS, 2000))
        rows.append([name, f"{exact:.4f}", f"{ours20:.4f}", f"{(ours20 - exact) / exact:+.2%}",
                     f"{(ours20 - ott20) / ott20:+.2%}", f"{ours2k:.6f}", f"{ott2k:.6f}",
                     f"{abs(ours2k - ott2k) / ott2k:.1e}"])
    table("2. accuracy: transport cost sum(plan * C) at epsilon 0.05",
          ["problem", "exact", "ours@20", "vs exact", "vs ott@20", "ours@2000", "ott@2000",
           "rel diff@2000"], rows)


def mnist_shaped(lambda_wasserstein, warm_start=True):
    cfg = config.load("configs/mnist.toml")
    cfg = dataclasses.replace(cfg, lambda_wasserstein=lambda_wasserstein,
                              sinkhorn_warm_start=warm_start,
                              model=dataclasses.replace(cfg.model, image_shape=(28, 28, 1)))
    return config.step_config(cfg, jax.default_backend())


def mnist_like_images():
    """The embedded digits, bilinearly upsampled to 28x28: MNIST's shape with real structure.

    (MNIST itself needs a download; random pixels would collapse the latents and make every
    transport problem trivially easy.)
    """
    from rqvae import data

    digits = data.load(config.DataConfig())
    images = jnp.asarray(digits.train).reshape(-1, 8, 8)
    return jax.image.resize(images, (len(images), 28, 28), "bilinear").reshape(-1, 784)


def train_steps(cfg, images, steps, warmup=200):
    """`warmup` untimed steps (so latents and codes are spread as in training), then `steps`
    timed ones, one compiled step per call so each step's metrics are kept; returns ms per timed
    step and their metrics."""
    state = step.init_state(cfg, len(images))
    state, metrics = step.run_steps(state, images, warmup, cfg=cfg)
    jax.block_until_ready(metrics)
    history = []
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step.run_steps(state, images, 1, cfg=cfg)
        history.append(metrics)
    jax.block_until_ready(history[-1])
    return 1e3 * (time.perf_counter() - start) / steps, jax.device_get(history)


def training_overhead(steps, repeats):
    images = mnist_like_images()
    timings = {lam: [] for lam in (0.0, 0.5)}
    errors = None
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
        for lam in timings:
            ms, history = train_steps(mnist_shaped(lam), images, steps)
            timings[lam].append(ms)
            if lam:
                errors = np.mean([h["sinkhorn_marginal_error"] for h in history], axis=0)
    off, on = (statistics.median(timings[lam]) for lam in (0.0, 0.5))
    table("3. train step, MNIST-shaped model on digits upsampled to 28x28: batch 256, 2 levels x "
          "512 codes, latent 64, after 200 steps (ms/step, median)",
          ["lambda_wasserstein 0", "lambda_wasserstein 0.5", "overhead ratio",
           "marginal error (per level)"],
          [[f"{off:.2f}", f"{on:.2f}", f"{on / off:.2f}", " / ".join(f"{e:.3f}" for e in errors)]])


def eps_scaling_plan(cost, epsilon, iters, start, decay=0.5):
    """Study only: log-domain Sinkhorn whose epsilon falls geometrically from `start`."""
    n, m = cost.shape

    def body(t, fg):
        f, g = fg
        e = jnp.maximum(epsilon, start * decay**t)
        f = e * (-jnp.log(n) - jax.nn.logsumexp((g[None] - cost) / e, axis=1))
        g = e * (-jnp.log(m) - jax.nn.logsumexp((f[:, None] - cost) / e, axis=0))
        return f, g

    f, _ = jax.lax.fori_loop(0, iters, body, (jnp.zeros(n), jnp.zeros(m)))
    plan = jax.nn.softmax((f[:, None] - cost) / epsilon, axis=0) / m
    return jnp.sum(jnp.abs(plan.sum(1) - 1 / n))


def convergence(steps):
    from rqvae import data

    digits = data.load(config.DataConfig())
    images = jax.device_put(digits.train)
    rows = []
    for warm in (False, True):
        cfg = config.replace(config.TrainerConfig(), {"lambda_wasserstein": 0.5,
                                                      "sinkhorn_warm_start": warm})
        cfg = config.step_config(rundir.with_data_shape(cfg, digits), jax.default_backend())
        ms, history = train_steps(cfg, images, steps // 2, warmup=steps // 2)
        errors = np.array([h["sinkhorn_marginal_error"] for h in history])
        rows.append([f"digits hybrid, steps {steps // 2}-{steps}, warm start "
                     f"{'on' if warm else 'off'}", f"{ms:.2f} ms/step",
                     " / ".join(f"{e:.3f}" for e in errors.mean(0))])
    x, y = clouds(256, 512, 64)
    cost = squared_distances(x, y)
    mean_cost = float(jnp.mean(cost))
    for name, fn in [("fresh 256x512, fixed epsilon", lambda c: sinkhorn_plan(c, EPSILON, ITERS)
                      .marginal_error),
                     ("fresh 256x512, epsilon scaling", lambda c: eps_scaling_plan(
                         c, EPSILON, ITERS, mean_cost))]:
        fn = jax.jit(fn)
        rows.append([name, f"{timed(fn, cost, repeats=20):.2f} ms/solve", f"{float(fn(cost)):.3f}"])
    table(f"4. convergence at {ITERS} iterations: row-marginal error (L1; 0 = converged, max 2)",
          ["setting", "time", "error (per level)"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problems, few repeats")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}),"
          f" {jax.device_count()} device(s)")
    problems = [(256, 512, 64)] if args.quick else [(256, 512, 64), (1024, 1024, 64),
                                                    (4096, 1024, 64)]
    repeats = 5 if args.quick else 20
    speed_against_ott(problems, repeats)
    accuracy()
    training_overhead(steps=20 if args.quick else 100, repeats=1 if args.quick else 3)
    convergence(steps=400 if args.quick else 3000)


if __name__ == "__main__":
    main()
