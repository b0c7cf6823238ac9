"""Device memory of a preset's compiled train loop at its batch, from XLA's memory analysis.

    python scripts/preset_memory.py mnist-tokens cifar10-tokens [--devices N]

Compiles `run_steps` for the preset's model and batch (random images of its image shape: no data
set is read) on the default backend and prints the arguments (parameters, optimizer state, the
data set's share), the temporaries and the peak of one device, in MiB. On CPU these are the CPU
program's figures; a GPU's program differs, so quote each with the backend that printed it.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp

from rqvae.trainer import config, presets, step

IMAGE_SHAPES = {"mnist-tokens": (28, 28, 1), "cifar10-tokens": (32, 32, 3),
                "tokens-patches": (16, 16, 1), "mnist": (28, 28, 1)}
DATASET_IMAGES = 1024  # the on-device data set in this measurement; real ones add theirs


def measure(name: str) -> dict:
    cfg = config.load(presets.find(name))
    shape = IMAGE_SHAPES.get(name, cfg.model.image_shape)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_shape=shape))
    step_cfg = config.step_config(config.validate(cfg), jax.default_backend())
    state = jax.eval_shape(lambda: step.init_state(step_cfg, DATASET_IMAGES))
    images = jax.ShapeDtypeStruct((DATASET_IMAGES, step_cfg.model.input_dim), jnp.float32)
    compiled = step.run_steps.lower(state, images, 1, cfg=step_cfg).compile()
    memory = compiled.memory_analysis()
    mib = 2**20
    return {"preset": name, "batch": cfg.batch_size, "image": shape,
            "arguments MiB": memory.argument_size_in_bytes / mib,
            "temporaries MiB": memory.temp_size_in_bytes / mib,
            "peak MiB": (memory.argument_size_in_bytes + memory.temp_size_in_bytes
                         + memory.output_size_in_bytes - memory.alias_size_in_bytes) / mib}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; data set of "
          f"{DATASET_IMAGES} images on the device")
    for name in args.presets:
        row = measure(name)
        print(" | ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
