"""Synthetic run directories, as `rqvae train` writes them, and reading what the report prints:
shared by the tests of `rqvae report` and its modules. No JAX."""

import dataclasses
import io
import json
import re

from rich.console import Console

from rqvae.reports import report
from rqvae.trainer import config, rundir
from rqvae.trainer.config import ModelConfig, RunConfig, TrainerConfig

# Losses that are not monotone, so the lowest value of a term is not the final one.
TRAIN_LOSSES = [
    # step, total, recon, commit, codebook, wasserstein
    (10, 0.90, 0.60, 0.050, 0.20, 0.040),
    (20, 0.70, 0.45, 0.030, 0.12, 0.025),
    (30, 0.55, 0.33, 0.041, 0.11, 0.031),
    (40, 0.61, 0.35, 0.036, 0.15, 0.022),
]


def train_record(step, total, recon, commit, codebook, wasserstein, *, used=(5, 3), dead=(2, 4)):
    return {"kind": "train", "step": step, "time": step / 100, "total": total, "recon": recon,
            "commit": commit, "codebook": codebook, "wasserstein": wasserstein,
            "batch_used": list(used), "batch_perplexity": [4.25, 2.75], "window_dead": list(dead),
            "sinkhorn_marginal_error": [0.0125, 0.0375], "transport_cost": [0.25, 0.125],
            "solve_epsilon": [0.0125, 0.00625], "anchor_stale": [3, 0]}


def eval_record(step, heldout_recon, *, dead=(1, 3)):
    return {"kind": "eval", "step": step, "time": step / 90, "heldout_recon": heldout_recon,
            "heldout_psnr": 18.5, "train_used": [8 - d for d in dead], "train_dead": list(dead),
            "train_perplexity": [6.5, 4.125], "heldout_used": [7, 5],
            "heldout_perplexity": [6.25, 3.875]}


def end_record(step, status="completed", reason=""):
    return {"kind": "end", "step": step, "time": step / 80, "status": status, "reason": reason}


def default_records():
    records = [train_record(*losses) for losses in TRAIN_LOSSES]
    records.insert(3, eval_record(30, 0.38))
    return records + [eval_record(40, 0.3625), end_record(40)]


def make_run(root, name, cfg=None, records=None):
    """A run directory as `rqvae train` writes it; cfg=None writes no config.toml."""
    run_dir = root / name
    run_dir.mkdir()
    if cfg is not None:
        (run_dir / rundir.CONFIG_FILE).write_text(config.dumps(cfg))
    with open(run_dir / rundir.METRICS_FILE, "w", encoding="utf-8") as log:
        for record in default_records() if records is None else records:
            log.write(json.dumps(record, separators=(",", ":")) + "\n")
    return run_dir


def tiny_cfg(run_dir="", **changes):
    """A small config; `changes` by key (flat names of earlier versions included: compat.MOVED),
    or whole sections (model=ModelConfig(...))."""
    sections = {k: v for k, v in changes.items() if dataclasses.is_dataclass(v)}
    base = TrainerConfig(**{"steps": 40, "model": ModelConfig(num_codes=8),
                            "run": RunConfig(run_dir=str(run_dir), dead_window=10), **sections})
    return config.replace(base, {k: v for k, v in changes.items() if k not in sections})


def rendered(runs, styles=False, points=8, width=200):
    console = Console(file=io.StringIO(), record=True, width=width, force_terminal=True,
                      color_system="standard")
    report.render(runs, console, points=points)
    return console.export_text(styles=styles)


def plain(runs, width, **options):
    """What `rqvae report` prints to a pipe `width` columns wide."""
    console = Console(width=width, file=io.StringIO(), force_terminal=False)
    report.render(runs, console, **options)
    return console.file.getvalue()


def rows_of(text, first_cell):
    return [line for line in text.splitlines() if re.match(rf"[│|]\s*{first_cell}\s*[│|]", line)]


def subdir(root, name):
    (root / name).mkdir()
    return root / name


def section(text, title, next_title=None):
    after = text.split(title, 1)[1]
    return after.split(next_title, 1)[0] if next_title else after


def decreasing_run(root, name="long", steps=range(10, 610, 10), cfg=None):
    """Losses falling as 1/step (three decades for recon), an eval every 200 steps."""
    records = []
    for s in steps:
        records.append(train_record(s, 10 / s, 5 / s, 0.5 / s, 0.25, 0.0, used=(s % 8, 8),
                                    dead=(8 - s % 8, 0)))
        if s % 200 == 0:
            records.append(eval_record(s, 4 / s))
    return make_run(root, name, cfg or tiny_cfg(steps=steps[-1]), records)
