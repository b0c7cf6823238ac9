"""The run log: `metrics.jsonl`, one JSON object per line, in the run directory.

This module defines every record's keys and their meaning; writers and readers use these names.

- train (every run.log_every steps): "kind": "train", "step", "time" (s since the run started),
  the LOSS_TERMS, and per level (lists) the TRAIN_PER_LEVEL keys:
  - batch_used: codes the step's batch picked
  - batch_perplexity: exp(entropy) of the codes the step's batch picked
  - window_dead: codes no batch picked over the last run.dead_window steps
  - sinkhorn_marginal_error: the transport plan's row-marginal error (0 with the term off)
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

import json
import math
import mmap
import os
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress
from operator import itemgetter, not_
from pathlib import Path

from rqvae.rundir import CONFIG_FILE, METRICS_FILE  # noqa: F401  (re-exported for readers)

LOSS_TERMS = ("total", "recon", "commit", "codebook", "wasserstein")
TRAIN_PER_LEVEL = ("batch_used", "batch_perplexity", "window_dead", "sinkhorn_marginal_error")
EVAL_SCALARS = ("heldout_recon", "heldout_psnr")
EVAL_PER_LEVEL = ("train_used", "train_dead", "train_perplexity", "heldout_used",
                  "heldout_perplexity")
# Old key -> new key, by record kind, for logs written before the names above.
RENAMED = {
    "train": {"used": "batch_used", "perplexity": "batch_perplexity", "dead": "window_dead"},
    "eval": {"used": "train_used", "dead": "train_dead", "perplexity": "train_perplexity"},
}


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
    """All records of a run, skipping a line that is cut off (a run still writing, or killed)."""
    return _parse_lines((Path(run_dir) / METRICS_FILE).read_bytes().split(b"\n"))


def _parse_lines(lines: Iterable[bytes]) -> list[dict]:
    return [record for record in map(_parse, lines) if record is not None]


def _parse(line: bytes) -> dict | None:
    """The record on one line, or None for a line that holds none (blank, cut off, no step)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


def truncate_after(run_dir: str | Path, step: int) -> None:
    """Drops records past `step`, so a resumed run logs every step exactly once.

    Rewrites through a temporary file and an atomic rename: a crash leaves the old or new log.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = [r for r in read(run_dir) if r["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for record in kept:
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


# -- scan: long logs for reports --------------------------------------------------------------
# json.loads costs ~17 us a line on a 2-core machine: 1.7 s for a 100k-step run. A report needs
# whole records only at a few dozen steps, and of every record just its step and loss terms
# (best values, trends). Those are matched by a regular expression over lines laid out as RunLog
# writes them, a chunk of the log at a time. What a chunk's matches tell (the steps, the lowest
# loss terms) is kept, the matches are not: making all 700k of them at once would cost as much
# again in page faults and freeing. Any other layout is parsed line by line, with the same result.


def _any_line(number: bytes) -> re.Pattern:
    """A train line in RunLog's layout, its step and loss terms in groups 1-6; or any other
    complete line, whole in group 7 (for a train line the empty string)."""
    terms = b"".join(b'"%s":(%s),' % (term.encode(), number) for term in LOSS_TERMS)
    train = rb'\{"kind":"train","step":(0|[1-9]\d*),"time":[^,]*,' + terms + rb'[^\n]*\}\n'
    return re.compile(rb"(?:" + train + rb"|([^\n]*\n))")


# Every loss written as d.ddd, as float repr writes 0 <= x < 10 (each number one way): comparing
# the bytes then compares the numbers, so the smallest needs no float conversion. A chunk with
# other numbers is matched again as _NUMBER_LINE, and so is the rest of the log.
_PLAIN_LINE = _any_line(rb"\d\.\d+")
_NUMBER_LINE = _any_line(rb"-?\d++(?:\.\d++)?(?:[eE][-+]?\d++)?|NaN|-?Infinity")
_OTHER = len(LOSS_TERMS) + 1  # the group of a line that is no train line in the layout
_COLUMN = {term: k + 1 for k, term in enumerate(LOSS_TERMS)}  # a loss term's place in a row
_EVAL_START = b'{"kind":"eval"'
_CHUNK = 1 << 18  # bytes of log matched at a time, about 700 lines: their matches fit in cache


def scan(run_dir: str | Path) -> tuple[TrainLog, list[dict]]:
    """The train records (a `TrainLog`) and the parsed eval records of a run, in log order.

    Skips what `read` skips (a cut-off last line, lines without a record), with one difference:
    a line in RunLog's layout whose JSON breaks after the loss terms is kept as a record of its
    step and loss terms, where `read` drops it. A 100k-line log written by RunLog takes about
    0.17 s on a 2-core machine, against 1.7 s for `read`.
    """
    data = _map(Path(run_dir) / METRICS_FILE)
    complete = data.rfind(b"\n") + 1  # where the last complete line ends
    if _parse(data[complete:]) is None:  # the usual case: empty, or a line still being written
        scanned = _scan_layout(data, complete)
        if scanned is not None:
            return scanned
    records = _parse_lines(data[:].split(b"\n"))
    train = [r for r in records if r.get("kind") == "train"]
    return TrainLog.from_records(train), [r for r in records if r.get("kind") == "eval"]


def _map(path: Path) -> mmap.mmap | bytes:
    """The file's bytes as they are now, mapped rather than copied (a log can be 100 MB). A writer
    only appends (truncate_after replaces the file), so the mapped part does not change."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return b""  # an empty file cannot be mapped
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def _scan_layout(data, complete: int) -> tuple[TrainLog, list[dict]] | None:
    """What `scan` gives, if every complete line is a train line in RunLog's layout or an eval
    line; else None."""
    steps, evals, chunks = [], [], []
    lowest: dict[int, tuple] = {}  # see _note_rows
    nonzero: set[int] = set()  # columns with a value other than 0
    pattern, start = _PLAIN_LINE, 0
    while start < complete:
        end = data.find(b"\n", min(start + _CHUNK, complete) - 1) + 1
        matches, others = _match(pattern, data, start, end)
        if pattern is _PLAIN_LINE and not _only_evals(others):
            pattern = _NUMBER_LINE  # from here on; the lowest values so far become numbers
            lowest = {column: (float(low), first, list(map(float, values)))
                      for column, (low, first, values) in lowest.items()}
            matches, others = _match(pattern, data, start, end)
        if not _only_evals(others):
            return None
        evals += filter(None, map(_parse, others))
        chunks.append((len(steps), start, end))
        _note_rows(matches, len(steps), pattern, lowest, nonzero)
        steps += map(int, map(itemgetter(0), matches))
        start = end
    if len(set(steps)) < len(steps):  # lines are found again by their step, which must be unique
        return None
    return TrainLog(steps, _first_lowest(lowest), _terms(nonzero),
                    _TrainLines(data, steps, chunks)), evals


def _match(pattern: re.Pattern, data, start: int, end: int) -> tuple[list[tuple], list[bytes]]:
    """The rows of the train lines in the layout between start and end, and the other lines."""
    matches = pattern.findall(data, start, end)  # one per line
    others = list(filter(None, map(itemgetter(_OTHER), matches)))
    if others:
        matches = list(compress(matches, map(not_, map(itemgetter(_OTHER), matches))))
    return matches, others


def _only_evals(lines: list[bytes]) -> bool:
    return all(line.startswith(_EVAL_START) for line in lines)


def _note_rows(rows: list[tuple], first: int, layout: re.Pattern | None, lowest: dict,
               nonzero: set) -> None:
    """Updates the lowest finite value of each column (the first one on a tie) and the columns
    with a value other than 0 by rows first, first + 1, ...: JSON text as matched by `layout`,
    or values as parsed (layout None). `lowest` maps a column to its lowest value, the index of
    the first of the rows that held it and their values (numbers if not ordered)."""
    for column in _COLUMN.values():
        values = list(map(itemgetter(column), rows))
        if layout is _PLAIN_LINE:  # d.ddd text: byte order is numeric order, none below 0.0
            numbers, low = values, min(values, default=None)
            is_nonzero = column not in nonzero and max(values, default=b"0.0") != b"0.0"
        elif layout is _NUMBER_LINE:  # number text, NaN or Infinity
            numbers = list(map(float, values))
            low = min(filter(math.isfinite, numbers), default=None)
            is_nonzero = any(numbers)
        else:
            numbers = [float(v) if is_finite(v) else None for v in values]
            low = min((x for x in numbers if x is not None), default=None)
            is_nonzero = any(values)
        if is_nonzero:
            nonzero.add(column)
        if low is not None and (column not in lowest or low < lowest[column][0]):
            lowest[column] = (low, first, numbers)  # its index: see _first_lowest


def _first_lowest(lowest: dict) -> dict[str, int]:
    """term -> the index of the first record with its lowest value, from _note_rows' `lowest`."""
    return {term: lowest[column][1] + lowest[column][2].index(lowest[column][0])
            for term, column in _COLUMN.items() if column in lowest}


def _terms(columns: set[int]) -> set[str]:
    return {term for term, column in _COLUMN.items() if column in columns}


class _TrainLines:
    """The train lines of a log in RunLog's layout, found by their steps within chunks.

    A step names one line: a log has each step once (a resumed run truncates it first).
    """

    def __init__(self, data, steps: list[int], chunks: list[tuple[int, int, int]]):
        self.data, self.steps, self.chunks = data, steps, chunks  # chunk: first index, start, end
        self.firsts = [chunk[0] for chunk in chunks]

    def start(self, i: int, after: int = 0) -> int:
        """Where the i-th train line starts (at or after `after`)."""
        _, start, end = self.chunks[bisect_right(self.firsts, i) - 1]
        at = self.data.find(b'{"kind":"train","step":%d,' % self.steps[i], max(start, after), end)
        if at < 0:
            raise ValueError(f"no line in the log holds train step {self.steps[i]}")
        return at

    def row(self, i: int) -> tuple:
        """(step, total, recon, commit, codebook, wasserstein) of the i-th line, as JSON text."""
        return _NUMBER_LINE.match(self.data, self.start(i)).groups()[:_OTHER]

    def records(self, indices: Iterable[int]) -> list[dict]:
        """The records at sorted `indices`, in one pass."""
        records, end = [], 0
        for i in indices:
            start = self.start(i, end)
            end = self.data.find(b"\n", start)
            # A line in the layout that is no JSON after the loss terms keeps its step and terms.
            records.append(_parse(self.data[start:end]) or {
                "kind": "train", "step": self.steps[i],
                **dict(zip(LOSS_TERMS, map(json.loads, self.row(i)[1:])))})
        return records


class TrainLog(Sequence):
    """The train records of a run log: steps and loss terms, records on demand.

    `steps[i]` and `value(term, i)` belong to the i-th train record in log order; `self[i]` and
    `records(indices)` parse whole records (with the per-level lists) only when asked for.
    """

    def __init__(self, steps: list[int], lowest: dict[str, int], nonzero: set[str], lines):
        self.steps = steps
        self._lowest = lowest  # term -> index of its first lowest finite value
        self._nonzero = nonzero  # terms with a value other than 0
        # .row(i) -> (step, total, recon, commit, codebook, wasserstein), as JSON text or values;
        # .records(sorted distinct indices) -> their records
        self._lines = lines
        self._rows: dict[int, tuple] = {}
        self._cache: dict[int, dict] = {}

    @classmethod
    def from_records(cls, records: list[dict]) -> TrainLog:
        rows = [(r["step"], *(r.get(term) for term in LOSS_TERMS)) for r in records]
        lowest, nonzero = {}, set()
        _note_rows(rows, 0, None, lowest, nonzero)
        return cls([r["step"] for r in records], _first_lowest(lowest), _terms(nonzero),
                   _Records(records, rows))

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> dict:
        return self.records([i])[0]

    def __iter__(self) -> Iterator[dict]:
        """Every record in log order: one pass, no cache (a CSV export of a long run)."""
        return iter(self._lines.records(range(len(self))))

    def records(self, indices: Iterable[int]) -> list[dict]:
        """The records at `indices` (negative ones count from the end), parsed once each."""
        indices = [range(len(self))[i] for i in indices]  # IndexError if out of range
        missing = sorted(set(indices) - self._cache.keys())
        self._cache.update(zip(missing, self._lines.records(missing)))
        return [self._cache[i] for i in indices]

    def value(self, term: str, i: int):
        """The term's value in the i-th record as JSON gives it (a number, NaN, None)."""
        i = range(len(self))[i]  # from the end if negative; IndexError if out of range
        if i not in self._rows:
            self._rows[i] = self._lines.row(i)
        value = self._rows[i][_COLUMN[term]]
        return json.loads(value) if isinstance(value, bytes) else value

    def first_min(self, term: str) -> int | None:
        """Index of the record with the smallest finite value of `term`, the first on a tie."""
        return self._lowest.get(term)

    def any_nonzero(self, term: str) -> bool:
        return term in self._nonzero


class _Records:
    """Parsed train records, for a TrainLog of a log in another layout."""

    def __init__(self, records: list[dict], rows: list[tuple]):
        self._records, self.row = records, rows.__getitem__

    def records(self, indices: Iterable[int]) -> list[dict]:
        return [self._records[i] for i in indices]


def is_finite(value) -> bool:
    """A number (not a boolean) that is neither NaN nor infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
