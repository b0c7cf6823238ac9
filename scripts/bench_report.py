"""How long `rqvae report` takes on a long run (100k train records), and every `--help`.

    python scripts/bench_report.py [--records 100000] [--repeats 5] [--keep DIR]

Writes two synthetic run directories the way `rqvae train` does (2 levels, an eval every 1000
steps, a final end record, float32 values widened to Python floats, so lines are as long as real
ones: about 360 bytes): one in RunLog's compact layout (`separators=(",", ":")`), one with
`json.dumps`' default separators (", " and ": "), as a log written by other tools may be. Then
prints, each the median of --repeats:
1. in process, for each layout: `runs.load_run`, then with `summary.summarize`, then with
   `report.render` (tables into a string, 80 columns as in a pipe);
2. whole commands in a subprocess, started as the `rqvae` console script starts them (`from
   rqvae.cli import main`) on this checkout, in round robin after one warm-up, so the log is in
   the page cache and the bytecode compiled and cached, as after `pip install` (the commands run
   without PYTHONDONTWRITEBYTECODE): `python -c pass` (the floor under every command), `rqvae
   report DIR` on both long runs, `... --json` on the compact one and `rqvae report` on a
   10-record run, and `rqvae --help` and the `--help` of every command.
Targets, on a 2-core machine: `rqvae report` of a long run (either layout) under 1 s, every
`--help` under 0.5 s (REPORT_TARGET, HELP_TARGET). Other jobs on the machine slow every line:
the first line prints the load average to read them by.
"""

from __future__ import annotations

import argparse
import io
import json
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
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rqvae, installed or not
from rqvae.quantizer.settings import LossWeights
from rqvae.reports import report
from rqvae.reports.runs import load_run
from rqvae.reports.summary import summarize
from rqvae.trainer import config, rundir, runlog

LEVELS, CODES = 2, 64


def f32(x: float) -> float:
    """x rounded to float32 and widened back, as `float(jax_array)` gives in train records."""
    return struct.unpack("f", struct.pack("f", x))[0]


def write_run(run_dir: Path, records: int, eval_every: int = 1000, compact: bool = True) -> int:
    """A run directory with `records` train records (one per step), an eval every `eval_every`
    steps and an end record, in RunLog's layout (`compact`) or with json.dumps' default
    separators; returns the size of metrics.jsonl in bytes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = config.TrainerConfig(
        steps=records, loss=LossWeights(lambda_wasserstein=0.5),
        model=config.ModelConfig(num_levels=LEVELS, num_codes=CODES),
        run=config.RunConfig(run_dir=str(run_dir), log_every=1, eval_every=eval_every))
    (run_dir / rundir.CONFIG_FILE).write_text(config.dumps(cfg))
    (run_dir / rundir.METRICS_FILE).unlink(missing_ok=True)  # RunLog appends; --keep rewrites
    if compact:
        with runlog.RunLog(run_dir) as log:
            for record in synthetic_records(records, eval_every):
                log.write(record)
    else:
        with open(run_dir / rundir.METRICS_FILE, "w", encoding="utf-8") as log:
            log.writelines(json.dumps(r) + "\n" for r in synthetic_records(records, eval_every))
    return (run_dir / rundir.METRICS_FILE).stat().st_size


def synthetic_records(records: int, eval_every: int) -> Iterator[dict]:
    """Train records with falling losses, evals and a final end record, with runlog's keys."""
    rng = random.Random(0)
    for step in range(1, records + 1):
        decay = math.exp(-step / (records / 5))
        noise = lambda: 1 + 0.1 * rng.random()  # noqa: E731
        recon, commit, codebook = (f32(s * (0.05 + decay) * noise()) for s in (0.6, 0.05, 0.2))
        wasserstein = f32(0.03 * (0.1 + decay) * noise())
        dead = [rng.randrange(CODES // 4) for _ in range(LEVELS)]
        yield {
            "kind": "train", "step": step, "time": round(step * 0.0123, 3),
            "total": f32(recon + 0.25 * commit + codebook + 0.5 * wasserstein),
            "recon": recon, "commit": commit, "codebook": codebook, "wasserstein": wasserstein,
            "batch_used": [CODES - d - rng.randrange(8) for d in dead],
            "batch_perplexity": [f32(rng.uniform(20, 60)) for _ in range(LEVELS)],
            "window_dead": dead,
            "sinkhorn_marginal_error": [f32(rng.uniform(1e-3, 1e-2)) for _ in range(LEVELS)],
        }
        if step % eval_every == 0:
            eval_dead = [rng.randrange(4) for _ in range(LEVELS)]
            yield {
                "kind": "eval", "step": step, "time": round(step * 0.0123 + 0.5, 3),
                "heldout_recon": f32(0.7 * (0.05 + decay)),
                "heldout_psnr": f32(rng.uniform(18, 24)),
                "train_used": [CODES - d for d in eval_dead],
                "train_dead": eval_dead,
                "train_perplexity": [f32(rng.uniform(30, 60)) for _ in range(LEVELS)],
                "heldout_used": [CODES - d - 1 for d in eval_dead],
                "heldout_perplexity": [f32(rng.uniform(30, 60)) for _ in range(LEVELS)],
            }
    yield {"kind": "end", "step": records, "time": round(records * 0.0123 + 1, 3),
           "status": "completed", "reason": ""}


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# What the console script does, `rqvae` in argv[0] as there.
CONSOLE_SCRIPT = "import sys; from rqvae.cli import main; sys.argv[0] = 'rqvae'; sys.exit(main())"
REPORT_TARGET, HELP_TARGET = 1.0, 0.5  # seconds: the targets the restructuring set


def command_env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the warm-up writes rqvae's bytecode, as pip would
    return env


def commands(long_runs: dict[str, Path], short_run: Path,
             records: int) -> dict[str, tuple[list[str], float]]:
    """label -> (argv after the interpreter, target in seconds or 0)."""
    def rqvae(*args):
        return ["-c", CONSOLE_SCRIPT, *map(str, args)]

    table = {"python -c pass (startup, the floor)": (["-c", "pass"], 0)}
    for layout, run_dir in long_runs.items():
        table[f"rqvae report ({records}, {layout})"] = (rqvae("report", run_dir), REPORT_TARGET)
    table |= {
        f"rqvae report --json ({records}, compact)": (rqvae("report", long_runs["compact"],
                                                            "--json"), 0),
        "rqvae report (10-record run)": (rqvae("report", short_run), 0),
        "rqvae --help": (rqvae("--help"), HELP_TARGET),
    }
    for name in ("train", "report", "eval", "encode", "plot", "data prepare"):
        table[f"rqvae {name} --help"] = (rqvae(*name.split(), "--help"), HELP_TARGET)
    return table


def time_commands(table: dict, repeats: int) -> dict[str, list[float]]:
    env = command_env()

    def run(argv):
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv], check=True, stdout=subprocess.DEVNULL, env=env)
        return time.perf_counter() - start

    for argv, _ in table.values():  # warm-up: page cache, bytecode
        run(argv)
    times = {label: [] for label in table}
    for _ in range(repeats):  # round robin: a slower minute of a shared machine hits all
        for label, (argv, _) in table.items():
            times[label].append(run(argv))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the run here and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        root = args.keep or Path(tmp)
        long_runs = {"compact": root / "long-run", "default separators": root / "long-run-spaced"}
        print(f"{platform.python_implementation()} {platform.python_version()}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        for layout, run_dir in long_runs.items():
            start = time.perf_counter()
            size = write_run(run_dir, args.records, compact=layout == "compact")
            print(f"wrote {args.records} train + {args.records // 1000} eval records, "
                  f"{layout}, {size / 1e6:.1f} MB, in {time.perf_counter() - start:.1f} s")
        for layout, run_dir in long_runs.items():
            time_in_process(run_dir, layout, args.repeats)

        short_run = Path(tmp) / "short-run"
        write_run(short_run, 10)
        table = commands(long_runs, short_run, args.records)
        times = time_commands(table, args.repeats)
        print(f"whole commands, wall time, median of {args.repeats} (bytecode cached):")
        for label, seconds in times.items():
            median, target = statistics.median(seconds), table[label][1]
            verdict = (f"  (target {1e3 * target:.0f} ms: {'met' if median < target else 'MISSED'})"
                       if target else "")
            print(f"  {label:<44} {1e3 * median:5.0f} ms{verdict}")


def time_in_process(run_dir: Path, layout: str, repeats: int) -> None:
    """Each step on a fresh load (the run caches what its summary computes), with the cycle
    collector paused as `report.main` pauses it."""
    with runlog.cycle_collection_paused():
        load = median_seconds(lambda: load_run(run_dir), repeats)
        summary = median_seconds(lambda: summarize(load_run(run_dir)), repeats)
        render = median_seconds(lambda: render_tables(run_dir), repeats)
    print(f"in process ({layout}), median of {repeats}: load_run {1e3 * load:.0f} ms, "
          f"load_run+summarize {1e3 * summary:.0f} ms, load_run+render {1e3 * render:.0f} ms")


def render_tables(run_dir: Path) -> str:
    console = Console(file=io.StringIO(), width=80)
    report.render([load_run(run_dir)], console)
    return console.file.getvalue()


if __name__ == "__main__":
    main()
