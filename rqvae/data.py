"""Data sets as flat float32 arrays in [0, 1], split into train and held-out parts.

- `digits`: scikit-learn's bundled 8x8 handwritten digits, real data that needs no download.
- `tfds:<name>`: a prepared tensorflow-datasets image data set, read through `tfds.data_source`
  (ArrayRecord, random access; TensorFlow is never imported, Pillow decodes the images).
- `npz:<path>`: the user's own images: an array `train` (N, H, W) or (N, H, W, C), uint8 0..255
  or float 0..1, and optionally `heldout` of the same image shape.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rqvae.config import ConfigError, DataConfig

DATASET_FORMS = "'digits' (embedded), 'tfds:<name>' (e.g. tfds:mnist) or 'npz:<path>'"


@dataclass(frozen=True)
class Dataset:
    name: str
    train: np.ndarray  # (num_train, pixels) float32 in [0, 1]
    heldout: np.ndarray  # (num_heldout, pixels) float32 in [0, 1]
    image_shape: tuple[int, int, int]  # (height, width, channels)

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.image_shape))


def load(cfg: DataConfig) -> Dataset:
    """Loads the data set the config names; every problem is a ConfigError with its fix."""
    kind, _, name = cfg.dataset.partition(":")
    if cfg.dataset == "digits":
        return _digits(cfg)
    if kind == "tfds" and name:
        return _tfds(name, cfg)
    if kind == "npz" and name:
        return _npz(Path(name), cfg)
    raise ConfigError(f"unknown data set '{cfg.dataset}'; use {DATASET_FORMS}")


def _dataset(name: str, train: np.ndarray, heldout: np.ndarray) -> Dataset:
    """Flattens (N, H, W, C) images scaled to [0, 1]."""
    return Dataset(name, train.reshape(len(train), -1), heldout.reshape(len(heldout), -1),
                   tuple(int(d) for d in train.shape[1:]))


def _hold_out(images: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-seed split: the same held-out images whatever the training seed."""
    order = np.random.default_rng(cfg.split_seed).permutation(len(images))
    num_heldout = max(1, round(cfg.holdout_fraction * len(images)))
    return images[order[num_heldout:]], images[order[:num_heldout]]


# -- digits -----------------------------------------------------------------------------------


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
    images = _digits_pixels().astype(np.float32)[..., None] / 16.0  # pixel values are 0..16
    return _dataset("digits", *_hold_out(images, cfg))


# -- tensorflow-datasets ----------------------------------------------------------------------


def prepare_command(name: str) -> str:
    return f"pip install 'rqvae[prepare]' && rqvae data prepare tfds:{name}"


def _tfds(name: str, cfg: DataConfig) -> Dataset:
    import tensorflow_datasets as tfds
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # our own message says what is wrong

    data_dir = cfg.data_dir or None  # None: tfds's own default, which honours TFDS_DATA_DIR
    try:
        sources = tfds.data_source(name, split=[cfg.train_split, cfg.heldout_split],
                                   data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise ConfigError(f"unknown tfds data set '{name}'; see the tensorflow-datasets "
                          f"catalog for names") from None
    except (KeyError, AssertionError, FileNotFoundError, ValueError, NotImplementedError) as err:
        missing = "split" in str(err).lower() and "empty" not in str(err).lower()
        if missing:
            raise ConfigError(f"tfds:{name} has no split '{cfg.train_split}' or "
                              f"'{cfg.heldout_split}' ({err}); set data.train_split and "
                              f"data.heldout_split") from None
        raise ConfigError(f"tfds:{name} is not prepared (as ArrayRecord) in "
                          f"{data_dir or 'the default data dir'}; "
                          f"prepare it once where there is internet ({prepare_command(name)}) "
                          f"and point data.data_dir or TFDS_DATA_DIR at it") from None
    train, heldout = (_tfds_images(source, name) for source in sources)
    return _dataset(f"tfds:{name}", train, heldout)


def _tfds_images(source, name: str) -> np.ndarray:
    """All images of a split, decoded, as (N, H, W, C) float32 in [0, 1]."""
    first = source[0]
    if "image" not in first:
        raise ConfigError(f"tfds:{name} has no 'image' feature (it has {sorted(first)}); "
                          f"rqvae trains on image data sets")
    images = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
    return _checked_images(images, f"tfds:{name}")


# -- npz --------------------------------------------------------------------------------------


def _npz(path: Path, cfg: DataConfig) -> Dataset:
    if not path.is_file():
        raise ConfigError(f"npz file {path} not found; pass npz:<path to an .npz file>")
    try:
        # allow_pickle=False: an .npz from someone else cannot run code.
        with np.load(path, allow_pickle=False) as arrays:
            contents = {key: arrays[key] for key in arrays.files}
    except (ValueError, OSError) as err:
        raise ConfigError(f"{path} is not a readable .npz of plain arrays ({err})") from None
    if "train" not in contents:
        raise ConfigError(f"{path} has no array 'train' (it has {sorted(contents)}); save your "
                          f"images with np.savez(path, train=images, heldout=optional_images)")
    train = _checked_images(contents["train"], f"{path}['train']")
    if "heldout" not in contents:
        return _dataset(f"npz:{path}", *_hold_out(train, cfg))
    heldout = _checked_images(contents["heldout"], f"{path}['heldout']")
    if heldout.shape[1:] != train.shape[1:]:
        raise ConfigError(f"{path}: 'heldout' images are {heldout.shape[1:]}, 'train' images "
                          f"{train.shape[1:]}; both need one image shape")
    return _dataset(f"npz:{path}", train, heldout)


def _checked_images(images: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 or float images as (N, H, W, C) float32 in [0, 1]."""
    return _scaled(_nhwc(images, what), what)


def _nhwc(images: np.ndarray, what: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or len(images) == 0:
        raise ConfigError(f"{what} has shape {images.shape}; images must be (N, H, W) or "
                          f"(N, H, W, C) with C in 1, 3, 4 and N >= 1")
    return images


def _scaled(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 images to [0, 1]; float images must already be in [0, 1]."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if np.issubdtype(images.dtype, np.floating):
        images = images.astype(np.float32)
        if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1:
            raise ConfigError(f"{what}: float pixels must be finite and in [0, 1], got "
                              f"[{np.nanmin(images):.3g}, {np.nanmax(images):.3g}]; divide "
                              f"by 255 or save uint8")
        return images
    raise ConfigError(f"{what} has dtype {images.dtype}; use uint8 (0..255) or float (0..1)")
