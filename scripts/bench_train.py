"""Training throughput of the compiled train loop, and of the same model in PyTorch.

    pip install -e '.[bench]' && python scripts/bench_train.py [--quick] [--steps N --repeats R]
    # the PyTorch comparator also needs: pip install torch vector-quantize-pytorch

Prints, for the default config (digits 8x8), the hybrid preset (configs/hybrid.toml, digits) and
the MNIST-shaped one (configs/mnist.toml on the digits upsampled to 28x28): images/s, ms/step and
compile time with the Wasserstein term off and on, and their ratio; the steps-per-call sweep
behind the `run.steps_per_call` default; and, when torch is installed, the MNIST-shaped model written with vector-quantize-pytorch's `ResidualVQ`
(scripts/torch_baseline.py) with the throughput ratio, per round as well, and the floor: the
model's matrix products and an SGD update alone, a reference bound for this model under XLA. Timed
figures are medians of interleaved repeats, so drift on a shared machine hits every variant alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import os
import platform
import statistics
import time

import jax
import numpy as np
from bench_sinkhorn import mnist_like_images, table

from rqvae.trainer import config, data, launch, step

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_compile_seconds: list[float] = []


def _on_event(event, duration, fun_name="", **_):
    if event in COMPILE_EVENTS and "run_steps" in fun_name:
        _compile_seconds.append(duration)


jax.monitoring.register_event_duration_secs_listener(_on_event)


class Timed:
    """Something advanced `steps_per_call` steps per compiled call; `advance` runs `calls` calls
    and returns their wall time in seconds, device work included."""

    steps_per_call: int

    def _call(self):
        """One compiled call; returns what it computed, to wait on."""
        raise NotImplementedError

    def advance(self, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            result = self._call()
        jax.block_until_ready(result)
        return time.perf_counter() - start

    def ms_per_step(self, steps: int) -> float:
        calls = max(1, steps // self.steps_per_call)
        return 1e3 * self.advance(calls) / (calls * self.steps_per_call)


class Loop(Timed):
    """A training run of one config, advanced `steps_per_call` steps per compiled call."""

    def __init__(self, cfg: config.TrainerConfig, images_NxP: np.ndarray, steps_per_call: int):
        self.cfg = config.step_config(cfg, jax.default_backend())
        self.steps_per_call = steps_per_call
        self.images = jax.device_put(images_NxP)
        self.state = step.init_state(self.cfg, len(images_NxP))
        _compile_seconds.clear()
        self.advance(1)  # compiles; the first call's length does not matter (one program)
        self.compile_s = sum(_compile_seconds)

    def _call(self):
        self.state, metrics = step.run_steps(self.state, self.images, self.steps_per_call,
                                              cfg=self.cfg)
        return metrics


def interleaved(loops: dict, steps: int, repeats: int) -> dict:
    """Median ms/step of each loop over `repeats` rounds that take turns."""
    return {name: statistics.median(t) for name, t in interleaved_rounds(loops, steps,
                                                                         repeats).items()}


def interleaved_rounds(loops: dict, steps: int, repeats: int) -> dict:
    """Each loop's ms/step in each of `repeats` rounds that take turns."""
    for loop in loops.values():
        loop.ms_per_step(steps // 4)  # warm: codes spread, caches hot
    timings = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            timings[name].append(loop.ms_per_step(steps))
    return timings


def _preset(name: str) -> config.TrainerConfig:
    return config.load(os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.toml"))


@functools.cache
def configs():
    digits = data.load(config.DataConfig())
    default = launch.with_data_shape(config.TrainerConfig(), digits)
    mnist = _preset("mnist")
    mnist = dataclasses.replace(mnist, model=dataclasses.replace(mnist.model,
                                                                 image_shape=(28, 28, 1)))
    hybrid = launch.with_data_shape(_preset("hybrid"), digits)
    return {"default (digits 8x8)": (default, digits.train),
            "hybrid preset (digits 8x8)": (hybrid, digits.train),
            "MNIST-shaped (configs/mnist.toml)": (mnist, np.asarray(mnist_like_images()))}


def throughput(steps: int, repeats: int) -> None:
    rows = []
    for name, (cfg, images) in configs().items():
        variants = {lam: config.replace(cfg, {"loss.lambda_wasserstein": lam}) for lam in (0.0, 0.5)}
        loops = {lam: Loop(c, images, c.run.steps_per_call) for lam, c in variants.items()}
        ms = interleaved(loops, steps, repeats)
        for lam, loop in loops.items():
            rows.append([name, f"{lam:g}", f"{cfg.batch_size}", f"{cfg.batch_size * 1e3 / ms[lam]:,.0f}",
                         f"{ms[lam]:.3f}", f"{loop.compile_s:.2f}",
                         f"{ms[0.5] / ms[0.0]:.2f}" if lam else ""])
    table(f"1. train loop, {config.RunConfig().steps_per_call} steps per call (the default)",
          ["config", "lambda_wasserstein", "batch", "images/s", "ms/step", "compile s",
           "W on/off"], rows)


def steps_per_call_sweep(steps: int, repeats: int, sizes=(1, 10, 100, 1000)):
    cfg, images = configs()["MNIST-shaped (configs/mnist.toml)"]
    loops = {k: Loop(cfg, images, k) for k in sizes}
    ms = interleaved(loops, steps, repeats)
    table("2. steps per compiled call, MNIST-shaped, lambda_wasserstein 0.5",
          ["steps per call", "ms/step", "images/s", "vs 1 per call"],
          [[f"{k}", f"{ms[k]:.3f}", f"{cfg.batch_size * 1e3 / ms[k]:,.0f}",
            f"{ms[sizes[0]] / ms[k]:.2f}x"] for k in sizes])


class TorchModel:
    """The PyTorch comparator (scripts/torch_baseline.py), timed like a `Loop`."""

    def __init__(self, batch_size: int):
        import torch_baseline

        self.measure, self.batch_size, self.last = torch_baseline.measure, batch_size, None

    def ms_per_step(self, steps: int) -> float:
        self.last = self.measure(steps=steps, warmup=10, batch_size=self.batch_size)
        return self.last["ms_per_step"]


class MatmulFloor(Timed):
    """A reference bound, timed like a `Loop`: the MLP's matrix products (forward, then the
    weight gradients and the input gradients, none for the first layer, as in training) at the
    run's batch size, with a plain SGD update so that each step depends on the last. No bias,
    activation, quantizer, loss or Adam.
    """

    def __init__(self, cfg: config.TrainerConfig, images_NxP: np.ndarray, steps_per_call: int):
        m = cfg.model
        widths = [m.input_dim, *m.encoder_hidden, m.latent_dim,
                  *(m.decoder_hidden or reversed(m.encoder_hidden)), m.input_dim]
        shapes = list(zip(widths[:-1], widths[1:]))
        rng = np.random.default_rng(0)
        self.weights = [jax.device_put(rng.normal(0, a**-0.5, (a, b)).astype(np.float32))
                        for a, b in shapes]
        self.batch = jax.device_put(np.asarray(images_NxP[: cfg.batch_size]))
        products = sum(a * b for a, b in shapes)
        self.gflop = 2 * cfg.batch_size * (3 * products - shapes[0][0] * shapes[0][1]) / 1e9
        self.steps_per_call = steps_per_call
        self.advance(1)  # compiles

    @staticmethod
    @functools.partial(jax.jit, donate_argnums=0)
    def _run(weights, batch, num_steps):
        def step(_, weights):
            activations = [batch]
            for w in weights:
                activations.append(activations[-1] @ w)
            grad_out, new = activations[-1], []
            for i in reversed(range(len(weights))):
                new.append(weights[i] - 1e-9 * (activations[i].T @ grad_out))
                if i:
                    grad_out = grad_out @ weights[i].T
            return new[::-1]

        return jax.lax.fori_loop(0, num_steps, step, weights)

    def _call(self):
        self.weights = self._run(self.weights, self.batch, self.steps_per_call)
        return self.weights


def against_pytorch(steps: int, repeats: int):
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec(
            "vector_quantize_pytorch") is None:
        print("3. PyTorch comparator skipped: pip install torch vector-quantize-pytorch\n")
        return
    cfg, images = configs()["MNIST-shaped (configs/mnist.toml)"]
    traditional = config.replace(cfg, {"loss.lambda_wasserstein": 0.0})
    torch_model = TorchModel(cfg.batch_size)
    floor = MatmulFloor(cfg, images, cfg.run.steps_per_call)
    loops = {"torch": torch_model,
             **{k: Loop(traditional, images, k) for k in (1, cfg.run.steps_per_call)},
             "floor": floor}
    rounds = interleaved_rounds(loops, steps, repeats)  # taking turns with the PyTorch model
    ms = {name: statistics.median(t) for name, t in rounds.items()}
    torch_ms, first = ms.pop("torch"), torch_model.last
    rows = [[f"PyTorch {first['torch_version']} + vector-quantize-pytorch {first['vq_version']}"
             f" (ResidualVQ, eager, {first['threads']} threads)", f"{torch_ms:.3f}",
             f"{cfg.batch_size * 1e3 / torch_ms:,.0f}", "1.00x", ""]]
    floor_ms = ms.pop("floor")
    for k, loop_ms in ms.items():
        # A round's PyTorch and rqvae timings are neighbours in time, so their ratio is less
        # disturbed by a shared machine's drift than the ratio of the medians.
        ratios = sorted(t / j for t, j in zip(rounds["torch"], rounds[k]))
        rows.append([f"rqvae, jitted, {k} step(s) per call", f"{loop_ms:.3f}",
                     f"{cfg.batch_size * 1e3 / loop_ms:,.0f}", f"{torch_ms / loop_ms:.2f}x",
                     f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"])
    table("3. the MNIST-shaped model against PyTorch, lambda_wasserstein 0 (same losses: recon + "
          "0.25 commit, codebook by gradient here and by EMA there), batch 256, Adam",
          ["implementation", "ms/step", "images/s", "throughput vs PyTorch",
           f"per round, median (range of {repeats})"],
          rows + [[f"floor: the MLP's matrix products + SGD ({floor.gflop:.2f} GFLOP, "
                   f"{floor.gflop / floor_ms * 1e3:.0f} GFLOP/s)", f"{floor_ms:.3f}",
                   f"{cfg.batch_size * 1e3 / floor_ms:,.0f}", f"{torch_ms / floor_ms:.2f}x", ""]])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, one repeat")
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "sweep", "torch"])
    parser.add_argument("--steps", type=int, help="timed steps per round (default 500, quick 200)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default 3, quick 1)")
    args = parser.parse_args()
    steps, repeats = (200, 1) if args.quick else (500, 3)
    steps, repeats = args.steps or steps, args.repeats or repeats
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
          f"{jax.device_count()} device(s); timed: {steps} steps x {repeats} repeats\n")
    if "throughput" not in args.skip:
        throughput(steps, repeats)
    if "sweep" not in args.skip:
        steps_per_call_sweep(steps, repeats)
    if "torch" not in args.skip:
        against_pytorch(steps, repeats)


if __name__ == "__main__":
    main()
