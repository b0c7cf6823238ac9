"""Which term moves the codebook: each weighted loss term's share of the codebook gradient, per level.

    python scripts/gradient_shares.py RUN_DIR [RUN_DIR ...] [--batches 8]

For each trained run (e.g. the presets `scripts/preset_results.py` trains), over `--batches` batches
of the training split at the run's newest checkpoint: the norm of the codebook gradient of
lambda_codebook * codebook and of lambda_wasserstein * wasserstein at each level, and the
transport term's share of their sum. Also each term's value, so its scale can be compared: commit
and codebook are means over batch x latent dims; the transport cost (summed over the levels) is
per latent dimension too with `wasserstein_scale = "per_element"` (the default), and whole squared
distances, latent_dim times larger, with "whole".
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rqvae import rundir
from rqvae.losses import loss_terms
from rqvae.step import make_model


def term_gradients(params, batch_BxP, step_cfg):
    """{term: (value, codebook gradient (L, K, D))} for the weighted codebook and transport terms."""
    loss_cfg = step_cfg.loss
    if loss_cfg.lambda_wasserstein == 0:  # compute the term anyway, at weight 1, to show its scale
        loss_cfg = dataclasses.replace(loss_cfg, lambda_wasserstein=1.0)
    model = make_model(step_cfg)

    def terms(codebook_LxKxD):
        tree = {**params, "params": {**params["params"], "codebook": codebook_LxKxD}}
        x_recon, aux = model.apply(tree, batch_BxP)
        losses = loss_terms(batch_BxP, x_recon, aux, loss_cfg)
        return {"codebook": step_cfg.loss.lambda_codebook * losses["codebook"],
                "wasserstein": step_cfg.loss.lambda_wasserstein * losses["wasserstein"],
                "commit": losses["commit"], "transport cost": losses["wasserstein"]}

    codebook = params["params"]["codebook"]
    values = jax.jit(terms)(codebook)
    grads = {name: jax.jit(jax.grad(lambda c, n=name: terms(c)[n]))(codebook)
             for name in ("codebook", "wasserstein")}
    return values, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    print("| run | lambda_codebook | lambda_wasserstein | commit | codebook | transport cost | "
          "level | codebook grad | W grad | W share |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run_dir in args.run_dirs:
        cfg, step_cfg, dataset, params, _ = rundir.load_trained(run_dir)
        rng = np.random.default_rng(0)
        values, norms = [], []
        for _ in range(args.batches):
            index = rng.choice(len(dataset.train), cfg.batch_size, replace=False)
            value, grads = term_gradients(params, jnp.asarray(dataset.train[index]), step_cfg)
            values.append({k: float(v) for k, v in value.items()})
            norms.append({k: np.linalg.norm(np.asarray(g).reshape(g.shape[0], -1), axis=1)
                          for k, g in grads.items()})
        mean = {k: np.mean([v[k] for v in values]) for k in values[0]}
        for level in range(cfg.model.num_levels):
            codebook_grad = np.mean([n["codebook"][level] for n in norms])
            w_grad = np.mean([n["wasserstein"][level] for n in norms])
            share = w_grad / (codebook_grad + w_grad) if codebook_grad + w_grad else float("nan")
            print(f"| {run_dir.name} | {cfg.lambda_codebook:g} | {cfg.lambda_wasserstein:g} | "
                  f"{mean['commit']:.4g} | {mean['codebook']:.4g} | {mean['transport cost']:.4g} | "
                  f"{level + 1} | {codebook_grad:.3g} | {w_grad:.3g} | {share:.0%} |")


if __name__ == "__main__":
    main()
