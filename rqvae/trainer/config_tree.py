"""The frozen config tree: its sections by what reads them, `[loss]`, `[transport]` (the
library's LossWeights and Transport), `[remedies]`, `[optimizer]` (the step), `[model]`, `[data]`,
`[run]` (the loop), and each setting's declaration (`settings.setting`): default, meaning,
range, short name, flag. Scalars and tuples only, so a config is a static jit argument; no JAX
(the report reads it). `config` reads and writes it as TOML."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field

from rqvae.quantizer.settings import (
    KMEANS_BATCHES,
    Declared,
    LossWeights,
    Platform,
    Transport,
    declared,
    setting,
)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The encoder, the codebooks and the decoder; the image shape and the data kind (images or
    vectors) come from the data set."""

    image_shape: tuple[int, ...] = setting((8, 8, 1), "height, width, channels", shape=True,
                                           from_data=True)
    data_kind: str = setting("images", "\"images\" in [0, 1] (sigmoid output) or \"vectors\" "
                             "(linear output)", choices=("images", "vectors"), from_data=True)
    architecture: str = setting("mlp", "\"mlp\" or \"conv\" (stride-2 convolutions each way)",
                                choices=("mlp", "conv"), shape=True)
    latent: str = setting("vector", "\"vector\": one latent per image; \"grid\" (conv): one per "
                          "feature-map position", choices=("vector", "grid"))
    encoder_hidden: tuple[int, ...] = setting((256, 128), "mlp: widths of the encoder's hidden "
                                              "layers", bounds=">= 1", shape=True)
    decoder_hidden: tuple[int, ...] = setting((), "mlp: decoder widths; empty mirrors "
                                              "encoder_hidden", bounds=">= 1", shape=True)
    conv_channels: tuple[int, ...] = setting((32, 64), "conv: channels of each stride-2 "
                                             "convolution (a grid: downsample 2^n)",
                                             bounds=">= 1", shape=True)
    latent_dim: int = setting(16, "dimension of z_e and of each code", short="dim",
                              bounds=">= 1", shape=True)
    num_levels: int = setting(2, "residual quantization levels", short="levels", bounds=">= 1",
                              shape=True)
    num_codes: int = setting(64, "codes per level", short="codes", bounds=">= 1", shape=True)
    shared_codebook: bool = setting(False, "one codebook for every level (RQ-VAE, Lee et al. "
                                    "2022)")
    compute_dtype: str = setting("float32", "\"bfloat16\": encoder and decoder products in bf16 "
                                 "(accelerators); all else float32",
                                 choices=("float32", "bfloat16"))
    sigmoid_grad: str = setting("constant", "images: the output sigmoid's backward slope, 1/4 "
                                "everywhere; \"exact\" saturates (docs/results.md, \"Collapse\")",
                                choices=("constant", "exact"))

    @property
    def input_dim(self) -> int:  # pixels per flattened image
        return math.prod(self.image_shape)

    @property
    def points_per_image(self) -> int:  # latents each image gives a level: 1, or the grid's
        if self.latent != "grid":
            return 1
        factor = 2 ** len(self.conv_channels)
        return (self.image_shape[0] // factor) * (self.image_shape[1] // factor)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The data set and its splits (docs/data.md)."""

    dataset: str = setting("digits", "\"digits\" (embedded), \"tfds:<name>\" or \"npz:<path>\"",
                           short="data", flag="--dataset")
    data_dir: str = setting("", "tfds: where prepared data sets live; empty: $TFDS_DATA_DIR or "
                            "the default")
    train_split: str = setting("train", "tfds: split to train on")
    heldout_split: str = setting("test", "tfds: split to evaluate on")
    holdout_fraction: float = setting(0.2, "digits, npz without a held-out array: share held "
                                      "out", bounds="(0, 1)")
    split_seed: int = setting(0, "seed of that train/held-out split, fixed apart from the "
                              "training seed")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Where the run is written, how often it logs, evaluates and saves, and on what devices."""

    run_dir: str = setting("", "where the run is written; empty: runs/<config name>-<date>-"
                           "<time>")
    log_every: int = setting(50, "steps between metrics.jsonl records", bounds=">= 1")
    eval_every: int = setting(1000, "steps between held-out evaluations (and at the end)",
                              bounds=">= 1")
    checkpoint_every: int = setting(1000, "steps between checkpoints (and at the end)",
                                    bounds=">= 1")
    keep_checkpoints: int = setting(3, "most recent checkpoints kept on disk", bounds=">= 1")
    dead_window: int = setting(200, "a code unused for this many steps counts as dead in train "
                               "records", bounds=">= 1")
    steps_per_call: int = setting(100, "train steps per compiled call (a device-side loop)",
                                  bounds=">= 1")
    num_devices: int = setting(0, "devices to train on, data-parallel; 0: every device (of every "
                               "host)", bounds=">= 0 (0: every device)")
    distributed: bool = setting(False, "call jax.distributed.initialize() first, for multi-host "
                                "runs (README)")


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Adam and its learning-rate schedule."""

    learning_rate: float = setting(1e-3, "Adam step size", short="lr", flag="--learning-rate",
                                   bounds="> 0")
    decay_fraction: float = setting(0.2, "the learning rate falls to 0 along a half cosine over "
                                    "this last share of the steps; 0: constant", short="decay",
                                    bounds="[0, 1] (0: a constant learning rate)")


@dataclass(frozen=True, kw_only=True)
class RemediesConfig:
    """The comparators of the transport term: codebook remedies the step applies."""

    dead_code_threshold: int = setting(0, "restart: re-seed a code unused this many steps on a "
                                       "batch point; 0: off", short="reseed",
                                       bounds=">= 0 (0: off)")
    kmeans_init: bool = setting(False, "fit each level's codebook by k-means to the encoder's "
                                f"outputs on the first {KMEANS_BATCHES} batches", short="kmeans")


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    steps: int = setting(8000, "optimizer steps in the run", flag="--steps", bounds=">= 1")
    batch_size: int = setting(128, "images per step", short="batch", flag="--batch-size",
                              bounds=">= 1")
    seed: int = setting(0, "seeds parameters, batches and every other random draw",
                        flag="--seed")
    loss: LossWeights = field(default_factory=LossWeights)
    transport: Transport = field(default_factory=Transport)
    remedies: RemediesConfig = field(default_factory=RemediesConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    """What the compiled train step reads: its sections of the tree as they are, and the
    platform's solver and branching. Runs that differ only in what the loop reads (length,
    directory, intervals) share one compilation."""

    model: ModelConfig
    loss: LossWeights
    transport: Transport
    remedies: RemediesConfig
    optimizer: OptimizerConfig
    batch_size: int
    seed: int
    dead_window: int  # run.dead_window
    platform: Platform = Platform()  # the solver, and branches or selects (`Platform.of`)


def step_config(cfg: TrainerConfig, platform: str = "cpu") -> StepConfig:
    """The part of `cfg` the compiled step reads, with the solver and branching chosen for
    `platform` ("cpu", "gpu", "tpu"; `Platform.of`)."""
    return StepConfig(model=cfg.model, loss=cfg.loss, transport=cfg.transport,
                      remedies=cfg.remedies, optimizer=cfg.optimizer,
                      batch_size=cfg.batch_size, seed=cfg.seed, dead_window=cfg.run.dead_window,
                      platform=Platform.of(platform))


@functools.cache  # the tree is fixed; run names ask for one key at a time
def declarations(cls: type = TrainerConfig, prefix: str = "") -> dict[str, Declared]:
    """Every setting of the tree, by dotted key in the tree's order, with its declaration
    (`settings.setting`): the one home of its default's meaning, range, short name and flag."""
    found = {}
    for name, kind in field_types(cls).items():
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            found.update(declarations(kind, f"{prefix}{name}."))
        else:
            found[prefix + name] = declared(cls, name)
    return found


def section_of(key: str) -> type:
    """The config class that holds a dotted key's last part: TrainerConfig for "steps",
    ModelConfig for "model.num_codes"."""
    cls = TrainerConfig
    for part in key.split(".")[:-1]:
        cls = field_types(cls)[part]
    return cls


def field_types(cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}
