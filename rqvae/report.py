"""`rqvae report`: tables of a run's losses and codebook health, read from its directory alone.

Imports neither JAX nor numpy, so it answers at once, also while a run is still writing.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rqvae import config, runlog
from rqvae.config import ConfigError

LOSS_TERMS = ("total", "recon", "commit", "codebook", "wasserstein")
# Shown in a run's config table whether or not they differ from the defaults.
ALWAYS_SHOWN = ("lambda_codebook", "lambda_wasserstein", "steps", "data.dataset",
                "model.num_levels", "model.num_codes")


@dataclass(frozen=True)
class Run:
    name: str
    path: Path
    config: dict  # flat: {"model.num_codes": 64, ...}; empty if config.toml is missing
    train: list[dict]
    evals: list[dict]


def load_run(run_dir: Path) -> Run:
    """Reads a run directory; raises ConfigError naming what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"run directory {run_dir} does not exist; pass a directory written by "
                          f"`rqvae train`")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory; pass a run directory")
    if not (run_dir / runlog.METRICS_FILE).is_file():
        raise ConfigError(f"{run_dir} holds no {runlog.METRICS_FILE}; pass a directory written "
                          f"by `rqvae train`")
    records = runlog.read(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    if not train:
        raise ConfigError(f"{run_dir / runlog.METRICS_FILE} has no train records yet; wait for "
                          f"the first log interval")
    config_path = run_dir / runlog.CONFIG_FILE
    try:
        values = config.flatten(tomllib.loads(config_path.read_text())) if config_path.is_file() else {}
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{config_path} is not valid TOML: {err}") from None
    evals = [r for r in records if r.get("kind") == "eval"]
    return Run(run_dir.name, run_dir, values, train, evals)


def find_runs(paths: list[Path]) -> list[Path]:
    """Each path as given, or the run directories directly under it if it is a parent."""
    found = []
    for path in map(Path, paths):
        children = sorted(p for p in path.glob(f"*/{runlog.METRICS_FILE}")) if path.is_dir() else []
        if path.is_dir() and not (path / runlog.METRICS_FILE).exists() and children:
            found += [child.parent for child in children]
        else:
            found.append(path)
    return found


def _config_brief(values: dict) -> dict:
    defaults = config.flatten(config.to_dict(config.TrainerConfig()))
    skip = {"run.run_dir", "model.input_dim"}
    return {k: v for k, v in values.items()
            if k not in skip and (k in ALWAYS_SHOWN or defaults.get(k) != v)}


def _evenly_spaced(records: list[dict], points: int) -> list[dict]:
    if len(records) <= points:
        return records
    step = (len(records) - 1) / (points - 1)
    return [records[round(i * step)] for i in range(points)]


def summarize(run: Run, points: int = 8) -> dict:
    """A JSON-ready summary: config brief, final and best losses, per-level health, history."""
    final = run.train[-1]
    last_eval = run.evals[-1] if run.evals else None
    best = {}
    for term in LOSS_TERMS:
        values = [r for r in run.train if term in r]
        if values:
            record = min(values, key=lambda r: r[term])
            best[term] = {"value": record[term], "step": record["step"]}
    wasserstein_on = run.config.get("lambda_wasserstein", 0) > 0 or any(
        r.get("wasserstein") for r in run.train)
    levels = []
    for level, (used, dead) in enumerate(zip(final["used"], final["dead"])):
        entry = {"level": level + 1, "used": used, "dead": dead,
                 "perplexity": final["perplexity"][level]}
        if wasserstein_on and "sinkhorn_marginal_error" in final:
            entry["sinkhorn_marginal_error"] = final["sinkhorn_marginal_error"][level]
        if last_eval:
            entry.update(eval_used=last_eval["used"][level], eval_dead=last_eval["dead"][level],
                         eval_perplexity=last_eval["perplexity"][level])
        levels.append(entry)
    return {
        "run": run.name,
        "path": str(run.path),
        "config": _config_brief(run.config),
        "steps_logged": final["step"],
        "final": {term: final[term] for term in LOSS_TERMS if term in final},
        "best": best,
        "levels": levels,
        "eval": ({"step": last_eval["step"], "heldout_recon": last_eval["heldout_recon"]}
                 if last_eval else None),
        "history": [{k: r[k] for k in ("step", *LOSS_TERMS) if k in r}
                    for r in _evenly_spaced(run.train, points)],
        "wasserstein_on": wasserstein_on,
    }


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _render_one(summary: dict, console: Console) -> None:
    title = f"{summary['run']} ({summary['path']}), step {summary['steps_logged']}"
    brief = Table(title=f"config: {title}", title_justify="left", show_header=False)
    brief.add_column("key")
    brief.add_column("value")
    for key, value in summary["config"].items():
        brief.add_row(key, _fmt(value))
    console.print(brief)

    terms = [t for t in LOSS_TERMS if t != "wasserstein" or summary["wasserstein_on"]]
    losses = Table(title="losses", title_justify="left")
    for column in ("", *terms):
        losses.add_column(column, justify="right")
    losses.add_row("final", *[_fmt(summary["final"][t]) for t in terms])
    losses.add_row("best", *[_fmt(summary["best"][t]["value"]) for t in terms])
    losses.add_row("best at step", *[str(summary["best"][t]["step"]) for t in terms])
    if summary["eval"]:
        losses.caption = (f"held-out recon MSE {summary['eval']['heldout_recon']:.4g} "
                          f"at step {summary['eval']['step']}")
    console.print(losses)

    health = Table(title="codebook health per level", title_justify="left")
    columns = ["level", "used (batch)", "dead (window)", "perplexity (batch)"]
    if summary["eval"]:
        columns += ["used (train split)", "dead (train split)", "perplexity (train split)"]
    if any("sinkhorn_marginal_error" in level for level in summary["levels"]):
        columns.append("Sinkhorn marginal error")
    for column in columns:
        health.add_column(column, justify="right")
    for level in summary["levels"]:
        row = [level["level"], level["used"], level["dead"], level["perplexity"]]
        if summary["eval"]:
            row += [level["eval_used"], level["eval_dead"], level["eval_perplexity"]]
        if "sinkhorn_marginal_error" in level:
            row.append(level["sinkhorn_marginal_error"])
        health.add_row(*[_fmt(v) for v in row])
    console.print(health)

    history = Table(title="losses over the run", title_justify="left")
    for column in ("step", *terms):
        history.add_column(column, justify="right")
    for record in summary["history"]:
        history.add_row(str(record["step"]), *[_fmt(record.get(t, "")) for t in terms])
    console.print(history)


def _render_comparison(summaries: list[dict], console: Console) -> None:
    num_levels = max(len(s["levels"]) for s in summaries)
    table = Table(title="runs side by side (best recon and dead-code counts in bold green)",
                  title_justify="left")
    columns = ["run", "λ codebook", "λ wasserstein", "steps", "final total",
               "final recon", "held-out recon", *[f"dead L{i + 1}" for i in range(num_levels)]]
    table.add_column(columns[0], no_wrap=True)
    for column in columns[1:]:
        table.add_column(column, justify="right")
    rows = []
    for s in summaries:
        dead = [lv.get("eval_dead", lv["dead"]) for lv in s["levels"]]
        dead += [None] * (num_levels - len(dead))
        rows.append([s["run"], s["config"].get("lambda_codebook"),
                     s["config"].get("lambda_wasserstein"), s["steps_logged"],
                     s["final"]["total"], s["final"]["recon"],
                     s["eval"]["heldout_recon"] if s["eval"] else None, *dead])
    lower_is_better = range(5, len(columns))  # a total mixes different lambdas: not ranked
    best = {c: min((r[c] for r in rows if r[c] is not None), default=None)
            for c in lower_is_better}
    for row in rows:
        cells = []
        for c, value in enumerate(row):
            text = "-" if value is None else _fmt(value)
            if c in best and value is not None and value == best[c] and len(rows) > 1:
                text = f"[bold green]{text}[/]"
            cells.append(text)
        table.add_row(*cells)
    table.caption = "dead = codes no training image picks at the last evaluation (else last window)"
    console.print(table)


def render(runs: list[Run], console: Console, points: int = 8) -> None:
    summaries = [summarize(run, points) for run in runs]
    if len(summaries) == 1:
        _render_one(summaries[0], console)
    else:
        _render_comparison(summaries, console)


def main(run_dirs: list[Path], as_json: bool, console: Console) -> None:
    runs = [load_run(path) for path in find_runs(run_dirs)]
    if as_json:
        print(json.dumps([summarize(run) for run in runs], indent=2))
    else:
        render(runs, console)
