"""The frozen config tree, from TOML and CLI flags; no JAX (the report reads it). Sections by what
reads them: `[loss]`, `[transport]` (the library's LossWeights and Transport), `[remedies]`,
`[optimizer]` (the step), `[model]`, `[data]`, `[run]` (the loop). Scalars and tuples only, so a
config is a static jit argument. Earlier versions' keys load (`compat`)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import textwrap
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from rqvae.quantizer.settings import (
    KMEANS_BATCHES,
    Declared,
    LossWeights,
    Platform,
    Transport,
    declared,
    setting,
)
from rqvae.trainer.compat import BEFORE_KEY_EXISTED, MOVED, NESTED_BEFORE_KEY_EXISTED, RETIRED
from rqvae.trainer.config_checks import validate
from rqvae.trainer.errors import ConfigError


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


def declarations(cls: type = TrainerConfig, prefix: str = "") -> dict[str, Declared]:
    """Every setting of the tree, by dotted key in the tree's order, with its declaration
    (`settings.setting`): the one home of its default's meaning, range, short name and flag."""
    found = {}
    for name, kind in _field_types(cls).items():
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            found.update(declarations(kind, f"{prefix}{name}."))
        else:
            found[prefix + name] = declared(cls, name)
    return found


def defaults_toml() -> str:
    """Every setting a user sets, at its default, with its meaning: the TOML `rqvae configs
    default` prints, which `load` reads back to `TrainerConfig()`."""
    lines = []
    column, width = 31, 100

    def add(assignment: str, comment: str) -> None:
        words = textwrap.wrap(comment, width - column - 2) or [""]
        lines.append(f"{assignment:<{column - 1}} # {words[0]}".rstrip())
        lines.extend(f"{'':<{column - 1}} #   {more}" for more in textwrap.wrap(
            " ".join(words[1:]), width - column - 4))

    def section(cls: type, values: dict) -> None:
        for name, value in values.items():
            if isinstance(value, dict):
                continue
            note = declared(cls, name)
            if not note.from_data:
                add(f"{name} = {_toml_value(value)}", note.meaning)

    values = to_dict(TrainerConfig())
    section(TrainerConfig, values)
    for name, kind in _field_types(TrainerConfig).items():
        if dataclasses.is_dataclass(kind):
            lines.append("")
            add(f"[{name}]", (kind.__doc__ or "").strip().split("\n")[0])
            section(kind, values[name])
    return "\n".join(lines) + "\n"


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
    # First a key of that name in another section ("num_codes" for "model.num_codes"), then a near
    # miss in this one, then a near miss anywhere in the tree.
    everywhere = list(flatten(to_dict(TrainerConfig())))
    by_leaf = {k.rpartition(".")[2]: k for k in everywhere}
    close = difflib.get_close_matches(leaf, list(valid), n=1)
    anywhere = difflib.get_close_matches(leaf, list(by_leaf), n=1)
    if leaf in by_leaf:
        hint = f"; did you mean '{by_leaf[leaf]}'?"
    elif close:
        hint = f"; did you mean '{section + '.' if section else ''}{close[0]}'?"
    elif anywhere:
        hint = f"; did you mean '{by_leaf[anywhere[0]]}'?"
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
    values, retired = _upgraded(values)
    _refuse_retired(retired)
    return validate(_build(TrainerConfig, values, ""))


def load(path: str | Path | None) -> TrainerConfig:
    """Loads a TOML config; None gives the defaults."""
    if path is None:
        return validate(TrainerConfig())
    return from_dict(_read_toml(path))


def _upgraded(values: dict) -> tuple[dict, dict]:
    """A TOML dict with MOVED keys in their sections and RETIRED keys taken out, and the retired
    keys whose value differs from what the code does now ({dotted key: value})."""
    flat = flatten(values)
    retired = {k: flat.pop(k) for k in list(flat) if k in RETIRED}
    for old, new in MOVED.items():
        if old in flat:
            if new in flat:
                raise ConfigError(f"{old} and {new} set the same value; keep {new}")
            flat[new] = flat.pop(old)
    nested: dict = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    for section, value in values.items():  # empty tables stay, so their type is still checked
        if isinstance(value, dict) and not value:
            nested.setdefault(section, {})
    return nested, {k: v for k, v in retired.items() if v != RETIRED[k]}


def _refuse_retired(retired: dict) -> None:
    if retired:
        key, value = next(iter(retired.items()))
        raise ConfigError(f"{key} = {_toml_value(value)} is no longer a setting (the code always "
                          f"does what {_toml_value(RETIRED[key])} did; docs/results.md has its "
                          f"measurements); remove the key")


def _saved(path: str | Path) -> tuple[dict, dict]:
    values = _read_toml(path)
    if "transport" not in values:  # the flat format: a missing key dates the run
        values = {**BEFORE_KEY_EXISTED, **values}
    nested, retired = _upgraded(values)
    for dotted, value in NESTED_BEFORE_KEY_EXISTED.items():
        section, key = dotted.split(".")
        nested.setdefault(section, {}).setdefault(key, value)
    return nested, retired


def load_saved(path: str | Path) -> TrainerConfig:
    """A run directory's config.toml, as `load` reads it, with two differences for runs of
    earlier versions: a file lacking a key of BEFORE_KEY_EXISTED (flat format) or of
    NESTED_BEFORE_KEY_EXISTED takes the value given there, and a retired setting at another
    value than today's is dropped rather than refused (`retired_values` names them; such a run
    reports and evaluates, but cannot resume)."""
    return validate(_build(TrainerConfig, _saved(path)[0], ""))


def retired_values(path: str | Path) -> dict:
    """The retired settings a run's config.toml holds at values the code no longer has."""
    return _saved(path)[1]


def _read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing TOML file to --config")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None


def replace(cfg: TrainerConfig, overrides: dict[str, typing.Any]) -> TrainerConfig:
    """Applies dotted-key overrides (`"model.num_codes": 128`; None skipped), built and checked
    as a TOML file is, so an override gets the messages the same key in a file would."""
    values = to_dict(cfg)
    for dotted, value in overrides.items():
        if value is None:
            continue
        if dotted in RETIRED:
            _refuse_retired({} if value == RETIRED[dotted] else {dotted: value})
            continue
        dotted = MOVED.get(dotted, dotted)
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
    """`--set` arguments, "model.num_codes=256", as dotted-key overrides for `replace`; values
    are TOML values (256, 0.5, true, [512, 256], "text"), or else strings (tfds:mnist)."""
    overrides = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE (e.g. model.num_codes=256), got "
                              f"'{assignment}'")
        try:
            value = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        overrides[key.strip()] = value
    return overrides


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
