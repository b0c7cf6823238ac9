"""Why a grid tokenizer on real digits collapsed to a blank output, step by step.

    python scripts/make_mnist5k.py --out mnist5k.npz
    python scripts/collapse_diagnosis.py --data mnist5k.npz [--steps 200] [--remedy restart]

Trains configs/mnist-tokens.toml's model on the digits with a remedy (`restart`: dead-code
restart after 20 steps; `flag`: --lambda-wasserstein 0.5), once with the output sigmoid's exact
slope (`model.sigmoid_grad = "exact"`, as before) and once with its constant slope (today's
default), and prints at chosen steps, on 256 training digits: the reconstruction's MSE, the
mean and maximum of the decoder's logits, the mean slope of the sigmoid at them (the factor on
every pixel's MSE gradient; 0.25 at 0), the mean norm of the encoder's outputs and of the
quantized latents the decoder sees, and the codes a batch picks per level.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from rqvae.trainer import config, data, launch
from rqvae.trainer.step import init_state, make_model, run_steps

REMEDIES = {"restart": {"loss.lambda_wasserstein": 0.0, "remedies.dead_code_threshold": 20},
            "flag": {"loss.lambda_wasserstein": 0.5}}
SHOWN = (10, 19, 20, 21, 25, 30, 40, 60, 100, 150, 200)


def line(state, model, probe_BxP) -> str:
    params = state.params
    z_e = model.apply(params, probe_BxP, method=lambda m, x: m.encoder(x))
    x_recon, aux = model.apply(params, probe_BxP)
    logits = model.apply(params, aux["z_q"].reshape(z_e.shape), method=lambda m, z: m.decoder(z))
    slope = jax.nn.sigmoid(logits) * (1 - jax.nn.sigmoid(logits))
    used = [int(jnp.sum(c > 0)) for c in aux["counts"]]
    return (f"step {int(state.step):4d}  recon {float(jnp.mean((x_recon - probe_BxP) ** 2)):.4f}"
            f"  logits mean {float(jnp.mean(logits)):7.2f} max {float(jnp.max(logits)):6.2f}"
            f"  sigmoid slope {float(jnp.mean(slope)):.4f}"
            f"  |z_e| {float(jnp.mean(jnp.linalg.norm(aux['z_e'], axis=1))):.3f}"
            f"  |z_q| {float(jnp.mean(jnp.linalg.norm(aux['z_q'], axis=1))):.3f}  codes {used}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the digits' .npz (make_mnist5k.py)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--remedy", choices=list(REMEDIES), default="restart")
    args = parser.parse_args()
    for slope in ("exact", "constant"):
        cfg = config.replace(config.load("configs/mnist-tokens.toml"), {
            "data.dataset": f"npz:{args.data}", "model.sigmoid_grad": slope,
            **REMEDIES[args.remedy]})
        dataset = data.load(cfg.data)
        cfg = launch.with_data_shape(cfg, dataset)
        step_cfg = config.step_config(cfg)
        state, images = init_state(step_cfg, len(dataset.train)), jnp.asarray(dataset.train)
        model, probe = make_model(step_cfg), images[:256]
        print(f"== {args.remedy}, model.sigmoid_grad = {slope!r}")
        done = 0
        for step in (s for s in SHOWN if s <= args.steps):
            state, _ = run_steps(state, images, step - done, True, 0, cfg=step_cfg)
            done = step
            print(line(state, model, probe), flush=True)


if __name__ == "__main__":
    main()
