"""Where the transport term's step time goes, at one cell of the transport matrix.

    python scripts/make_patches.py --size 8 --out /tmp/patches8.npz   # once ('.[study]')
    python scripts/bench_transport.py --data /tmp/patches8.npz [--codes 4096] [--steps 500]
        [--after 1000]

Trains the 8x8-patch model (latent 16, batch 256, 2 levels) for `--after` steps (past the first
stale window, 320 steps at 4,096 codes, and its bulk of re-anchoring), then times `--steps` more
in one compiled call, for: traditional VQ; the hybrid (`--lambda-wasserstein 0.5`); the
hybrid with its solve capped at one Sinkhorn iteration (`transport.iters = 1`); the term as it was
before re-anchoring (`transport.anchor_window = 0`), and the two together; and dead-code restart.
Prints ms per step of each, measured one after the other on this machine.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from rqvae.trainer import config, step

VARIANTS = {
    "traditional": {},
    "hybrid": {"loss.lambda_wasserstein": 0.5},
    "hybrid, 1 iteration": {"loss.lambda_wasserstein": 0.5, "transport.iters": 1},
    "hybrid, anchor_window 0": {"loss.lambda_wasserstein": 0.5, "transport.anchor_window": 0},
    "hybrid, 1 iteration, anchor_window 0": {"loss.lambda_wasserstein": 0.5,
                                             "transport.iters": 1, "transport.anchor_window": 0},
    "restart": {"remedies.dead_code_threshold": 20},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an .npz of 8x8 patches (make_patches.py)")
    parser.add_argument("--codes", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--after", type=int, default=1000)
    args = parser.parse_args()
    train = np.load(args.data)["train"]
    images = jax.device_put((train.reshape(len(train), -1) / 255.0).astype(np.float32))
    base = config.replace(config.load("configs/traditional.toml"), {
        "batch_size": 256, "model.num_codes": args.codes, "model.image_shape": [8, 8, 1]})
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; 8x8 patches, 2 x "
          f"{args.codes} codes, batch 256; {args.steps} steps after {args.after} untimed")
    for name, overrides in VARIANTS.items():
        cfg = config.step_config(config.replace(base, overrides), jax.default_backend())
        state = step.init_state(cfg, len(images))
        state, _ = step.run_steps(state, images, args.after, cfg=cfg)
        jax.block_until_ready(state)
        start = time.perf_counter()
        state, _ = step.run_steps(state, images, args.steps, cfg=cfg)
        jax.block_until_ready(state)
        print(f"{name:40s} {1e3 * (time.perf_counter() - start) / args.steps:7.2f} ms/step",
              flush=True)


if __name__ == "__main__":
    main()
