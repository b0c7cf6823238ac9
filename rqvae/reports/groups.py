"""Runs that differ only in their seed, as one group: mean and standard deviation of each result
over the group's seeds, and the best group marked by a column that survives a pipe."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from rich.console import Console

from rqvae.reports.runs import LoggedRun
from rqvae.reports.summary import NEVER_SHOWN
from rqvae.reports.tables import Col, fmt, print_table
from rqvae.trainer.names import short_name
from rqvae.trainer.runlog import is_finite

# Keys in which runs of one group may differ: the seed, and where each run is written.
WITHIN_GROUP = ("seed", *NEVER_SHOWN)


def _setting_keys(runs: Sequence[LoggedRun]) -> list[str]:
    """The config keys that differ between the runs, but for WITHIN_GROUP."""
    configs = [run.config for run in runs if run.config]
    keys = list(dict.fromkeys(key for cfg in configs for key in cfg))
    return [key for key in keys if key not in WITHIN_GROUP
            and len({json.dumps(cfg.get(key)) for cfg in configs}) > 1]


def group_label(run: LoggedRun, keys: Sequence[str]) -> str:
    """The settings that set a run's group apart, as short name and value ("lw0.5 eps0.1");
    "all" when the runs differ in their seed alone."""
    return " ".join(f"{short_name(key)}{fmt(run.config.get(key))}" for key in keys) or "all"


def group_runs(runs: Sequence[LoggedRun]) -> dict[str, list[LoggedRun]]:
    """{label: runs} in the order the labels first occur; runs without a config are left out."""
    keys = _setting_keys(runs)
    groups: dict[str, list[LoggedRun]] = {}
    for run in runs:
        if run.config:
            groups.setdefault(group_label(run, keys), []).append(run)
    return groups


def mean_std(values: Sequence) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value) of the finite values; None if none."""
    finite = [v for v in values if is_finite(v)]
    if not finite:
        return None
    mean = sum(finite) / len(finite)
    spread = (sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return mean, math.sqrt(spread)


def group_rows(groups: dict[str, list[LoggedRun]], summaries: dict) -> list[dict]:
    """Per group: label, n, completed, and mean_std of recon, heldout and dead codes per level;
    `summaries` maps each run's path to its `summarize`."""
    rows = []
    for label, members in groups.items():
        s = [summaries[run.path] for run in members]
        levels = max(len(x["levels"]) for x in s)
        completed = sum(run.status == "completed" for run in members)
        row = {"group": label, "completed": f"{completed}/{len(members)}",
               "recon": mean_std([x["final"].get("recon") for x in s]),
               "heldout": mean_std([x["eval"]["heldout_recon"] if x["eval"] else None
                                    for x in s])}
        for i in range(levels):
            row[f"dead L{i + 1}"] = mean_std([x["levels"][i]["eval_dead"]
                                              if x["eval"] and i < len(x["levels"]) else None
                                              for x in s])
        rows.append(row)
    return rows


def _cell(value) -> str:
    """mean ± std in fixed point, the mean to 4 significant digits and the spread to as many
    decimals, so that a column reads in one format."""
    if isinstance(value, tuple):
        mean, spread = value
        decimals = max(0, 3 - math.floor(math.log10(abs(mean)))) if mean else 4
        if spread == 0 and mean == int(mean):  # counts every seed agrees on: 0 dead codes
            decimals = 0
        return f"{mean:.{decimals}f} ± {spread:.{decimals}f}"
    return fmt(value)


def render_groups(runs: Sequence[LoggedRun], summaries: dict, console: Console) -> None:
    """One row per group of runs that differ only in their seed, best held-out recon marked."""
    groups = group_runs(runs)
    if len(groups) == len([run for run in runs if run.config]):
        return  # every group holds one run: the comparison above says it all
    rows = group_rows(groups, summaries)
    heldouts = [row["heldout"][0] for row in rows if row["heldout"] is not None]
    best = min(heldouts) if len(heldouts) > 1 else None
    keys = [key for key in max(rows, key=len) if key != "group"]
    cells = [[("* " if best is not None and row["heldout"] is not None
               and row["heldout"][0] == best else "  ") + row["group"],
              *(_cell(row.get(key)) for key in keys)] for row in rows]
    cols = [Col("group", "left", text=True),
            *(Col(key.replace(" ", "\n") if key != "completed" else "com-\npleted")
              for key in keys)]
    legend = ("mean ± standard deviation over each group's seeds (completed: runs that completed "
              "and did not collapse, of the group's; recon: the last train record's, heldout: "
              "the last eval's, dead: codes no training image picks); * lowest mean held-out "
              "recon")
    print_table(console, f"{len(groups)} groups of runs that differ only in their seed", cols,
                cells, legend)
