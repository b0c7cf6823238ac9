"""Where the transport term's step time goes, at a cell of the transport matrix.

    python scripts/make_patches.py --size 8 --out /tmp/patches8.npz   # once ('.[study]')
    python scripts/bench_transport.py --data /tmp/patches8.npz [--codes 4096] [--steps 500]
        [--after 1000]
    python scripts/make_patches.py --size 16 --count 20000 --heldout-count 2000 \
        --out /tmp/patches16.npz
    python scripts/bench_transport.py --data /tmp/patches16.npz \
        --config configs/tokens-patches.toml --codes 1024 --variants traditional hybrid --torch

Trains a model, by default the 8x8-patch cell's (configs/traditional.toml, latent 16, batch 256,
2 levels), or `--config`'s with its batch (the tokens preset: a 4x4 grid of latents, batch 128),
for `--after` steps (past the first stale window, 320 steps at 4,096 codes on 8x8 patches, and
its bulk of re-anchoring), then times `--steps` more in one compiled call, for: traditional VQ;
the hybrid (`--lambda-wasserstein 0.5`); the hybrid with its solve capped at one Sinkhorn
iteration (`transport.iters = 1`); the term as it was before re-anchoring
(`transport.anchor_window = 0`), and the two together; and dead-code restart (`--variants` picks
some). Prints ms per step of each, measured one after the other on this machine, and each one's
ratio to traditional's.

--torch adds the PyTorch peer of the same model (scripts/torch_baseline.py: the same layers with
vector-quantize-pytorch's `ResidualVQ`, every grid position a point, eager, float32) on the same
images and batch, timed over `--steps` steps after `--after` untimed ones (median step). Needs
`pip install torch vector-quantize-pytorch`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time

import jax
import numpy as np

from rqvae.trainer import config, step

VARIANTS = {
    "traditional": {"loss.lambda_wasserstein": 0.0},
    "hybrid": {"loss.lambda_wasserstein": 0.5},
    "hybrid, 1 iteration": {"loss.lambda_wasserstein": 0.5, "transport.iters": 1},
    "hybrid, anchor_window 0": {"loss.lambda_wasserstein": 0.5, "transport.anchor_window": 0},
    "hybrid, 1 iteration, anchor_window 0": {"loss.lambda_wasserstein": 0.5,
                                             "transport.iters": 1, "transport.anchor_window": 0},
    "restart": {"remedies.dead_code_threshold": 20},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an .npz of patches (make_patches.py)")
    parser.add_argument("--config", help="the model and batch (default: the 8x8-patch cell's)")
    parser.add_argument("--codes", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--after", type=int, default=1000)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--torch", action="store_true", help="add the PyTorch peer")
    parser.add_argument("--guard", choices=["platform", "branch", "select"], default="platform",
                        help="branch: steps with nothing to move skip the solve (lax.cond), as "
                             "on CPU; select: every step solves, as on accelerators; platform: "
                             "the platform's choice (config.step_config)")
    args = parser.parse_args()
    if args.torch and not (importlib.util.find_spec("torch")
                           and importlib.util.find_spec("vector_quantize_pytorch")):
        parser.error("--torch needs: pip install torch vector-quantize-pytorch")
    train = np.load(args.data)["train"]
    image_shape = [*train.shape[1:], 1] if train.ndim == 3 else list(train.shape[1:])
    images_NxP = (train.reshape(len(train), -1) / 255.0).astype(np.float32)
    images = jax.device_put(images_NxP)
    if args.config:
        base = config.load(args.config)
    else:
        base = config.replace(config.load("configs/traditional.toml"), {"batch_size": 256})
    base = config.replace(base, {"model.num_codes": args.codes, "model.image_shape": image_shape})
    m = base.model
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} (guard {args.guard}); "
          f"{'x'.join(map(str, image_shape))} patches, {m.architecture} ({m.latent} latent), "
          f"{m.num_levels} x {args.codes} codes, batch {base.batch_size}; {args.steps} steps "
          f"after {args.after} untimed")
    ms = {}
    for name in args.variants:
        cfg = config.step_config(config.replace(base, VARIANTS[name]), jax.default_backend())
        if args.guard != "platform":
            cfg = dataclasses.replace(cfg, platform=dataclasses.replace(
                cfg.platform, branch=args.guard == "branch"))
        state = step.init_state(cfg, len(images))
        state, _ = step.run_steps(state, images, args.after, cfg=cfg)
        jax.block_until_ready(state)
        start = time.perf_counter()
        state, _ = step.run_steps(state, images, args.steps, cfg=cfg)
        jax.block_until_ready(state)
        ms[name] = 1e3 * (time.perf_counter() - start) / args.steps
        report(name, ms)
    if args.torch:
        import torch_baseline

        peer = torch_baseline.measure(steps=args.steps, warmup=args.after,
                                      batch_size=base.batch_size, model=m, images_NxP=images_NxP)
        name = (f"PyTorch {peer['torch_version']} + vector-quantize-pytorch {peer['vq_version']}"
                f" ({peer['threads']} threads)")
        ms[name] = peer["ms_per_step_median"]
        report(name, ms)


def report(name: str, ms: dict) -> None:
    ratio = f"  {ms[name] / ms['traditional']:.2f}x traditional" if "traditional" in ms else ""
    print(f"{name:40s} {ms[name]:7.2f} ms/step{ratio}", flush=True)


if __name__ == "__main__":
    main()
