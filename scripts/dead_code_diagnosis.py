"""Where a trained run's dead codes are, and how spread its transport plan is, per level.

    python scripts/dead_code_diagnosis.py RUN_DIR [RUN_DIR ...] [--points 8192]

For each run, at its newest checkpoint, on `--points` training images (all of them if fewer):
- alive: codes that at least one of those images picks at that level (a sample, so it can read
  lower than the full-pass count `rqvae eval` gives);
- the median squared distance from a code to its nearest level input, for live and for dead
  codes: dead codes far from the data were never reached; dead codes on it are shadowed by a
  near-duplicate code that wins the argmin;
- duplicates: dead codes whose nearest other code is closer than a tenth of the median distance
  from an input to its code, and the median distance from a code to its nearest other code,
  live and dead;
- what the duplicates' cells hold: the median standard deviation of the images (or vectors)
  that pick the code a duplicate shadows, against all of them, and the share of near-flat ones
  (standard deviation under 0.01 of the [0, 1] scale, i.e. under 2.6 of 255 gray levels);
- the median squared distance from a level input to its code, and the mean cost;
- for one training batch, the epsilon the run's solve uses and the plan's spread: the median
  over points of exp(entropy) of the point's row of the plan, the number of codes its mass is
  spread over (at least num_codes / batch_size, when the codebook is larger than the batch);
- over the whole training split (`rqvae eval`'s pass): the dead codes, how many steps before the
  checkpoint each was last picked in training (a code re-anchored or restarted counts as picked
  then), and the codes that serve at most 1, 3 and 10 points of the split: codes that die at the
  end of training are drawn from these, the thinly used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from rqvae.quantizer.sinkhorn import effective_epsilon, sinkhorn_plan, squared_distances
from rqvae.trainer import launch
from rqvae.trainer.evaluate import encode
from rqvae.trainer.step import make_model


def median(values: np.ndarray) -> str:
    return f"{np.median(values):.4g}" if len(values) else "-"


def diagnose(run_dir: Path, num_points: int) -> list[str]:
    cfg, step_cfg, dataset, state, step = launch.load_train_state(run_dir)
    params = state.params
    rng = np.random.default_rng(0)
    images = dataset.train[rng.choice(len(dataset.train), min(num_points, len(dataset.train)),
                                      replace=False)]
    _, aux = make_model(step_cfg).apply(params, jnp.asarray(images))
    lines = [f"{run_dir} (step {step}, {len(images)} training images)"]
    for level, (inputs, codes) in enumerate(zip(aux["level_inputs"], aux["codebook"]), 1):
        cost = np.asarray(squared_distances(inputs, codes))
        picked, input_to_code = cost.argmin(1), np.median(cost.min(1))
        alive = np.bincount(picked, minlength=len(codes)) > 0
        to_point = cost.min(0)
        duplicate = _duplicates(np.asarray(codes), alive, input_to_code)
        batch_cost = squared_distances(inputs[:cfg.batch_size], codes)
        t = cfg.transport
        epsilon = effective_epsilon(batch_cost, t.epsilon, "relative")
        plan = np.asarray(sinkhorn_plan(batch_cost, epsilon, t.iters, tolerance=t.tolerance,
                                        overrelaxation=t.overrelaxation).plan)
        rows = plan / plan.sum(1, keepdims=True)
        spread = np.exp(-(rows * np.log(np.maximum(rows, 1e-30))).sum(1))
        lines += [
            f"  L{level}: alive {alive.sum()} / {len(codes)} ({100 * alive.mean():.1f}%); input "
            f"to its code {input_to_code:.4g}; mean cost {cost.mean():.4g}",
            f"    code to nearest input: live {median(to_point[alive])}, dead "
            f"{median(to_point[~alive])}",
            f"    plan: epsilon {float(epsilon):.4g}, spread {np.median(spread):.1f} codes per "
            f"point (at least {max(1.0, len(codes) / cfg.batch_size):.0f})",
            f"    duplicates: {duplicate['count']} of {(~alive).sum()} dead codes; code to nearest "
            f"other code: live {median(duplicate['gap'][alive])}, dead "
            f"{median(duplicate['gap'][~alive])}",
            f"    {_flat_share(images, picked, duplicate['shadowed'])}"]
    lines += _full_pass(encode(params, dataset.train, step_cfg), np.asarray(state.last_used),
                        step, cfg.model.num_codes)
    return lines


def _full_pass(codes_NxL: np.ndarray, last_used_LxK: np.ndarray, step: int,
               num_codes: int) -> list[str]:
    """Per level, over every training point (every grid position of a grid latent): the dead
    codes with the steps since each was last picked in training, and the thinly used codes."""
    codes_NxL = codes_NxL.reshape(-1, codes_NxL.shape[-1])
    lines = [f"  whole training split, {len(codes_NxL)} points:"]
    for level, last_used_K in enumerate(last_used_LxK):
        counts_K = np.bincount(codes_NxL[:, level], minlength=num_codes)
        dead_K = counts_K == 0
        ages = np.sort(step - last_used_K[dead_K])
        thin = ", ".join(f"<= {n}: {(counts_K <= n).sum()}" for n in (1, 3, 10))
        lines.append(f"    L{level + 1}: dead {dead_K.sum()} (last picked steps before: "
                     f"{_quantiles(ages)}); codes serving {thin}")
    return lines


def _quantiles(values: np.ndarray) -> str:
    if not len(values):
        return "-"
    low, mid, high = np.percentile(values, [0, 50, 100])
    return f"min {low:.0f}, median {mid:.0f}, max {high:.0f}"


def _duplicates(codes_KxD: np.ndarray, alive_K: np.ndarray, input_to_code: float) -> dict:
    """Each code's squared distance to its nearest other code, the dead codes within a tenth of
    `input_to_code` of another (duplicates), and the codes those shadow: (K,) bool."""
    gap_K, partner_K = np.empty(len(codes_KxD)), np.empty(len(codes_KxD), int)
    for start in range(0, len(codes_KxD), 2048):  # (2048, K) at a time: 16,384 codes fit
        block = np.array(squared_distances(codes_KxD[start:start + 2048], codes_KxD))
        block[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        gap_K[start:start + len(block)] = block.min(1)
        partner_K[start:start + len(block)] = block.argmin(1)
    duplicate_K = ~alive_K & (gap_K < input_to_code / 10)
    shadowed_K = np.zeros(len(codes_KxD), bool)
    shadowed_K[partner_K[duplicate_K]] = True
    return {"gap": gap_K, "count": int(duplicate_K.sum()), "shadowed": shadowed_K}


def _flat_share(images_NxP: np.ndarray, picked_N: np.ndarray, shadowed_K: np.ndarray) -> str:
    """The spread of the inputs in the cells of codes that shadow a duplicate, against all."""
    spread_N = np.asarray(images_NxP, np.float64).reshape(len(images_NxP), -1).std(1)
    in_cells_N = shadowed_K[picked_N]
    if not in_cells_N.any():
        return "shadowed cells: no input picks a code that shadows a duplicate"
    return (f"shadowed cells: {100 * in_cells_N.mean():.1f}% of inputs, input std "
            f"{np.median(spread_N[in_cells_N]):.4f} (all {np.median(spread_N):.4f}), near-flat "
            f"{100 * (spread_N[in_cells_N] < 0.01).mean():.0f}% "
            f"(all {100 * (spread_N < 0.01).mean():.0f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--points", type=int, default=8192)
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        print("\n".join(diagnose(run_dir, args.points)))


if __name__ == "__main__":
    main()
