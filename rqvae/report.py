"""`rqvae report`: a run's losses and codebook health, read from its directory alone.

Reads `config.toml` and `metrics.jsonl` (schema in `rqvae.runlog`). Imports neither JAX, Flax nor
numpy, so it answers at once, also while a run is still writing.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rqvae import config, runlog
from rqvae.config import ConfigError

LOSS_TERMS = ("total", "recon", "commit", "codebook", "wasserstein")
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
_TRAIN_CMD = "pass a directory written by `rqvae train`"


@dataclass(frozen=True)
class Run:
    """One run directory, as read from disk."""

    name: str  # the directory's name
    path: Path
    config: dict  # flat {"model.num_codes": 64, ...} from config.toml; empty if there is none
    train: list[dict]  # records with kind == "train", in log order
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
        records = runlog.read(run_dir)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {log_path}: {err}; check the file") from None
    train = [r for r in records if r.get("kind") == "train"]
    if not train:
        raise ConfigError(
            f"{log_path} holds no train records yet; the first is written after run.log_every "
            f"steps, run the report again then"
        )
    evals = [r for r in records if r.get("kind") == "eval"]
    return Run(run_dir.name, run_dir, _read_config(run_dir), train, evals)


def _no_log_message(run_dir: Path) -> str:
    runs_below = sorted(p.parent.name for p in run_dir.glob(f"*/{runlog.METRICS_FILE}"))
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
    return weight > 0 or any(r.get("wasserstein") for r in run.train)


def _best(train: list[dict]) -> dict:
    best = {}
    for term in LOSS_TERMS:
        finite = [r for r in train if _is_finite(r.get(term))]
        if finite:
            record = min(finite, key=lambda r: r[term])  # the first, on a tie
            best[term] = {"value": record[term], "step": record["step"]}
    return best


def _is_finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _levels(run: Run) -> list[dict]:
    final = run.train[-1]
    last_eval = run.evals[-1] if run.evals else None
    with_sinkhorn = wasserstein_on(run) and "sinkhorn_marginal_error" in final
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


def evenly_spaced(records: list, points: int) -> list:
    """Up to `points` (at least 2) records at evenly spaced positions, always the first and last."""
    points = max(points, 2)
    if len(records) <= points:
        return list(records)
    stride = (len(records) - 1) / (points - 1)  # > 1, so the rounded positions are distinct
    return [records[round(i * stride)] for i in range(points)]


def summarize(run: Run, points: int = 8) -> dict:
    """A JSON-ready summary of one run.

    Keys: run, path, config (see `config_brief`), steps_logged (last logged step), final (the last
    train record's loss terms), best ({term: {value, step}}, the lowest finite value of each term),
    levels (per level, 1-based: used, perplexity and dead from the last train record; eval_used,
    eval_dead, eval_perplexity and heldout_perplexity from the last eval record if any;
    sinkhorn_marginal_error if logged and the OT term was on), eval ({step, heldout_recon} of the
    last eval record, or None) and history (loss terms at up to `points` evenly spaced logged
    steps).
    """
    final = run.train[-1]
    last_eval = run.evals[-1] if run.evals else None
    return {
        "run": run.name,
        "path": str(run.path),
        "config": config_brief(run.config),
        "steps_logged": max(r["step"] for r in run.train + run.evals),
        "final": {term: final[term] for term in LOSS_TERMS if term in final},
        "best": _best(run.train),
        "levels": _levels(run),
        "eval": (
            {"step": last_eval["step"], "heldout_recon": last_eval.get("heldout_recon")}
            if last_eval is not None else None
        ),
        "history": [
            {k: r[k] for k in ("step", *LOSS_TERMS) if k in r}
            for r in evenly_spaced(run.train, points)
        ],
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
    window = run.config.get("run.dead_window")
    codes = f" ({num_codes} codes each)" if num_codes is not None else ""
    table = Table(title=f"codebook health per level{codes}", title_justify="left",
                  caption_justify="left")
    columns = {"level": "level", "used": "used (batch)", "perplexity": "perplexity (batch)",
               "dead": f"dead (last {window} steps)" if window else "dead (window)"}
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


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """A unicode sparkline of `values` downsampled to `width` points; log-scaled when all values
    are positive and span more than a decade. Non-finite values show as a space."""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    finite = [v for v in values if _is_finite(v)]
    if not finite:
        return " " * len(values)
    if min(finite) > 0 and max(finite) > 10 * min(finite):
        values = [math.log10(v) if _is_finite(v) and v > 0 else None for v in values]
        finite = [v for v in values if v is not None]
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    return "".join(
        SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] if _is_finite(v) else " "
        for v in values)


def select_history(train: list[dict], points: int, last: int | None = None,
                   every: int | None = None) -> list[dict]:
    """The train records the history tables show: the last N, those at multiples of K (and the
    last), or evenly spaced ones."""
    if last is not None:
        return train[-last:]
    if every is not None:
        chosen = [r for r in train if r["step"] % every == 0]
        return chosen if chosen and chosen[-1] is train[-1] else chosen + train[-1:]
    return evenly_spaced(train, points)


def _history_table(records: list[dict], terms: tuple[str, ...], run: Run) -> Table:
    table = Table(title="losses over the run", title_justify="left", caption_justify="left")
    for column in ("step", *terms):
        table.add_column(column, justify="right")
    for record in records:
        table.add_row(_fmt(record["step"]), *[_fmt(record.get(t)) for t in terms])
    trends = Table(title=f"trends over all {len(run.train)} logged steps", title_justify="left",
                   show_header=False, box=None)
    trends.add_column("term")
    trends.add_column("sparkline")
    for term in terms:
        trends.add_row(term, sparkline([r.get(term) for r in run.train]))
    return table, trends


def _health_over_time(records: list[dict], run: Run) -> Table:
    num_codes = run.config.get("model.num_codes")
    table = Table(title="codebook health over the run (per level: L1 / L2 / ...)",
                  title_justify="left")
    columns = ["step", "used %" if num_codes else "used", "perplexity", "dead (window)"]
    marginal = any(r.get("sinkhorn_marginal_error") and any(r["sinkhorn_marginal_error"])
                   for r in records)
    if marginal:
        columns.append("Sinkhorn marginal error")
    for column in columns:
        table.add_column(column, justify="right")
    for r in records:
        used = [f"{100 * u / num_codes:.0f}" for u in r["used"]] if num_codes else r["used"]
        row = [str(r["step"]), " / ".join(map(str, used)),
               " / ".join(f"{p:.1f}" for p in r["perplexity"]), " / ".join(map(str, r["dead"]))]
        if marginal:
            row.append(" / ".join(f"{e:.3f}" for e in r.get("sinkhorn_marginal_error", [])))
        table.add_row(*row)
    return table


def _render_one(run: Run, console: Console, points: int, last=None, every=None) -> None:
    summary = summarize(run, points)
    terms = _shown_terms(run)
    records = select_history(run.train, points, last, every)
    console.print(_config_table(summary, run))
    console.print(_losses_table(summary, terms))
    console.print(_health_table(summary, run))
    history, trends = _history_table(records, terms, run)
    console.print(trends)
    console.print(history)
    console.print(_health_over_time(records, run))


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
        values = [row[c] for row in rows if _is_finite(row[c])]
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


def render(runs: list[Run], console: Console, points: int = 8, *, last: int | None = None,
           every: int | None = None) -> None:
    """Tables for one run (config, losses, codebook health, history), or one comparing several."""
    if len(runs) == 1:
        _render_one(runs[0], console, points, last, every)
    elif runs:
        _render_comparison(runs, console)


def find_runs(paths: list[Path]) -> list[Path]:
    """Each path as given, or, for a parent such as runs/, every run directory directly in it."""
    found = []
    for path in map(Path, paths):
        below = sorted(p.parent for p in path.glob(f"*/{runlog.METRICS_FILE}"))
        holds_log = (path / runlog.METRICS_FILE).exists()
        found += below if path.is_dir() and not holds_log and below else [path]
    return found


def write_csv(runs: list[Run], out) -> None:
    """One row per logged train record: run, step, time, loss terms, then per-level columns."""
    import csv

    num_levels = max(len(r.train[-1]["used"]) for r in runs)
    per_level = ["used", "dead", "perplexity", "sinkhorn_marginal_error"]
    writer = csv.writer(out)
    writer.writerow(["run", "step", "time", *LOSS_TERMS,
                     *[f"{key}_L{i + 1}" for i in range(num_levels) for key in per_level]])
    for run in runs:
        for r in run.train:
            levels = [_at(r, key, i) for i in range(num_levels) for key in per_level]
            writer.writerow([run.name, r["step"], r.get("time"), *[r.get(t) for t in LOSS_TERMS],
                             *levels])


def main(run_dirs: list[Path], as_json: bool, console: Console, *, last: int | None = None,
         every: int | None = None, as_csv: bool = False) -> None:
    """Loads every run (the first bad one raises ConfigError); prints JSON, CSV or tables."""
    runs = [load_run(Path(run_dir)) for run_dir in find_runs(run_dirs)]
    if as_json:
        print(json.dumps([summarize(run) for run in runs], indent=2))
    elif as_csv:
        import sys

        write_csv(runs, sys.stdout)
    else:
        render(runs, console, last=last, every=every)
