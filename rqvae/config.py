"""Frozen, hashable configuration tree, loaded from TOML and overridden by CLI flags.

Top-level TOML keys set `TrainerConfig` fields; the tables `[model]`, `[data]` and `[run]` set the
nested sections. The tree holds scalars and tuples only, so a config can be a static jit argument.
This module imports neither JAX nor Flax: `rqvae report` reads configs through it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A config file or value the user must fix; the message names the key and the fix."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    image_shape: tuple[int, ...] = (8, 8, 1)  # height, width, channels; set from the data set
    data_kind: str = "images"  # "images" in [0, 1] (sigmoid output) or "vectors" (linear
    #   output); set from the data set
    architecture: str = "mlp"  # "mlp" or "conv" (two stride-2 convolutions each way)
    encoder_hidden: tuple[int, ...] = (256, 128)  # mlp: widths of the encoder's hidden layers
    decoder_hidden: tuple[int, ...] = ()  # mlp: decoder widths; empty mirrors encoder_hidden
    conv_channels: tuple[int, ...] = (32, 64)  # conv: channels of the two encoder convolutions
    latent_dim: int = 16  # dimension of z_e and of every codebook entry
    num_levels: int = 2  # residual quantization levels
    num_codes: int = 64  # entries per codebook
    codebook_init_scale: float = 0.0  # codes start U(-s, s); 0 means the classic 1/num_codes
    compute_dtype: str = "float32"  # or "bfloat16": encoder and decoder products; all else float32

    @property
    def input_dim(self) -> int:
        """Pixels per flattened image."""
        return math.prod(self.image_shape)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str = "digits"  # "digits" (embedded), "tfds:<name>" or "npz:<path>"
    data_dir: str = ""  # tfds: where prepared data sets live; empty: $TFDS_DATA_DIR or the default
    train_split: str = "train"  # tfds: split to train on
    heldout_split: str = "test"  # tfds: split to evaluate on
    holdout_fraction: float = 0.2  # digits, npz without a held-out array: share held out
    split_seed: int = 0  # seed of that train/held-out split, fixed apart from the training seed


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    run_dir: str = ""  # where the run is written; empty means runs/<config name>-<time>
    log_every: int = 50  # steps between metrics.jsonl records
    eval_every: int = 1000  # steps between held-out evaluations (also at the end)
    checkpoint_every: int = 1000  # steps between checkpoints (also at the end)
    keep_checkpoints: int = 3  # most recent checkpoints kept on disk
    dead_window: int = 200  # a code unused for this many steps counts as dead in train records
    steps_per_call: int = 100  # train steps per compiled call (a device-side loop); more: less
    #   host overhead, fewer checks for signals. Calls also stop at log/eval/checkpoint steps.
    num_devices: int = 0  # devices to train on, data-parallel; 0: every device (of every host)
    distributed: bool = False  # call jax.distributed.initialize() first, for multi-host runs


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    learning_rate: float = 1e-3  # Adam step size
    codebook_loss: str = "per_level"  # "per_level": each level's codes pulled toward its own
    #   residual, the encoder toward each partial sum of codes (standard RVQ); "sum": both on
    #   the sum of the codes (the original form)
    lambda_commit: float = 0.25  # weight of the commitment loss (pulls the encoder to its codes)
    lambda_codebook: float = 1.0  # weight of the codebook loss (moves the winning codes)
    lambda_wasserstein: float = 0.0  # weight of the Sinkhorn OT term (moves every code)
    sinkhorn_epsilon: float = 0.05  # entropic regularization: a fraction of each level's mean cost
    #   (relative mode) or of its mean cost to the nearest code (nearest), or in squared latent
    #   units (absolute mode)
    sinkhorn_epsilon_mode: str = "relative"  # "relative" (scale-free, per level), "nearest"
    #   (scale-free, for codebooks larger than the batch; try sinkhorn_epsilon 0.2) or "absolute"
    sinkhorn_iters: int = 200  # most Sinkhorn iterations per level per step
    sinkhorn_tolerance: float = 0.005  # a level's solve stops once its plan's row-marginal error
    #   (L1, at most 2) is at most this; 0: always run sinkhorn_iters
    sinkhorn_overrelaxation: float = 1.6  # once plain iterations slow down, each iteration
    #   moves the potentials this many times a Sinkhorn update (in [1, 2); 1: plain Sinkhorn);
    #   2-4x fewer iterations to the tolerance on training problems
    wasserstein_scale: str = "per_element"  # each level's transport cost per latent dimension,
    #   sum(plan * C) / latent_dim, on the scale of commit and codebook; "whole": sum(plan * C)
    #   of whole squared distances (the original form, latent_dim times larger)
    wasserstein_level_weights: tuple[float, ...] = ()  # per-level OT weights; empty: all 1.0
    wasserstein_levels: int = 0  # the OT term on the first this many levels only (the others
    #   are not solved); 0: every level
    wasserstein_encoder_grad: bool = False  # let the OT term pull the encoder too
    sinkhorn_warm_start: bool = False  # start each solve from the last step's potentials
    sinkhorn_unroll: bool = False  # differentiate through the iterations (memory x num_iters)
    wasserstein_anchor_window: int = 20  # with the transport term on: a code the nearest-code
    #   rule has not picked for this many steps is stale; only stale codes take the term's
    #   gradient, and up to a batch of them a step are re-anchored on batch points drawn by
    #   their transport cost (the points the plan serves worst); 0: the term moves every code
    #   and re-anchors none (docs/results.md)
    ot_queue_size: int = 0  # level inputs of recent batches kept (detached, per level) and
    #   transported with each batch's, for codebooks larger than the batch; 0: off; a multiple
    #   of batch_size
    kmeans_init: bool = False  # start each level's codebook by k-means on the first batches
    kmeans_init_batches: int = 8  # batches of encoder outputs (at init) that k-means clusters
    dead_code_threshold: int = 0  # re-seed a code unused this many steps from the batch; 0: off
    steps: int = 8000  # optimizer steps in the run
    batch_size: int = 128  # images per step
    seed: int = 0  # seeds parameters, batches and every other random draw
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """What the loss terms read; `losses.loss_terms` receives it whole. Each field means what the
    TrainerConfig field of the same name says."""

    codebook_loss: str
    lambda_commit: float
    lambda_codebook: float
    lambda_wasserstein: float
    sinkhorn_epsilon: float
    sinkhorn_epsilon_mode: str
    sinkhorn_iters: int
    sinkhorn_tolerance: float
    sinkhorn_overrelaxation: float
    wasserstein_scale: str
    wasserstein_level_weights: tuple[float, ...]
    wasserstein_levels: int
    wasserstein_encoder_grad: bool
    sinkhorn_warm_start: bool
    sinkhorn_unroll: bool
    solver: str = "scaling"  # how Sinkhorn iterates: "scaling" (CPU) or "logdomain" (accelerators)


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    """Exactly what the compiled train step reads, built by `step_config`: runs that differ only in
    what the loop reads (length, directory, intervals) share one compilation, and a setting the
    step does not hold cannot reach it. Fields mean what the TrainerConfig fields of the same
    name say."""

    model: ModelConfig
    loss: LossConfig
    learning_rate: float
    seed: int
    batch_size: int
    dead_code_threshold: int
    wasserstein_anchor_window: int
    kmeans_init_batches: int
    ot_queue_size: int
    dead_window: int  # run.dead_window
    guard: str = "branch"  # how a non-finite loss keeps the old state: "branch" or "select"


# How the transport cost is scaled: per latent dimension, or whole squared distances.
WASSERSTEIN_SCALES = ("per_element", "whole")

# TrainerConfig fields that only the loop reads; every other field goes into the StepConfig.
LOOP_ONLY = ("steps", "kmeans_init", "data", "run")


def step_config(cfg: TrainerConfig, platform: str = "cpu") -> StepConfig:
    """The part of `cfg` the compiled step reads, with the Sinkhorn solver and the non-finite
    guard chosen for `platform` ("cpu", "gpu", "tpu").

    On CPU the stabilized scaling loop and a branch are fastest; on accelerators the log-domain
    loop and a select (a branch there reads its predicate back to the host every step).
    """
    accelerator = platform != "cpu"
    loss = LossConfig(**_same_named(LossConfig, cfg, skip=("solver",)),
                      solver="logdomain" if accelerator else "scaling")
    return StepConfig(**_same_named(StepConfig, cfg, skip=("model", "loss", "dead_window",
                                                           "guard")),
                      model=cfg.model, loss=loss, dead_window=cfg.run.dead_window,
                      guard="select" if accelerator else "branch")


def _same_named(cls, cfg: TrainerConfig, skip: tuple[str, ...]) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if f.name not in skip}


# Fields that fix the shapes of parameters; a resumed run may not change them.
SHAPE_KEYS = (
    "model.image_shape",
    "model.architecture",
    "model.encoder_hidden",
    "model.decoder_hidden",
    "model.conv_channels",
    "model.latent_dim",
    "model.num_levels",
    "model.num_codes",
)


def section_of(key: str) -> type:
    """The config class that holds a dotted key's last part: TrainerConfig for "steps",
    ModelConfig for "model.num_codes"."""
    cls = TrainerConfig
    for part in key.split(".")[:-1]:
        cls = _field_types(cls)[part]
    return cls


def _field_types(cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value, expected):
    """Checks a TOML value against a field's type; ints are accepted where floats are expected."""
    origin = typing.get_origin(expected)
    if origin is tuple:
        (item_type, _) = typing.get_args(expected)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list of {item_type.__name__}, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(
            f"{key} must be {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _unknown_key(key: str, valid: typing.Iterable[str]) -> ConfigError:
    section, _, leaf = key.rpartition(".")
    # First a key of that name in another section ("num_codes" for "model.num_codes"), else a
    # near miss in this one.
    elsewhere = [k for k in flatten(to_dict(TrainerConfig())) if k.rpartition(".")[2] == leaf]
    close = difflib.get_close_matches(leaf, list(valid), n=1)
    if elsewhere:
        hint = f"; did you mean '{elsewhere[0]}'?"
    elif close:
        hint = f"; did you mean '{section + '.' if section else ''}{close[0]}'?"
    else:
        hint = f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _build(cls, values: dict, prefix: str):
    types_by_name = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in types_by_name:
            raise _unknown_key(dotted, types_by_name)
        expected = types_by_name[key]
        if isinstance(expected, type) and dataclasses.is_dataclass(expected):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} must be a table [{dotted}], got {value!r}")
            kwargs[key] = _build(expected, value, f"{dotted}.")
        else:
            kwargs[key] = _coerce(dotted, value, expected)
    return cls(**kwargs)


def from_dict(values: dict) -> TrainerConfig:
    """Builds and validates a config from a nested dict shaped like the TOML file."""
    return validate(_build(TrainerConfig, values, ""))


def load(path: str | Path | None) -> TrainerConfig:
    """Loads a TOML config; None gives the defaults."""
    if path is None:
        return validate(TrainerConfig())
    return from_dict(_read_toml(path))


# Keys added after runs were first saved, each with the value that reproduces how a run saved
# before it existed trained (its default then differed). A run's config.toml lists every key it
# knew, so a missing one dates the run.
BEFORE_KEY_EXISTED = {"codebook_loss": "sum", "sinkhorn_epsilon_mode": "absolute",
                      "sinkhorn_tolerance": 0.0, "wasserstein_scale": "whole",
                      "sinkhorn_overrelaxation": 1.0, "wasserstein_anchor_window": 0}


def load_saved(path: str | Path) -> TrainerConfig:
    """A run directory's config.toml, as `load` reads it, except that a key of
    BEFORE_KEY_EXISTED the file lacks takes the value given there: a run saved before that key
    existed resumes, evaluates and reports as it trained, not with today's default."""
    return from_dict({**BEFORE_KEY_EXISTED, **_read_toml(path)})


def _read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing TOML file to --config")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None


def replace(cfg: TrainerConfig, overrides: dict[str, typing.Any]) -> TrainerConfig:
    """Applies dotted-key overrides (`"model.num_codes": 128`); None values are skipped.

    The overrides are merged into the config's dict and the result is built and checked like a
    TOML file, so an override gets the same messages as the same key in a file.
    """
    values = to_dict(cfg)
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = values
        for depth, parent in enumerate(parents):
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                section = ".".join(parents[: depth + 1])
                raise ConfigError(f"cannot set {dotted}: {section} is {node!r}, not a table of "
                                  f"keys; see configs/default.toml for the keys")
        node[leaf] = value
    return from_dict(values)


def parse_assignments(assignments: typing.Iterable[str]) -> dict[str, typing.Any]:
    """`--set` arguments, "model.num_codes=256", as dotted-key overrides for `replace`.

    Values are read as TOML values (256, 0.5, true, [512, 256], "text"); a bare word that is not
    one (tfds:mnist) is taken as a string.
    """
    overrides = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE (e.g. model.num_codes=256), got '{assignment}'")
        try:
            value = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        overrides[key.strip()] = value
    return overrides


def _check(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


def validate(cfg: TrainerConfig) -> TrainerConfig:
    """Rejects out-of-range values with a message that names the key and the allowed range."""
    for name in ("lambda_commit", "lambda_codebook", "lambda_wasserstein"):
        value = getattr(cfg, name)
        _check(math.isfinite(value) and value >= 0, f"{name} must be >= 0, got {value}")
    _check(cfg.codebook_loss in ("per_level", "sum"),
           f"codebook_loss must be 'per_level' or 'sum', got '{cfg.codebook_loss}'")
    _check(
        math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0,
        f"learning_rate must be > 0, got {cfg.learning_rate}",
    )
    _check(
        math.isfinite(cfg.sinkhorn_epsilon) and cfg.sinkhorn_epsilon > 0,
        f"sinkhorn_epsilon must be > 0, got {cfg.sinkhorn_epsilon}",
    )
    _check(cfg.wasserstein_scale in WASSERSTEIN_SCALES,
           f"wasserstein_scale must be 'per_element' or 'whole', got '{cfg.wasserstein_scale}'")
    _check(cfg.sinkhorn_epsilon_mode in ("relative", "nearest", "absolute"),
           "sinkhorn_epsilon_mode must be 'relative', 'nearest' or 'absolute', "
           f"got '{cfg.sinkhorn_epsilon_mode}'")
    _check(cfg.sinkhorn_iters >= 1, f"sinkhorn_iters must be >= 1, got {cfg.sinkhorn_iters}")
    _check(math.isfinite(cfg.sinkhorn_tolerance) and cfg.sinkhorn_tolerance >= 0,
           f"sinkhorn_tolerance must be >= 0 (0: always run sinkhorn_iters), got "
           f"{cfg.sinkhorn_tolerance}")
    _check(1 <= cfg.sinkhorn_overrelaxation < 2,
           f"sinkhorn_overrelaxation must be in [1, 2) (1: plain Sinkhorn), got "
           f"{cfg.sinkhorn_overrelaxation}")
    weights = cfg.wasserstein_level_weights
    _check(
        not weights or len(weights) == cfg.model.num_levels,
        f"wasserstein_level_weights needs one weight per level ({cfg.model.num_levels}), "
        f"got {len(weights)}",
    )
    _check(all(w >= 0 for w in weights), f"wasserstein_level_weights must be >= 0, got {weights}")
    _check(0 <= cfg.wasserstein_levels <= cfg.model.num_levels,
           f"wasserstein_levels must be in [0, model.num_levels = {cfg.model.num_levels}] "
           f"(0: every level), got {cfg.wasserstein_levels}")
    _check(cfg.steps >= 1, f"steps must be >= 1, got {cfg.steps}")
    _check(cfg.kmeans_init_batches >= 1,
           f"kmeans_init_batches must be >= 1, got {cfg.kmeans_init_batches}")
    _check(cfg.dead_code_threshold >= 0,
           f"dead_code_threshold must be >= 0 steps (0: off), got {cfg.dead_code_threshold}")
    _check(cfg.wasserstein_anchor_window >= 0,
           f"wasserstein_anchor_window must be >= 0 steps (0: off), got "
           f"{cfg.wasserstein_anchor_window}")
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    _check(cfg.ot_queue_size >= 0 and cfg.ot_queue_size % cfg.batch_size == 0,
           f"ot_queue_size must be 0 (off) or a multiple of batch_size ({cfg.batch_size}), got "
           f"{cfg.ot_queue_size}")
    m = cfg.model
    for name in ("latent_dim", "num_levels", "num_codes"):
        value = getattr(m, name)
        _check(value >= 1, f"model.{name} must be >= 1, got {value}")
    _check(m.architecture in ("mlp", "conv"),
           f"model.architecture must be 'mlp' or 'conv', got '{m.architecture}'")
    _check(m.data_kind in ("images", "vectors"),
           f"model.data_kind must be 'images' or 'vectors', got '{m.data_kind}'")
    _check(not (m.data_kind == "vectors" and m.architecture == "conv"),
           "model.architecture 'conv' needs images, and this data set holds vectors; set "
           "model.architecture = \"mlp\"")
    _check(len(m.image_shape) == 3 and all(d >= 1 for d in m.image_shape),
           f"model.image_shape must be [height, width, channels], got {list(m.image_shape)}")
    _check(len(m.conv_channels) == 2, "model.conv_channels needs two channel counts")
    for name in ("encoder_hidden", "decoder_hidden", "conv_channels"):
        widths = getattr(m, name)
        _check(all(w >= 1 for w in widths), f"model.{name} widths must be >= 1, got {widths}")
    _check(m.codebook_init_scale >= 0, "model.codebook_init_scale must be >= 0")
    _check(m.compute_dtype in ("float32", "bfloat16"),
           f"model.compute_dtype must be 'float32' or 'bfloat16', got '{m.compute_dtype}'")
    _check(
        0 < cfg.data.holdout_fraction < 1,
        f"data.holdout_fraction must be in (0, 1), got {cfg.data.holdout_fraction}",
    )
    r = cfg.run
    for name in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "dead_window",
                 "steps_per_call"):
        value = getattr(r, name)
        _check(value >= 1, f"run.{name} must be >= 1, got {value}")
    _check(r.num_devices >= 0, f"run.num_devices must be >= 0 (0: every device), got {r.num_devices}")
    return cfg


def to_dict(cfg) -> dict:
    """The config as a nested dict of TOML-ready values (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def flatten(values: dict, prefix: str = "") -> dict[str, typing.Any]:
    """Nested dict -> {"model.num_codes": 64, ...}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps(cfg: TrainerConfig) -> str:
    """Serializes the config as TOML that `load` reads back to an equal config."""
    values = to_dict(cfg)
    lines = [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for section, table in values.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def shape_differences(a: TrainerConfig, b: TrainerConfig) -> list[str]:
    """The SHAPE_KEYS on which two configs differ, as "key: old -> new" lines."""
    flat_a, flat_b = flatten(to_dict(a)), flatten(to_dict(b))
    return [f"{k}: {flat_a[k]} -> {flat_b[k]}" for k in SHAPE_KEYS if flat_a[k] != flat_b[k]]



def differences(old: TrainerConfig, new: TrainerConfig, ignore: tuple[str, ...] = ()
                ) -> dict[str, list]:
    """{"dotted.key": [old value, new value]} for every key on which two configs differ."""
    flat_old, flat_new = flatten(to_dict(old)), flatten(to_dict(new))
    return {k: [flat_old[k], flat_new[k]] for k in flat_new
            if k not in ignore and flat_old.get(k) != flat_new[k]}
