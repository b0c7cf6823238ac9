"""The peer a PyTorch user would pick, trained as an rqvae run: vector-quantize-pytorch's
`ResidualVQ` with its own remedies against dead codes, in the model of an rqvae config, written
as a run directory that `rqvae report` and scripts/study_table.py read.

    pip install torch==2.13.0 vector-quantize-pytorch==1.32.0
    python scripts/peer_train.py -c configs/mnist-tokens.toml --dataset npz:mnist5k.npz \
        --steps 600 --seed 0 --run-dir runs/peer-s0     # any `rqvae train` flags

The model is scripts/torch_baseline.py's mirror of the config's (mlp, conv or grid), with
`ResidualVQ(kmeans_init=True, threshold_ema_dead_code=2, commitment_weight=0.25)`: codebooks
fitted by k-means on the first batch, moved by EMA, a code whose EMA count falls below 2
re-seeded on a batch point (the library's remedies; its defaults otherwise, e.g. the rotation
trick). The rest is the rqvae run's: the same batches in the same order (rqvae's permutation of
each epoch, from the seed), Adam at the config's learning rate with its half-cosine decay over
the last `optimizer.decay_fraction` of the steps, MSE on a sigmoid output plus the commitment
losses. Writes config.toml (the config the rqvae run would have), metrics.jsonl (train records
every `run.log_every` steps with the loss terms and the batch's code use; an eval record at the
end over both splits, as `rqvae train` writes it) and no checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from vector_quantize_pytorch import ResidualVQ

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rqvae.trainer import config as config_lib
from rqvae.trainer import data, launch, rundir
from rqvae.trainer.evaluate import constant_recon

_spec = importlib.util.spec_from_file_location(
    "torch_baseline", Path(__file__).with_name("torch_baseline.py"))
torch_baseline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(torch_baseline)


def resolve(argv: list[str]) -> config_lib.TrainerConfig:
    """The config `rqvae train` would resolve from these flags (it parses them itself)."""
    import typer

    from rqvae import cli_support
    from rqvae.cli import app

    command = typer.main.get_command(app)
    root = command.make_context("rqvae", ["train", *argv])
    params = command.get_command(root, "train").make_context("train", argv, parent=root).params
    flags = {key: params[cli_support.parameter_name(flag)]
             for key, (flag, _) in cli_support.TRAIN_FLAGS.items()
             if params.get(cli_support.parameter_name(flag)) is not None}
    return cli_support.train_config(params["config"], params["run_dir"], params["set_"] or [],
                                    flags, resume=False)


def epoch_orders(seed: int, num_images: int, epochs: int) -> list[np.ndarray]:
    """rqvae's order of the training images in each epoch (`step.next_batch`)."""
    import jax

    from rqvae.trainer.step import Stream, stream_key

    key = stream_key(seed, Stream.DATA)
    return [np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), num_images))
            for epoch in range(epochs)]


def learning_rate_scale(step: int, total: int, decay_fraction: float) -> float:
    """rqvae's schedule (`step.learning_rate_scale`): 1, then a half cosine to 0."""
    decay = round(total * decay_fraction)
    if decay <= 0:
        return 1.0
    into = min(max((step - (total - decay)) / decay, 0.0), 1.0)
    return 0.5 * (1 + math.cos(math.pi * into))


def counts(indices: torch.Tensor, num_levels: int, num_codes: int) -> np.ndarray:
    """(L, K) picks per code from indices (..., L)."""
    flat = indices.reshape(-1, num_levels).cpu().numpy()
    return np.stack([np.bincount(flat[:, level], minlength=num_codes)
                     for level in range(num_levels)])


def perplexity(counts_LxK: np.ndarray) -> list[float]:
    probs = counts_LxK / np.maximum(counts_LxK.sum(1, keepdims=True), 1)
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return np.exp(-(probs * logs).sum(1)).tolist()


@torch.no_grad()
def split_pass(net, images: np.ndarray, m) -> tuple[np.ndarray, float]:
    """Code counts (L, K) over a split and its mean per-image MSE, in eval mode."""
    net.eval()
    total, error = np.zeros((m.num_levels, m.num_codes), np.int64), 0.0
    for start in range(0, len(images), 1024):
        x = torch.as_tensor(images[start:start + 1024])
        z_q, indices, _ = net.quantizer(net.encoder(x))
        error += float(((torch.sigmoid(net.decoder(z_q)) - x) ** 2).mean(1).sum())
        total += counts(indices, m.num_levels, m.num_codes)
    net.train()
    return total, error / len(images)


def main() -> None:
    cfg = resolve(sys.argv[1:])
    dataset = data.load(cfg.data)
    cfg = launch.with_data_shape(cfg, dataset)
    m, out = cfg.model, Path(cfg.run.run_dir)
    out.mkdir(parents=True, exist_ok=False)
    (out / rundir.CONFIG_FILE).write_text(config_lib.dumps(cfg))
    torch.manual_seed(cfg.seed)
    net = torch_baseline.TorchRQVAE(m)
    net.quantizer = ResidualVQ(dim=m.latent_dim, num_quantizers=m.num_levels,
                               codebook_size=m.num_codes, commitment_weight=0.25,
                               shared_codebook=m.shared_codebook, kmeans_init=True,
                               threshold_ema_dead_code=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optimizer.learning_rate)
    per_epoch = len(dataset.train) // cfg.batch_size
    orders = epoch_orders(cfg.seed, len(dataset.train), cfg.steps // per_epoch + 1)
    last_used = np.full((m.num_levels, m.num_codes), -1)
    started = time.perf_counter()
    with open(out / rundir.METRICS_FILE, "w") as log:
        def write(record):
            log.write(json.dumps(record, separators=(",", ":")) + "\n")
            log.flush()

        for step in range(cfg.steps):
            epoch, position = divmod(step, per_epoch)
            batch = orders[epoch][position * cfg.batch_size:(position + 1) * cfg.batch_size]
            x = torch.as_tensor(dataset.train[batch])
            for group in optimizer.param_groups:
                group["lr"] = cfg.optimizer.learning_rate * learning_rate_scale(
                    step, cfg.steps, cfg.optimizer.decay_fraction)
            z_q, indices, commit_L = net.quantizer(net.encoder(x))
            recon = F.mse_loss(torch.sigmoid(net.decoder(z_q)), x)
            loss = recon + commit_L.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            batch_counts = counts(indices, m.num_levels, m.num_codes)
            last_used = np.where(batch_counts > 0, step, last_used)
            if (step + 1) % cfg.run.log_every == 0 or step + 1 == cfg.steps:
                dead = ((last_used < 0) | (last_used <= step - cfg.run.dead_window)).sum(1)
                zeros = [0.0] * m.num_levels
                write({"kind": "train", "step": step + 1,
                       "time": round(time.perf_counter() - started, 3),
                       "total": loss.item(), "recon": recon.item(),
                       "commit": commit_L.sum().item() / 0.25 / m.num_levels, "codebook": 0.0,
                       "wasserstein": 0.0, "batch_used": (batch_counts > 0).sum(1).tolist(),
                       "batch_perplexity": perplexity(batch_counts),
                       "window_dead": dead.tolist(), "transport_cost": zeros,
                       "sinkhorn_marginal_error": zeros, "solve_epsilon": zeros,
                       "anchor_stale": [0] * m.num_levels})
        train_counts, _ = split_pass(net, dataset.train, m)
        heldout_counts, mse = split_pass(net, dataset.heldout, m)
        write({"kind": "eval", "step": cfg.steps,
               "time": round(time.perf_counter() - started, 3), "heldout_recon": mse,
               "heldout_psnr": 10 * math.log10(1 / max(mse, 1e-12)),
               "constant_recon": constant_recon(dataset),
               "train_used": (train_counts > 0).sum(1).tolist(),
               "train_dead": (train_counts == 0).sum(1).tolist(),
               "train_perplexity": perplexity(train_counts),
               "heldout_used": (heldout_counts > 0).sum(1).tolist(),
               "heldout_perplexity": perplexity(heldout_counts)})
        write({"kind": "end", "step": cfg.steps,
               "time": round(time.perf_counter() - started, 3), "status": "completed",
               "reason": ""})
    print(f"{out}: held-out recon {mse:.4g}, dead (train split) "
          f"{' / '.join(str(int(d)) for d in (train_counts == 0).sum(1))}")


if __name__ == "__main__":
    main()
