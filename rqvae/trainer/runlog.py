"""The run log: `metrics.jsonl`, one JSON object per line, in the run directory.

This module defines every record's keys and their meaning; writers and readers use these names.

- train (every run.log_every steps): "kind": "train", "step", "time" (s since the run started),
  the LOSS_TERMS, and per level (lists) the TRAIN_PER_LEVEL keys:
  - batch_used: codes the step's batch picked
  - batch_perplexity: exp(entropy) of the codes the step's batch picked
  - window_dead: codes no batch picked over the last run.dead_window steps
  - transport_cost: the level's transport cost sum(plan * C) / latent_dim; "wasserstein" is
    their sum; 0 with the term off
  - sinkhorn_marginal_error: the transport plan's row-marginal error (0 likewise)
  - solve_epsilon: the entropic regularization the level's solve used, in squared latent units
    (the setting transport.epsilon is a fraction: this is it times the level's mean cost; 0
    likewise)
  - anchor_stale: codes no batch picked over the stale window (transport.anchor_window steps,
    or sweeps of the codebook where a step has fewer points than codes) after the step: those
    the transport term moves, waiting for its next anchor step (0 with the term or its
    re-anchoring off)
- eval (every run.eval_every steps and at the end): "kind": "eval", "step", "time",
  "heldout_recon" (MSE over the held-out split), "heldout_psnr" (dB, pixels in [0, 1]),
  "constant_recon" (the held-out MSE of the training split's mean example: what the best output
  that ignores its input reaches; a run whose heldout_recon is no lower has collapsed,
  `collapsed`), for a vector latent how the training examples' code tuples collide (semantic
  IDs): "tuples_unique", "tuples_shared" (examples whose tuple another one has too) and
  "tuples_largest_group", for a shared codebook "shared_dead" (its codes no level picks over a
  full pass of the training split: the dead codes of a shared codebook), and per level the EVAL_PER_LEVEL keys:
  - train_used, train_dead: codes some / no training image picks, over a full pass of the
    training split (the definitive dead-code count)
  - train_perplexity: perplexity of the codes over that full pass
  - heldout_used, heldout_perplexity: the same over the held-out split
- resume: "kind": "resume", "step" (the checkpoint it resumed from), "time", "changed"
  ({key: [old, new]} for every setting that differs from the run's config until then)
- end: "kind": "end", "step", "time", "status" ("completed", "interrupted" or "failed") and
  "reason"; a log that stops without one belongs to a run still training or one that died.

Logs written before these names are read with the old names mapped to the new (`RENAMED`).

Reading: every line is parsed on its own with orjson; a line orjson refuses is parsed again with
json, which reads the NaN and Infinity that Python's json writes for a non-finite loss. A line
that holds no record (blank, cut off by a run still writing, not a JSON object with a "step") is
skipped. Key order and spacing are free. `read` gives every record as a dict. `read_log`, what
`rqvae report` reads, keeps no dict per train record: it takes each train record's step and loss
terms into columns and keeps its line, to parse again when the record is asked for (`Log.train`);
a report of a 100k-step run shows a dozen of them, and holding 100k dicts until then costs more
than parsing those lines twice. The other records (evals, resumes, the end) it keeps as dicts.
This module imports neither JAX nor Flax.
"""

from __future__ import annotations

import gc
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

import orjson

from rqvae.quantizer.settings import LOSS_TERMS
from rqvae.trainer.compat import RENAMED
from rqvae.trainer.rundir import METRICS_FILE

# The per-level outputs of the transport term's solves, among the TRAIN_PER_LEVEL keys.
TRANSPORT_PER_LEVEL = ("transport_cost", "sinkhorn_marginal_error", "solve_epsilon")
TRAIN_PER_LEVEL = ("batch_used", "batch_perplexity", "window_dead", *TRANSPORT_PER_LEVEL,
                   "anchor_stale")
EVAL_SCALARS = ("heldout_recon", "heldout_psnr", "constant_recon", "tuples_unique",
                "tuples_shared", "tuples_largest_group", "shared_dead")
EVAL_PER_LEVEL = ("train_used", "train_dead", "train_perplexity", "heldout_used",
                  "heldout_perplexity")


def collapsed(eval_record: dict | None) -> bool:
    """Whether an eval record shows a model no better than a constant output: its held-out recon
    is at least the training split's mean example's (False for logs without that figure)."""
    if not eval_record or eval_record.get("constant_recon") is None:
        return False
    return eval_record["heldout_recon"] >= eval_record["constant_recon"]


def collapse_note(eval_record: dict) -> str:
    """Why an eval record is `collapsed`, in one phrase."""
    return (f"held-out recon {eval_record['heldout_recon']:.4g} is no better than a constant "
            f"output's ({eval_record['constant_recon']:.4g}, the training mean)")


_OLD_KEYS = frozenset().union(*RENAMED.values())


class RunLog:
    """Appends records to metrics.jsonl, one flushed line each, so a reader never waits."""

    def __init__(self, run_dir: str | Path):
        self._file = open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read(run_dir: str | Path) -> list[dict]:
    """Every record of a run in log order, with old key names mapped to the new (`RENAMED`).

    Skips what holds no record: blank lines, a cut-off last line (a run still writing, or
    killed), a line that is not a JSON object with a "step". A step logged twice stays twice
    (`repeated_steps` finds it). Any JSON layout reads the same: key order and spacing are free.
    """
    with cycle_collection_paused():
        return [_renamed(record) for record in map(_parse, _lines(run_dir)) if record is not None]


# The columns `read_log` keeps of each train record.
SERIES_KEYS = ("step", *LOSS_TERMS)
_series_row = itemgetter(*SERIES_KEYS)


@dataclass(frozen=True)
class Log:
    """A run log as `read_log` gives it; each record in it is the dict `read` gives."""

    series: dict[str, tuple]  # SERIES_KEYS -> their values over the train records, None if absent
    train: Sequence[dict]  # the train records, in log order, each parsed when asked for
    others: list[dict]  # every other record (eval, resume, end), in log order
    last: dict | None  # the log's last record of any kind; None if it holds none
    unreadable: list[int]  # numbers (from 1) of whole lines that hold no record, blank ones aside


def read_log(run_dir: str | Path) -> Log:
    """A run's records with the train records' step and loss terms as columns, in one pass
    over the log that keeps no dict per train record (see the module's docstring)."""
    train_lines, rows, others, last, unreadable = [], [], [], None, []
    with cycle_collection_paused():
        for number, line in enumerate(_lines(run_dir), 1):
            if (record := _parse(line)) is None:
                # A last line without its newline is a record still being written, not garbage.
                if line.strip() and line.endswith(b"\n"):
                    unreadable.append(number)
                continue
            last = record
            if record.get("kind") == "train":
                train_lines.append(line)
                try:
                    rows.append(_series_row(record))
                except KeyError:  # a record without some loss term (a hand-written log, an old one)
                    rows.append(tuple(map(_renamed(record).get, SERIES_KEYS)))
            else:
                others.append(_renamed(record))
        columns = list(zip(*rows)) or [()] * len(SERIES_KEYS)
    return Log(series=dict(zip(SERIES_KEYS, columns)), train=_LineRecords(train_lines),
               others=others, last=None if last is None else _renamed(last),
               unreadable=unreadable)


class _LineRecords(Sequence):
    """Records kept as their lines (each known to hold a record), parsed when asked for."""

    def __init__(self, lines: list[bytes]):
        self._lines = lines

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [_renamed(_parse(line)) for line in self._lines[index]]
        return _renamed(_parse(self._lines[index]))

    def __iter__(self) -> Iterator[dict]:
        return (_renamed(_parse(line)) for line in self._lines)


def _lines(run_dir: str | Path) -> list[bytes]:
    """The log's lines, each with its newline but a last one cut off; JSON reads past it."""
    with open(Path(run_dir) / METRICS_FILE, "rb") as log:
        return log.readlines()  # half the time of read_bytes().split(b"\n") on a long log


@contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Pauses Python's cycle collector, for code that makes many containers and no cycles.

    A long log is hundreds of thousands of small dicts and lists, none of them in a cycle. While
    they are made, the collector walks all of them again and again; that doubles the time the
    reading takes. Reference counting still frees everything as usual.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _parse(line: bytes) -> dict | None:
    """The record on one line, or None for a line that holds none."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = _parse_non_finite(line)
    return record if isinstance(record, dict) and "step" in record else None


def _parse_non_finite(line: bytes):
    """A line orjson refuses: Python's json writes a non-finite loss as NaN or Infinity, which
    is no standard JSON; json.loads reads those back. None for a line that is no JSON."""
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _renamed(record: dict) -> dict:
    """The record with the keys of logs written before the current names mapped to those."""
    if _OLD_KEYS.isdisjoint(record):  # the usual case, checked in C
        return record
    for old, new in RENAMED.get(record.get("kind"), {}).items():
        if old in record and new not in record:
            record[new] = record.pop(old)
    return record


def repeated_steps(steps: Sequence[int]) -> list[int]:
    """The steps that occur more than once (those of a log's train records, say), ascending.

    A resumed run truncates its log first (`truncate_after`), so a repeated train step means
    logs were joined by hand or a run was resumed without that: the report marks such a run.
    """
    if len(set(steps)) == len(steps):  # the usual case, without counting
        return []
    return sorted(step for step, count in Counter(steps).items() if count > 1)


def truncate_after(run_dir: str | Path, step: int) -> dict | None:
    """Drops records past `step`, so a resumed run logs every step exactly once; returns the
    last record kept (None if none, or no log).

    Lines kept stay byte for byte as they were; lines that hold no record go. Rewrites through
    a temporary file and an atomic rename: a crash leaves the old or the new log.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return None
    kept, last = [], None
    for line in _lines(run_dir):
        if (record := _parse(line)) is not None and record["step"] <= step:
            kept.append(line if line.endswith(b"\n") else line + b"\n")
            last = record
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "wb") as out:
        out.writelines(kept)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return last


def is_finite(value) -> bool:
    """A number (not a boolean) that is neither NaN nor infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_NUMBER_TYPES = frozenset({int, float})  # exact types: a boolean is no loss value


def finite_numbers(values: Iterable) -> list:
    """The values `is_finite` accepts, in order; a whole column of a long log in a few ms, where
    calling is_finite on each value takes a hundred."""
    return list(filter(math.isfinite, [v for v in values if type(v) in _NUMBER_TYPES]))
