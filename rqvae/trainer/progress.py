"""What training prints: a live status line on a terminal, plain lines per logged record otherwise.

The status line reads, most important first and cut to the terminal's width at field boundaries:

    ━━━━━━────────  1,200/10,000  ETA 1:23  44,596 img/s  total 0.5348  recon 0.01912  ...

The rate is recent (steps over the last RATE_WINDOW_S seconds of progress), so it neither
counts the compilation before the first step nor lags behind a run that speeds up.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.text import Text

from rqvae.trainer import runlog
from rqvae.trainer.rundir import SET_ASIDE_DIR
from rqvae.trainer.runlog import LOSS_TERMS

RATE_WINDOW_S = 10.0  # seconds of progress the rate and ETA are measured over
BAR_MAX_WIDTH = 40  # columns; the bar takes a quarter of a narrower terminal
SEPARATOR = "  "
CONTINUATION = "    "  # indent of the second and later lines of a record broken to fit


class RecentRate:
    """Steps per second over the last `window_s` seconds of `add` calls.

    Time before the first `add` is not counted: `Display` makes its first `add` at the first
    `advance`, after the compilation (or a resumed run's restore), which says nothing about the
    speed of training.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S,
                 clock: Callable[[], float] = time.perf_counter):
        self.window_s = window_s
        self.clock = clock
        self._samples: deque[tuple[float, int]] = deque()  # (time, step), oldest first

    def add(self, step: int) -> None:
        now = self.clock()
        self._samples.append((now, step))
        # Keep one sample at or before the window's start, so the window is always covered.
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def steps_per_s(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, step0), (t1, step1) = self._samples[0], self._samples[-1]
        return (step1 - step0) / (t1 - t0) if t1 > t0 else None


# -- formatting: pure functions of the numbers and a width ------------------------------------


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


def _eta(step: int, total: int, steps_per_s: float | None) -> str:
    if step >= total:
        return "ETA 0:00"
    if not steps_per_s:
        return "ETA -:--"  # not measured yet: no guess rather than a wrong one
    return f"ETA {format_duration((total - step) / steps_per_s)}"


def _rate(steps_per_s: float | None, batch_size: int) -> str | None:
    return None if steps_per_s is None else f"{steps_per_s * batch_size:,.0f} img/s"


def _levels(values) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def _perplexity(values) -> str:
    # Whole numbers suffice for a codebook of hundreds; a collapsed level (near 1) keeps a decimal.
    return "[" + ", ".join(f"{p:.0f}" if p >= 10 else f"{p:.1f}" for p in values) + "]"


def _loss_fields(record: dict) -> list[tuple[str, ...]]:
    """Per loss term: its full form, then a shorter one. The Wasserstein term only when on."""
    names = [term for term in LOSS_TERMS if term != "wasserstein" or record.get("wasserstein")]
    return [(f"{name} {record[name]:.4g}", f"{name} {record[name]:.3g}") for name in names]


def _bar(width: int, step: int, total: int) -> Text:
    done = round(width * min(step, total) / total) if total else width
    # Two different glyphs, so the bar reads also without colour.
    return Text.assemble(("━" * done, "bar.complete"), ("─" * (width - done), "bar.back"))


def status_line(width: int, step: int, total: int, steps_per_s: float | None, batch_size: int,
                record: dict | None) -> Text:
    """The live line: bar, step/total, ETA, rate, then what fits of the latest train record.

    At most `width` columns. Fields are whole or absent: one that does not fit is shortened
    (fewer digits) or dropped, in this order of importance: total, dead, recon, commit, codebook,
    wasserstein, used. The dead codes come second: they are what the run is watched for.
    """
    head = [f"{step:,}/{total:,}", _eta(step, total, steps_per_s), _rate(steps_per_s, batch_size)]
    fields = [(text,) for text in head if text]
    if record is not None:
        losses = _loss_fields(record)
        fields += losses[:1] + [(f"dead {_levels(record['window_dead'])}",)] + losses[1:]
        fields.append((f"used {_levels(record['batch_used'])}",))
    bar_width = min(BAR_MAX_WIDTH, width // 8)
    line = _bar(bar_width, step, total) if bar_width >= 5 else Text()
    for forms in fields:
        prefix = SEPARATOR if line else ""
        fitting = [form for form in forms if len(line) + len(prefix) + len(form) <= width]
        if fitting:
            line.append(prefix + fitting[0])
    return line


def train_fields(step: int, total: int, steps_per_s: float | None, batch_size: int,
                 record: dict) -> list[str]:
    """A logged train record as a line's fields (for plain output and --verbose)."""
    fields = [f"step {step:,}/{total:,}", _rate(steps_per_s, batch_size),
              _eta(step, total, steps_per_s)]
    fields += [forms[0] for forms in _loss_fields(record)]
    fields += [f"used {_levels(record['batch_used'])}", f"dead {_levels(record['window_dead'])}"]
    return [field for field in fields if field]


def eval_fields(record: dict) -> list[str]:
    """An eval record as a line's fields: held-out quality, then dead codes over the train split."""
    fields = [f"eval at step {record['step']:,}", f"held-out recon {record['heldout_recon']:.4g}"]
    if "heldout_psnr" in record:
        fields.append(f"PSNR {record['heldout_psnr']:.1f} dB")
    if "shared_dead" in record:
        fields.append(f"shared codes no level picks {record['shared_dead']}")
    fields += [f"dead (train split) {_levels(record['train_dead'])}",
               f"perplexity (train split) {_perplexity(record['train_perplexity'])}"]
    if runlog.collapsed(record):
        fields.append(f"collapsed: {runlog.collapse_note(record)}")
    return fields


def wrap_fields(fields: list[str], width: int | None) -> str:
    """Fields joined on one line, or broken between fields into lines of at most `width` columns
    (a field longer than a line gets a line of its own). No width: one line."""
    lines = [fields[0]]
    for field in fields[1:]:
        if width is None or len(lines[-1]) + len(SEPARATOR) + len(field) <= width:
            lines[-1] += SEPARATOR + field
        else:
            lines.append(CONTINUATION + field)
    return "\n".join(lines)


# -- the display ------------------------------------------------------------------------------


class Display:
    """Progress of a run. On a terminal a live status line; otherwise one line per logged record.

    `verbose` also prints a line per logged record under the live line. `quiet` prints nothing.
    """

    def __init__(self, batch_size: int, console: Console | None = None, quiet: bool = False,
                 verbose: bool = False, clock: Callable[[], float] = time.perf_counter):
        self.console = console or Console()
        self.batch_size = batch_size
        self.quiet = quiet
        self.verbose = verbose
        self.rate = RecentRate(clock=clock)
        self.step = self.total = 0
        self.record: dict | None = None  # the latest train record
        self._live: Live | None = None

    def __enter__(self):
        return self

    def start(self, start_step: int, total_steps: int):
        # The rate's baseline is the first advance, after compilation, not this step.
        self.step, self.total = start_step, total_steps
        if self.console.is_terminal and not self.quiet:
            self._live = Live(get_renderable=lambda: self, console=self.console, transient=True,
                              refresh_per_second=4)
            self._live.start()

    def __rich_console__(self, console, options):
        # Rendered by the live display at each refresh, so the line follows a resized terminal.
        yield status_line(options.max_width, self.step, self.total, self.rate.steps_per_s(),
                          self.batch_size, self.record)

    def advance(self, step: int):
        self.step = step
        self.rate.add(step)

    def log(self, record: dict):
        if record["kind"] == "eval":
            self._print(eval_fields(record))
            return
        self.record = record
        if self._live is None or self.verbose:
            self._print(train_fields(record["step"], self.total, self.rate.steps_per_s(),
                                     self.batch_size, record))

    def notice(self, text: str):
        """A line above the live status line (or among the plain lines), e.g. why training stops."""
        if not self.quiet:
            # Word-wrapped on a terminal, one line in a file.
            self.console.print(Text(text), soft_wrap=not self.console.is_terminal)

    def _print(self, fields: list[str]):
        if self.quiet:
            return
        # On a terminal break between fields rather than mid-word; in a file keep one line per
        # record, so it greps and parses.
        width = self.console.width if self.console.is_terminal else None
        self.console.print(Text(wrap_fields(fields, width)), soft_wrap=width is None)

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.stop()
            self._live = None


def print_summary(summary: dict, run_dir: Path, console, quiet: bool = False) -> None:
    """The end-of-run table and the command to run next; quiet, one line of both."""
    from rich.table import Table

    final, last_eval = summary.get("train"), summary.get("eval")
    if quiet:
        shared = (f"shared codes no level picks {last_eval['shared_dead']}, "
                  if last_eval and "shared_dead" in last_eval else "")
        dead = (f"{shared}dead (train split) {' / '.join(map(str, last_eval['train_dead']))}, "
                f"heldout recon {last_eval['heldout_recon']:.4g}" if last_eval else
                f"dead (window) {' / '.join(map(str, final['window_dead']))}")
        collapse = (f"; collapsed: {runlog.collapse_note(last_eval)}"
                    if runlog.collapsed(last_eval) else "")
        console.print(f"run {run_dir.name}: step {final['step']}, total {final['total']:.4g}, "
                      f"{dead}{collapse}; next: rqvae report {run_dir}", highlight=False,
                      soft_wrap=True)
        return
    table = Table(title=f"run {run_dir.name}: step {final['step']}", title_justify="left")
    for column in ("level", "used (batch)", "dead (window)", "dead (train split)", "perplexity"):
        table.add_column(column, justify="right")
    for level, (used, dead) in enumerate(zip(final["batch_used"], final["window_dead"])):
        full_dead = str(last_eval["train_dead"][level]) if last_eval else "-"
        perplexity = f"{last_eval['train_perplexity'][level]:.1f}" if last_eval else "-"
        table.add_row(str(level + 1), str(used), str(dead), full_dead, perplexity)
    console.print(table)
    losses = "  ".join(f"{k} {final[k]:.4g}" for k in LOSS_TERMS)
    heldout = f"  heldout recon {last_eval['heldout_recon']:.4g}" if last_eval else ""
    console.print(f"final losses: {losses}{heldout}", highlight=False)
    if runlog.collapsed(last_eval):
        console.print(f"[bold red]collapsed[/]: {runlog.collapse_note(last_eval)}; the model "
                      "learned nothing of its input", highlight=False)
    console.print(f"next: [bold]rqvae report {run_dir}[/]", highlight=False)


def print_set_aside(run, console) -> None:
    """The checkpoints a resume moved out of its way, each with why: said even with --quiet,
    since the run's files moved."""
    for step, why in run.set_aside:
        console.print(f"set aside the checkpoint at step {step} ({why}) in "
                      f"{run.run_dir / SET_ASIDE_DIR}", highlight=False, soft_wrap=True)


def print_start(run, console, devices, resume: bool) -> None:
    """Where the run trains, on how many devices, from which step, and what a resume changed."""
    from rich.markup import escape

    mesh_devices = devices.make_mesh(run.cfg).devices.flat
    on = (f"{len(mesh_devices)} {mesh_devices[0].platform} devices" if len(mesh_devices) > 1
          else "1 device")
    console.print(f"run directory: [bold]{escape(str(run.run_dir))}[/] (training on {on})",
                  highlight=False)
    if run.resume_from is not None:
        console.print(f"resuming from the checkpoint at step {run.resume_from}", highlight=False)
    elif resume:
        console.print("no complete checkpoint yet: starting again from step 0", highlight=False)
    for key, (old, new) in run.changed.items():
        decay = run.cfg.optimizer.decay_fraction
        moved = (f" (the learning rate now decays over the last {decay:.0%} of {new} steps)"
                 if key == "steps" else "")
        console.print(f"changed on resume: {key} {old} -> {new}{moved}", highlight=False)
