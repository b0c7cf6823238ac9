"""Data sets as flat float32 arrays, split into train and held-out parts.

- `digits`: scikit-learn's bundled 8x8 handwritten digits, real data that needs no download.
- `tfds:<name>`: a prepared tensorflow-datasets image data set, read through `tfds.data_source`
  (ArrayRecord, random access; TensorFlow is never imported, Pillow decodes the images).
  `rqvae.trainer.prepare` downloads and prepares one (that needs TensorFlow and internet).
- `npz:<path>`: the user's own data, an .npz archive with an array `train` and optionally
  `heldout` of the same example shape: images (N, H, W) or (N, H, W, C), uint8 0..255 or float
  0..1; or vectors (N, D), float, any finite values (e.g. embeddings to turn into semantic IDs).

Every example is one flat row. `Dataset.kind` says what the rows are. Images keep their
(height, width, channels) in `image_shape`; vectors of D values have `image_shape` (1, D, 1), a
one-pixel-high, one-channel image, so that a model config's [height, width, channels] holds them
as it is and the MLP sees the D values unchanged.
"""

from __future__ import annotations

import importlib.util
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rqvae.trainer.config import DataConfig, declarations
from rqvae.trainer.errors import ConfigError, UserError

DATASET_FORMS = declarations()["data.dataset"].meaning  # the forms `load` reads
IMAGES = "images"  # values in [0, 1]
VECTORS = "vectors"  # any finite reals: a decoder for them needs a linear output, not a sigmoid


@dataclass(frozen=True)
class Dataset:
    name: str
    train: np.ndarray  # (num_train, features) float32: pixels in [0, 1], or a vector's values
    heldout: np.ndarray  # (num_heldout, features) float32, like train
    image_shape: tuple[int, int, int]  # (height, width, channels); vectors of D values: (1, D, 1)
    kind: str  # IMAGES or VECTORS


def load(cfg: DataConfig) -> Dataset:
    """Loads the data set the config names.

    A config value that is wrong (an unknown form or tfds name, a missing split) is a ConfigError;
    a file that is missing or holds the wrong arrays is a UserError. Both say how to fix it.
    """
    kind, _, name = cfg.dataset.partition(":")
    if cfg.dataset == "digits":
        return _digits(cfg)
    if kind == "tfds" and name:
        return _tfds(name, cfg)
    if kind == "npz" and name:
        return _npz(Path(name), cfg)
    raise ConfigError(f"unknown data set '{cfg.dataset}'; use {DATASET_FORMS}")


def _dataset(name: str, train: np.ndarray, heldout: np.ndarray, kind: str) -> Dataset:
    """Flattens (N, H, W, C) examples (vectors come as (N, 1, D, 1))."""
    return Dataset(name, train.reshape(len(train), -1), heldout.reshape(len(heldout), -1),
                   tuple(int(d) for d in train.shape[1:]), kind)


def _hold_out(examples: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-seed split: the same held-out examples whatever the training seed."""
    order = np.random.default_rng(cfg.split_seed).permutation(len(examples))
    num_heldout = max(1, round(cfg.holdout_fraction * len(examples)))
    return examples[order[num_heldout:]], examples[order[:num_heldout]]


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
    return _dataset("digits", *_hold_out(images, cfg), IMAGES)


# -- tensorflow-datasets ----------------------------------------------------------------------


INSTALL_PREPARE = "pip install -e '.[prepare]'"  # TensorFlow and what tfds needs to prepare


def prepare_command(name: str) -> str:
    return f"{INSTALL_PREPARE} && rqvae data prepare tfds:{name}"


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
        raise UserError(f"tfds:{name} is not prepared (as ArrayRecord) in "
                        f"{data_dir or 'the default data dir'}; "
                        f"prepare it once where there is internet ({prepare_command(name)}) "
                        f"and point data.data_dir or TFDS_DATA_DIR at it") from None
    train, heldout = (_tfds_images(source, name) for source in sources)
    return _dataset(f"tfds:{name}", train, heldout, IMAGES)


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
    arrays = npz_arrays(path)
    if "train" not in arrays:
        raise UserError(f"{path} has no array 'train' (it has {sorted(arrays)}); save your "
                        f"data with np.savez(path, train=examples, heldout=optional_examples)")
    train, kind = _checked_examples(arrays["train"], f"{path}['train']")
    if "heldout" not in arrays:
        return _dataset(f"npz:{path}", *_hold_out(train, cfg), kind)
    heldout, heldout_kind = _checked_examples(arrays["heldout"], f"{path}['heldout']")
    if heldout_kind != kind or heldout.shape[1:] != train.shape[1:]:
        raise UserError(f"{path}: 'heldout' examples are {arrays['heldout'].shape[1:]}, 'train' "
                        f"examples {arrays['train'].shape[1:]}; both need one example shape")
    return _dataset(f"npz:{path}", train, heldout, kind)


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz archive at `path`, read without unpickling anything."""
    if not path.is_file():
        raise UserError(f"npz file {path} not found; pass npz:<path to an .npz file>")
    try:
        # allow_pickle=False: an .npz from someone else cannot run code.
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UserError(f"{path} holds one array {loaded.shape} (an .npy file), not an .npz "
                            f"archive; save it with np.savez(path, train=array)")
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        if "allow_pickle" in str(err):  # numpy's fallback for what is no archive, or objects
            raise UserError(f"{path} is not an .npz archive of plain arrays (corrupt, or it holds "
                            f"pickled objects); write it with np.savez(path, train=array) from "
                            f"numeric arrays") from None
        raise UserError(f"{path} is not a readable .npz archive ({err}); write it again with "
                        f"np.savez(path, train=array)") from None


def as_examples(examples: np.ndarray, what: str) -> tuple[np.ndarray, tuple, str]:
    """Any array of examples, checked as an npz's are: the flat float32 inputs (N, P), the
    image shape ((1, D, 1) for vectors) and the kind."""
    checked, kind = _checked_examples(np.asarray(examples), what)
    return checked.reshape(len(checked), -1), tuple(int(d) for d in checked.shape[1:]), kind


def _checked_examples(examples: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    """(N, D) vectors or (N, H, W[, C]) images as (N, H, W, C) float32, and their kind."""
    if examples.ndim == 0 or 0 in examples.shape:
        raise UserError(f"{what} is empty (shape {examples.shape}); it needs N >= 1 examples "
                        f"of at least one value")
    if examples.ndim == 2:
        return _checked_vectors(examples, what)[:, None, :, None], VECTORS
    return _checked_images(examples, what), IMAGES


def _checked_vectors(vectors: np.ndarray, what: str) -> np.ndarray:
    """(N, D) float vectors as float32; any finite values (they are not pixels)."""
    if not np.issubdtype(vectors.dtype, np.floating):
        # Integers in 2-D are more likely flattened images or token ids than features.
        raise UserError(f"{what} has shape {vectors.shape} and dtype {vectors.dtype}: (N, D) "
                        f"arrays are vectors and must be float (save x.astype(np.float32)); "
                        f"images are (N, H, W) or (N, H, W, C)")
    vectors = vectors.astype(np.float32)
    if nonfinite := _nonfinite(vectors):
        raise UserError(f"{what} has {nonfinite} values; vectors must be finite")
    return vectors


def _checked_images(images: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 or float images as (N, H, W, C) float32 in [0, 1]."""
    return _scaled(_nhwc(images, what), what)


def _nhwc(images: np.ndarray, what: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise UserError(f"{what} has shape {images.shape}; images must be (N, H, W) or "
                        f"(N, H, W, C) with C in 1, 3, 4, vectors (N, D)")
    return images


def _scaled(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 images to [0, 1]; float images must already be in [0, 1]."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise UserError(f"{what} has dtype {images.dtype}; images must be uint8 (0..255) or "
                        f"float (0..1)")
    images = images.astype(np.float32)
    if nonfinite := _nonfinite(images):
        raise UserError(f"{what} has {nonfinite} pixels; float pixels must be finite and in "
                        f"[0, 1]")
    if images.min() < 0 or images.max() > 1:
        raise UserError(f"{what}: float pixels must be in [0, 1], got [{images.min():.3g}, "
                        f"{images.max():.3g}]; divide by 255 or save uint8")
    return images


def _nonfinite(values: np.ndarray) -> str:
    """How many NaN and infinite values there are, e.g. '3 NaN and 1 inf'; '' if none."""
    counts = {"NaN": int(np.isnan(values).sum()), "inf": int(np.isinf(values).sum())}
    return " and ".join(f"{count} {label}" for label, count in counts.items() if count)
