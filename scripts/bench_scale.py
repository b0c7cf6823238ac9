"""Training throughput at scale: architecture x batch x codes x lambda_wasserstein x compute_dtype.

    python scripts/bench_scale.py --quick            # CPU: a small subset, a few minutes
    python scripts/bench_scale.py [--torch]          # the whole matrix, for a GPU (H200)
    python scripts/bench_scale.py --architectures conv --batches 4096 --codes 16384 --torch

Each row trains the default model (`rqvae configs default`: its layers, latent 16, 2 levels) on
random 32x32x3 images (uniform bytes, in [0, 1]; --image-shape to change) through
`rqvae.trainer.step.run_steps` with the step config of this platform, and prints ms/step and
images/s (medians of interleaved rounds, the Wasserstein term off and on taking turns), W on/off
(the ms/step ratio), GFLOP per step (XLA's cost analysis of one compiled train step) and the
achieved TFLOP/s against the device's peak for the row's compute dtype. Cost analysis counts a
while loop's body once: the CPU Sinkhorn solver is such a loop, so on CPU the FLOPs of rows with
the term on are those of one iteration; the accelerator solver is unrolled and counted in full. A
shape that does not fit in memory prints "out of memory" and the matrix goes on.

--torch adds, for each float32 shape, the PyTorch peer (scripts/torch_baseline.py: the same layers
with vector-quantize-pytorch's ResidualVQ, on the same images and device, eager, float32), timed in
the same interleaved rounds, and "vs PyTorch": rqvae's throughput with the Wasserstein term off over
the peer's. Needs: pip install torch vector-quantize-pytorch.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_train import Loop, interleaved

from rqvae.quantizer.settings import LossWeights
from rqvae.trainer import config, step

# Dense peak TFLOP/s per compute dtype. GPUs: the tensor-core figure, TF32 for float32 (XLA's
# default precision for float32 products there). CPU: a nominal figure per core, two AVX-512 FMA
# units at 2.5 GHz (64 GFLOP/s); pass --peak-tflops for the machine at hand.
GPU_PEAK_TFLOPS = {"H200": {"float32": 494.0, "bfloat16": 989.0},
                   "H100": {"float32": 494.0, "bfloat16": 989.0},
                   "A100": {"float32": 156.0, "bfloat16": 312.0}}
CPU_PEAK_TFLOPS_PER_CORE = 0.064

FULL = {"architectures": ["mlp", "conv"], "batches": [256, 1024, 4096, 8192],
        "codes": [512, 4096, 16384], "dtypes": ["float32", "bfloat16"], "steps": 200, "repeats": 3}
QUICK = {"architectures": ["mlp", "conv"], "batches": [256], "codes": [512],
         "dtypes": ["float32", "bfloat16"], "steps": 10, "repeats": 2}
LAMBDAS = (0.0, 0.5)


def peak_tflops(dtype: str, override: float | None) -> float | None:
    """The device's peak for products in `dtype`, None where unknown."""
    if override:
        return override
    device = jax.devices()[0]
    if device.platform == "cpu":
        return CPU_PEAK_TFLOPS_PER_CORE * (os.cpu_count() or 1)
    for name, peaks in GPU_PEAK_TFLOPS.items():
        if name in device.device_kind:
            return peaks[dtype]
    return None


def random_images(image_shape: tuple[int, ...], count: int) -> np.ndarray:
    pixels = np.random.default_rng(0).integers(0, 256, (count, math.prod(image_shape)), np.uint8)
    return pixels.astype(np.float32) / 255.0


def trainer_config(architecture: str, batch: int, codes: int, dtype: str, lam: float,
                   image_shape: tuple[int, ...]) -> config.TrainerConfig:
    model = config.ModelConfig(image_shape=image_shape, architecture=architecture,
                               num_codes=codes, compute_dtype=dtype)
    return config.validate(config.TrainerConfig(
        batch_size=batch, loss=LossWeights(lambda_wasserstein=lam), model=model))


def step_gflop(loop: Loop) -> float:
    """FLOPs of one train step, from XLA's cost analysis of the compiled single step."""
    batch = jax.ShapeDtypeStruct((loop.cfg.batch_size, loop.cfg.model.input_dim), jnp.float32)
    compiled = jax.jit(step.train_step, static_argnames="cfg").lower(
        loop.state, batch, cfg=loop.cfg).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax: one dict per program
    return cost.get("flops", float("nan")) / 1e9


def out_of_memory(err: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower()


class Table:
    """Rows printed as they come, so a matrix cut short still shows what it measured."""

    HEADER = ["architecture", "dtype", "batch", "codes", "lambda_W", "ms/step", "images/s",
              "W on/off", "GFLOP/step", "TFLOP/s", "% of peak", "vs PyTorch"]
    WIDTHS = [12, 8, 5, 5, 8, 9, 10, 8, 10, 8, 9, 10]

    def __init__(self):
        self.print(self.HEADER)
        self.print(["-" * w for w in self.WIDTHS])

    def print(self, cells):
        print("  ".join(str(c).rjust(w) for c, w in zip(cells, self.WIDTHS)), flush=True)


class TorchPeer:
    """The PyTorch peer at one shape (float32), timed like a `Loop`: each round trains afresh."""

    def __init__(self, args, model: config.ModelConfig, batch: int, images: np.ndarray):
        import torch
        import torch_baseline

        self.measure = functools.partial(
            torch_baseline.measure, warmup=3, batch_size=batch, model=model, images_NxP=images,
            device="cuda" if torch.cuda.is_available() else "cpu")

    def ms_per_step(self, steps: int) -> float:
        return self.measure(steps=steps)["ms_per_step_median"]


def measure_shape(table: Table, args, architecture: str, dtype: str, batch: int, codes: int,
                  images: np.ndarray):
    """Both lambda_wasserstein rows of one shape (and the PyTorch peer's with --torch, for
    float32), timed in interleaved rounds."""
    key = [architecture, dtype, batch, codes]
    steps_per_call = min(args.steps, config.RunConfig().steps_per_call)
    loops = {}
    try:
        for lam in LAMBDAS:
            loops[lam] = Loop(trainer_config(architecture, batch, codes, dtype, lam,
                                              args.image_shape), images, steps_per_call)
        if args.torch and dtype == "float32":
            loops["torch"] = TorchPeer(args, loops[0.0].cfg.model, batch, images)
        ms = interleaved(loops, args.steps, args.repeats)
        gflop = {lam: step_gflop(loops[lam]) for lam in LAMBDAS}
    except Exception as err:  # jax's or torch's: a shape too large goes on to the next one
        if not out_of_memory(err):
            raise
        table.print([*key, "", "out of memory"])
        return
    finally:
        loops = None  # frees the states and their buffers before the next shape
    peak = peak_tflops(dtype, args.peak_tflops)
    for lam in LAMBDAS:
        tflops = gflop[lam] / ms[lam]  # GFLOP per ms is TFLOP per s
        table.print([*key, f"{lam:g}", f"{ms[lam]:.2f}", f"{batch * 1e3 / ms[lam]:,.0f}",
                     f"{ms[lam] / ms[0.0]:.2f}" if lam else "", f"{gflop[lam]:.2f}",
                     f"{tflops:.3f}", f"{100 * tflops / peak:.1f}" if peak else "-",
                     f"{ms['torch'] / ms[lam]:.2f}x" if "torch" in ms and not lam else ""])
    if "torch" in ms:
        table.print([architecture, "torch", batch, codes, "0", f"{ms['torch']:.2f}",
                     f"{batch * 1e3 / ms['torch']:,.0f}", "", "", "", "", "1.00x"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the CPU subset: batch 256, 512 codes, 10 steps x 2 rounds")
    parser.add_argument("--torch", action="store_true", help="add the PyTorch peer (float32)")
    parser.add_argument("--architectures", nargs="+", choices=["mlp", "conv"])
    parser.add_argument("--batches", nargs="+", type=int)
    parser.add_argument("--codes", nargs="+", type=int)
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, help="timed steps per round")
    parser.add_argument("--repeats", type=int, help="interleaved rounds")
    parser.add_argument("--image-shape", type=int, nargs=3, default=(32, 32, 3),
                        metavar=("H", "W", "C"))
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak, for every dtype (default: a figure per platform)")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.image_shape = tuple(args.image_shape)
    if args.torch and not (importlib.util.find_spec("torch")
                           and importlib.util.find_spec("vector_quantize_pytorch")):
        parser.error("--torch needs: pip install torch vector-quantize-pytorch")

    device = jax.devices()[0]
    peaks = ", ".join(f"{d} {peak_tflops(d, args.peak_tflops) or 'unknown'}" for d in args.dtypes)
    print(f"jax {jax.__version__} on {device.device_kind} ({device.platform}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores); images "
          f"{'x'.join(map(str, args.image_shape))}; {args.steps} steps x {args.repeats} rounds; "
          f"peak TFLOP/s: {peaks}\n")
    table, start = Table(), time.perf_counter()
    for architecture in args.architectures:
        for batch in args.batches:
            images = random_images(args.image_shape, 2 * batch)
            for codes in args.codes:
                for dtype in args.dtypes:
                    measure_shape(table, args, architecture, dtype, batch, codes, images)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
