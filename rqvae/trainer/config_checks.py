"""The range checks of a config tree: each out-of-range value is refused with a message that names
its key and the allowed range."""

from __future__ import annotations

import dataclasses
import math
from typing import TypeVar

from rqvae.trainer.errors import ConfigError

# The config tree (`config.TrainerConfig`), whose module imports this one: typed by a variable,
# so that no import runs back to it, type-only ones included.
Config = TypeVar("Config")


def _check(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


def _finite(value) -> bool:
    return math.isfinite(value)


# Every integer setting reaches the device as (or beside) an int32: the step counter, shapes,
# seeds, windows.
INT32_MAX = 2**31 - 1


def _check_int32(node, prefix: str = "") -> None:
    for field in dataclasses.fields(node):
        value, key = getattr(node, field.name), prefix + field.name
        if dataclasses.is_dataclass(value):
            _check_int32(value, key + ".")
            continue
        numbers = value if isinstance(value, tuple) else (value,)
        for number in numbers:
            if isinstance(number, int) and not isinstance(number, bool):
                _check(abs(number) <= INT32_MAX,
                       f"{key} must be at most {INT32_MAX:,} (a 32-bit integer on the device), "
                       f"got {number}")


def validate(cfg: Config) -> Config:
    """The config tree `cfg` (a `config.TrainerConfig`) as it is; rejects out-of-range values
    with a message that names the key and the allowed range."""
    _check_int32(cfg)
    for name in ("lambda_commit", "lambda_codebook", "lambda_wasserstein"):
        value = getattr(cfg.loss, name)
        _check(_finite(value) and value >= 0,
               f"loss.{name} must be a finite number >= 0, got {value}")
    lr = cfg.optimizer.learning_rate
    _check(_finite(lr) and lr > 0, f"optimizer.learning_rate must be a finite number > 0, got {lr}")
    decay = cfg.optimizer.decay_fraction
    _check(_finite(decay) and 0 <= decay <= 1,
           f"optimizer.decay_fraction must be in [0, 1] (0: a constant learning rate), got {decay}")
    t = cfg.transport
    _check(_finite(t.epsilon) and t.epsilon > 0,
           f"transport.epsilon must be a finite number > 0, got {t.epsilon}")
    _check(t.iters >= 1, f"transport.iters must be >= 1, got {t.iters}")
    _check(_finite(t.tolerance) and t.tolerance >= 0,
           f"transport.tolerance must be >= 0 (0: always run transport.iters), got {t.tolerance}")
    _check(1 <= t.overrelaxation < 2,
           f"transport.overrelaxation must be in [1, 2) (1: plain Sinkhorn), got "
           f"{t.overrelaxation}")
    _check(t.anchor_window >= 0,
           f"transport.anchor_window must be >= 0 steps (0: off), got {t.anchor_window}")
    _check(cfg.remedies.dead_code_threshold >= 0,
           f"remedies.dead_code_threshold must be >= 0 steps (0: off), got "
           f"{cfg.remedies.dead_code_threshold}")
    _check(cfg.steps >= 1, f"steps must be >= 1, got {cfg.steps}")
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
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
    _check(m.latent in ("vector", "grid"),
           f"model.latent must be 'vector' or 'grid', got '{m.latent}'")
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
    for name in ("encoder_hidden", "decoder_hidden", "conv_channels"):
        widths = getattr(m, name)
        _check(all(w >= 1 for w in widths), f"model.{name} widths must be >= 1, got {widths}")
    _check(m.sigmoid_grad in ("constant", "exact"),
           f"model.sigmoid_grad must be 'constant' or 'exact', got '{m.sigmoid_grad}'")
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
    _check(r.num_devices >= 0,
           f"run.num_devices must be >= 0 (0: every device), got {r.num_devices}")
    return cfg
