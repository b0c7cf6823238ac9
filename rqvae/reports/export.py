"""`rqvae export --tensorboard DIR`: runs' logs as TensorBoard event files, written with
tensorboardX (no TensorFlow; `pip install 'rqvae[tensorboard]'`).

Each run gets DIR/<run name>/, one scalar per logged value at its step and wall time: the loss
terms (`loss/total`, ...), per level the train record's values (`level1/batch_used`, ...) and the
evaluations (`eval/heldout_recon`, `level1/train_dead`, ...). Nothing of the run is changed.
"""

from __future__ import annotations

import math
from pathlib import Path

from rqvae.reports.runs import LoggedRun
from rqvae.trainer import runlog
from rqvae.trainer.errors import UserError


def scalars(run: LoggedRun) -> list[tuple[str, float, int, float]]:
    """(tag, value, step, seconds since the run started) of every finite logged value."""
    found = []
    for record in [*run.train, *run.evals]:
        step, seconds = record["step"], float(record.get("time") or 0.0)
        if record["kind"] == "train":
            values = {f"loss/{term}": record.get(term) for term in runlog.LOSS_TERMS}
            per_level = runlog.TRAIN_PER_LEVEL
        else:
            values = {f"eval/{key}": record.get(key) for key in runlog.EVAL_SCALARS}
            per_level = runlog.EVAL_PER_LEVEL
        for key in per_level:
            for level, value in enumerate(record.get(key) or []):
                values[f"level{level + 1}/{key}"] = value
        found += [(tag, float(value), step, seconds) for tag, value in values.items()
                  if runlog.is_finite(value)]
    return found


def to_tensorboard(runs: list[LoggedRun], out: Path) -> list[Path]:
    """Writes each run's scalars under out/<run name>/; returns those folders. Refuses a run
    name twice, and a folder that already holds event files."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs tensorboardX: pip install 'rqvae[tensorboard]'") \
            from None
    names = [run.name for run in runs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"two runs are named {twice[0]}; export them to different --tensorboard "
                        f"folders")
    taken = [out / run.name for run in runs if any((out / run.name).glob("events.out.*"))]
    if taken:
        raise UserError(f"{taken[0]} already holds event files; choose another --tensorboard")
    written = []
    for run in runs:
        folder = out / run.name
        with SummaryWriter(logdir=str(folder)) as writer:
            origin = _started(run)
            for tag, value, step, seconds in scalars(run):
                writer.add_scalar(tag, value, global_step=step, walltime=origin + seconds)
        written.append(folder)
    return written


def _started(run: LoggedRun) -> float:
    """The run's start as a Unix time, from its log's modification time and last record."""
    log = run.path / runlog.METRICS_FILE
    last = max((float(r.get("time") or 0.0) for r in run.evals), default=0.0)
    if run.train:
        last = max(last, float(run.train[-1].get("time") or 0.0))
    started = log.stat().st_mtime - last
    return started if math.isfinite(started) else 0.0
