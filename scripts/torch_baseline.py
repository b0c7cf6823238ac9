"""PyTorch comparator for the training-throughput benchmark: the configs/mnist.toml model built with
vector-quantize-pytorch's `ResidualVQ`, the library a PyTorch user would otherwise pick.

    pip install torch==2.13.0 vector-quantize-pytorch==1.32.0
    python scripts/torch_baseline.py [--steps 200] [--warmup 20] [--threads N] [--compile]

Neither package is a dependency of rqvae (scripts/bench_train.py imports this file only when torch
is installed). Measured with torch 2.13.0+cpu and vector-quantize-pytorch 1.32.0 on Python 3.11.
`pip install torch` from PyPI on Linux also pulls the CUDA libraries, gigabytes a CPU box does not
need; PyTorch's own CPU-only wheel index (see its install page) avoids them where it is reachable.

The model: MLP encoder 784-512-256-64 (ReLU between layers), ResidualVQ(dim 64, 2 levels x 512
codes, commitment_weight 0.25, library defaults otherwise: codebooks move by EMA, not by gradient,
and gradients cross the quantizer by the rotation trick), MLP decoder 64-256-512-784 with a final
sigmoid; loss = MSE(recon, x) + the commitment losses of both levels; Adam lr 1e-3. Data: the
scikit-learn digits upsampled to 28x28, held in memory and batched by index, as in rqvae's loop.

On a CPU that other processes share, torch's threads wait on each other and the mean step time
swings; the median step time, or --threads 1, is steadier.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from vector_quantize_pytorch import ResidualVQ

IMAGE_SIDE = 28


def mlp(*widths: int) -> nn.Sequential:
    """Linear layers with ReLU between them and none after the last."""
    layers = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class TorchRQVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = mlp(IMAGE_SIDE**2, 512, 256, 64)
        self.quantizer = ResidualVQ(dim=64, num_quantizers=2, codebook_size=512,
                                    commitment_weight=0.25)
        self.decoder = mlp(64, 256, 512, IMAGE_SIDE**2)

    def forward(self, x_BxP):
        """Returns the reconstruction in [0, 1] and the commitment loss summed over levels."""
        # In training mode ResidualVQ returns (quantized, indices (B, L), loss per level (L,))
        # and updates its codebooks by EMA in place.
        z_q, _, commit_loss_L = self.quantizer(self.encoder(x_BxP))
        return torch.sigmoid(self.decoder(z_q)), commit_loss_L.sum()


def digits_28x28() -> torch.Tensor:
    """The 1797 scikit-learn digits, bilinearly upsampled from 8x8 to 28x28, flat, in [0, 1]."""
    images = torch.tensor(load_digits().images / 16.0, dtype=torch.float32).unsqueeze(1)
    images = F.interpolate(images, size=(IMAGE_SIDE, IMAGE_SIDE), mode="bilinear")
    return images.clamp(0.0, 1.0).reshape(len(images), -1)


def batches(images_NxP: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless batches by index, a fresh permutation each epoch, the last partial batch dropped."""
    if batch_size > len(images_NxP):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(images_NxP)} images")
    while True:
        order = torch.randperm(len(images_NxP), generator=generator)
        for start in range(0, len(images_NxP) - batch_size + 1, batch_size):
            yield images_NxP[order[start:start + batch_size]]


def train_step(model, optimizer, batch_BxP: torch.Tensor) -> torch.Tensor:
    recon_BxP, commit_loss = model(batch_BxP)
    loss = F.mse_loss(recon_BxP, batch_BxP) + commit_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def measure(steps: int = 200, warmup: int = 20, batch_size: int = 256, threads: int | None = None,
            compile: bool = False) -> dict:
    """Trains from scratch and times `steps` optimizer steps after `warmup` untimed ones.

    threads: torch's intra-op threads for this call (None keeps torch's default, all cores).
    compile: run the model through torch.compile; if that fails the run goes on eagerly and
    `compile_error` says why. Returns throughput, the setup, versions and the first and last loss.
    """
    if steps < 1 or warmup < 1:
        raise ValueError(f"steps and warmup must be >= 1, got {steps} and {warmup}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = TorchRQVAE().train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batch_stream = batches(digits_28x28(), batch_size, torch.Generator().manual_seed(0))
        step_model, compile_error = model, None
        first_batch = next(batch_stream)
        try:
            # torch.compile compiles on the first call, so the first step tells whether it works.
            if compile:
                step_model = torch.compile(model)
            first_loss = train_step(step_model, optimizer, first_batch).item()
        except Exception as err:  # any backend failure: report it and time the eager model
            if not compile:
                raise
            torch._dynamo.reset()
            step_model, compile_error = model, f"{type(err).__name__}: {err}".splitlines()[0]
            first_loss = train_step(model, optimizer, first_batch).item()
        for _ in range(warmup - 1):
            train_step(step_model, optimizer, next(batch_stream))

        # CPU ops run eagerly, so each step has finished when train_step returns; the per-step
        # times give a median that a busy shared CPU disturbs less than the total.
        step_ends = [time.perf_counter()]
        for _ in range(steps):
            loss = train_step(step_model, optimizer, next(batch_stream))
            step_ends.append(time.perf_counter())
        seconds = step_ends[-1] - step_ends[0]
        step_ms = sorted(1e3 * (end - begin) for begin, end in zip(step_ends, step_ends[1:]))

        return {
            "images_per_s": steps * batch_size / seconds,
            "ms_per_step": 1e3 * seconds / steps,
            "ms_per_step_median": step_ms[len(step_ms) // 2],
            "steps": steps,
            "warmup": warmup,
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
            "compile": compile,
            "compiled": compile and compile_error is None,
            "compile_error": compile_error,
            "first_loss": first_loss,
            "last_loss": loss.item(),
            "torch_version": torch.__version__,
            "vq_version": importlib.metadata.version("vector-quantize-pytorch"),
        }
    finally:
        torch.set_num_threads(previous_threads)


def main():
    parser = argparse.ArgumentParser(
        description="Times training steps of the mnist-shaped RQ-VAE in PyTorch with ResidualVQ.")
    parser.add_argument("--steps", type=int, default=200, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()
    r = measure(args.steps, args.warmup, args.batch_size, args.threads, args.compile)
    mode = "compiled" if r["compiled"] else "eager"
    if r["compile_error"]:
        mode += f" (torch.compile failed: {r['compile_error']})"
    print(f"torch {r['torch_version']} + vector-quantize-pytorch {r['vq_version']}: "
          f"{r['images_per_s']:.0f} images/s, {r['ms_per_step']:.2f} ms/step mean, "
          f"{r['ms_per_step_median']:.2f} median (batch {r['batch_size']}, "
          f"{r['steps']} steps after {r['warmup']} warmup, "
          f"{r['threads']} threads, {mode}); loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}")


if __name__ == "__main__":
    main()
