"""The range checks of a config tree: each out-of-range value is refused with a message that names
its key and the allowed range."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from rqvae.trainer.errors import ConfigError

# The config tree (`config.TrainerConfig`), whose module imports this one: typed by a variable,
# so that no import runs back to it, type-only ones included.
Config = TypeVar("Config")


def _check(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


# Every integer setting reaches the device as (or beside) an int32: the step counter, shapes,
# seeds, windows.
INT32_MAX = 2**31 - 1


def _check_declared(node, prefix: str = "") -> None:
    """Each setting against its declaration's range or choices (`settings.Declared`), and every
    integer against int32."""
    for field in dataclasses.fields(node):
        value, key = getattr(node, field.name), prefix + field.name
        if dataclasses.is_dataclass(value):
            _check_declared(value, key + ".")
            continue
        numbers = value if isinstance(value, tuple) else (value,)
        for number in numbers:
            if isinstance(number, int) and not isinstance(number, bool):
                _check(abs(number) <= INT32_MAX,
                       f"{key} must be at most {INT32_MAX:,} (a 32-bit integer on the device), "
                       f"got {number}")
        declared = field.metadata.get("declared")
        wrong = declared and declared.violation(value)
        _check(not wrong, f"{key} must be {wrong}")


def validate(cfg: Config) -> Config:
    """The config tree `cfg` (a `config.TrainerConfig`) as it is; rejects out-of-range values
    with a message that names the key and the allowed range: each setting's own range from its
    declaration, then the rules that tie settings together."""
    _check_declared(cfg)
    m = cfg.model
    _check(not (m.data_kind == "vectors" and m.architecture == "conv"),
           "model.architecture 'conv' needs images, and this data set holds vectors; set "
           "model.architecture = \"mlp\"")
    _check(len(m.image_shape) == 3 and all(d >= 1 for d in m.image_shape),
           f"model.image_shape must be [height, width, channels], got {list(m.image_shape)}")
    _check(m.latent == "vector" or m.architecture == "conv",
           "model.latent 'grid' needs model.architecture = \"conv\"")
    if m.latent == "grid":  # a feature map 2^stages times smaller a side
        stages = len(m.conv_channels)
        factor = 2**stages
        _check(stages >= 1, "model.conv_channels needs at least one channel count")
        _check(m.image_shape[0] % factor == 0 and m.image_shape[1] % factor == 0,
               f"a grid latent downsamples by {factor} ({stages} stride-2 stages), and images of "
               f"{m.image_shape[0]}x{m.image_shape[1]} do not divide by it; use fewer "
               f"model.conv_channels or another image size")
    else:
        _check(len(m.conv_channels) == 2, "model.conv_channels needs two channel counts")
    return cfg
