"""Finding and loading runs for `rqvae report`: a run directory as read from disk, and its status.

Reads `config.toml` (through `rqvae.trainer.config.load_saved`), `metrics.jsonl` (schema in
`rqvae.trainer.runlog`) and `resumes.jsonl`, also while a run is still writing them. A directory
that holds runs instead of being one stands for them (`find_runs`); a run without a train record
yet is skipped with a note (`load_runs`). Imports neither JAX, Flax nor numpy.

A run's status: completed, interrupted or failed (the log's final `end` record says), running (a
process holds the run directory, `rundir.is_held`) or crashed (neither: the process ended without
a final record). A log written before `end` records that reached the configured steps counts as
completed. A completed run whose last eval is no better than a constant output is collapsed
(`runlog.collapsed`). A train step the log holds twice is marked ("repeated steps").
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from rqvae.trainer import config, rundir, runlog
from rqvae.trainer.errors import ConfigError, UserError
from rqvae.trainer.runlog import LOSS_TERMS, finite_numbers

_TRAIN_CMD = "pass a directory written by `rqvae train`"


class NoRecords(UserError):
    """A run directory whose log holds no train record yet; the message says why, and `run` is
    the run as read (no train record, its status and config)."""

    def __init__(self, message: str, run: LoggedRun):
        super().__init__(message)
        self.run = run

    def brief(self) -> str:
        """The message with the run's name for its path: a note among several runs."""
        return _no_records_message(Path(self.run.name), self.run.status, self.run.status_reason)


@dataclass(frozen=True)
class LoggedRun:
    """One run directory, as read from disk."""

    name: str  # the directory's name
    path: Path
    config: dict  # flat {"model.num_codes": 64, ...}, every key; empty if none or it fails
    config_note: str | None  # why config is empty, or None
    train: Sequence[dict]  # records with kind == "train", in log order (`runlog.Log.train`)
    series: dict[str, Sequence]  # "step" and each loss term over train, None where missing
    evals: list[dict]  # records with kind == "eval", in log order
    resumes: list[dict]  # {"step", "changed"}, oldest first
    status: str  # completed, collapsed, running, interrupted, failed or crashed
    status_reason: str
    repeated_steps: list[int]  # train steps logged more than once
    unreadable_lines: list[int]  # lines of metrics.jsonl that hold no record (`runlog.Log`)

    @cached_property
    def extremes(self) -> dict[str, tuple | None]:
        """Loss term -> (its lowest finite value, the index of the first train record with it,
        its highest finite value), or None if it has no finite value. Made once: the summary
        and the trends both need it, and a long log's values cost a pass each."""
        return {term: finite_extremes(self.series[term]) for term in LOSS_TERMS}


def finite_extremes(values: Sequence) -> tuple | None:
    """(lowest finite value, the index of its first occurrence, highest finite value) or None."""
    # The usual case, a long column of finite numbers, in four passes and no filtered copy: a
    # finite sum proves every value a finite number or a boolean (None, text or a list fails to
    # add; a NaN or infinity makes the sum so), and a boolean changes the result only where min
    # or max picks it (min and max return the first extreme they meet, index the first equal).
    try:
        if values and math.isfinite(sum(values)):
            low, high = min(values), max(values)
            index = values.index(low)
            if bool not in (type(low), type(high), type(values[index])):
                return low, index, high
    except TypeError:
        pass
    finite = finite_numbers(values)
    if not finite:
        return None
    low = min(finite)
    return low, values.index(low), max(finite)


def level_value(record: dict, key: str, i: int):
    """Level i's value (0-based) in a record's per-level list `key`; None where there is none."""
    values = record.get(key) or []
    return values[i] if i < len(values) else None


def load_run(run_dir: Path) -> LoggedRun:
    """Reads a run directory written by `rqvae train`, also one still being written.

    Raises UserError, one line naming the problem and the fix, when the directory is
    missing, is not a directory or holds no metrics.jsonl, and NoRecords (a UserError) when its
    log holds no train record yet, saying whether the run is still starting, failed or crashed.
    A config.toml that is missing or does not load is no error: the config is then empty and
    config_note says why.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"run directory {run_dir} does not exist; {_TRAIN_CMD}")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; {_TRAIN_CMD}")
    log_path = run_dir / rundir.METRICS_FILE
    if not log_path.is_file():
        raise UserError(_no_log_message(run_dir))
    try:
        log = runlog.read_log(run_dir)
    except OSError as err:
        raise UserError(f"cannot read {log_path}: {err.strerror}; check the file") from None
    run_config, config_note = _read_config(run_dir)
    series = log.series
    status, reason = run_status(log.last, rundir.is_held(run_dir),
                                max(series["step"], default=None), run_config.get("steps"))
    evals = _of_kind(log.others, "eval")
    if status == "completed" and evals and runlog.collapsed(evals[-1]):
        status, reason = "collapsed", runlog.collapse_note(evals[-1])
    run = LoggedRun(
        name=run_dir.name, path=run_dir, config=run_config, config_note=config_note,
        train=log.train, series=series, evals=evals,
        resumes=_resumes(run_dir, _of_kind(log.others, "resume")), status=status,
        status_reason=reason, repeated_steps=runlog.repeated_steps(series["step"]),
        unreadable_lines=log.unreadable)
    if not log.train:
        raise NoRecords(_no_records_message(run_dir, status, reason), run)
    return run


def _of_kind(records: list[dict], kind: str) -> list[dict]:
    return [record for record in records if record.get("kind") == kind]


def run_status(last: dict | None, held: bool, last_train_step: int | None,
               planned_steps: int | None) -> tuple[str, str]:
    """(status, reason) of a run from its log's last record, whether a process holds the run,
    its last train step and the steps its config plans."""
    if last is not None and last.get("kind") == "end":
        return last.get("status", "failed"), last.get("reason") or ""
    if held:
        return "running", "a process holds the run directory"
    if None not in (last_train_step, planned_steps) and last_train_step >= planned_steps:
        return "completed", "reached its planned steps; a log from before end records"
    return "crashed", "process ended without a final record"


def _no_records_message(run_dir: Path, status: str, reason: str) -> str:
    if status == "running":
        return (f"{run_dir} is still starting: no train record yet (the first is written after "
                f"run.log_every steps); run the report again then")
    if status == "crashed":
        return f"{run_dir} crashed ({reason}) before its first train record"
    return f"{run_dir} {status} before its first train record" + (f": {reason}" if reason else "")


def _resumes(run_dir: Path, logged: list[dict]) -> list[dict]:
    # A trainer that logged resumes only to resumes.jsonl: its log holds none.
    resumes = logged or rundir.read_resumes(run_dir)
    return [{"step": r.get("step"), "changed": r.get("changed") or {}} for r in resumes]


def find_runs(paths: list[Path]) -> list[Path]:
    """Each path that is a run; for a directory holding runs (runs/, a sweep's folder, runs/
    holding sweeps), the runs below it by path.

    A path that is neither stays, for `load_run` to say what is wrong with it.
    """
    run_dirs = []
    for path in map(Path, paths):
        if _sweep_bookkeeping(path):  # runs/sw/* names the sweep's own files too
            continue
        below = [] if (path / rundir.METRICS_FILE).is_file() else _runs_below(path)
        run_dirs += below or [path]
    return run_dirs


def _sweep_bookkeeping(path: Path) -> bool:
    """Whether `path` is a sweep folder's record of the sweep or its runs' output."""
    return (path.name in (rundir.SWEEP_FILE, rundir.SWEEP_LOGS_DIR)
            and (path.parent / rundir.SWEEP_FILE).is_file())


# How deep below a path given to `find_runs` runs are looked for: runs/<sweep>/<run> is 2.
RUN_DEPTH = 3


def _runs_below(path: Path, depth: int = RUN_DEPTH) -> list[Path]:
    """The runs in the folders below `path`, by path, down to `depth` levels: a run's own
    folders (checkpoints) are not entered."""
    try:
        folders = sorted(child for child in path.iterdir() if child.is_dir())
    except OSError:  # not a directory, or unreadable: `load_run` says which
        return []
    runs = []
    for folder in folders:
        if (folder / rundir.METRICS_FILE).is_file():
            runs.append(folder)
        elif depth > 1:
            runs += _runs_below(folder, depth - 1)
    return runs


def _no_log_message(run_dir: Path) -> str:
    runs_below = [p.name for p in _runs_below(run_dir)]
    if runs_below:  # a parent such as runs/ was passed instead of the runs in it
        shown = ", ".join(runs_below[:3]) + (", ..." if len(runs_below) > 3 else "")
        return (f"{run_dir} holds no {rundir.METRICS_FILE} but {len(runs_below)} run(s) below it "
                f"({shown}); pass those, e.g. {run_dir}/*")
    return f"{run_dir} holds no {rundir.METRICS_FILE}; {_TRAIN_CMD}"


def _read_config(run_dir: Path) -> tuple[dict, str | None]:
    """The run's config, flat and complete (defaults for keys the file leaves out), and None; or
    {} and why there is none."""
    path = run_dir / rundir.CONFIG_FILE
    if not path.is_file():
        return {}, f"no {rundir.CONFIG_FILE} in the run directory"
    try:
        return config.flatten(config.to_dict(config.load_saved(path))), None
    except (ConfigError, UnicodeDecodeError, OSError) as err:
        return {}, f"{rundir.CONFIG_FILE} does not load ({err}); settings not shown"


def load_runs(run_dirs: list[Path]) -> tuple[list[LoggedRun], list[NoRecords]]:
    """The runs that have train records, and the NoRecords of each that has none yet (a run
    that failed at its first step, or is still starting).

    Raises the first error of a directory that is no run (UserError), and NoRecords when
    no run has records.
    """
    runs, skipped = [], []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir))
        except NoRecords as err:
            if len(run_dirs) == 1:
                raise
            skipped.append(err)
    if not runs and skipped:
        raise skipped[0]
    return _named_apart(runs), skipped


def _named_apart(runs: list[LoggedRun]) -> list[LoggedRun]:
    """Runs of the same name in different folders (hybrid-s0 of two sweeps) named with their
    folder too (sweep-a/hybrid-s0)."""
    counts = Counter(run.name for run in runs)
    return [dataclasses.replace(run, name=f"{run.path.parent.name}/{run.name}")
            if counts[run.name] > 1 else run for run in runs]
