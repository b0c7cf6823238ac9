"""The config tree (`config_tree`) from TOML and CLI flags, checked, and back to TOML; no JAX
(the report reads it). Earlier versions' keys load (`compat`). The tree's names are
re-exported here: `config.TrainerConfig`, `config.load`, `config.replace`."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import textwrap
import tomllib
import typing
from pathlib import Path

from rqvae.quantizer.settings import declared
from rqvae.trainer.compat import BEFORE_KEY_EXISTED, MOVED, NESTED_BEFORE_KEY_EXISTED, RETIRED
from rqvae.trainer.config_checks import validate
from rqvae.trainer.config_tree import (  # noqa: F401  (re-exported: the tree's one import)
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    RemediesConfig,
    RunConfig,
    StepConfig,
    TrainerConfig,
    declarations,
    field_types,
    section_of,
    step_config,
)
from rqvae.trainer.errors import ConfigError


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
    for name, kind in field_types(TrainerConfig).items():
        if dataclasses.is_dataclass(kind):
            lines.append("")
            add(f"[{name}]", (kind.__doc__ or "").strip().split("\n")[0])
            section(kind, values[name])
    return "\n".join(lines) + "\n"


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
    types_by_name = field_types(cls)
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
                                  f"keys; `rqvae configs default` lists the keys")
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
