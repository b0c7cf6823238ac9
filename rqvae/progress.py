"""What training prints: a rich progress bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def _terms(record: dict) -> str:
    keys = ["total", "recon", "commit", "codebook"]
    if record.get("wasserstein"):
        keys.append("wasserstein")
    losses = " ".join(f"{k} {record[k]:.4g}" for k in keys)
    return f"{losses} | used {record['batch_used']} dead {record['window_dead']}"


def _eval(record: dict) -> str:
    return (f"eval step {record['step']}: heldout recon {record['heldout_recon']:.4g} | "
            f"dead over train split {record['train_dead']} | perplexity "
            f"{[round(p, 1) for p in record['train_perplexity']]}")


class Display:
    """Progress of a run. On a terminal a live bar; otherwise one line per logged record."""

    def __init__(self, batch_size: int, console: Console | None = None, quiet: bool = False,
                 verbose: bool = False):
        self.console = console or Console()
        self.batch_size = batch_size
        self.quiet = quiet
        self.verbose = verbose  # a line per logged record also under the live bar
        self.live = self.console.is_terminal and not quiet
        self._progress = None

    def __enter__(self):
        return self

    def start(self, start_step: int, total_steps: int):
        self._t0, self._step0 = time.perf_counter(), start_step
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                TextColumn("{task.fields[terms]}"), console=self.console, transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=total_steps, completed=start_step, rate="", terms=""
            )

    def _rate(self, step: int) -> str:
        elapsed = time.perf_counter() - self._t0
        return f"{(step - self._step0) * self.batch_size / max(elapsed, 1e-9):,.0f} img/s"

    def advance(self, step: int):
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def log(self, record: dict):
        if self.quiet:
            return
        if record["kind"] == "eval":
            self.console.print(_eval(record), highlight=False, soft_wrap=True)
        elif self._progress is not None and not self.verbose:
            self._progress.update(self._task, rate=self._rate(record["step"]), terms=_terms(record))
        else:
            if self._progress is not None:
                self._progress.update(self._task, rate=self._rate(record["step"]))
            self.console.print(f"step {record['step']} | {self._rate(record['step'])} | "
                               f"{_terms(record)}", highlight=False, soft_wrap=True)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
