"""`rqvae export --tensorboard DIR`: runs' logs as TensorBoard event files, written with
tensorboardX (no TensorFlow; `pip install 'rqvae[tensorboard]'`).

Each run gets DIR/<run name>/, one scalar per logged value at its step and wall time: the loss
terms (`loss/total`, ...), per level the train record's values (`level1/batch_used`, ...) and the
evaluations (`eval/heldout_recon`, `level1/train_dead`, ...). Nothing of the run is changed.
Exporting again into the same DIR appends what the runs logged since (EXPORTED_FILE records the
last step written of each run), so a long run can be followed by rerunning the command.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rqvae.reports.runs import LoggedRun
from rqvae.trainer import runlog
from rqvae.trainer.errors import UserError


# In each run's folder: the last step exported of each record kind, {"train": 400, "eval": 0}.
EXPORTED_FILE = "rqvae-exported.json"


def scalars(run: LoggedRun, after: dict | None = None) -> list[tuple[str, float, int, float]]:
    """(tag, value, step, seconds since the run started) of every finite logged value, of the
    records past `after`'s step of their kind ({kind: step}; None: every record)."""
    found = []
    for record in [*run.train, *run.evals]:
        if after and record["step"] <= after.get(record["kind"], -1):
            continue
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


def to_tensorboard(runs: list[LoggedRun], out: Path) -> tuple[list[Path], int]:
    """Writes each run's scalars under out/<run name>/, appending to an earlier export there;
    returns those folders and the number of values written. Refuses a run name twice, and a
    folder that holds event files of something else."""
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
    exported = {run.name: _exported(out / run.name) for run in runs}
    written, count = [], 0
    for run in runs:
        folder = out / run.name
        last = {"train": max((r["step"] for r in run.train), default=-1),
                "eval": max((r["step"] for r in run.evals), default=-1)}
        values = scalars(run, exported[run.name])
        if values:
            # A file of its own: the default name (seconds and host) would be the earlier
            # export's within the same second, and replace it.
            part = len(list(folder.glob("events.out.*")))
            with SummaryWriter(logdir=str(folder), filename_suffix=f".{part}") as writer:
                origin = _started(run)
                for tag, value, step, seconds in values:
                    writer.add_scalar(tag, value, global_step=step, walltime=origin + seconds)
            merged = {kind: max(step, (exported[run.name] or {}).get(kind, -1))
                      for kind, step in last.items()}
            (folder / EXPORTED_FILE).write_text(json.dumps(merged))
        written.append(folder)
        count += len(values)
    return written, count


def _exported(folder: Path) -> dict | None:
    """The steps an earlier export wrote into `folder` ({kind: last step}), None if none; a
    folder with event files of another program is refused."""
    marker = folder / EXPORTED_FILE
    if marker.is_file():
        try:
            return json.loads(marker.read_text())
        except (OSError, ValueError):
            pass
    if any(folder.glob("events.out.*")):
        raise UserError(f"{folder} holds event files that rqvae export did not write (no "
                        f"readable {EXPORTED_FILE}); choose another --tensorboard")
    return None


def _started(run: LoggedRun) -> float:
    """The run's start as a Unix time, from its log's modification time and last record."""
    log = run.path / runlog.METRICS_FILE
    last = max((float(r.get("time") or 0.0) for r in run.evals), default=0.0)
    if run.train:
        last = max(last, float(run.train[-1].get("time") or 0.0))
    started = log.stat().st_mtime - last
    return started if math.isfinite(started) else 0.0
