"""Sinkhorn benchmark: speed against ott-jax, accuracy and cost on training problems, overhead.

    pip install -e '.[bench]' && python scripts/bench_sinkhorn.py [--quick]

Prints five tables. OLD is the solve of the first release: epsilon 0.05 in squared latent units,
20 plain iterations (`sinkhorn_loss`; no longer a training setting, so tables 4 and 5 leave it
out); NEW is the default `[transport]` (epsilon a fraction of each level's mean cost, over-relaxed
iterations stopped at a row-marginal error of `transport.tolerance`, at most `transport.iters`);
PLAIN is NEW without over-relaxation (`transport.overrelaxation = 1`).
1. `sinkhorn_loss` against ott-jax's `Sinkhorn` at equal epsilon (0.05) and iterations (20), on
   Gaussian clouds of points x codes x dim, forward and forward+backward (gradient with respect
   to the codes; ott with the same envelope gradient, `use_danskin=True`, no implicit diff).
   Skipped without ott-jax.
2. Accuracy on the transport problems of a short digits training run (the hybrid's weights, the
   default solve: `hybrid`): each level's inputs and codebook at a few steps, each setting
   against the converged plan at the same epsilon (log-domain Sinkhorn in float64 until the
   row-marginal error is below 1e-9): the iterations the solve took, the row-marginal error, the
   transport cost's error, and the codebook gradient's norm ratio, cosine and relative error;
3. Time of `wasserstein_levels` (2 levels) forward+backward, compiled, each setting.
4. The train step of the MNIST-shaped model (MLP 784-512-256, latent 64, 2 levels x 512 codes,
   batch 256, Adam) with lambda_wasserstein 0.5 against 0, each setting.
5. The row-marginal error logged in training on the digits (`hybrid`), PLAIN and NEW.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from rqvae.quantizer.first_release import sinkhorn_loss, wasserstein_levels
from rqvae.quantizer.settings import Transport
from rqvae.quantizer.sinkhorn import effective_epsilon, sinkhorn_plan, squared_distances
from rqvae.trainer import config, launch, step

EPSILON, ITERS = 0.05, 20
# Each solve: its epsilon mode and its Transport settings.
SOLVES = {"OLD": ("absolute", Transport(epsilon=EPSILON, iters=ITERS, tolerance=0.0,
                                        overrelaxation=1.0)),
          "PLAIN": ("relative", Transport(overrelaxation=1.0)),
          "NEW": ("relative", Transport())}
TRAINED = ("PLAIN", "NEW")  # the solves a run can train with


def hybrid(transport: Transport = Transport()) -> config.TrainerConfig:
    """The default config with the hybrid's weights (lambda_codebook 1, lambda_wasserstein 0.5)
    and `transport`, which this script measures."""
    cfg = config.replace(config.load(None), {"loss.lambda_wasserstein": 0.5})
    return dataclasses.replace(cfg, transport=transport)


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


def training_problems(num_codes: int, checkpoints: tuple[int, ...], batches: int = 1):
    """{name: (level inputs (L, B, D), codebooks (L, K, D))} of a digits run with the hybrid's
    weights and the default solve (`hybrid`) at the given steps, each on a batch of training
    images."""
    from rqvae.trainer import data

    digits = data.load(config.DataConfig())
    cfg = config.replace(hybrid(), {"model.num_codes": num_codes})
    cfg = config.step_config(launch.with_data_shape(cfg, digits), jax.default_backend())
    images = jax.device_put(digits.train)
    state, done, problems = step.init_state(cfg, len(images)), 0, {}
    rng = np.random.default_rng(0)
    for at in checkpoints:
        if at > done:
            state, _ = step.run_steps(state, images, at - done, cfg=cfg)
            done = at
        for b in range(batches):
            batch = images[rng.choice(len(images), cfg.batch_size, replace=False)]
            _, aux = step.make_model(cfg).apply(state.params, batch)
            problems[f"{num_codes} codes, step {at}" + (f" #{b}" if batches > 1 else "")] = (
                np.asarray(aux["level_inputs"]), np.asarray(aux["codebook"]))
    return problems


def converged_plan(cost, epsilon, max_iters=50_000):
    """The entropic plan to float64 precision: log-domain Sinkhorn until the row-marginal error
    is below 1e-9."""
    cost = np.asarray(cost, np.float64)
    n, m = cost.shape
    f, g = np.zeros(n), np.zeros(m)
    for _ in range(max_iters // 50):
        for _ in range(50):
            f = -epsilon * (np.log(n) + logsumexp((g[None] - cost) / epsilon, axis=1))
            g = -epsilon * (np.log(m) + logsumexp((f[:, None] - cost) / epsilon, axis=0))
        plan = np.exp((f[:, None] + g[None] - cost) / epsilon)
        if np.abs(plan.sum(1) - 1 / n).sum() < 1e-9:
            break
    return plan


def codebook_gradient(plan, points, codes):
    """d sum(P * C) / d codes with the plan held fixed (the envelope gradient the step uses)."""
    return 2 * (plan.sum(0)[:, None] * codes - plan.T @ points)


def solve_setting(mode: str, t: Transport):
    """A compiled solve of one level as the step does it under a setting: (plan, epsilon)."""

    @jax.jit
    def solve(points, codes):
        cost = squared_distances(points, codes)
        epsilon = effective_epsilon(cost, t.epsilon, mode)
        result = sinkhorn_plan(cost, epsilon, t.iters, tolerance=t.tolerance,
                               overrelaxation=t.overrelaxation)
        return result.plan, result.marginal_error, epsilon, result.iterations

    return solve


def accuracy(problems: dict):
    """Section 2 rows of each problem's levels under each solve."""
    rows = []
    solves = {name: solve_setting(*setting) for name, setting in SOLVES.items()}
    for problem, (level_inputs, codebooks) in problems.items():
        for level, (points, codes) in enumerate(zip(level_inputs, codebooks)):
            points64, codes64 = points.astype(np.float64), codes.astype(np.float64)
            cost64 = np.asarray(squared_distances(points64, codes64))
            for setting, solve in solves.items():
                plan, error, epsilon, iterations = jax.device_get(solve(points, codes))
                reference = converged_plan(cost64, float(epsilon))
                grad = codebook_gradient(plan.astype(np.float64), points64, codes64)
                grad_ref = codebook_gradient(reference, points64, codes64)
                norm_ref = np.linalg.norm(grad_ref)
                cost, cost_ref = np.sum(plan * cost64), np.sum(reference * cost64)
                rows.append([problem, f"L{level + 1}", setting, f"{float(epsilon):.3g}",
                             f"{cost64.max() / epsilon:.0f}", f"{int(iterations)}",
                             f"{float(error):.4f}",
                             f"{(cost - cost_ref) / cost_ref:+.2%}",
                             f"{np.linalg.norm(grad) / norm_ref:.3f}",
                             f"{np.sum(grad * grad_ref) / np.linalg.norm(grad) / norm_ref:.4f}",
                             f"{np.linalg.norm(grad - grad_ref) / norm_ref:.3f}"])
    return rows


ACCURACY_HEADER = ["problem", "level", "solve", "epsilon", "max C/eps", "iters", "marginal err",
                   "cost err", "grad norm ratio", "grad cosine", "grad rel err"]


def solve_cost(problems: dict, shapes, repeats: int):
    """ms of wasserstein_levels forward+backward (gradient w.r.t. the codebooks), 2 levels."""
    rows = []
    cases = {}
    for n, k, d in shapes:  # level 2: a cloud of a third of the spread, as residuals are
        (x1, c1), (x2, c2) = clouds(n, k, d, seed=0), clouds(n, k, d, seed=1)
        cases[f"{n}x{k}x{d} clouds"] = jnp.stack([x1, x2 / 3]), jnp.stack([c1, c2 / 3])
    cases.update({f"training: {name}": tuple(map(jnp.asarray, p)) for name, p in problems.items()})
    for name, (points, codes) in cases.items():
        row = [name]
        times = {}
        for setting, (mode, t) in SOLVES.items():

            def total(codes, points=points, mode=mode, t=t):
                per_level, error, _, _ = wasserstein_levels(
                    points, codes, t.epsilon, t.iters, epsilon_mode=mode, tolerance=t.tolerance,
                    overrelaxation=t.overrelaxation)
                return jnp.sum(per_level), error

            fn = jax.jit(jax.value_and_grad(total, has_aux=True))
            times[setting] = timed(fn, codes, repeats=repeats)
            (_, error), _ = fn(codes)
            row += [f"{times[setting]:.2f}", " / ".join(f"{e:.3f}" for e in np.asarray(error))]
        rows.append(row + [f"{times['NEW'] / times['OLD']:.2f}", f"{times['NEW'] / times['PLAIN']:.2f}"])
    table("3. wasserstein_levels forward+backward, 2 levels (ms, median; marginal error per level)",
          ["problem", *[f"{name} {column}" for name in SOLVES for column in ("ms", "error")],
           "NEW/OLD", "NEW/PLAIN"], rows)


def mnist_shaped(lambda_wasserstein, transport: Transport = Transport()):
    cfg = config.replace(config.load("configs/mnist.toml"),
                         {"loss.lambda_wasserstein": lambda_wasserstein})
    cfg = dataclasses.replace(cfg, transport=transport)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_shape=(28, 28, 1)))
    return config.step_config(cfg, jax.default_backend())


def mnist_like_images():
    """The embedded digits, bilinearly upsampled to 28x28: MNIST's shape with real structure.

    (MNIST itself needs a download; random pixels would collapse the latents and make every
    transport problem trivially easy.)
    """
    from rqvae.trainer import data

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
    variants = {("off", None): mnist_shaped(0.0)}
    variants.update({("on", name): mnist_shaped(0.5, SOLVES[name][1]) for name in TRAINED})
    timings = {key: [] for key in variants}
    errors = {}
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits all alike
        for key, cfg in variants.items():
            ms, history = train_steps(cfg, images, steps)
            timings[key].append(ms)
            if key[0] == "on":
                errors[key[1]] = np.mean([h["sinkhorn_marginal_error"] for h in history], axis=0)
    off = statistics.median(timings[("off", None)])
    rows = []
    for name in TRAINED:
        on = statistics.median(timings[("on", name)])
        rows.append([name, f"{off:.2f}", f"{on:.2f}", f"{on / off:.2f}",
                     " / ".join(f"{e:.3f}" for e in errors[name])])
    table("4. train step, MNIST-shaped model on digits upsampled to 28x28: batch 256, 2 levels x "
          "512 codes, latent 64, after 200 steps (ms/step, median)",
          ["solve", "lambda_wasserstein 0", "lambda_wasserstein 0.5", "W on/off",
           "marginal error (per level)"], rows)


def convergence(steps):
    from rqvae.trainer import data

    digits = data.load(config.DataConfig())
    images = jax.device_put(digits.train)
    rows = []
    for name in TRAINED:
        cfg = launch.with_data_shape(hybrid(SOLVES[name][1]), digits)
        cfg = config.step_config(cfg, jax.default_backend())
        ms, history = train_steps(cfg, images, steps // 2, warmup=steps // 2)
        errors = np.array([h["sinkhorn_marginal_error"] for h in history])
        epsilon = np.array([h["solve_epsilon"] for h in history])
        rows.append([f"digits, steps {steps // 2}-{steps}, {name}", f"{ms:.2f}",
                     " / ".join(f"{e:.3f}" for e in errors.mean(0)),
                     " / ".join(f"{e:.3f}" for e in errors.max(0)),
                     " / ".join(f"{e:.3g}" for e in epsilon.mean(0))])
    table("5. convergence in training: row-marginal error (L1; 0 = converged, max 2) per level",
          ["setting", "ms/step", "mean error", "max error", "mean epsilon"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problems, few repeats")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}),"
          f" {jax.device_count()} device(s)")
    problems = [(256, 512, 64)] if args.quick else [(256, 512, 64), (1024, 1024, 64),
                                                    (4096, 1024, 64)]
    repeats = 5 if args.quick else 20
    if importlib.util.find_spec("ott") is not None:
        speed_against_ott(problems, repeats)
    else:
        print("\n1. skipped: ott-jax is not installed (pip install -e '.[bench]')")
    checkpoints = (1000,) if args.quick else (300, 1000, 3000)
    training = training_problems(64, checkpoints)
    if not args.quick:
        training.update(training_problems(256, (3000,)))
    rows = accuracy(training)
    table("2. accuracy on digits hybrid training problems (batch 128, latent 16) against the "
          "converged float64 plan at the same epsilon", ACCURACY_HEADER, rows)
    solve_cost({name: p for name, p in training.items() if name.endswith(f"step {checkpoints[-1]}")},
               [(128, 64, 16), (256, 512, 64)] + ([] if args.quick else [(1024, 1024, 64)]),
               repeats)
    training_overhead(steps=20 if args.quick else 100, repeats=1 if args.quick else 3)
    convergence(steps=400 if args.quick else 3000)


if __name__ == "__main__":
    main()
