"""The run directory: every file name in it, claiming and holding it, and its provenance.

    <run_dir>/config.toml      the resolved config the run trains on now
    <run_dir>/metrics.jsonl    the run log (`rqvae.trainer.runlog`)
    <run_dir>/resumes.jsonl    one line per resume: the step and the settings it changed
    <run_dir>/checkpoints/     orbax checkpoints (`rqvae.trainer.checkpoint`)
    <run_dir>/.lock            held (flock) by the process that trains the run

A directory is claimed atomically (`os.mkdir` fails if it exists, so two runs started in the same
second get different auto names) and held with an exclusive `flock` while training: a second
process on the same directory is refused, and `rqvae report` tells a run still being written from
one whose process died. This module imports neither JAX nor Flax.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from rqvae.trainer.errors import UserError

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
RESUMES_FILE = "resumes.jsonl"
CHECKPOINT_DIR = "checkpoints"
SET_ASIDE_DIR = "checkpoints-set-aside"  # newer checkpoints a resume from an earlier one moved
LOCK_FILE = ".lock"
# A sweep's folder (`rqvae sweep`) holds a run directory per run beside these two.
SWEEP_FILE = "sweep.json"
SWEEP_LOGS_DIR = "logs"


def holds_run(run_dir: Path) -> bool:
    """Whether the directory holds (part of) a run: a config, a log or checkpoints."""
    return any((Path(run_dir) / name).exists() for name in (CONFIG_FILE, METRICS_FILE,
                                                             CHECKPOINT_DIR))


def auto_name(name: str) -> Path:
    """runs/<name>-<date>-<time>, claimed by `claim` with a suffix if taken."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_writable(folder: Path, option: str = "--run-dir") -> None:
    """Raises UserError, naming `option`, if `folder` cannot be created or written: a file is in
    the way, or the nearest existing folder on its path is a file or not writable. Creates
    nothing, so it runs before any work."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), Path("."))
    if not existing.is_dir():
        if existing == folder:
            raise UserError(f"{option} {folder} is a file, not a directory; choose another "
                            f"{option}")
        raise UserError(f"cannot create {folder}: {existing} is a file; choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {folder}: {existing} is not writable; choose another "
                        f"{option}")


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Calls write(file) on a temporary file beside `path`, then renames it to `path`: a reader
    sees the old file or the new one, never a part, and a failure leaves no temporary file. A
    plain open (not mkstemp), so the file gets the usual permissions."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as file:
            write(file)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Lock:
    """An exclusive flock on <run_dir>/.lock for as long as the run trains.

    The kernel drops it when the process ends, however it ends, so a crashed run never leaves a
    stale lock behind.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            owner = _owner(self.path)
            raise UserError(f"{run_dir} is in use by another rqvae process{owner}; wait for it to "
                          f"finish or choose another --run-dir") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _owner(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def claim(run_dir: Path | None, name: str) -> tuple[Path, Lock]:
    """Creates (or opens) the run directory and holds it.

    `run_dir` None: an auto name under runs/, made unique with -2, -3, ... by an atomic mkdir, so
    two runs started in the same second never share one. Raises UserError if another process
    holds the directory or it cannot be created.
    """
    if run_dir is None:
        base = auto_name(name)
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create {base.parent} for the run ({err.strerror}); pass "
                            f"--run-dir") from None
        for n in range(1, 1000):
            candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                os.mkdir(candidate)
            except FileExistsError:
                continue
            return candidate, Lock(candidate)
        raise UserError(f"could not claim a fresh directory next to {base}; pass --run-dir")
    run_dir = Path(run_dir)
    try:  # open_run checked the path before any work; this catches what changed since
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {run_dir} ({err.strerror}); choose another "
                        f"--run-dir") from None
    return run_dir, Lock(run_dir)


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds the run directory (trains it now). Never blocks."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def write_config(run_dir: Path, text: str) -> None:
    """Replaces config.toml atomically."""
    write_atomically(Path(run_dir) / CONFIG_FILE, lambda file: file.write(text.encode()))


def record_resume(run_dir: Path, step: int, changed: dict[str, list]) -> dict:
    """Appends to resumes.jsonl that the run resumed at `step`, with the settings that changed
    ({"loss.lambda_wasserstein": [old, new]}); returns the record."""
    record = {"step": step, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "changed": changed}
    with open(Path(run_dir) / RESUMES_FILE, "a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")
    return record


def read_resumes(run_dir: Path) -> list[dict]:
    """The resume records of a run, oldest first; [] if it never resumed."""
    path = Path(run_dir) / RESUMES_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def check_out_file(out: Path, force: bool) -> None:
    """Refuses, before any work, an --out that cannot be written as a file."""
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; pass a file name such as {out / 'codes.npy'}")
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it or choose another --out")
    parent = out.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {out}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {out}: folder {parent} is not writable")
