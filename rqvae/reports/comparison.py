"""Several runs side by side: the settings that differ between them, and one table of their
results with the lowest of each ranked column marked among runs on the same data set."""

from __future__ import annotations

import json

from rich.console import Console
from rich.text import Text

from rqvae.reports.runs import LoggedRun
from rqvae.reports.summary import NEVER_SHOWN, summarize
from rqvae.reports.tables import Col, fmt, print_table
from rqvae.trainer.names import short_name
from rqvae.trainer.runlog import is_finite

BEST_STYLE = "bold green"


def differing_keys(runs: list[LoggedRun]) -> list[str]:
    """The config keys whose values differ between the runs (those with a config), in config
    order; never run.run_dir, which always differs."""
    configs = [run.config for run in runs if run.config]
    keys = list(dict.fromkeys(key for cfg in configs for key in cfg))
    return [key for key in keys if key not in NEVER_SHOWN
            and len({json.dumps(cfg.get(key)) for cfg in configs}) > 1]


def _short_header(key: str, keys: list[str]) -> str:
    """The setting's short name (ASCII: a Greek lambda is one cell on some terminals and two on
    others), unless another differing key has the same; a legend names the key of each."""
    short = short_name(key)
    return short if sum(short_name(k) == short for k in keys) == 1 else key


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
    cols = [Col("run", "left"),  # a run's name is never broken across lines
            *(Col(headers[key], "left" if key in text_keys else "right", text=key in text_keys)
              for key in keys)]
    rows = [[run.name, *(fmt(run.config.get(key)) if run.config else "?" for key in keys)]
            for run in runs]
    legend = "; ".join(f"{header}: {key}" for key, header in headers.items() if header != key)
    if without:
        legend += ("; " if legend else "") + "?: no config"
    print_table(console, "settings that differ between the runs", cols, rows, legend)


# The results side by side: (row key, header, ranked: its lowest value is marked). The total is
# not ranked: it mixes different lambdas. Then "dead Ln" per level, ranked.
RESULT_COLUMNS = (("run", "run", False), ("status", "status", False), ("steps", "steps", False),
                  ("total", "total", False), ("recon", "recon", True),
                  ("heldout", "heldout", True))


def _dead_key(level: int) -> str:
    return f"dead L{level + 1}"


SHARED_DEAD = "dead shared"  # of a shared codebook: codes no level picks


def _result_row(run: LoggedRun, s: dict, num_levels: int) -> dict:
    """One run's results by column key."""
    # The full pass is the definitive count; the window count stands in before the first eval.
    dead = [lv["eval_dead"] if s["eval"] is not None else lv["dead"] for lv in s["levels"]]
    steps, planned = s["steps_logged"], run.config.get("steps")
    if planned is not None and planned != steps:
        steps = f"{steps}/{planned}"
    row = {"run": run.name,
           "status": run.status + (", repeated steps" if run.repeated_steps else "")
           + (", unreadable lines" if run.unreadable_lines else ""),
           "steps": str(steps),
           "total": s["final"].get("total"), "recon": s["final"].get("recon"),
           "heldout": s["eval"]["heldout_recon"] if s["eval"] is not None else None}
    row.update({_dead_key(i): dead[i] if i < len(dead) else None for i in range(num_levels)})
    row[SHARED_DEAD] = s["eval"].get("shared_dead") if s["eval"] is not None else None
    return row


def _best_cells(runs: list[LoggedRun], rows: list[dict], ranked: list[str]) -> set[tuple[int, str]]:
    """(row, column key) of the lowest value of each ranked column among runs on the same data
    set; none where the runs tie, or where a data set has one run."""
    by_dataset: dict[str, list[int]] = {}
    for r, run in enumerate(runs):
        by_dataset.setdefault(str(run.config.get("data.dataset")), []).append(r)
    best = set()
    for members in by_dataset.values():
        for key in ranked:
            values = [rows[r][key] for r in members if is_finite(rows[r][key])]
            if len(set(values)) > 1:
                best |= {(r, key) for r in members if rows[r][key] == min(values)}
    return best


def render_comparison(runs: list[LoggedRun], console: Console) -> list[dict]:
    """The settings that differ between the runs, then their results side by side; returns the
    runs' summaries."""
    summaries = [summarize(run) for run in runs]
    num_levels = max(len(s["levels"]) for s in summaries)
    _print_settings(runs, console)
    rows = [_result_row(run, s, num_levels) for run, s in zip(runs, summaries)]
    dead_keys = [_dead_key(i) for i in range(num_levels)]
    shared = any(row[SHARED_DEAD] is not None for row in rows)
    if shared:  # a shared codebook's dead codes: the count that says whether a code serves
        dead_keys.append(SHARED_DEAD)
    columns = [*RESULT_COLUMNS, *((key, key.replace(" ", "\n"), True) for key in dead_keys)]
    best = _best_cells(runs, rows, [key for key, _, ranked in columns if ranked])
    window_only = {s["run"] for s in summaries if s["eval"] is None}
    cells = []
    for r, row in enumerate(rows):
        marked = row["run"] in window_only
        cells.append([Text(("+" if (r, key) in best else "") + fmt(row[key])
                           + ("*" if marked and key in dead_keys and row[key] is not None else ""),
                           style=BEST_STYLE if (r, key) in best else "")
                      for key, _, _ in columns])
    cols = [Col(header, "left", text=key == "status") if key in ("run", "status")
            else Col(header) for key, header, _ in columns]
    legend = ("total, recon: the last train record's; heldout: held-out recon at the last eval; "
              "dead Ln: codes no training image picks at the last eval")
    if shared:
        legend += "; dead shared: of a codebook shared by the levels, the codes no level picks"
    if window_only:
        legend += "; * no eval yet: codes unused in the last training window"
    legend += (f"; +: the lowest recon, heldout and dead counts among runs on one data set "
               f"({BEST_STYLE} on a terminal)")
    print_table(console, f"{len(runs)} runs side by side", cols, cells, legend)
    return summaries
