"""Data sets as flat float32 arrays in [0, 1], split deterministically into train and held-out parts.

`digits` is scikit-learn's bundled 8x8 handwritten digits: real data that needs no download.
`tfds:<name>` reads a prepared tensorflow-datasets image data set through `tfds.data_source`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rqvae.config import ConfigError, DataConfig

DATASET_FORMS = "'digits' (embedded) or 'tfds:<name>' (e.g. tfds:mnist)"


@dataclass(frozen=True)
class Dataset:
    name: str
    train: np.ndarray  # (num_train, pixels) float32 in [0, 1]
    heldout: np.ndarray  # (num_heldout, pixels) float32 in [0, 1]
    image_shape: tuple[int, ...]  # (height, width) or (height, width, channels)

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.image_shape))


def load(cfg: DataConfig) -> Dataset:
    """Loads the data set the config names; an unknown name is a ConfigError listing valid forms."""
    if cfg.dataset == "digits":
        return _digits(cfg)
    if cfg.dataset.startswith("tfds:") and len(cfg.dataset) > len("tfds:"):
        return _tfds(cfg.dataset.removeprefix("tfds:"))
    raise ConfigError(f"unknown data set '{cfg.dataset}'; use {DATASET_FORMS}")


def _digits_pixels() -> np.ndarray:
    """The 1797 digits as (1797, 8, 8) pixel values 0..16.

    Read straight from the CSV that scikit-learn ships, as its `load_digits` does: importing
    `sklearn.datasets` costs about 2 s, this 0.15 s. Falls back to `load_digits` if the file moved.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return np.loadtxt(path, delimiter=",", dtype=np.float32)[:, :-1].reshape(-1, 8, 8)
    from sklearn.datasets import load_digits

    return load_digits().images


def _digits(cfg: DataConfig) -> Dataset:
    images = _digits_pixels().astype(np.float32) / 16.0  # pixel values are 0..16
    order = np.random.default_rng(cfg.split_seed).permutation(len(images))
    num_heldout = max(1, round(cfg.holdout_fraction * len(images)))
    flat = images.reshape(len(images), -1)
    return Dataset(
        name="digits",
        train=flat[order[num_heldout:]],
        heldout=flat[order[:num_heldout]],
        image_shape=images.shape[1:],
    )


def _tfds(name: str) -> Dataset:
    import tensorflow_datasets as tfds

    try:
        sources = tfds.data_source(name, split=["train", "test"])
    except Exception as err:  # tfds raises several types for a data set that is not prepared
        raise ConfigError(
            f"tfds data set '{name}' could not be read ({type(err).__name__}); prepare it on a "
            f"machine with internet: pip install tensorflow && "
            f"python -m tensorflow_datasets.scripts.download_and_prepare --datasets={name}"
        ) from None
    train, heldout = (_images(source) for source in sources)
    return Dataset(f"tfds:{name}", train.reshape(len(train), -1),
                   heldout.reshape(len(heldout), -1), train.shape[1:])


def _images(source) -> np.ndarray:
    images = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    return images.astype(np.float32) / 255.0
