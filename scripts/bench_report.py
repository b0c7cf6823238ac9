"""`rqvae report` speed on a long run: 100k train records, 2 levels, an eval every 1000 steps.

    python scripts/bench_report.py [--records 100000] [--repeats 5] [--keep DIR]

Writes a synthetic run directory the way `rqvae train` does (float32 values widened to Python
floats, so lines are as long as real ones: about 350 bytes), then prints, each the median of
--repeats:
1. in process: `report.load_run`, `report.summarize` and `report.render` (tables into a string);
2. whole commands in a subprocess, after one warm-up so the log is in the page cache:
   `python -m rqvae.cli report DIR` and `... --json`, and for the part that does not depend on the
   log, `python -c "import rqvae.cli"` and the same report of a 10-record run.
Target (issue "See a run at a glance"): the whole command under 0.5 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from rqvae import config, report, runlog

LEVELS, CODES = 2, 64


def f32(x: float) -> float:
    """x rounded to float32 and widened back, as `float(jax_array)` gives in train records."""
    return struct.unpack("f", struct.pack("f", x))[0]


def write_run(run_dir: Path, records: int, eval_every: int = 1000) -> int:
    """A run directory with `records` train records (one per step) and an eval every
    `eval_every` steps; returns the size of metrics.jsonl in bytes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = config.TrainerConfig(
        steps=records, lambda_wasserstein=0.5,
        model=config.ModelConfig(num_levels=LEVELS, num_codes=CODES),
        run=config.RunConfig(run_dir=str(run_dir), log_every=1, eval_every=eval_every))
    (run_dir / runlog.CONFIG_FILE).write_text(config.dumps(cfg))
    (run_dir / runlog.METRICS_FILE).unlink(missing_ok=True)  # RunLog appends; --keep rewrites
    rng = random.Random(0)
    with runlog.RunLog(run_dir) as log:
        for step in range(1, records + 1):
            decay = math.exp(-step / (records / 5))
            noise = lambda: 1 + 0.1 * rng.random()  # noqa: E731
            recon, commit, codebook = (f32(s * (0.05 + decay) * noise()) for s in (0.6, 0.05, 0.2))
            wasserstein = f32(0.03 * (0.1 + decay) * noise())
            dead = [rng.randrange(CODES // 4) for _ in range(LEVELS)]
            log.write({
                "kind": "train", "step": step, "time": round(step * 0.0123, 3),
                "total": f32(recon + 0.25 * commit + codebook + 0.5 * wasserstein),
                "recon": recon, "commit": commit, "codebook": codebook,
                "wasserstein": wasserstein,
                "used": [CODES - d - rng.randrange(8) for d in dead],
                "perplexity": [f32(rng.uniform(20, 60)) for _ in range(LEVELS)],
                "dead": dead,
                "sinkhorn_marginal_error": [f32(rng.uniform(1e-3, 1e-2)) for _ in range(LEVELS)],
            })
            if step % eval_every == 0:
                eval_dead = [rng.randrange(4) for _ in range(LEVELS)]
                log.write({
                    "kind": "eval", "step": step, "time": round(step * 0.0123 + 0.5, 3),
                    "heldout_recon": f32(0.7 * (0.05 + decay)),
                    "used": [CODES - d for d in eval_dead],
                    "perplexity": [f32(rng.uniform(30, 60)) for _ in range(LEVELS)],
                    "dead": eval_dead,
                    "heldout_perplexity": [f32(rng.uniform(30, 60)) for _ in range(LEVELS)],
                })
    return (run_dir / runlog.METRICS_FILE).stat().st_size


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def command(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the run here and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        run_dir = args.keep or Path(tmp) / "long-run"
        start = time.perf_counter()
        size = write_run(run_dir, args.records)
        print(f"{platform.python_implementation()} {platform.python_version()}, "
              f"{os.cpu_count()} CPUs; wrote {args.records} train + {args.records // 1000} eval "
              f"records, {size / 1e6:.1f} MB, in {time.perf_counter() - start:.1f} s")

        load = median_seconds(lambda: report.load_run(run_dir), args.repeats)
        run = report.load_run(run_dir)
        summarize = median_seconds(lambda: report.summarize(run), args.repeats)
        render = median_seconds(lambda: render_tables(run_dir), args.repeats)
        print(f"in process, median of {args.repeats}: load_run {1e3 * load:.0f} ms, "
              f"summarize {1e3 * summarize:.0f} ms (load+summarize {1e3 * (load + summarize):.0f} "
              f"ms); load_run+render {1e3 * render:.0f} ms")

        short_run = Path(tmp) / "short-run"
        write_run(short_run, 10)
        commands = {
            "python -c 'import rqvae.cli'": ["-c", "import rqvae.cli"],
            "rqvae report (10-record run)": ["-m", "rqvae.cli", "report", str(short_run)],
            f"rqvae report ({args.records}-record run)": ["-m", "rqvae.cli", "report", str(run_dir)],
            f"rqvae report --json ({args.records})":
                ["-m", "rqvae.cli", "report", str(run_dir), "--json"],
        }
        times = {label: [] for label in commands}
        command(*commands[f"rqvae report ({args.records}-record run)"])  # warm-up: page cache
        for _ in range(args.repeats):  # round robin: a slower minute of a shared machine hits all
            for label, argv in commands.items():
                start = time.perf_counter()
                command(*argv)
                times[label].append(time.perf_counter() - start)
        for label, seconds in times.items():
            print(f"{label:<40} {1e3 * statistics.median(seconds):5.0f} ms wall "
                  f"(median of {args.repeats})")


def render_tables(run_dir: Path) -> str:
    console = Console(file=io.StringIO(), width=160)
    report.render([report.load_run(run_dir)], console)
    return console.file.getvalue()


if __name__ == "__main__":
    main()
