"""The run log: `metrics.jsonl`, one JSON object per line, in the run directory.

Train records: {"kind": "train", "step", "time" (s since the run started), "total", "recon",
"commit", "codebook", "wasserstein", and per-level lists "used", "perplexity", "dead",
"sinkhorn_marginal_error"}. Eval records: {"kind": "eval", "step", "time", "heldout_recon",
per-level "used", "perplexity" and "dead" over a full pass of the training split}.
This module imports neither JAX nor Flax.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.toml"


class RunLog:
    """Appends records to metrics.jsonl, one flushed line each, so a reader never waits."""

    def __init__(self, run_dir: str | Path):
        self._file = open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read(run_dir: str | Path) -> list[dict]:
    """All records of a run, skipping a line that is cut off (a run still writing, or killed)."""
    path = Path(run_dir) / METRICS_FILE
    records = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "step" in record:
                records.append(record)
    return records


def truncate_after(run_dir: str | Path, step: int) -> None:
    """Drops records past `step`, so a resumed run logs every step exactly once.

    Rewrites through a temporary file and an atomic rename: a crash leaves the old or new log.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = [r for r in read(run_dir) if r["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for record in kept:
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
