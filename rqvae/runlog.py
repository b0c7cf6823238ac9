"""The run log: `metrics.jsonl`, one JSON object per line, in the run directory.

This module defines every record's keys and their meaning; writers and readers use these names.

- train (every run.log_every steps): "kind": "train", "step", "time" (s since the run started),
  the LOSS_TERMS, and per level (lists) the TRAIN_PER_LEVEL keys:
  - batch_used: codes the step's batch picked
  - batch_perplexity: exp(entropy) of the codes the step's batch picked
  - window_dead: codes no batch picked over the last run.dead_window steps
  - wasserstein_levels: the level's transport cost, unweighted: sum(plan * C) / latent_dim
    (sum(plan * C) with wasserstein_scale "whole"); "wasserstein" is their sum weighted by
    wasserstein_level_weights; 0 with the term off
  - sinkhorn_marginal_error: the transport plan's row-marginal error (0 with the term off)
  - sinkhorn_epsilon: the entropic regularization the level's solve used, in squared latent
    units (sinkhorn_epsilon times the level's mean cost in relative mode; 0 with the term off)
- eval (every run.eval_every steps and at the end): "kind": "eval", "step", "time",
  "heldout_recon" (MSE over the held-out split), "heldout_psnr" (dB, pixels in [0, 1]), and per
  level the EVAL_PER_LEVEL keys:
  - train_used, train_dead: codes some / no training image picks, over a full pass of the
    training split (the definitive dead-code count)
  - train_perplexity: perplexity of the codes over that full pass
  - heldout_used, heldout_perplexity: the same over the held-out split
- resume: "kind": "resume", "step" (the checkpoint it resumed from), "time", "changed"
  ({key: [old, new]} for every setting that differs from the run's config until then)
- end: "kind": "end", "step", "time", "status" ("completed", "interrupted" or "failed") and
  "reason"; a log that stops without one belongs to a run still training or one that died.

Logs written before these names are read with the old names mapped to the new (`RENAMED`).
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
from pathlib import Path

import orjson

# Re-exported for the trainer, which still names the files through this module; new code takes
# them from rundir, which owns the run directory's names.
from rqvae.rundir import METRICS_FILE

LOSS_TERMS = ("total", "recon", "commit", "codebook", "wasserstein")
# The per-level outputs of the Sinkhorn solves, among the TRAIN_PER_LEVEL keys.
SINKHORN_PER_LEVEL = ("wasserstein_levels", "sinkhorn_marginal_error", "sinkhorn_epsilon")
TRAIN_PER_LEVEL = ("batch_used", "batch_perplexity", "window_dead", *SINKHORN_PER_LEVEL)
EVAL_SCALARS = ("heldout_recon", "heldout_psnr")
EVAL_PER_LEVEL = ("train_used", "train_dead", "train_perplexity", "heldout_used",
                  "heldout_perplexity")
# Old key -> new key, by record kind, for logs written before the names above.
RENAMED = {
    "train": {"used": "batch_used", "perplexity": "batch_perplexity", "dead": "window_dead"},
    "eval": {"used": "train_used", "dead": "train_dead", "perplexity": "train_perplexity"},
}
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
    lines = (Path(run_dir) / METRICS_FILE).read_bytes().split(b"\n")
    with cycle_collection_paused():
        return [_renamed(record) for record in map(_parse, lines) if record is not None]


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
    for line in path.read_bytes().split(b"\n"):
        if (record := _parse(line)) is not None and record["step"] <= step:
            kept.append(line + b"\n")
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
