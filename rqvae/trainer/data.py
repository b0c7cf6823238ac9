"""Data sets as flat float32 arrays, split into train and held-out parts.

- `digits`: scikit-learn's bundled 8x8 handwritten digits, real data that needs no download.
- `tfds:<name>`: a prepared tensorflow-datasets image data set, read through `tfds.data_source`
  (ArrayRecord, random access; TensorFlow is never imported, Pillow decodes the images).
  `prepare` downloads and prepares one (that needs TensorFlow and internet).
- `npz:<path>`: the user's own data, an .npz archive with an array `train` and optionally
  `heldout` of the same example shape: images (N, H, W) or (N, H, W, C), uint8 0..255 or float
  0..1; or vectors (N, D), float, any finite values (e.g. embeddings to turn into semantic IDs).

Every example is one flat row. `Dataset.kind` says what the rows are. Images keep their
(height, width, channels) in `image_shape`; vectors of D values have `image_shape` (1, D, 1), a
one-pixel-high, one-channel image, so that a model config's [height, width, channels] holds them
as it is and the MLP sees the D values unchanged.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import threading
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from rqvae.trainer.config import DataConfig
from rqvae.trainer.errors import ConfigError, UserError

DATASET_FORMS = "'digits' (embedded), 'tfds:<name>' (e.g. tfds:mnist) or 'npz:<path>'"
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


# -- preparing a tfds data set ----------------------------------------------------------------

CONNECT_TIMEOUT_S = 3.0  # a download host that has not answered by then counts as unreachable


def prepare(dataset: str, data_dir: Path | None) -> Path:
    """Downloads and prepares `tfds:<name>` as ArrayRecord, as `load` reads it; returns its folder.

    data_dir None: tfds's default ($TFDS_DATA_DIR, else ~/tensorflow_datasets). Needs TensorFlow
    and internet. Without a network it fails in seconds (tfds itself retries for minutes), and on
    any failure it removes what it wrote, so a later try starts clean. Errors are one line:
    ConfigError for a wrong name, UserError for the rest.
    """
    kind, _, name = dataset.partition(":")
    if kind != "tfds" or not name:
        raise ConfigError(f"only tfds data sets are prepared; got '{dataset}', expected "
                          f"tfds:<name>")
    builder = _tfds_builder(name, data_dir)
    if builder.is_prepared():
        return Path(builder.data_dir)
    root, dataset_dir = Path(builder.data_dir_root), Path(builder.data_dir)
    top_folder = root / dataset_dir.relative_to(root).parts[0]  # e.g. <root>/mnist
    _check_reachable(builder.url_infos or {}, name, top_folder)
    with _removed_on_failure(root, dataset_dir):
        try:
            builder.download_and_prepare(download_dir=root / "downloads")
        except Exception as err:
            raise UserError(f"preparing tfds:{name} failed ({_first_line(err)}); nothing of it "
                            f"was kept in {root}") from err
    return dataset_dir


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _tfds_builder(name: str, data_dir: Path | None):
    if not _has_tensorflow():
        raise UserError(f"preparing a tfds data set needs TensorFlow (reading it does not); "
                        f"{INSTALL_PREPARE} and run this again")
    import tensorflow_datasets as tfds
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # e.g. is_prepared warns of a missing folder
    try:
        return tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise ConfigError(f"unknown tfds data set '{name}'; see the tensorflow-datasets "
                          f"catalog for names") from None
    except ModuleNotFoundError as err:  # a dependency tfds imports late and does not declare
        raise UserError(f"preparing tfds:{name} needs the module '{err.name}'; "
                        f"{INSTALL_PREPARE} and run this again") from None


def _check_reachable(urls, name: str, top_folder: Path) -> None:
    """Raises UserError unless every host the data set downloads from answers within seconds."""
    for host, port in sorted({_first_hop(url) for url in urls}):
        if problem := _connection_problem(host, port):
            raise UserError(f"no network: cannot reach {host}:{port} ({problem}), and tfds:{name} "
                            f"downloads from it; prepare it where there is internet, copy "
                            f"{top_folder} into a data dir here and point data.data_dir or "
                            f"TFDS_DATA_DIR at it")


def _first_hop(url: str) -> tuple[str, int]:
    """Where a download of `url` connects: its host, or the proxy the environment sets for it."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _connection_problem(host: str, port: int) -> str:
    """Why a TCP connection to host:port does not open within CONNECT_TIMEOUT_S; '' if it does.

    In a thread, because the socket timeout does not bound the name lookup, which without a
    network can hang for longer; a thread still waiting is left to finish on its own.
    """
    problems = [f"no answer within {CONNECT_TIMEOUT_S:g} s"]

    def connect():
        try:
            socket.create_connection((host, port), CONNECT_TIMEOUT_S).close()
            problems[0] = ""
        except OSError as err:
            problems[0] = err.strerror or str(err) or type(err).__name__

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S)
    return problems[0]


@contextlib.contextmanager
def _removed_on_failure(root: Path, dataset_dir: Path):
    """If the block fails (Ctrl-C too), removes what it created where tfds writes: the data set's
    folder and its `incomplete.*` siblings, and download temporaries; what was there stays."""
    watched = [root, root / "downloads", root / "downloads" / "extracted"]
    watched += [folder for folder in dataset_dir.parents if root in folder.parents]
    watched.append(dataset_dir)
    before = {folder: _entries(folder) for folder in watched}
    first_new = _first_missing_ancestor(root)
    try:
        yield
    except BaseException:
        for folder in watched:
            for entry in _entries(folder) - before[folder]:
                _remove(entry)
        if first_new is not None:
            _remove(first_new)
        raise


def _entries(folder: Path) -> set[Path]:
    return set(folder.iterdir()) if folder.is_dir() else set()


def _first_missing_ancestor(path: Path) -> Path | None:
    """The outermost folder on the way to `path` (itself included) that does not exist yet."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    return missing[-1] if missing else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
