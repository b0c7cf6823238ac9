"""`rqvae report`: a run's losses and codebook health, read from its directory alone.

Loads the runs (`runs`) and prints them as tables (`run_tables` for one run, `comparison` for
several, each fitted to the console by `tables`), as JSON (`summary`, which lists its keys) or as
CSV (`write_csv`, here). Imports neither JAX, Flax nor numpy, so it answers at once, also while a
run is still writing and on a 100k-step log (`scripts/bench_report.py`). `make_console` gives
the console the CLI prints to.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from rqvae.reports.comparison import render_comparison
from rqvae.reports.groups import group_runs, render_groups
from rqvae.reports.run_tables import render_run
from rqvae.reports.runs import LoggedRun, NoRecords, find_runs, level_value, load_runs
from rqvae.reports.summary import HISTORY_POINTS, LEVEL_VALUES, summarize
from rqvae.trainer import runlog
from rqvae.trainer.errors import ConfigError

PIPED_WIDTH = 80  # columns of output to a file or pipe without COLUMNS


# -- tables on the console --------------------------------------------------------------------


@contextmanager
def _without_trailing_spaces(console: Console) -> Iterator[None]:
    """Rich pads wrapped lines and tables with spaces; in a file or pipe they stay, and show in
    diffs and greps. A terminal shows none of it, and its output holds colour codes: kept."""
    if console.is_terminal:
        yield
        return
    with console.capture() as capture:
        yield
    console.out("\n".join(line.rstrip() for line in capture.get().split("\n")), end="",
                highlight=False)


def render(runs: list[LoggedRun], console: Console, points: int = HISTORY_POINTS, *,
           last: int | None = None, every: int | None = None,
           without_records: Sequence[LoggedRun] = ()) -> None:
    """Tables for one run (heading, config, resumes, losses, codebook health, trends, the run's
    course), or two comparing several runs (settings that differ, results); `last` and `every`
    choose the steps of one run's course (see `summary.select`). Runs `without_records` (failed
    at once, or starting) count in the groups of runs that differ only in their seed."""
    with _without_trailing_spaces(console):
        if len(runs) == 1:
            render_run(runs[0], console, points, last, every)
        elif runs:
            summaries = {run.path: s for run, s in zip(runs, render_comparison(runs, console))}
            summaries |= {run.path: summarize(run) for run in without_records}
            render_groups([*runs, *without_records], summaries, console)


def make_console(file=None) -> Console:
    """The console `rqvae report` prints to: COLUMNS wide when that is set, else as wide as the
    terminal, else (a file or pipe) PIPED_WIDTH, whatever terminal the command runs under."""
    columns = os.environ.get("COLUMNS", "")
    console = Console(file=file)
    if columns.isdigit() and int(columns) > 0:
        console.width = int(columns)
    elif not console.is_terminal:
        console.width = PIPED_WIDTH
    return console


# -- CSV and main -----------------------------------------------------------------------------

CSV_COLUMNS = ("run", "step", "time", *runlog.LOSS_TERMS)
# Per-level columns of train rows, named as in `summary.LEVEL_VALUES`.
CSV_PER_LEVEL = ("used", "dead", "perplexity", "sinkhorn_marginal_error")
CSV_EVAL_COLUMNS = ("kind", *runlog.EVAL_SCALARS)


def _num_levels(records: list[dict], keys: Sequence[str]) -> int:
    return max((len(r.get(key) or []) for r in records for key in keys), default=0)


def write_csv(runs: list[LoggedRun], out) -> None:
    """Every train and eval record of every run as CSV, by step, for spreadsheets and pandas.

    Columns: run, step, time, the loss terms, per level used_L1, dead_L1, perplexity_L1 and (when
    logged) sinkhorn_marginal_error_L1, used_L2, ... (train rows: the batch and window counts),
    then kind ("train" or "eval"), heldout_recon, heldout_psnr and per level the eval keys
    (`runlog.EVAL_PER_LEVEL`) that any eval logged: train_used_L1, ... (eval rows). An empty cell
    is a missing value.
    """
    finals = [run.train[-1] for run in runs]
    evals = [r for run in runs for r in run.evals]
    per_level = [k for k in CSV_PER_LEVEL
                 if k != "sinkhorn_marginal_error" or any(k in final for final in finals)]
    eval_per_level = [k for k in runlog.EVAL_PER_LEVEL if any(k in r for r in evals)]
    train_levels = _num_levels(finals, [LEVEL_VALUES[k][0] for k in per_level])
    eval_levels = _num_levels(evals, eval_per_level)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *_level_columns(per_level, train_levels), *CSV_EVAL_COLUMNS,
                     *_level_columns(eval_per_level, eval_levels)])
    for run in runs:
        for record in _by_step(run):
            train = record["kind"] == "train"
            writer.writerow([
                run.name, *(record.get(k) for k in CSV_COLUMNS[1:]),
                *(level_value(record, LEVEL_VALUES[k][0], i) if train else None
                  for i in range(train_levels) for k in per_level),
                record["kind"], *(record.get(k) for k in runlog.EVAL_SCALARS),
                *(level_value(record, k, i) for i in range(eval_levels) for k in eval_per_level)])


def _level_columns(keys: list[str], num_levels: int) -> list[str]:
    return [f"{key}_L{i + 1}" for i in range(num_levels) for key in keys]


def _by_step(run: LoggedRun) -> list[dict]:
    """Train and eval records merged by step, train first on a tie (as the trainer logs them)."""
    return sorted((*run.train, *run.evals), key=lambda r: (r["step"], r["kind"] != "train"))


def main(run_dirs: list[Path], as_json: bool, console: Console, *, last: int | None = None,
         every: int | None = None, as_csv: bool = False) -> None:
    """Loads every run; prints JSON, CSV or tables, and to stderr a note for each run skipped.

    A directory that holds runs stands for the runs in it (`find_runs`); one without a train
    record yet is skipped (`load_runs`). `last` and `every` choose the train records of one run's
    tables and of the JSON's history and health (`summary.select`). Raises UserError for a
    path that is no run and ConfigError for options that do not go together: --json with --csv,
    and --last / --every where nothing would use them (the CSV, which has every record, and the
    comparison of several runs).
    """
    if as_json and as_csv:
        raise ConfigError("--json and --csv are two output formats; pass one")
    for flag, value in (("--last", last), ("--every", every)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} takes a positive number of steps, not {value}")
    choosing = "--last" if last is not None else "--every" if every is not None else None
    if as_csv and choosing:
        raise ConfigError(f"{choosing} chooses rows of the tables and JSON; --csv has every "
                          f"record: drop one")
    with runlog.cycle_collection_paused():  # a long log's records are many containers
        _load_and_print(run_dirs, as_json, as_csv, console, last, every, choosing)


def _load_and_print(run_dirs: list[Path], as_json: bool, as_csv: bool, console: Console,
                    last: int | None, every: int | None, choosing: str | None) -> None:
    found = find_runs(run_dirs)
    if as_json:  # every run, also one that has no train record (failed at once, starting)
        try:
            runs, skipped = load_runs(found)
        except NoRecords as err:
            runs, skipped = [], [err]
        order = {run_dir: i for i, run_dir in enumerate(found)}
        every_run = sorted([*runs, *(err.run for err in skipped)],
                           key=lambda run: order.get(run.path, len(order)))
        labels = {run.path: label for label, members in group_runs(every_run).items()
                  for run in members}
        print(json.dumps([summarize(run, last=last, every=every, group=labels.get(run.path))
                          for run in every_run], indent=2))
        return
    runs, skipped = load_runs(found)
    if choosing and len(runs) > 1:
        raise ConfigError(f"{choosing} chooses the rows of one run's report, and {len(runs)} runs "
                          f"are compared; pass one run, or --json")
    for err in skipped:  # wrapped to the console's width, as the tables are
        print(textwrap.fill(f"note: skipped {err.brief()}", console.width,
                            subsequent_indent="  ", break_long_words=False,
                            break_on_hyphens=False), file=sys.stderr)
    if as_csv:
        write_csv(runs, sys.stdout)
    else:
        render(runs, console, last=last, every=every,
               without_records=[err.run for err in skipped])
