"""Sinkhorn benchmark: speed against ott-jax, accuracy and cost on training problems, overhead.

    pip install -e '.[bench]' && python scripts/bench_sinkhorn.py [--quick]

Prints five tables. OLD is the solve before relative epsilon: epsilon 0.05 in squared latent
units, 20 plain iterations; NEW is the config default (epsilon a fraction of each level's mean
cost, over-relaxed iterations stopped at a row-marginal error of `sinkhorn_tolerance`, at most
`sinkhorn_iters`); PLAIN is NEW without over-relaxation (`sinkhorn_overrelaxation = 1`); PRESET
is configs/hybrid.toml's solve, measured on the problems of runs of that preset (since the preset
carries the lambdas only, the default solve; the figures in docs/results.md's earlier
measurements were taken when it set the nearest-code epsilon on level 1 only).
1. `sinkhorn_loss` against ott-jax's `Sinkhorn` at equal epsilon (0.05) and iterations (20), on
   Gaussian clouds of points x codes x dim, forward and forward+backward (gradient with respect
   to the codes; ott with the same envelope gradient, `use_danskin=True`, no implicit diff).
   Skipped without ott-jax.
2. Accuracy on the transport problems of a short digits training run (the hybrid's weights, the
   default solve: `hybrid`): each level's inputs and codebook at a few steps, each setting
   against the converged plan at the same epsilon (log-domain Sinkhorn in float64 until the
   row-marginal error is below 1e-9): the iterations the solve took, the row-marginal error, the
   transport cost's error, and the codebook gradient's norm ratio, cosine and relative error;
   then PRESET on the level it covers of a preset run's problems at the same steps.
3. Time of `wasserstein_levels` (2 levels) forward+backward, compiled, each setting.
4. The train step of the MNIST-shaped model (MLP 784-512-256, latent 64, 2 levels x 512 codes,
   batch 256, Adam) with lambda_wasserstein 0.5 against 0, each setting.
5. The row-marginal error logged in training on the digits (`hybrid`), each setting, and in a
   run of the preset (the level it covers).
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

from rqvae import config, rundir, step
from rqvae.losses import sinkhorn_loss, wasserstein_levels
from rqvae.sinkhorn import effective_epsilon, sinkhorn_plan, squared_distances

EPSILON, ITERS = 0.05, 20
# The solve before relative epsilon and the tolerance, as config overrides.
OLD = {"sinkhorn_epsilon_mode": "absolute", "sinkhorn_epsilon": EPSILON, "sinkhorn_iters": ITERS,
       "sinkhorn_tolerance": 0.0, "wasserstein_scale": "whole", "sinkhorn_overrelaxation": 1.0}
# PLAIN: the default solve without over-relaxation.
SETTINGS = {"OLD": OLD, "PLAIN": {"sinkhorn_overrelaxation": 1.0}, "NEW": {}}
# The solve settings of configs/hybrid.toml (PRESET), measured on its own runs' problems.
SOLVE_KEYS = ("sinkhorn_epsilon_mode", "sinkhorn_epsilon", "sinkhorn_iters", "sinkhorn_tolerance",
              "sinkhorn_overrelaxation")


def preset() -> config.TrainerConfig:
    """configs/hybrid.toml as users run it."""
    return config.load("configs/hybrid.toml")


def solve_of(cfg: config.TrainerConfig) -> dict:
    """The overrides that give the default config `cfg`'s solve."""
    return {key: getattr(cfg, key) for key in SOLVE_KEYS}


def hybrid(overrides: dict) -> config.TrainerConfig:
    """The default config with the hybrid's weights (lambda_codebook 1, lambda_wasserstein 0.5)
    and `overrides`: the default solve (relative epsilon, every level), which this script
    measures."""
    return config.replace(config.load(None), {"lambda_wasserstein": 0.5, **overrides})


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


def training_problems(num_codes: int, checkpoints: tuple[int, ...], batches: int = 1,
                      trained: config.TrainerConfig | None = None):
    """{name: (level inputs (L, B, D), codebooks (L, K, D))} of a digits run with the hybrid's
    weights and the default solve (`hybrid`), or of `trained` (the preset), at the given steps,
    each on a batch of training images."""
    from rqvae import data

    digits = data.load(config.DataConfig())
    cfg = config.replace(trained or hybrid({}), {"model.num_codes": num_codes})
    cfg = config.step_config(rundir.with_data_shape(cfg, digits), jax.default_backend())
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


def solve_setting(overrides: dict):
    """A compiled solve of one level as the step does it under a setting: (plan, epsilon)."""
    loss = config.step_config(config.replace(config.TrainerConfig(), overrides)).loss

    @jax.jit
    def solve(points, codes):
        cost = squared_distances(points, codes)
        epsilon = effective_epsilon(cost, loss.sinkhorn_epsilon, loss.sinkhorn_epsilon_mode)
        result = sinkhorn_plan(cost, epsilon, loss.sinkhorn_iters, tolerance=loss.sinkhorn_tolerance,
                               overrelaxation=loss.sinkhorn_overrelaxation)
        return result.plan, result.marginal_error, epsilon, result.iterations

    return solve


def accuracy(problems: dict, settings: dict = SETTINGS, levels: int = 0):
    """Section 2 rows of each problem's first `levels` levels (0: all) under each setting."""
    rows = []
    solves = {name: solve_setting(o) for name, o in settings.items()}
    for problem, (level_inputs, codebooks) in problems.items():
        covered = zip(level_inputs[:levels or None], codebooks[:levels or None])
        for level, (points, codes) in enumerate(covered):
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
        for setting, overrides in SETTINGS.items():
            loss = config.step_config(config.replace(config.TrainerConfig(), overrides)).loss

            def total(codes, points=points, loss=loss):
                per_level, error, _, _, _ = wasserstein_levels(
                    points, codes, loss.sinkhorn_epsilon, loss.sinkhorn_iters,
                    epsilon_mode=loss.sinkhorn_epsilon_mode, tolerance=loss.sinkhorn_tolerance,
                    overrelaxation=loss.sinkhorn_overrelaxation)
                return jnp.sum(per_level), error

            fn = jax.jit(jax.value_and_grad(total, has_aux=True))
            times[setting] = timed(fn, codes, repeats=repeats)
            (_, error), _ = fn(codes)
            row += [f"{times[setting]:.2f}", " / ".join(f"{e:.3f}" for e in np.asarray(error))]
        rows.append(row + [f"{times['NEW'] / times['OLD']:.2f}", f"{times['NEW'] / times['PLAIN']:.2f}"])
    table("3. wasserstein_levels forward+backward, 2 levels (ms, median; marginal error per level)",
          ["problem", *[f"{name} {column}" for name in SETTINGS for column in ("ms", "error")],
           "NEW/OLD", "NEW/PLAIN"], rows)


def mnist_shaped(lambda_wasserstein, overrides=None):
    cfg = config.replace(config.load("configs/mnist.toml"),
                         {"lambda_wasserstein": lambda_wasserstein, **(overrides or {})})
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_shape=(28, 28, 1)))
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
    variants = {("off", None): mnist_shaped(0.0)}
    variants.update({("on", name): mnist_shaped(0.5, o) for name, o in SETTINGS.items()})
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
    for name in SETTINGS:
        on = statistics.median(timings[("on", name)])
        rows.append([name, f"{off:.2f}", f"{on:.2f}", f"{on / off:.2f}",
                     " / ".join(f"{e:.3f}" for e in errors[name])])
    table("4. train step, MNIST-shaped model on digits upsampled to 28x28: batch 256, 2 levels x "
          "512 codes, latent 64, after 200 steps (ms/step, median)",
          ["solve", "lambda_wasserstein 0", "lambda_wasserstein 0.5", "W on/off",
           "marginal error (per level)"], rows)


def convergence(steps, preset_cfg: config.TrainerConfig):
    from rqvae import data

    digits = data.load(config.DataConfig())
    images = jax.device_put(digits.train)
    rows = []
    runs = {name: hybrid(overrides) for name, overrides in SETTINGS.items()}
    for name, cfg in {**runs, "PRESET (configs/hybrid.toml)": preset_cfg}.items():
        cfg = config.step_config(rundir.with_data_shape(cfg, digits), jax.default_backend())
        ms, history = train_steps(cfg, images, steps // 2, warmup=steps // 2)
        # Levels the term does not cover (wasserstein_levels) log 0 and are left out.
        covered = cfg.loss.wasserstein_levels or cfg.model.num_levels
        errors = np.array([h["sinkhorn_marginal_error"][:covered] for h in history])
        epsilon = np.array([h["sinkhorn_epsilon"][:covered] for h in history])
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
    # The preset's solve on its own runs' problems, on the levels it covers.
    preset_cfg = preset()
    preset_problems = training_problems(64, checkpoints, trained=preset_cfg)
    if not args.quick:
        preset_problems.update(training_problems(256, (3000,), trained=preset_cfg))
    rows += accuracy({f"PRESET run, {name}": p for name, p in preset_problems.items()},
                     {"PRESET": solve_of(preset_cfg)}, levels=preset_cfg.wasserstein_levels)
    table("2. accuracy on digits hybrid training problems (batch 128, latent 16) against the "
          "converged float64 plan at the same epsilon", ACCURACY_HEADER, rows)
    solve_cost({name: p for name, p in training.items() if name.endswith(f"step {checkpoints[-1]}")},
               [(128, 64, 16), (256, 512, 64)] + ([] if args.quick else [(1024, 1024, 64)]),
               repeats)
    training_overhead(steps=20 if args.quick else 100, repeats=1 if args.quick else 3)
    convergence(steps=400 if args.quick else 3000, preset_cfg=preset_cfg)


if __name__ == "__main__":
    main()
