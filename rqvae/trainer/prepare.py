"""`rqvae data prepare`: download and prepare a tensorflow-datasets data set as ArrayRecord, as
`data.load` reads it (`tfds:<name>`). Needs TensorFlow and internet; loading needs neither."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from rqvae.trainer.data import INSTALL_PREPARE
from rqvae.trainer.errors import ConfigError, UserError

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
