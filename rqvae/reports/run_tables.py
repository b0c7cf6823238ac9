"""The tables of one run: heading, config, resumes, losses, codebook health per level, trends
(sparklines), and losses and health over the run at the steps `summary.select` chooses."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from rqvae.quantizer.settings import LOSS_TERMS
from rqvae.reports.runs import LoggedRun, finite_extremes
from rqvae.reports.summary import (
    LEVEL_VALUES,
    TERM_HEADERS,
    TRAIN_LEVEL,
    TRANSPORT_LEVEL,
    evenly_spaced,
    summarize,
    wasserstein_on,
)
from rqvae.reports.tables import Col, cell_width, fmt, print_table, table_width
from rqvae.trainer.runlog import finite_numbers, is_finite

# Loss terms as column headers: "wasserstein" would be the widest column of every loss table.
TREND_POINTS = 40  # characters of a sparkline at most; fewer on a narrow console
MIN_TREND_POINTS = 8
SPARKS = "▁▂▃▄▅▆▇█"


def _shown_terms(run: LoggedRun) -> tuple[str, ...]:
    return tuple(t for t in LOSS_TERMS if t != "wasserstein" or wasserstein_on(run))


def _first(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")


def _status_text(run: LoggedRun) -> str:
    status, reason = run.status, run.status_reason
    text = status + (f" ({reason})" if reason and status in ("interrupted", "failed",
                                                              "crashed", "collapsed") else "")
    if run.repeated_steps:
        text += f"; repeated steps: {_first(run.repeated_steps)} (logged twice)"
    if run.unreadable_lines:
        count = len(run.unreadable_lines)
        lines = "1 line of metrics.jsonl holds" if count == 1 else (
            f"{count} lines of metrics.jsonl hold")
        text += f"; {lines} no record, skipped (line {_first(run.unreadable_lines)})"
    return text


def _print_heading(summary: dict, run: LoggedRun, console: Console) -> None:
    planned = run.config.get("steps")
    of_steps = f" of {planned}" if planned is not None else ""
    status = _status_text(run)
    console.print(Text(f"run {summary['run']}: step {summary['steps_logged']}{of_steps}, {status}",
                       style="bold"))
    console.print(Text(summary["path"], style="dim"))
    last_eval = summary["eval"] or {}
    if last_eval.get("tuples_unique") is not None:
        console.print(Text(f"code tuples (semantic IDs) at step {last_eval['step']}: "
                           f"{last_eval['tuples_shared']} training examples share theirs with "
                           f"another; {last_eval['tuples_unique']} unique, the largest group "
                           f"{last_eval['tuples_largest_group']} (rqvae encode --ids tells them "
                           f"apart)"))
    if last_eval.get("shared_dead") is not None:
        console.print(Text(f"shared codebook at step {last_eval['step']}: "
                           f"{last_eval['shared_dead']} codes no level picks (its dead codes; "
                           f"the dead counts per level below count each level apart)"))


def _print_config(summary: dict, run: LoggedRun, console: Console) -> None:
    if run.config_note:
        console.print(Text(f"config: {run.config_note}", style="dim"))
        return
    rows = [[key, fmt(value)] for key, value in summary["config"].items()]
    print_table(console, "config (the main keys, and every other key not at its default)",
                [Col("key", "left", text=True), Col("value", "left", text=True)], rows)


def _changes(changed: dict) -> str:
    parts = [f"{key}: {fmt(old)} -> {fmt(new)}" for key, (old, new) in changed.items()]
    return "; ".join(parts) or "nothing"


def _print_resumes(summary: dict, console: Console) -> None:
    resumes = summary["resumes"]
    if not resumes:
        return
    rows = [[fmt(r["step"]), _changes(r["changed"])] for r in resumes]
    print_table(console, f"resumed {len(resumes)} time(s)",
                [Col("at step"), Col("settings changed (old -> new)", "left", text=True)], rows)


def _print_losses(summary: dict, terms: tuple[str, ...], console: Console) -> None:
    final, best = summary["final"], summary["best"]
    final_step = summary["history"][-1]["step"]
    rows = [[f"final (step {final_step})", *(fmt(final.get(t)) for t in terms)],
            ["lowest logged", *(fmt(best[t]["value"]) if t in best else "-" for t in terms)],
            ["at step", *(fmt(best[t]["step"]) if t in best else "-" for t in terms)]]
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
            row.append(fmt(value))
        legend.append(f"heldout: recon on the held-out split, final at the eval of step "
                      f"{last_eval['step']}")
    legend.append(_best_line(best_heldout, last_eval))
    print_table(console, "losses", cols, rows, "; ".join(legend))


def _best_line(best_heldout: dict | None, last_eval: dict | None) -> str:
    if best_heldout is not None:
        return (f"best: the lowest held-out recon, {fmt(best_heldout['heldout_recon'])} at step "
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
    shown = list(TRAIN_LEVEL)
    legend = (f"batch: the last train batch; window dead: codes unused over "
              f"{_dead_window(run)}; ppl: perplexity")
    if summary["eval"] is not None:
        shown += ["eval_dead", "eval_perplexity"]
        shown += [name for name in ("heldout_perplexity",) if any(name in lv for lv in levels)]
        legend += (f"; train: every training image at the eval of step {summary['eval']['step']}"
                   f" (a code no image picks is dead); heldout: every held-out image")
    else:
        legend += "; no eval yet: full-pass columns appear after the first eval"
    shown += [name for name in TRANSPORT_LEVEL if any(name in lv for lv in levels)]
    window = run.config.get("transport.anchor_window", "transport.anchor_window")
    legend += "".join(text.format(window=window) for name, text in _TRANSPORT_LEGEND.items()
                      if name in shown)
    num_codes = run.config.get("model.num_codes")
    codes = f" ({num_codes} codes each)" if num_codes is not None else ""
    rows = [[fmt(level["level"]), *(fmt(level.get(name)) for name in shown)] for level in levels]
    print_table(console, f"codebook health per level{codes}",
                [Col("level"), *(Col(LEVEL_VALUES[name][1]) for name in shown)], rows, legend)


_TRANSPORT_LEGEND = {
    "sinkhorn_marginal_error": "; sinkhorn error: the transport plan's row-marginal error",
    "transport_cost": "; transport cost: the level's, per latent dimension",
    "solve_epsilon": "; solve eps: the epsilon of its solve, in squared latent units",
    "anchor_stale": ("; stale: codes unpicked over the last {window} steps ({window} sweeps "
                     "of the codebook where a step has fewer points than codes), which the "
                     "term moves and re-anchors at its next anchor step"),
}


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
    return [label, values, fmt(low), fmt(high), ""]


def _print_trends(run: LoggedRun, terms: tuple[str, ...], console: Console) -> None:
    steps = run.series["step"]
    rows = [_trend_row(term, run.series[term], run.extremes[term]) for term in terms]
    if run.evals:
        heldout = [r.get("heldout_recon") for r in run.evals]
        rows.append(_trend_row("heldout", heldout, finite_extremes(heldout)))
    cols = [Col("term", "left"), Col("trend", "left"), Col("lowest"), Col("highest"),
            Col("scale")]
    others = [max(cell_width(col.header), *(cell_width(row[i]) for row in rows), len("linear"))
              for i, col in enumerate(cols) if i != 1]
    # As wide as the console leaves, so no sparkline is cut.
    points = max(MIN_TREND_POINTS, min(TREND_POINTS, console.width - table_width(others) - 3))
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
    rows = [[fmt(r["step"]), *(fmt(r.get(t)) for t in terms)] for r in summary["history"]]
    cols = [Col("step"), *(Col(TERM_HEADERS.get(t, t)) for t in terms)]
    print_table(console, f"losses over the run{note}", cols, rows)


def _print_health_over_time(summary: dict, run: LoggedRun, note: str, console: Console) -> None:
    num_codes = run.config.get("model.num_codes")
    health = summary["health"]
    columns = {name: LEVEL_VALUES[name][1] for name in (*TRAIN_LEVEL, "sinkhorn_marginal_error")
               if name != "sinkhorn_marginal_error" or any(name in entry for entry in health)}
    if num_codes:
        columns["used"] += " %"

    def cell(entry: dict, key: str) -> str:
        values = entry.get(key) or []
        if key == "used" and num_codes:
            values = [f"{100 * v / num_codes:.0f}" if is_finite(v) else v for v in values]
        return " / ".join(map(fmt, values)) or "-"

    rows = [[fmt(entry["step"]), *(cell(entry, key) for key in columns)] for entry in health]
    print_table(console, f"codebook health over the run{note}",
                [Col("step"), *(Col(header) for header in columns.values())], rows,
                "each cell: level 1 / level 2 / ...")


def render_run(run: LoggedRun, console: Console, points: int, last: int | None,
               every: int | None) -> None:
    """Every table of one run, top to bottom; `last` and `every` ask for the steps they choose
    (see `summary.select`), so only the heading and the two tables over the run follow."""
    summary = summarize(run, points, last=last, every=every)
    terms = _shown_terms(run)
    note = _selection_note(last, every)
    _print_heading(summary, run, console)
    if last is not None or every is not None:
        _print_history(summary, terms, note, console)
        _print_health_over_time(summary, run, note, console)
        return
    _print_config(summary, run, console)
    _print_resumes(summary, console)
    _print_losses(summary, terms, console)
    _print_levels(summary, run, console)
    _print_trends(run, terms, console)
    _print_history(summary, terms, note, console)
    _print_health_over_time(summary, run, note, console)


def print_eval(console: Console, title: str, dataset, result: dict, num_codes: int) -> None:
    """`rqvae eval`'s table: held-out recon and PSNR, then code use per level."""
    from rich.table import Table

    console.print(f"{title}, held-out split of {dataset.name} ({len(dataset.heldout)} images): "
                  f"recon MSE {result['heldout_recon']:.4g}, PSNR {result['heldout_psnr']:.2f} "
                  f"dB", highlight=False)
    table = Table(title="code use on the held-out split", title_justify="left")
    for column in ("level", "codes used", "unused", "perplexity"):
        table.add_column(column, justify="right")
    levels = zip(result["heldout_used"], result["heldout_perplexity"])
    for level, (used, perplexity) in enumerate(levels):
        table.add_row(str(level + 1), str(used), str(num_codes - used), f"{perplexity:.1f}")
    console.print(table)
