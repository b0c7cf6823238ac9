"""`rqvae report`: a run's losses and codebook health, read from its directory alone.

Reads `config.toml` (through `rqvae.config.load`), `metrics.jsonl` (schema in `rqvae.runlog`) and
`resumes.jsonl`. Imports neither JAX, Flax nor numpy, so it answers at once, also while a run is
still writing and on a 100k-step log (`scripts/bench_report.py`). A directory that holds runs
instead of being one stands for them; a run without a train record yet is skipped with a note.

A run's status: completed, interrupted or failed (the log's final `end` record says), running (a
process holds the run directory, `rundir.is_held`) or crashed (neither: the process ended without
a final record). A log written before `end` records that reached the configured steps counts as
completed. A train step the log holds twice is marked ("repeated steps").

Tables never cut a value: at any console width a table too wide is split into parts that each
repeat the first column, and only text (names, settings) wraps. `make_console` gives the console
the CLI prints to.

`--json` prints a list with one summary per run (`summarize`). Keys are kept stable: new ones may
be added, none renamed or dropped. Values are as logged; a non-finite loss prints as NaN or
Infinity, as Python's json writes it.

- run: the run directory's name
- path: the run directory as given
- config: the always-shown keys (lambdas, steps, model shape, data set), then every other key of
  config.toml that differs from the default, flat ("model.num_codes"); {} without a config.toml
  or when it does not load
- config_note: why config is empty (no config.toml, or the error loading it), else null
- status: completed, running, interrupted, failed or crashed (see above)
- status_reason: the end record's reason, or what the status was inferred from
- repeated_steps: train steps the log holds more than once, ascending ([] normally)
- steps_logged: the highest step of any record in the log
- final: the last train record's loss terms, {term: value}
- best: the lowest logged finite value of each loss term, {term: {"value", "step"}} (first on a
  tie); a term that rises while the run improves has its lowest early, so see best_heldout
- best_heldout: the lowest held-out recon of any eval, or null before the first
  - step: the eval's step
  - heldout_recon: its held-out reconstruction loss
- levels: one per quantization level, from the last train record and the last eval record
  - level: 1-based level number
  - used: codes picked in the last train batch (batch_used)
  - perplexity: exp(entropy) of the codes picked in the last train batch (batch_perplexity)
  - dead: codes unused over the last run.dead_window steps (window_dead)
  - eval_used: codes picked by any training image at the last eval (only with an eval)
  - eval_dead: codes no training image picks at the last eval (only with an eval)
  - eval_perplexity: perplexity of the codes over the training split (only with an eval)
  - heldout_used: codes picked by any held-out image (only if the eval logged it)
  - heldout_perplexity: the same over the held-out split (only if the eval logged it)
  - sinkhorn_marginal_error: the transport plan's row-marginal error (only if logged and the
    Wasserstein term was on)
- eval: the last eval record, or null before the first
  - step: its step
  - heldout_recon: reconstruction loss on the held-out split
  - heldout_psnr: PSNR on the held-out split in dB (only if the eval logged it)
- heldout_history: every eval record in log order, [{step, heldout_recon}]
  - step, heldout_recon: as in eval
- resumes: each time the run resumed, oldest first: from the log's resume records, or from
  resumes.jsonl for a run whose log holds none
  - step: the checkpoint's step it resumed from
  - changed: {key: [old, new]} for every setting that changed
- history: loss terms at the selected train records: 8 evenly spaced ones (first and last
  included), or those `last` / `every` choose
  - step: the record's step
  - total, recon, commit, codebook, wasserstein: the loss terms at that step
- health: codebook health at the same train records as history, per level as lists
  - step: the record's step
  - used, perplexity, dead: as in levels, one entry per level
  - sinkhorn_marginal_error: one entry per level (only if logged and the Wasserstein term was on)
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from pathlib import Path

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rqvae import config, rundir, runlog
from rqvae.config import ConfigError
from rqvae.runlog import finite_numbers, is_finite

LOSS_TERMS = runlog.LOSS_TERMS
# Shown in the config brief whether or not they differ from the defaults: they say what kind of run
# this is and how big its codebooks are.
ALWAYS_SHOWN = (
    "lambda_codebook",
    "lambda_commit",
    "lambda_wasserstein",
    "steps",
    "model.num_levels",
    "model.num_codes",
    "data.dataset",
)
# Differs in every run and is the run's path, which the report prints anyway.
NEVER_SHOWN = ("run.run_dir",)
# Column headers of settings in the comparison: short and ASCII (a Greek lambda is one cell on
# some terminals and two on others); a legend under the table names the key of each. A key not
# listed is headed by its last dotted part.
SHORT_HEADERS = {
    "lambda_codebook": "w_cb",
    "lambda_commit": "w_cm",
    "lambda_wasserstein": "w_W",
    "learning_rate": "lr",
    "sinkhorn_epsilon": "eps",
    "sinkhorn_iters": "iters",
    "wasserstein_level_weights": "W_levels",
    "wasserstein_encoder_grad": "W_enc",
    "sinkhorn_warm_start": "warm",
    "sinkhorn_unroll": "unroll",
    "dead_code_threshold": "reseed",
    "kmeans_init": "kmeans",
    "batch_size": "batch",
    "model.num_levels": "levels",
    "model.num_codes": "codes",
    "model.latent_dim": "dim",
    "data.dataset": "data",
}
# Loss terms as column headers: "wasserstein" would be the widest column of every loss table.
TERM_HEADERS = {"wasserstein": "W"}
BEST_STYLE = "bold green"
HISTORY_POINTS = 8  # train records in the history and health tables unless last/every choose
TREND_POINTS = 40  # characters of a sparkline at most; fewer on a narrow console
MIN_TREND_POINTS = 8
SPARKS = "▁▂▃▄▅▆▇█"
PIPED_WIDTH = 80  # columns of output to a file or pipe without COLUMNS
_TRAIN_CMD = "pass a directory written by `rqvae train`"


class NoRecords(rundir.UserError):
    """A run directory whose log holds no train record yet; the message says why."""


@dataclass(frozen=True)
class LoggedRun:
    """One run directory, as read from disk."""

    name: str  # the directory's name
    path: Path
    config: dict  # flat {"model.num_codes": 64, ...}, every key; empty if none or it fails
    config_note: str | None  # why config is empty, or None
    train: list[dict]  # records with kind == "train", in log order
    series: dict[str, Sequence]  # "step" and each loss term over train, None where missing
    evals: list[dict]  # records with kind == "eval", in log order
    resumes: list[dict]  # {"step", "changed"}, oldest first
    status: str  # completed, running, interrupted, failed or crashed
    status_reason: str
    repeated_steps: list[int]  # train steps logged more than once

    @cached_property
    def extremes(self) -> dict[str, tuple | None]:
        """Loss term -> (its lowest finite value, the index of the first train record with it,
        its highest finite value), or None if it has no finite value. Made once: the summary
        and the trends both need it, and a long log's values cost a pass each."""
        return {term: _extremes(self.series[term]) for term in LOSS_TERMS}


def _extremes(values: Sequence) -> tuple | None:
    """(lowest finite value, the index of its first occurrence, highest finite value) or None."""
    # A finite sum of numbers proves them all finite (a NaN or infinity makes it NaN or
    # infinite): then min and max need no filter, which costs more than both on a long log.
    if set(map(type, values)) <= {int, float} and math.isfinite(sum(values)):
        finite = values
    else:
        finite = finite_numbers(values)
    if not finite:
        return None
    low = min(finite)
    return low, values.index(low), max(finite)


# -- loading ----------------------------------------------------------------------------------


def load_run(run_dir: Path) -> LoggedRun:
    """Reads a run directory written by `rqvae train`, also one still being written.

    Raises rundir.UserError, one line naming the problem and the fix, when the directory is
    missing, is not a directory or holds no metrics.jsonl, and NoRecords (a UserError) when its
    log holds no train record yet, saying whether the run is still starting, failed or crashed.
    A config.toml that is missing or does not load is no error: the config is then empty and
    config_note says why.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise rundir.UserError(f"run directory {run_dir} does not exist; {_TRAIN_CMD}")
    if not run_dir.is_dir():
        raise rundir.UserError(f"{run_dir} is not a directory; {_TRAIN_CMD}")
    log_path = run_dir / rundir.METRICS_FILE
    if not log_path.is_file():
        raise rundir.UserError(_no_log_message(run_dir))
    try:
        records = runlog.read(run_dir)
    except OSError as err:
        raise rundir.UserError(f"cannot read {log_path}: {err.strerror}; check the file") from None
    run_config, config_note = _read_config(run_dir)
    by_kind = _by_kind(records)
    train = by_kind.get("train", [])
    series = _series(train)
    status, reason = run_status(records[-1] if records else None, rundir.is_held(run_dir),
                                max(series["step"], default=None), run_config.get("steps"))
    if not train:
        raise NoRecords(_no_records_message(run_dir, status, reason))
    return LoggedRun(
        name=run_dir.name, path=run_dir, config=run_config, config_note=config_note,
        train=train, series=series, evals=by_kind.get("eval", []),
        resumes=_resumes(run_dir, by_kind.get("resume", [])), status=status,
        status_reason=reason, repeated_steps=runlog.repeated_steps(series["step"]))


_SERIES_KEYS = ("step", *LOSS_TERMS)


def _series(train: list[dict]) -> dict[str, Sequence]:
    """The step and loss terms of each train record, as columns. One pass over the records: a
    long log's records lie all over memory, and each pass over them costs."""
    try:
        rows = list(map(itemgetter(*_SERIES_KEYS), train))
    except KeyError:  # a record without some loss term (a hand-written log, an old one)
        rows = [tuple(record.get(key) for key in _SERIES_KEYS) for record in train]
    columns = list(zip(*rows)) or [()] * len(_SERIES_KEYS)
    return dict(zip(_SERIES_KEYS, columns))


def _by_kind(records: list[dict]) -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for record in records:
        by_kind.setdefault(record.get("kind"), []).append(record)
    return by_kind


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
    """Each path that is a run; for a directory holding runs (runs/), the runs in it by name.

    A path that is neither stays, for `load_run` to say what is wrong with it.
    """
    run_dirs = []
    for path in map(Path, paths):
        below = [] if (path / rundir.METRICS_FILE).is_file() else _runs_below(path)
        run_dirs += below or [path]
    return run_dirs


def _runs_below(path: Path) -> list[Path]:
    return sorted(log.parent for log in path.glob(f"*/{rundir.METRICS_FILE}") if log.is_file())


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
        return config.flatten(config.to_dict(config.load(path))), None
    except (ConfigError, UnicodeDecodeError, OSError) as err:
        return {}, f"{rundir.CONFIG_FILE} does not load ({err}); settings not shown"


# -- the summary ------------------------------------------------------------------------------


def _defaults() -> dict:
    return config.flatten(config.to_dict(config.TrainerConfig()))


def config_brief(run_config: dict) -> dict:
    """The ALWAYS_SHOWN keys, then every other key whose value differs from the defaults.

    An empty config (no config.toml) gives an empty brief: nothing is known about the run.
    """
    if not run_config:
        return {}
    defaults = _defaults()
    brief = {key: run_config[key] for key in ALWAYS_SHOWN if key in run_config}
    for key, value in run_config.items():
        if key not in brief and key not in NEVER_SHOWN and defaults.get(key) != value:
            brief[key] = value
    return brief


def wasserstein_on(run: LoggedRun) -> bool:
    """Whether the run used the OT term: a positive weight, or any non-zero logged value."""
    weight = run.config.get("lambda_wasserstein", 0) or 0
    return weight > 0 or any(run.series["wasserstein"])


def _best(run: LoggedRun) -> dict:
    """The lowest finite value of each loss term and its step (the first on a tie)."""
    return {term: {"value": found[0], "step": run.series["step"][found[1]]}
            for term, found in run.extremes.items() if found is not None}


def _best_heldout(evals: list[dict]) -> dict | None:
    found = _extremes([r.get("heldout_recon") for r in evals])
    return None if found is None else {"step": evals[found[1]]["step"], "heldout_recon": found[0]}


# JSON key of `levels` (kept from the first release) -> record key (runlog's names).
_TRAIN_LEVEL_KEYS = {"used": "batch_used", "perplexity": "batch_perplexity",
                     "dead": "window_dead"}
_EVAL_LEVEL_KEYS = {"eval_used": "train_used", "eval_dead": "train_dead",
                    "eval_perplexity": "train_perplexity"}
_HELDOUT_LEVEL_KEYS = ("heldout_used", "heldout_perplexity")  # named alike in both


def _levels(run: LoggedRun, final: dict, ot_on: bool) -> list[dict]:
    last_eval = run.evals[-1] if run.evals else None
    with_sinkhorn = ot_on and "sinkhorn_marginal_error" in final
    levels = []
    for i in range(len(final.get("batch_used") or [])):
        level = {"level": i + 1, **{k: _at(final, key, i) for k, key in _TRAIN_LEVEL_KEYS.items()}}
        if last_eval is not None:
            level.update({k: _at(last_eval, key, i) for k, key in _EVAL_LEVEL_KEYS.items()})
            level.update({k: _at(last_eval, k, i) for k in _HELDOUT_LEVEL_KEYS if k in last_eval})
        if with_sinkhorn:
            level["sinkhorn_marginal_error"] = _at(final, "sinkhorn_marginal_error", i)
        levels.append(level)
    return levels


def _at(record: dict, key: str, i: int):
    values = record.get(key) or []
    return values[i] if i < len(values) else None


def evenly_spaced(records: Sequence, points: int) -> list:
    """Up to `points` (at least 2) records at evenly spaced positions, always the first and last."""
    points = max(points, 2)
    if len(records) <= points:
        return list(records)
    stride = (len(records) - 1) / (points - 1)  # > 1, so the rounded positions are distinct
    return [records[round(i * stride)] for i in range(points)]


def select(steps: list[int], points: int = HISTORY_POINTS, last: int | None = None,
           every: int | None = None) -> list[int]:
    """Indices of the train records (with these steps) that the history and health show.

    By default `points` evenly spaced ones, the first and last included. `every` keeps the
    records whose step is a multiple of it, and the last; `last` keeps the last N records (of
    those `every` kept, when both are given).
    """
    if every is None and last is None:
        return evenly_spaced(range(len(steps)), points)
    indices = list(range(len(steps)))
    if every is not None:
        indices = [i for i, step in enumerate(steps) if step % every == 0]
        if not indices or indices[-1] != len(steps) - 1:
            indices.append(len(steps) - 1)
    return indices[-last:] if last is not None else indices


def _eval_summary(record: dict | None) -> dict | None:
    if record is None:
        return None
    keys = ("step", "heldout_recon", *(["heldout_psnr"] if "heldout_psnr" in record else []))
    return {k: record.get(k) for k in keys}


def _health_entry(record: dict, with_sinkhorn: bool) -> dict:
    entry = {"step": record["step"]}
    entry.update({k: record[key] for k, key in _TRAIN_LEVEL_KEYS.items() if key in record})
    if with_sinkhorn and "sinkhorn_marginal_error" in record:
        entry["sinkhorn_marginal_error"] = record["sinkhorn_marginal_error"]
    return entry


def summarize(run: LoggedRun, points: int = HISTORY_POINTS, *, last: int | None = None,
              every: int | None = None) -> dict:
    """A JSON-ready summary of one run; its keys are listed in the module docstring.

    `points`, `last` and `every` choose the train records of history and health (see `select`).
    """
    shown = [run.train[i] for i in select(run.series["step"], points, last, every)]
    final = run.train[-1]
    with_sinkhorn = wasserstein_on(run)
    return {
        "run": run.name,
        "path": str(run.path),
        "config": config_brief(run.config),
        "config_note": run.config_note,
        "status": run.status,
        "status_reason": run.status_reason,
        "repeated_steps": run.repeated_steps,
        "steps_logged": max(max(run.series["step"]),
                            max((r["step"] for r in run.evals), default=0)),
        "final": {term: final[term] for term in LOSS_TERMS if term in final},
        "best": _best(run),
        "best_heldout": _best_heldout(run.evals),
        "levels": _levels(run, final, with_sinkhorn),
        "eval": _eval_summary(run.evals[-1] if run.evals else None),
        "heldout_history": [{"step": r["step"], "heldout_recon": r.get("heldout_recon")}
                            for r in run.evals],
        "resumes": run.resumes,
        "history": [{k: r[k] for k in ("step", *LOSS_TERMS) if k in r} for r in shown],
        "health": [_health_entry(r, with_sinkhorn) for r in shown],
    }


# -- fitting tables to the console ------------------------------------------------------------
# Rich shrinks a table wider than the console by cutting cells ("0.…"), also numbers. Here every
# column is as wide as its widest cell; only text columns (names, settings) may wrap, down to
# MIN_TEXT_WIDTH; a table still too wide is printed in parts that each repeat the key column.

MIN_TEXT_WIDTH = 12


@dataclass(frozen=True)
class Col:
    header: str  # may hold "\n": a header of two short lines
    justify: str = "right"
    text: bool = False  # holds text that may wrap; numbers never do


def _width(cell) -> int:
    plain = cell.plain if isinstance(cell, Text) else str(cell)
    return max(map(cell_len, plain.split("\n")))


def _table_width(widths: Sequence[int]) -> int:
    return sum(widths) + 3 * len(widths) + 1  # padding of 1 each side, a border between and around


def _fit_text(widths: list[int], cols: Sequence[Col], width: int) -> list[int]:
    """The widths with text columns narrowed, widest first, so that the table fits; if it cannot
    fit, with only a long text column narrowed (to a third of the console), for parts each
    showing it."""
    narrowed = list(widths)
    while (excess := _table_width(narrowed) - width) > 0:
        narrowable = [i for i, col in enumerate(cols) if col.text and narrowed[i] > MIN_TEXT_WIDTH]
        if not narrowable:
            break
        widest = max(narrowable, key=narrowed.__getitem__)
        narrowed[widest] = max(MIN_TEXT_WIDTH, narrowed[widest] - excess)
    if _table_width(narrowed) <= width:
        return narrowed
    cap = max(MIN_TEXT_WIDTH, width // 3)
    return [min(w, cap) if col.text else w for w, col in zip(widths, cols)]


def _parts(widths: list[int], width: int) -> list[list[int]]:
    """Column indices of each part: the key column (0), then as many of the others as fit."""
    parts = [[0]]
    for i in range(1, len(widths)):
        if len(parts[-1]) > 1 and _table_width([widths[c] for c in parts[-1] + [i]]) > width:
            parts.append([0])
        parts[-1].append(i)
    return parts


def print_table(console: Console, title: str, cols: Sequence[Col], rows: list[list],
                legend: str = "") -> None:
    """Prints the rows (cells: str or Text) under a title, as one table or as parts that fit the
    console, then the legend; no number is ever cut."""
    rows = [[c if isinstance(c, Text) else Text(str(c)) for c in row] for row in rows]
    widths = [max(_width(col.header), *(_width(row[i]) for row in rows), 1)
              for i, col in enumerate(cols)]
    widths = _fit_text(widths, cols, console.width)
    parts = _parts(widths, console.width)
    for n, part in enumerate(parts):
        console.print(Text(title + (f" (part {n + 1} of {len(parts)})" if len(parts) > 1 else ""),
                           style="bold"))
        table = Table()
        for i in part:
            table.add_column(cols[i].header, justify=cols[i].justify, width=widths[i],
                             no_wrap=not cols[i].text, overflow="fold")
        for row in rows:
            table.add_row(*(row[i] for i in part))
        console.print(table)
    if legend:
        console.print(Text(legend, style="dim"))


# -- rendering --------------------------------------------------------------------------------


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _shown_terms(run: LoggedRun) -> tuple[str, ...]:
    return tuple(t for t in LOSS_TERMS if t != "wasserstein" or wasserstein_on(run))


def _status_text(status: str, reason: str, repeated: list[int]) -> str:
    text = status + (f" ({reason})" if reason and status in ("interrupted", "failed",
                                                              "crashed") else "")
    if repeated:
        shown = ", ".join(map(str, repeated[:5])) + (", ..." if len(repeated) > 5 else "")
        text += f"; repeated steps: {shown} (logged twice)"
    return text


def _print_heading(summary: dict, run: LoggedRun, console: Console) -> None:
    planned = run.config.get("steps")
    of_steps = f" of {planned}" if planned is not None else ""
    status = _status_text(run.status, run.status_reason, run.repeated_steps)
    console.print(Text(f"run {summary['run']}: step {summary['steps_logged']}{of_steps}, {status}",
                       style="bold"))
    console.print(Text(summary["path"], style="dim"))


def _print_config(summary: dict, run: LoggedRun, console: Console) -> None:
    if run.config_note:
        console.print(Text(f"config: {run.config_note}", style="dim"))
        return
    rows = [[key, _fmt(value)] for key, value in summary["config"].items()]
    print_table(console, "config (keys not listed are at their defaults)",
                [Col("key", "left", text=True), Col("value", "left", text=True)], rows)


def _changes(changed: dict) -> str:
    parts = [f"{key}: {_fmt(old)} -> {_fmt(new)}" for key, (old, new) in changed.items()]
    return "; ".join(parts) or "nothing"


def _print_resumes(summary: dict, console: Console) -> None:
    resumes = summary["resumes"]
    if not resumes:
        return
    rows = [[_fmt(r["step"]), _changes(r["changed"])] for r in resumes]
    print_table(console, f"resumed {len(resumes)} time(s)",
                [Col("at step"), Col("settings changed (old -> new)", "left", text=True)], rows)


def _print_losses(summary: dict, terms: tuple[str, ...], console: Console) -> None:
    final, best = summary["final"], summary["best"]
    final_step = summary["history"][-1]["step"]
    rows = [[f"final (step {final_step})", *(_fmt(final.get(t)) for t in terms)],
            ["lowest logged", *(_fmt(best[t]["value"]) if t in best else "-" for t in terms)],
            ["at step", *(_fmt(best[t]["step"]) if t in best else "-" for t in terms)]]
    cols = [Col("", "left"), *(Col(TERM_HEADERS.get(t, t)) for t in terms)]
    legend = ["lowest logged: the lowest value of each term, which need not be the run's best (a "
              "term can rise while the run improves)"]
    if "wasserstein" in terms:
        legend.append("W: the Wasserstein (Sinkhorn) term")
    last_eval, best_heldout = summary["eval"], summary["best_heldout"]
    if last_eval is not None:
        cols.append(Col("heldout"))
        lowest_heldout = best_heldout or {"heldout_recon": None, "step": None}
        for row, value in zip(rows, (last_eval["heldout_recon"], lowest_heldout["heldout_recon"],
                                     lowest_heldout["step"])):
            row.append(_fmt(value))
        legend.append(f"heldout: recon on the held-out split, final at the eval of step "
                      f"{last_eval['step']}")
    legend.append(_best_line(best_heldout, last_eval))
    print_table(console, "losses", cols, rows, "; ".join(legend))


def _best_line(best_heldout: dict | None, last_eval: dict | None) -> str:
    if best_heldout is not None:
        return (f"best: the lowest held-out recon, {_fmt(best_heldout['heldout_recon'])} at step "
                f"{best_heldout['step']}")
    if last_eval is not None:
        return "best: no eval logged a finite held-out recon"
    return "best (the lowest held-out recon): none before the first eval"


def _dead_window(run: LoggedRun) -> str:
    window = run.config.get("run.dead_window")
    return f"the last {window} steps" if window else "the last run.dead_window steps"


def _print_levels(summary: dict, run: LoggedRun, console: Console) -> None:
    levels = summary["levels"]
    if not levels:
        return
    columns = {"level": "level", "used": "batch\nused", "perplexity": "batch\nppl",
               "dead": "window\ndead"}
    legend = (f"batch: the last train batch; window dead: codes unused over "
              f"{_dead_window(run)}; ppl: perplexity")
    if summary["eval"] is not None:
        columns |= {"eval_dead": "train\ndead", "eval_perplexity": "train\nppl"}
        if any("heldout_perplexity" in level for level in levels):
            columns["heldout_perplexity"] = "heldout\nppl"
        legend += (f"; train: every training image at the eval of step {summary['eval']['step']}"
                   f" (a code no image picks is dead); heldout: every held-out image")
    else:
        legend += "; no eval yet: full-pass columns appear after the first eval"
    if any("sinkhorn_marginal_error" in level for level in levels):
        columns["sinkhorn_marginal_error"] = "sinkhorn\nerror"
        legend += "; sinkhorn error: the transport plan's row-marginal error"
    num_codes = run.config.get("model.num_codes")
    codes = f" ({num_codes} codes each)" if num_codes is not None else ""
    rows = [[_fmt(level.get(key)) for key in columns] for level in levels]
    print_table(console, f"codebook health per level{codes}",
                [Col(header) for header in columns.values()], rows, legend)


def sparkline(values: Sequence, width: int = TREND_POINTS) -> str:
    """One character per value, ▁ for the lowest to █ for the highest, at most `width` of them.

    A longer series is sampled at `width` evenly spaced positions. Log-scaled when the values
    span more than a decade (`log_scaled`), so a loss that falls a hundredfold still shows its
    later shape. A missing or non-finite value is a blank; a constant series is all ▄.
    """
    values = evenly_spaced(values, width)
    finite = finite_numbers(values)
    if not finite:
        return " " * len(values)
    scale = math.log10 if log_scaled(finite) else float
    low, high = scale(min(finite)), scale(max(finite))
    chars = []
    for value in values:
        if not is_finite(value):
            chars.append(" ")
        elif high == low:
            chars.append(SPARKS[3])
        else:
            chars.append(SPARKS[round((scale(value) - low) / (high - low) * (len(SPARKS) - 1))])
    return "".join(chars)


def log_scaled(values: Sequence) -> bool:
    """Whether the finite values are all positive and span more than a decade."""
    finite = finite_numbers(values)
    return bool(finite) and min(finite) > 0 and max(finite) > 10 * min(finite)


def _trend_row(label: str, values: list, extremes: tuple | None) -> list:
    """label, the series (its sparkline and scale later), lowest and highest of all values."""
    low, _, high = extremes or (None, None, None)
    return [label, values, _fmt(low), _fmt(high), ""]


def _print_trends(run: LoggedRun, terms: tuple[str, ...], console: Console) -> None:
    steps = run.series["step"]
    rows = [_trend_row(term, run.series[term], run.extremes[term]) for term in terms]
    if run.evals:
        heldout = [r.get("heldout_recon") for r in run.evals]
        rows.append(_trend_row("heldout", heldout, _extremes(heldout)))
    cols = [Col("term", "left"), Col("trend", "left"), Col("lowest"), Col("highest"),
            Col("scale")]
    others = [max(_width(col.header), *(_width(row[i]) for row in rows), len("linear"))
              for i, col in enumerate(cols) if i != 1]
    # As wide as the console leaves, so no sparkline is cut.
    points = max(MIN_TREND_POINTS, min(TREND_POINTS, console.width - _table_width(others) - 3))
    for row in rows:
        shown = evenly_spaced(row[1], points)
        row[1], row[4] = sparkline(shown, points), "log" if log_scaled(shown) else "linear"
    legend = (f"each trend: ▁ lowest to █ highest, at up to {points} evenly spaced logged steps; "
              f"log: the shown values span more than a decade")
    if run.evals:
        legend += f"; heldout: held-out recon over the run's {len(run.evals)} evals"
    print_table(console, f"trends over all {len(steps)} logged steps (step {steps[0]} to "
                f"{steps[-1]})", cols, rows, legend)


def _selection_note(last: int | None, every: int | None) -> str:
    """What `select` chose, for the titles of the tables over the run."""
    multiples = f"at multiples of {every}, and the last" if every is not None else ""
    if last is not None:
        return f" (the last {last} logged steps{' ' + multiples if multiples else ''})"
    return f" (logged steps {multiples})" if multiples else ""


def _print_history(summary: dict, terms: tuple[str, ...], note: str, console: Console) -> None:
    rows = [[_fmt(r["step"]), *(_fmt(r.get(t)) for t in terms)] for r in summary["history"]]
    cols = [Col("step"), *(Col(TERM_HEADERS.get(t, t)) for t in terms)]
    print_table(console, f"losses over the run{note}", cols, rows)


def _print_health_over_time(summary: dict, run: LoggedRun, note: str, console: Console) -> None:
    num_codes = run.config.get("model.num_codes")
    health = summary["health"]
    columns = {"used": "batch\nused %" if num_codes else "batch\nused", "perplexity": "batch\nppl",
               "dead": "window\ndead"}
    if any("sinkhorn_marginal_error" in entry for entry in health):
        columns["sinkhorn_marginal_error"] = "sinkhorn\nerror"

    def cell(entry: dict, key: str) -> str:
        values = entry.get(key) or []
        if key == "used" and num_codes:
            values = [f"{100 * v / num_codes:.0f}" if is_finite(v) else v for v in values]
        return " / ".join(map(_fmt, values)) or "-"

    rows = [[_fmt(entry["step"]), *(cell(entry, key) for key in columns)] for entry in health]
    print_table(console, f"codebook health over the run{note}",
                [Col("step"), *(Col(header) for header in columns.values())], rows,
                "each cell: level 1 / level 2 / ...")


def _render_one(run: LoggedRun, console: Console, points: int, last: int | None,
                every: int | None) -> None:
    summary = summarize(run, points, last=last, every=every)
    terms = _shown_terms(run)
    note = _selection_note(last, every)
    _print_heading(summary, run, console)
    _print_config(summary, run, console)
    _print_resumes(summary, console)
    _print_losses(summary, terms, console)
    _print_levels(summary, run, console)
    _print_trends(run, terms, console)
    _print_history(summary, terms, note, console)
    _print_health_over_time(summary, run, note, console)


# -- several runs -----------------------------------------------------------------------------


def differing_keys(runs: list[LoggedRun]) -> list[str]:
    """The config keys whose values differ between the runs (those with a config), in config
    order; never run.run_dir, which always differs."""
    configs = [run.config for run in runs if run.config]
    keys = list(dict.fromkeys(key for cfg in configs for key in cfg))
    return [key for key in keys if key not in NEVER_SHOWN
            and len({json.dumps(cfg.get(key)) for cfg in configs}) > 1]


def _short_header(key: str, keys: list[str]) -> str:
    if key in SHORT_HEADERS:
        return SHORT_HEADERS[key]
    tail = key.rsplit(".", 1)[-1]
    return tail if sum(k.rsplit(".", 1)[-1] == tail for k in keys) == 1 else key


def _print_settings(runs: list[LoggedRun], console: Console) -> None:
    keys = differing_keys(runs)
    without = [run.name for run in runs if not run.config]
    if not keys:
        note = f" with a config ({', '.join(without)} have none)" if without else ""
        console.print(Text(f"settings: no config key differs between the runs{note}",
                           style="dim"))
        return
    headers = {key: _short_header(key, keys) for key in keys}
    text_keys = {key for key in keys if any(isinstance(run.config.get(key), str | list)
                                            for run in runs)}
    cols = [Col("run", "left", text=True),
            *(Col(headers[key], "left" if key in text_keys else "right", text=key in text_keys)
              for key in keys)]
    rows = [[run.name, *(_fmt(run.config.get(key)) if run.config else "?" for key in keys)]
            for run in runs]
    legend = "; ".join(f"{header}: {key}" for key, header in headers.items() if header != key)
    if without:
        legend += ("; " if legend else "") + "?: no config"
    print_table(console, "settings that differ between the runs", cols, rows, legend)


def _comparison_rows(runs: list[LoggedRun], summaries: list[dict], num_levels: int) -> list[list]:
    rows = []
    for run, s in zip(runs, summaries):
        # The full pass is the definitive count; the window count stands in before the first eval.
        dead = [lv["eval_dead"] if s["eval"] is not None else lv["dead"] for lv in s["levels"]]
        steps = s["steps_logged"]
        planned = run.config.get("steps")
        rows.append([
            run.name,
            run.status + (", repeated steps" if run.repeated_steps else ""),
            f"{steps}/{planned}" if planned is not None and planned != steps else str(steps),
            s["final"].get("total"),
            s["final"].get("recon"),
            s["eval"]["heldout_recon"] if s["eval"] is not None else None,
            *(dead + [None] * (num_levels - len(dead))),
        ])
    return rows


_RANKED_FROM = 4  # columns from recon on are ranked: a total mixes different lambdas


def _best_cells(runs: list[LoggedRun], rows: list[list]) -> set[tuple[int, int]]:
    """(row, column) of the lowest value of each ranked column among runs on the same data set;
    none where the runs tie, or where a data set has one run."""
    by_dataset: dict[str, list[int]] = {}
    for r, run in enumerate(runs):
        by_dataset.setdefault(str(run.config.get("data.dataset")), []).append(r)
    best = set()
    for members in by_dataset.values():
        for c in range(_RANKED_FROM, len(rows[0])):
            values = [rows[r][c] for r in members if is_finite(rows[r][c])]
            if len(set(values)) > 1:
                best |= {(r, c) for r in members if rows[r][c] == min(values)}
    return best


def _render_comparison(runs: list[LoggedRun], console: Console) -> None:
    summaries = [summarize(run) for run in runs]
    num_levels = max(len(s["levels"]) for s in summaries)
    _print_settings(runs, console)
    rows = _comparison_rows(runs, summaries, num_levels)
    best = _best_cells(runs, rows)
    window_only = {s["run"] for s in summaries if s["eval"] is None}
    cells = []
    for r, row in enumerate(rows):
        cells.append([])
        for c, value in enumerate(row):
            mark = c >= 6 and row[0] in window_only and value is not None
            cells[-1].append(Text(_fmt(value) + ("*" if mark else ""),
                                  style=BEST_STYLE if (r, c) in best else ""))
    cols = [Col("run", "left", text=True), Col("status", "left", text=True), Col("steps"),
            Col("total"), Col("recon"), Col("heldout"),
            *(Col(f"dead\nL{i + 1}") for i in range(num_levels))]
    legend = ("total, recon: the last train record's; heldout: held-out recon at the last eval; "
              "dead Ln: codes no training image picks at the last eval")
    if window_only:
        legend += "; * no eval yet: codes unused in the last training window"
    legend += f"; lowest recon, heldout and dead counts in {BEST_STYLE} among runs on one data set"
    print_table(console, f"{len(runs)} runs side by side", cols, cells, legend)


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
           last: int | None = None, every: int | None = None) -> None:
    """Tables for one run (heading, config, resumes, losses, codebook health, trends, the run's
    course), or two comparing several runs (settings that differ, results); `last` and `every`
    choose the steps of one run's course (see `select`)."""
    with _without_trailing_spaces(console):
        if len(runs) == 1:
            _render_one(runs[0], console, points, last, every)
        elif runs:
            _render_comparison(runs, console)


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

CSV_COLUMNS = ("run", "step", "time", *LOSS_TERMS)
# CSV name (kept from the first release) -> train record key.
CSV_PER_LEVEL = {"used": "batch_used", "dead": "window_dead", "perplexity": "batch_perplexity",
                 "sinkhorn_marginal_error": "sinkhorn_marginal_error"}
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
    train_levels = _num_levels(finals, [CSV_PER_LEVEL[k] for k in per_level])
    eval_levels = _num_levels(evals, eval_per_level)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *_level_columns(per_level, train_levels), *CSV_EVAL_COLUMNS,
                     *_level_columns(eval_per_level, eval_levels)])
    for run in runs:
        for record in _by_step(run):
            train = record["kind"] == "train"
            writer.writerow([
                run.name, *(record.get(k) for k in CSV_COLUMNS[1:]),
                *(_at(record, CSV_PER_LEVEL[k], i) if train else None
                  for i in range(train_levels) for k in per_level),
                record["kind"], *(record.get(k) for k in runlog.EVAL_SCALARS),
                *(_at(record, k, i) for i in range(eval_levels) for k in eval_per_level)])


def _level_columns(keys: list[str], num_levels: int) -> list[str]:
    return [f"{key}_L{i + 1}" for i in range(num_levels) for key in keys]


def _by_step(run: LoggedRun) -> list[dict]:
    """Train and eval records merged by step, train first on a tie (as the trainer logs them)."""
    return sorted((*run.train, *run.evals), key=lambda r: (r["step"], r["kind"] != "train"))


def load_runs(run_dirs: list[Path]) -> tuple[list[LoggedRun], list[str]]:
    """The runs that have train records, and a note for each that has none yet.

    Raises the first error of a directory that is no run (rundir.UserError), and NoRecords when
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
    return runs, [f"skipped {err}" for err in skipped]


def main(run_dirs: list[Path], as_json: bool, console: Console, *, last: int | None = None,
         every: int | None = None, as_csv: bool = False) -> None:
    """Loads every run; prints JSON, CSV or tables, and to stderr a note for each run skipped.

    A directory that holds runs stands for the runs in it (`find_runs`); one without a train
    record yet is skipped (`load_runs`). `last` and `every` choose the train records of one run's
    tables and of the JSON's history and health (`select`). Raises rundir.UserError for a path
    that is no run and ConfigError for options that do not go together: --json with --csv, and
    --last / --every where nothing would use them (the CSV, which has every record, and the
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
    runs, notes = load_runs(find_runs(run_dirs))
    if choosing and len(runs) > 1 and not as_json:
        raise ConfigError(f"{choosing} chooses the rows of one run's report, and {len(runs)} runs "
                          f"are compared; pass one run, or --json")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if as_csv:
        write_csv(runs, sys.stdout)
    elif as_json:
        print(json.dumps([summarize(run, last=last, every=every) for run in runs], indent=2))
    else:
        render(runs, console, last=last, every=every)
