"""`rqvae report`: a run's losses and codebook health, read from its directory alone.

Reads `config.toml` and `metrics.jsonl` (schema in `rqvae.runlog`). Imports neither JAX, Flax nor
numpy, so it answers at once, also while a run is still writing and on a 100k-step log
(`scripts/bench_report.py`). A directory that holds runs instead of being one stands for them.

`--json` prints a list with one summary per run (`summarize`). Keys are kept stable: new ones may
be added, none renamed or dropped. Values are as logged; a non-finite loss prints as NaN or
Infinity, as Python's json writes it.

- run: the run directory's name
- path: the run directory as given
- config: the always-shown keys (lambdas, steps, model shape, data set), then every other key of
  config.toml that differs from the default, flat ("model.num_codes"); {} without a config.toml
- steps_logged: the highest step of any record in the log
- final: the last train record's loss terms, {term: value}
- best: the lowest finite value of each loss term, {term: {"value", "step"}} (first on a tie)
- levels: one per quantization level, from the last train record and the last eval record
  - level: 1-based level number
  - used: codes picked in the last train batch
  - perplexity: exp(entropy) of the codes picked in the last train batch
  - dead: codes unused over the last run.dead_window steps
  - eval_used: codes picked by any training image at the last eval (only with an eval)
  - eval_dead: codes no training image picks at the last eval (only with an eval)
  - eval_perplexity: perplexity of the codes over the training split (only with an eval)
  - heldout_perplexity: the same over the held-out split (only if the eval logged it)
  - sinkhorn_marginal_error: the transport plan's row-marginal error (only if logged and the
    Wasserstein term was on)
- eval: the last eval record, or null before the first
  - step: its step
  - heldout_recon: reconstruction loss on the held-out split
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
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rqvae import config, runlog
from rqvae.config import ConfigError
from rqvae.runlog import is_finite

LOSS_TERMS = runlog.LOSS_TERMS
PER_LEVEL = runlog.PER_LEVEL
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
BEST_STYLE = "bold green"
HISTORY_POINTS = 8  # train records in the history and health tables unless last/every choose
TREND_POINTS = 40  # characters of a sparkline
SPARKS = "▁▂▃▄▅▆▇█"
_TRAIN_CMD = "pass a directory written by `rqvae train`"


@dataclass(frozen=True)
class Run:
    """One run directory, as read from disk."""

    name: str  # the directory's name
    path: Path
    config: dict  # flat {"model.num_codes": 64, ...} from config.toml; empty if there is none
    train: runlog.TrainLog  # records with kind == "train", in log order, parsed when indexed
    evals: list[dict]  # records with kind == "eval", in log order


# -- loading ----------------------------------------------------------------------------------


def load_run(run_dir: Path) -> Run:
    """Reads a run directory written by `rqvae train`, also one still being written.

    Raises ConfigError, one line naming the problem and the fix, when the directory is missing, is
    not a directory, holds no metrics.jsonl, or its log holds no train record yet. A missing
    config.toml is no error: the config is then empty.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"run directory {run_dir} does not exist; {_TRAIN_CMD}")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory; {_TRAIN_CMD}")
    log_path = run_dir / runlog.METRICS_FILE
    if not log_path.is_file():
        raise ConfigError(_no_log_message(run_dir))
    try:
        train, evals = runlog.scan(run_dir)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {log_path}: {err}; check the file") from None
    if not train:
        raise ConfigError(
            f"{log_path} holds no train records yet; the first is written after run.log_every "
            f"steps, run the report again then"
        )
    return Run(run_dir.name, run_dir, _read_config(run_dir), train, evals)


def find_runs(paths: list[Path]) -> list[Path]:
    """Each path that is a run; for a directory holding runs (runs/), the runs in it by name.

    A path that is neither stays, for `load_run` to say what is wrong with it.
    """
    run_dirs = []
    for path in map(Path, paths):
        below = [] if (path / runlog.METRICS_FILE).is_file() else _runs_below(path)
        run_dirs += below or [path]
    return run_dirs


def _runs_below(path: Path) -> list[Path]:
    return sorted(log.parent for log in path.glob(f"*/{runlog.METRICS_FILE}") if log.is_file())


def _no_log_message(run_dir: Path) -> str:
    runs_below = [p.name for p in _runs_below(run_dir)]
    if runs_below:  # a parent such as runs/ was passed instead of the runs in it
        shown = ", ".join(runs_below[:3]) + (", ..." if len(runs_below) > 3 else "")
        return (f"{run_dir} holds no {runlog.METRICS_FILE} but {len(runs_below)} run(s) below it "
                f"({shown}); pass those, e.g. {run_dir}/*")
    return f"{run_dir} holds no {runlog.METRICS_FILE}; {_TRAIN_CMD}"


def _read_config(run_dir: Path) -> dict:
    path = run_dir / runlog.CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        return config.flatten(tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid TOML: {err}; fix or delete it") from None


# -- the summary ------------------------------------------------------------------------------


def _defaults() -> dict:
    return config.flatten(config.to_dict(config.TrainerConfig()))


def config_brief(run_config: dict) -> dict:
    """The ALWAYS_SHOWN keys, then every other key whose value differs from the defaults.

    Keys a (hand-written) config.toml leaves out take their defaults, as `rqvae train` would.
    An empty config (no config.toml) gives an empty brief: nothing is known about the run.
    """
    if not run_config:
        return {}
    defaults = _defaults()
    resolved = defaults | run_config
    brief = {key: resolved[key] for key in ALWAYS_SHOWN if key in resolved}
    for key, value in run_config.items():
        if key not in brief and key not in NEVER_SHOWN and defaults.get(key) != value:
            brief[key] = value
    return brief


def wasserstein_on(run: Run) -> bool:
    """Whether the run used the OT term: a positive weight, or any non-zero logged value."""
    weight = run.config.get("lambda_wasserstein", 0) or 0
    return weight > 0 or run.train.any_nonzero("wasserstein")


def _best(train: runlog.TrainLog) -> dict:
    best = {}
    for term in LOSS_TERMS:
        i = train.first_min(term)
        if i is not None:
            best[term] = {"value": train.value(term, i), "step": train.steps[i]}
    return best


def _levels(run: Run, final: dict, ot_on: bool) -> list[dict]:
    last_eval = run.evals[-1] if run.evals else None
    with_sinkhorn = ot_on and "sinkhorn_marginal_error" in final
    levels = []
    for i in range(len(final.get("used", []))):
        level = {"level": i + 1, **{k: _at(final, k, i) for k in ("used", "perplexity", "dead")}}
        if last_eval is not None:
            level.update(eval_used=_at(last_eval, "used", i), eval_dead=_at(last_eval, "dead", i),
                         eval_perplexity=_at(last_eval, "perplexity", i))
            if "heldout_perplexity" in last_eval:
                level["heldout_perplexity"] = _at(last_eval, "heldout_perplexity", i)
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


def summarize(run: Run, points: int = HISTORY_POINTS, *, last: int | None = None,
              every: int | None = None) -> dict:
    """A JSON-ready summary of one run; its keys are listed in the module docstring.

    `points`, `last` and `every` choose the train records of history and health (see `select`).
    """
    indices = select(run.train.steps, points, last, every)
    *shown, final = run.train.records([*indices, -1])
    last_eval = run.evals[-1] if run.evals else None
    with_sinkhorn = wasserstein_on(run)
    per_level = [k for k in PER_LEVEL if k != "sinkhorn_marginal_error" or with_sinkhorn]
    return {
        "run": run.name,
        "path": str(run.path),
        "config": config_brief(run.config),
        "steps_logged": max([max(run.train.steps), *(r["step"] for r in run.evals)]),
        "final": {term: final[term] for term in LOSS_TERMS if term in final},
        "best": _best(run.train),
        "levels": _levels(run, final, with_sinkhorn),
        "eval": (
            {"step": last_eval["step"], "heldout_recon": last_eval.get("heldout_recon")}
            if last_eval is not None else None
        ),
        "history": [{k: r[k] for k in ("step", *LOSS_TERMS) if k in r} for r in shown],
        "health": [{k: r[k] for k in ("step", *per_level) if k in r} for r in shown],
    }


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


def _shown_terms(run: Run) -> tuple[str, ...]:
    return tuple(t for t in LOSS_TERMS if t != "wasserstein" or wasserstein_on(run))


def _config_table(summary: dict, run: Run) -> Table:
    steps = run.config.get("steps")
    of_steps = f" of {steps}" if steps is not None else ""
    title = f"run {escape(summary['run'])}: step {summary['steps_logged']}{of_steps}"
    table = Table(title=title, title_justify="left", caption=escape(summary["path"]),
                  caption_justify="left")
    table.add_column("config (keys not listed are at their defaults)")
    table.add_column("value")
    for key, value in summary["config"].items():
        table.add_row(Text(key), Text(_fmt(value)))
    if not summary["config"]:
        table.add_row(Text(f"no {runlog.CONFIG_FILE} in the run directory", style="dim"), "")
    return table


def _losses_table(summary: dict, terms: tuple[str, ...]) -> Table:
    table = Table(title="losses: final and best", title_justify="left")
    table.add_column("")
    for term in terms:
        table.add_column(term, justify="right")
    best = summary["best"]
    table.add_row(f"final (step {summary['history'][-1]['step']})",
                  *[_fmt(summary["final"].get(t)) for t in terms])
    table.add_row("best", *[_fmt(best[t]["value"]) if t in best else "-" for t in terms])
    table.add_row("best at step", *[_fmt(best[t]["step"]) if t in best else "-" for t in terms])
    if summary["eval"] is not None:
        table.caption = (f"held-out recon {_fmt(summary['eval']['heldout_recon'])} "
                         f"at step {summary['eval']['step']}")
        table.caption_justify = "left"
    return table


def _health_table(summary: dict, run: Run) -> Table:
    levels = summary["levels"]
    num_codes = run.config.get("model.num_codes")
    codes = f" ({num_codes} codes each)" if num_codes is not None else ""
    table = Table(title=f"codebook health per level{codes}", title_justify="left",
                  caption_justify="left")
    columns = {"level": "level", "used": "used (batch)", "perplexity": "perplexity (batch)",
               "dead": _dead_header(run)}
    if summary["eval"] is not None:
        columns |= {"eval_dead": "dead (full pass)", "eval_perplexity": "perplexity (full pass)"}
        if any("heldout_perplexity" in level for level in levels):
            columns["heldout_perplexity"] = "heldout perplexity"
        table.caption = (f"full pass: every training image at the eval of step "
                         f"{summary['eval']['step']}; a code no image picks is dead")
    else:
        table.caption = "no eval record yet: full-pass columns appear after the first eval"
    if any("sinkhorn_marginal_error" in level for level in levels):
        columns["sinkhorn_marginal_error"] = "Sinkhorn marginal error"
    for header in columns.values():
        table.add_column(header, justify="right")
    for level in levels:
        table.add_row(*[_fmt(level.get(key)) for key in columns])
    return table


def sparkline(values: Sequence, width: int = TREND_POINTS) -> str:
    """One character per value, ▁ for the lowest to █ for the highest, at most `width` of them.

    A longer series is sampled at `width` evenly spaced positions. Log-scaled when the values
    span more than a decade (`log_scaled`), so a loss that falls a hundredfold still shows its
    later shape. A missing or non-finite value is a blank; a constant series is all ▄.
    """
    values = evenly_spaced(values, width)
    finite = [v for v in values if is_finite(v)]
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
    finite = [v for v in values if is_finite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) > 10 * min(finite)


def _trends_table(run: Run, terms: tuple[str, ...]) -> Table:
    steps = run.train.steps
    indices = evenly_spaced(range(len(steps)), TREND_POINTS)
    table = Table(title=f"trends over all {len(steps)} logged steps", title_justify="left",
                  caption_justify="left")
    for header in ("term", f"step {steps[0]} … {steps[-1]}", "lowest (▁)", "highest (█)", "scale"):
        table.add_column(header, justify="left" if header == "term" else "right")
    for term in terms:
        values = [run.train.value(term, i) for i in indices]
        finite = [v for v in values if is_finite(v)]
        table.add_row(term, sparkline(values), _fmt(min(finite, default=None)),
                      _fmt(max(finite, default=None)), "log" if log_scaled(finite) else "linear")
    table.caption = (f"each at {len(indices)} evenly spaced logged steps; log: the term spans more "
                     f"than a decade")
    return table


def _selection_note(last: int | None, every: int | None) -> str:
    """What `select` chose, for the titles of the tables over the run."""
    multiples = f"at multiples of {every}, and the last" if every is not None else ""
    if last is not None:
        return f" (the last {last} logged steps{' ' + multiples if multiples else ''})"
    return f" (logged steps {multiples})" if multiples else ""


def _history_table(summary: dict, terms: tuple[str, ...], note: str) -> Table:
    title = f"losses over the run{note}"
    table = Table(title=title, title_justify="left", min_width=len(title))
    for column in ("step", *terms):
        table.add_column(column, justify="right")
    for record in summary["history"]:
        table.add_row(_fmt(record["step"]), *[_fmt(record.get(t)) for t in terms])
    return table


def _dead_header(run: Run) -> str:
    window = run.config.get("run.dead_window")
    return f"dead (last {window} steps)" if window else "dead (window)"


def _health_over_time_table(summary: dict, run: Run, note: str) -> Table:
    num_codes = run.config.get("model.num_codes")
    health = summary["health"]
    columns = {"used": "used %" if num_codes else "used", "perplexity": "perplexity",
               "dead": _dead_header(run)}
    if any("sinkhorn_marginal_error" in entry for entry in health):
        columns["sinkhorn_marginal_error"] = "Sinkhorn marginal error"
    title = f"codebook health over the run{note}"
    table = Table(title=title, title_justify="left", min_width=len(title),
                  caption="level 1 / level 2 / ...", caption_justify="left")
    for header in ("step", *columns.values()):
        table.add_column(header, justify="right")

    def cell(entry: dict, key: str) -> str:
        values = entry.get(key) or []
        if key == "used" and num_codes:
            values = [f"{100 * v / num_codes:.0f}" if is_finite(v) else v for v in values]
        return " / ".join(map(_fmt, values)) or "-"

    for entry in health:
        table.add_row(_fmt(entry["step"]), *[cell(entry, key) for key in columns])
    return table


def _render_one(run: Run, console: Console, points: int, last: int | None,
                every: int | None) -> None:
    summary = summarize(run, points, last=last, every=every)
    terms = _shown_terms(run)
    note = _selection_note(last, every)
    console.print(_config_table(summary, run))
    console.print(_losses_table(summary, terms))
    console.print(_health_table(summary, run))
    console.print(_trends_table(run, terms))
    console.print(_history_table(summary, terms, note))
    console.print(_health_over_time_table(summary, run, note))


def _comparison_rows(runs: list[Run], summaries: list[dict], num_levels: int) -> list[list]:
    rows = []
    for run, s in zip(runs, summaries):
        # The full pass is the definitive count; the window count stands in before the first eval.
        dead = [lv["eval_dead"] if s["eval"] is not None else lv["dead"] for lv in s["levels"]]
        steps = s["steps_logged"]
        planned = run.config.get("steps")
        rows.append([
            s["run"],
            run.config.get("lambda_codebook"),
            run.config.get("lambda_wasserstein"),
            f"{steps}/{planned}" if planned is not None and planned != steps else str(steps),
            s["final"].get("total"),
            s["final"].get("recon"),
            s["eval"]["heldout_recon"] if s["eval"] is not None else None,
            *(dead + [None] * (num_levels - len(dead))),
        ])
    return rows


def _render_comparison(runs: list[Run], console: Console) -> None:
    summaries = [summarize(run) for run in runs]
    num_levels = max(len(s["levels"]) for s in summaries)
    headers = ["run", "lambda_codebook", "lambda_wasserstein", "steps", "final total",
               "final recon", "heldout recon", *[f"dead L{i + 1}" for i in range(num_levels)]]
    ranked = range(5, len(headers))  # recon and dead counts; a total mixes different lambdas
    rows = _comparison_rows(runs, summaries, num_levels)
    best = {}
    for c in ranked:
        values = [row[c] for row in rows if is_finite(row[c])]
        if len(set(values)) > 1:  # nothing to single out when every run ties
            best[c] = min(values)
    table = Table(title=f"{len(runs)} runs side by side (best recon and dead counts in {BEST_STYLE})",
                  title_justify="left", caption_justify="left")
    table.add_column(headers[0], no_wrap=True)
    for header in headers[1:]:
        table.add_column(header, justify="right")
    window_only = [s["run"] for s in summaries if s["eval"] is None]
    for row in rows:
        cells = []
        for c, value in enumerate(row):
            mark = window_only and c >= 7 and row[0] in window_only
            text = _fmt(value) + ("*" if mark and value is not None else "")
            cells.append(Text(text, style=BEST_STYLE if c in best and value == best[c] else ""))
        table.add_row(*cells)
    table.caption = "dead: codes no training image picks at the last eval"
    if window_only:
        table.caption += "; * no eval yet: codes unused in the last training window"
    console.print(table)


def render(runs: list[Run], console: Console, points: int = HISTORY_POINTS, *,
           last: int | None = None, every: int | None = None) -> None:
    """Tables for one run (config, losses, codebook health, trends, the run's course), or one
    comparing several runs; `last` and `every` choose the steps of the course (see `select`)."""
    if len(runs) == 1:
        _render_one(runs[0], console, points, last, every)
    elif runs:
        _render_comparison(runs, console)


# -- CSV and main -----------------------------------------------------------------------------

CSV_COLUMNS = ("run", "step", "time", *LOSS_TERMS)
CSV_PER_LEVEL = ("used", "dead", "perplexity", "sinkhorn_marginal_error")


def write_csv(runs: list[Run], out) -> None:
    """Every logged train record of every run as CSV, for spreadsheets and pandas.

    Columns: run, step, time, the loss terms, then per level used_L1, dead_L1, perplexity_L1 and
    (when logged) sinkhorn_marginal_error_L1, used_L2, ... An empty cell is a missing value.
    """
    finals = [run.train[-1] for run in runs]
    num_levels = max(len(final.get("used") or []) for final in finals)
    per_level = [k for k in CSV_PER_LEVEL
                 if k != "sinkhorn_marginal_error" or any(k in final for final in finals)]
    writer = csv.writer(out, lineterminator="\n")
    level_columns = [f"{k}_L{i + 1}" for i in range(num_levels) for k in per_level]
    writer.writerow([*CSV_COLUMNS, *level_columns])
    for run in runs:
        for record in run.train:
            writer.writerow([run.name, *(record.get(k) for k in CSV_COLUMNS[1:]),
                             *(_at(record, k, i) for i in range(num_levels) for k in per_level)])


def main(run_dirs: list[Path], as_json: bool, console: Console, *, last: int | None = None,
         every: int | None = None, as_csv: bool = False) -> None:
    """Loads every run (the first bad one raises ConfigError); prints JSON, CSV or tables.

    A directory that holds runs stands for the runs in it (`find_runs`). `last` and `every` choose
    the train records of the tables over the run and of the JSON's history and health (`select`);
    the comparison of several runs and the CSV, which has every record, do not use them.
    """
    if as_json and as_csv:
        raise ConfigError("--json and --csv are two output formats; pass one")
    for flag, value in (("--last", last), ("--every", every)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} takes a positive number of steps, not {value}")
    runs = [load_run(run_dir) for run_dir in find_runs(run_dirs)]
    if as_csv:
        write_csv(runs, sys.stdout)
    elif as_json:
        print(json.dumps([summarize(run, last=last, every=every) for run in runs], indent=2))
    else:
        render(runs, console, last=last, every=every)
