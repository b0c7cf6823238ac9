"""A trained run from Python: its config and parameters at a checkpoint, to turn any data of the
run's shape into codes and codes back into reconstructions.

    import rqvae
    run = rqvae.load_run("runs/hybrid-20261205-090000")      # the newest checkpoint
    codes = run.encode(images)     # (N, L) int32, or (N, H', W', L) for a grid latent
    recons = run.decode(codes)     # (N, H, W, C) images in [0, 1], or (N, D) vectors

Loading reads only the run directory (config.toml and the checkpoint): the data set the run
trained on need not be on this machine.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from rqvae.trainer import config as config_lib
from rqvae.trainer.config import StepConfig, TrainerConfig
from rqvae.trainer.data import VECTORS, as_examples
from rqvae.trainer.errors import UserError
from rqvae.trainer.evaluate import code_tuples


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A run's model at one checkpoint (`load_run`)."""

    config: TrainerConfig  # as the run trained (config.toml)
    params: Any  # the model's parameters, {"params": {...}}
    step: int  # the checkpoint's step
    run_dir: Path

    @property
    def step_config(self) -> StepConfig:
        return config_lib.step_config(self.config)

    def encode(self, examples) -> np.ndarray:
        """Per-level code indices, int32: (N, L), or (N, H', W', L) for a grid latent.

        `examples`: images (N, H, W) or (N, H, W, C), uint8 (0..255) or float (0..1), or flat
        (N, H*W*C) floats; vectors (N, D) floats; of the run's shape."""
        from rqvae.trainer.evaluate import encode

        return encode(self.params, self.inputs(examples), self.step_config)

    def decode(self, codes) -> np.ndarray:
        """Reconstructions of codes as `encode` gives them: images (N, H, W, C) float32 in
        [0, 1], or vectors (N, D)."""
        from rqvae.trainer.evaluate import decode

        m = self.config.model
        codes = check_codes(np.asarray(codes), self.code_shape, m.num_codes)
        flat_NxP = decode(self.params, codes, self.step_config)
        return flat_NxP.reshape(len(flat_NxP), m.image_shape[1]) if m.data_kind == VECTORS \
            else flat_NxP.reshape(len(flat_NxP), *m.image_shape)

    def reconstruct(self, examples) -> np.ndarray:
        """`decode(encode(examples))`."""
        return self.decode(self.encode(examples))

    def level_reconstructions(self, examples) -> np.ndarray:
        """(L, N, P) float32: the reconstructions from the codes of the first l levels, l = 1..L
        (flat, as the model's inputs)."""
        import jax

        from rqvae.trainer.step import make_model

        apply = jax.jit(functools.partial(make_model(self.step_config).apply,
                                          method="reconstruct_levels"))
        return np.asarray(apply(self.params, self.inputs(examples)))

    def codebooks_and_inputs(self, examples) -> tuple[np.ndarray, np.ndarray]:
        """The codebooks (L, K, D) and what each level quantized of `examples` (L, N, D); a grid
        latent's positions are rows."""
        import jax

        from rqvae.trainer.step import make_model

        _, aux = jax.jit(make_model(self.step_config).apply)(self.params, self.inputs(examples))
        return np.asarray(aux["codebook"]), np.asarray(aux["level_inputs"])

    @property
    def code_shape(self) -> tuple[int, ...]:
        """The shape of one example's codes: (L,), or (H', W', L) for a grid latent."""
        m = self.config.model
        if m.latent != "grid":
            return (m.num_levels,)
        factor = 2 ** len(m.conv_channels)
        return (m.image_shape[0] // factor, m.image_shape[1] // factor, m.num_levels)

    def split(self, dataset: str | None = None, split: str = "train") -> np.ndarray:
        """The flat inputs of a split: of the run's own data set, or of `dataset` ("npz:<path>":
        its 'train' or 'heldout' array in the file's order; "digits", "tfds:<name>": that data
        set's split as training reads it), checked against the run's shape."""
        from rqvae.trainer import data

        if dataset is None:
            return getattr(data.load(self.config.data), split)
        kind, _, name = dataset.partition(":")
        if kind == "npz" and name:
            arrays = data.npz_arrays(Path(name))
            if split not in arrays:
                raise UserError(f"{name} has no array '{split}' (it has {sorted(arrays)}); "
                                f"pass --split with one of them")
            return self.inputs(arrays[split], f"{name}['{split}']")
        loaded = data.load(dataclasses.replace(self.config.data, dataset=dataset))
        examples = getattr(loaded, split)
        if loaded.kind != VECTORS:
            examples = examples.reshape(-1, *loaded.image_shape)
        return self.inputs(examples, f"{dataset}'s {split} split")

    def inputs(self, examples, what: str = "the examples") -> np.ndarray:
        """`examples` as the model's flat float32 inputs (N, P), checked against the run."""
        m = self.config.model
        examples = np.asarray(examples)
        if (m.data_kind != VECTORS and examples.ndim == 2 and examples.shape[1] == m.input_dim
                and np.issubdtype(examples.dtype, np.floating)):  # images already flat
            examples = examples.reshape(len(examples), *m.image_shape)
        flat_NxP, image_shape, kind = as_examples(examples, what)
        if kind != m.data_kind or tuple(image_shape) != tuple(m.image_shape):
            shape = f"(N, {m.image_shape[1]})" if m.data_kind == VECTORS else (
                f"(N, {', '.join(map(str, m.image_shape))})")
            raise UserError(f"{what} are {kind} of shape {examples.shape[1:]}; {self.run_dir} "
                            f"takes {m.data_kind} shaped {shape}")
        return flat_NxP


def check_codes(codes: np.ndarray, code_shape: tuple[int, ...], num_codes: int,
                what: str = "the codes") -> np.ndarray:
    """Codes of the run's shape and range, as int32; one line naming what is wrong."""
    if codes.ndim != len(code_shape) + 1 or codes.shape[1:] != code_shape:
        raise UserError(f"{what} have shape {codes.shape}; this run's are (N, "
                        f"{', '.join(map(str, code_shape))}) (rqvae encode writes them)")
    if not np.issubdtype(codes.dtype, np.integer):
        raise UserError(f"{what} have dtype {codes.dtype}; code indices are integers")
    if codes.size and (codes.min() < 0 or codes.max() >= num_codes):
        raise UserError(f"{what} hold indices in [{codes.min()}, {codes.max()}]; this run's "
                        f"codebooks have {num_codes} codes each (0 .. {num_codes - 1})")
    return codes.astype(np.int32)


def load_run(run_dir: str | Path, step: int | None = None) -> TrainedRun:
    """A trained run at its checkpoint `step` (default: the newest), from its run directory
    alone. Raises UserError when the run, the checkpoint or its parameters cannot be read."""
    from rqvae.trainer import checkpoint
    from rqvae.trainer.launch import saved_checkpoint

    run_dir = Path(run_dir)
    cfg, step, _ = saved_checkpoint(run_dir, step)
    return TrainedRun(cfg, checkpoint.restore_params(run_dir, step), step, run_dir)


def semantic_ids(codes_NxL: np.ndarray) -> tuple[np.ndarray, dict]:
    """Unique IDs from code tuples, as generative retrieval uses them (TIGER): each example's
    codes, plus a last position that numbers the examples sharing that tuple in their order
    (0 for the first). Returns the IDs (N, L + 1) int32 and the collisions: examples, unique
    tuples, examples whose tuple another example shares, and the largest such group."""
    codes_NxL = np.asarray(codes_NxL)
    _, inverse, counts = np.unique(codes_NxL, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")  # examples grouped by tuple, in their order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(codes_NxL), np.int64)
    rank[order] = np.arange(len(codes_NxL)) - np.repeat(starts, counts)
    ids = np.concatenate([codes_NxL, rank[:, None]], axis=1).astype(np.int32)
    return ids, {"examples": len(codes_NxL), **code_tuples(codes_NxL)}
