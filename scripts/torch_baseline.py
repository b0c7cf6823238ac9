"""PyTorch comparator for the training-throughput benchmarks: the model of an rqvae `ModelConfig`
(mlp, conv or the grid tokenizer) built with vector-quantize-pytorch's `ResidualVQ`, the library
a PyTorch user would otherwise pick.

    pip install torch==2.13.0 vector-quantize-pytorch==1.32.0
    python scripts/torch_baseline.py [--steps 200] [--warmup 20] [--threads N] [--compile]
    python scripts/torch_baseline.py --architecture conv --image-shape 32 32 3 --batch-size 128 \
        --num-codes 64 --latent-dim 16      # the conv model on random 32x32x3 images

Neither package is a dependency of rqvae (scripts/bench_train.py and scripts/bench_scale.py import
this file only when torch is installed; scripts/bench_transport.py with --torch). Measured with
vector-quantize-pytorch 1.32.0 on Python 3.11 and torch 2.13.0+cpu (the MLP and conv figures in
docs/speed.md) or 2.14.1 (the grid tokenizer's). `pip install torch` from PyPI on Linux also
pulls the CUDA libraries, gigabytes a CPU box does not need; PyTorch's own CPU-only wheel index
(see its install page) avoids them where it is reachable.

The default model is configs/mnist.toml's: MLP encoder 784-512-256-64 (ReLU between layers),
ResidualVQ(dim 64, 2 levels x 512 codes, commitment_weight 0.25, library defaults otherwise:
codebooks move by EMA, not by gradient, and gradients cross the quantizer by the rotation trick),
MLP decoder 64-256-512-784 with a final sigmoid; loss = MSE(recon, x) + the commitment losses of
both levels; Adam lr 1e-3. Data: the scikit-learn digits upsampled to 28x28, held in memory and
batched by index, as in rqvae's loop. The conv model mirrors rqvae's: two 4x4 stride-2
convolutions (padding 1: the same output sizes as rqvae's SAME padding), a dense layer to the
latent, a dense layer back to the quarter-size grid, two 4x4 stride-2 transposed convolutions,
the output cropped to the image. The grid model (`model.latent = "grid"`, as
configs/tokens-patches.toml) mirrors rqvae's too: the stride-2 convolutions, a 1x1 convolution to
the latent, every position of the feature map a point of the ResidualVQ (B x H' x W' points), a
1x1 convolution back and the transposed convolutions.

On a CPU that other processes share, torch's threads wait on each other and the mean step time
swings; the median step time, or --threads 1, is steadier.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import ResidualVQ

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rqvae.trainer.config import ModelConfig  # noqa: E402  (imports neither JAX nor Flax)

IMAGE_SIDE = 28
MNIST_MODEL = ModelConfig(image_shape=(IMAGE_SIDE, IMAGE_SIDE, 1), encoder_hidden=(512, 256),
                          latent_dim=64, num_levels=2, num_codes=512)


def mlp(*widths: int) -> nn.Sequential:
    """Linear layers with ReLU between them and none after the last."""
    layers = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class ConvEncoder(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        height, width, channels = m.image_shape
        small = (height + 3) // 4 * ((width + 3) // 4)
        self.convs = nn.Sequential(
            nn.Conv2d(channels, m.conv_channels[0], 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(m.conv_channels[0], m.conv_channels[1], 4, stride=2, padding=1), nn.ReLU())
        self.dense = nn.Linear(small * m.conv_channels[1], m.latent_dim)
        self.image_shape = m.image_shape

    def forward(self, x_BxP):
        height, width, channels = self.image_shape
        x = x_BxP.reshape(-1, height, width, channels).permute(0, 3, 1, 2)
        return self.dense(self.convs(x).flatten(1))


class ConvDecoder(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        height, width, channels = m.image_shape
        self.small = ((height + 3) // 4, (width + 3) // 4)
        self.dense = nn.Linear(m.latent_dim, math.prod(self.small) * m.conv_channels[1])
        self.convs = nn.Sequential(
            nn.ConvTranspose2d(m.conv_channels[1], m.conv_channels[0], 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(m.conv_channels[0], channels, 4, stride=2, padding=1))
        self.image_shape = m.image_shape

    def forward(self, z_BxD):
        height, width, _ = self.image_shape
        x = F.relu(self.dense(z_BxD)).reshape(len(z_BxD), -1, *self.small)
        x = self.convs(x)[:, :, :height, :width]
        return x.permute(0, 2, 3, 1).flatten(1)


class GridEncoder(nn.Module):
    """rqvae's grid encoder: stride-2 convolutions, then a 1x1 convolution to the latent."""

    def __init__(self, m: ModelConfig):
        super().__init__()
        widths = (m.image_shape[-1], *m.conv_channels)
        layers = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(width_in, width_out, 4, stride=2, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.Conv2d(widths[-1], m.latent_dim, 1))
        self.image_shape = m.image_shape

    def forward(self, x_BxP):
        """(B, H*W*C) -> (B, H'*W', D): every position a point, as ResidualVQ takes them."""
        x = x_BxP.reshape(-1, *self.image_shape).permute(0, 3, 1, 2)
        return self.convs(x).flatten(2).transpose(1, 2)


class GridDecoder(nn.Module):
    """The mirror: a 1x1 convolution, then stride-2 transposed convolutions to the image."""

    def __init__(self, m: ModelConfig):
        super().__init__()
        height, width, channels = m.image_shape
        factor = 2 ** len(m.conv_channels)
        self.grid = (height // factor, width // factor)
        widths = (m.conv_channels[-1], *reversed(m.conv_channels[:-1]), channels)
        layers = [nn.Conv2d(m.latent_dim, m.conv_channels[-1], 1), nn.ReLU()]
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(width_in, width_out, 4, stride=2, padding=1),
                       nn.ReLU()]
        self.convs = nn.Sequential(*layers[:-1])

    def forward(self, z_BxNxD):
        x = z_BxNxD.transpose(1, 2).reshape(len(z_BxNxD), -1, *self.grid)
        return self.convs(x).permute(0, 2, 3, 1).flatten(1)


class TorchRQVAE(nn.Module):
    def __init__(self, m: ModelConfig = MNIST_MODEL):
        super().__init__()
        if m.latent == "grid":
            self.encoder, self.decoder = GridEncoder(m), GridDecoder(m)
        elif m.architecture == "conv":
            self.encoder, self.decoder = ConvEncoder(m), ConvDecoder(m)
        else:
            self.encoder = mlp(m.input_dim, *m.encoder_hidden, m.latent_dim)
            self.decoder = mlp(m.latent_dim, *(m.decoder_hidden or reversed(m.encoder_hidden)),
                               m.input_dim)
        self.quantizer = ResidualVQ(dim=m.latent_dim, num_quantizers=m.num_levels,
                                    codebook_size=m.num_codes, commitment_weight=0.25,
                                    shared_codebook=m.shared_codebook)

    def forward(self, x_BxP):
        """Returns the reconstruction in [0, 1] and the commitment loss summed over levels."""
        # In training mode ResidualVQ returns (quantized, indices (B, L), loss per level (L,))
        # and updates its codebooks by EMA in place.
        z_q, _, commit_loss_L = self.quantizer(self.encoder(x_BxP))
        return torch.sigmoid(self.decoder(z_q)), commit_loss_L.sum()


def digits_28x28() -> torch.Tensor:
    """The 1797 scikit-learn digits, bilinearly upsampled from 8x8 to 28x28, flat, in [0, 1]."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images / 16.0, dtype=torch.float32).unsqueeze(1)
    images = F.interpolate(images, size=(IMAGE_SIDE, IMAGE_SIDE), mode="bilinear")
    return images.clamp(0.0, 1.0).reshape(len(images), -1)


def random_images(image_shape: tuple[int, ...], count: int) -> np.ndarray:
    """`count` images of uniform random bytes, flat, in [0, 1]: what a throughput test needs."""
    pixels = np.random.default_rng(0).integers(0, 256, (count, math.prod(image_shape)), np.uint8)
    return pixels.astype(np.float32) / 255.0


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
            compile: bool = False, model: ModelConfig = MNIST_MODEL,
            images_NxP: np.ndarray | None = None, device: str = "cpu") -> dict:
    """Trains from scratch and times `steps` optimizer steps after `warmup` untimed ones.

    model: the rqvae model config to mirror (default configs/mnist.toml's); images_NxP: the
    training images, flat in [0, 1] (default the digits at 28x28, which fit only that default).
    threads: torch's intra-op threads for this call (None keeps torch's default, all cores).
    compile: run the model through torch.compile; if that fails the run goes on eagerly and
    `compile_error` says why. device: "cpu" or "cuda". Returns throughput, the setup, versions
    and the first and last loss.
    """
    if steps < 1 or warmup < 1:
        raise ValueError(f"steps and warmup must be >= 1, got {steps} and {warmup}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        net = TorchRQVAE(model).train().to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        images = digits_28x28() if images_NxP is None else torch.as_tensor(images_NxP)
        batch_stream = batches(images.to(device), batch_size,
                               torch.Generator(device=device).manual_seed(0))
        step_model, compile_error = net, None
        first_batch = next(batch_stream)
        try:
            # torch.compile compiles on the first call, so the first step tells whether it works.
            if compile:
                step_model = torch.compile(net)
            first_loss = train_step(step_model, optimizer, first_batch).item()
        except Exception as err:  # any backend failure: report it and time the eager model
            if not compile:
                raise
            torch._dynamo.reset()
            step_model, compile_error = net, f"{type(err).__name__}: {err}".splitlines()[0]
            first_loss = train_step(net, optimizer, first_batch).item()
        for _ in range(warmup - 1):
            train_step(step_model, optimizer, next(batch_stream))

        # CPU ops run eagerly, so each step has finished when train_step returns (on a GPU, the
        # synchronize does it); the per-step times give a median that a busy shared CPU
        # disturbs less than the total.
        synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        synchronize()
        step_ends = [time.perf_counter()]
        for _ in range(steps):
            loss = train_step(step_model, optimizer, next(batch_stream))
            synchronize()
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
        description="Times training steps of an RQ-VAE in PyTorch with ResidualVQ.")
    parser.add_argument("--steps", type=int, default=200, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--architecture", choices=["mlp", "conv"],
                        help="default: configs/mnist.toml's mlp on the digits at 28x28; given, "
                             "the model of rqvae's ModelConfig defaults with the flags below, "
                             "on random images")
    parser.add_argument("--image-shape", type=int, nargs=3, default=(32, 32, 3),
                        metavar=("H", "W", "C"))
    parser.add_argument("--latent-dim", type=int, default=ModelConfig.latent_dim)
    parser.add_argument("--num-codes", type=int, default=ModelConfig.num_codes)
    args = parser.parse_args()
    model, images = MNIST_MODEL, None
    if args.architecture:
        model = ModelConfig(architecture=args.architecture, image_shape=tuple(args.image_shape),
                            latent_dim=args.latent_dim, num_codes=args.num_codes)
        images = random_images(model.image_shape, max(2048, 4 * args.batch_size))
    r = measure(args.steps, args.warmup, args.batch_size, args.threads, args.compile, model,
                images)
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
