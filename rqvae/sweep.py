"""`rqvae sweep`: a grid of settings times seeds over one config, each run an `rqvae train`
process, spread over the visible GPUs (one process each) or run N at a time on CPU.

The sweep folder holds `sweep.json` (the config, the grid, the seeds and the extra train flags),
one run directory per run, named by the values it sets (`lw0.5-eps0.1-seed1`), and `logs/`, each
run's output. A failed run does not stop the others. `--resume` continues a sweep: finished runs
are kept, interrupted ones resumed from their checkpoints, the rest started.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from rqvae import cli_support as support
from rqvae.trainer import names, rundir, runlog
from rqvae.trainer.errors import ConfigError, UserError

SWEEP_FILE = rundir.SWEEP_FILE
LOGS_DIR = rundir.SWEEP_LOGS_DIR
BAD_INPUT = 2  # `rqvae train`'s exit code for bad input: the same for every run, so the sweep stops


@dataclass(frozen=True)
class Plan:
    config: str | None  # the base config file or preset, as given to -c
    grid: dict[str, list]  # config key -> the values it takes
    seeds: list[int]
    train_args: list[str]  # further `rqvae train` flags, passed to every run (--steps 2000)


@dataclass(frozen=True)
class Run:
    name: str
    settings: dict  # config key -> value, the grid's and the seed


def parse_grid(items: list[str]) -> dict[str, list]:
    """`--grid KEY=V1,V2,...` arguments as {key: [values]}; values are TOML values."""
    grid = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigError(f"--grid takes KEY=VALUE,VALUE,... (e.g. lambda_wasserstein=0,0.5), "
                              f"got '{item}'")
        if key in grid:
            raise ConfigError(f"--grid {key} given twice; list all its values in one --grid")
        if key == "seed":
            raise ConfigError(f"--grid {item}: a sweep's seeds are set by --seeds (e.g. --seeds "
                              f"{text.strip()}), not --grid")
        grid[key] = [_toml_value(word.strip(), item) for word in text.split(",")]
    return grid


def _toml_value(text: str, item: str):
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        if not text:
            raise ConfigError(f"--grid {item} has an empty value; drop the extra comma") from None
        return text  # a bare word: a string, as --set reads it


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(word) for word in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds takes integers separated by commas (0,1,2), got '{text}'") \
            from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: '{text}'")
    return seeds


def runs_of(plan: Plan) -> list[Run]:
    """Every run of the plan: each combination of the grid's values, with each seed."""
    runs = []
    for values in itertools.product(*plan.grid.values()):
        settings = dict(zip(plan.grid, values))
        for seed in plan.seeds:
            name = names.run_name("", {**settings, "seed": seed}, max_tags=None)
            runs.append(Run(name, {**settings, "seed": seed}))
    taken = [run.name for run in runs]
    if len(set(taken)) != len(taken):
        raise ConfigError("two runs of the grid would get the same name; give the values of a "
                          "key distinct forms (0.1 and 0.10 read alike)")
    return runs


def state_of(run_dir: Path, steps: int | None) -> str:
    """"new" (nothing yet), "done" (completed at its planned steps), "failed" (its loss went
    non-finite) or "resume" (started, then stopped)."""
    if not rundir.holds_run(run_dir):
        return "new"
    end = [r for r in (runlog.read(run_dir) if (run_dir / rundir.METRICS_FILE).is_file() else [])
           if r.get("kind") == "end"]
    if end and end[-1].get("status") == "completed" and (steps is None
                                                          or end[-1].get("step") == steps):
        return "done"
    if end and end[-1].get("status") == "failed":
        return "failed"
    return "resume"


def collapsed_runs(out: Path, names: list[str]) -> list[str]:
    """The runs among `names` whose last eval is no better than a constant output
    (`runlog.collapsed`)."""
    def last_eval(run_dir: Path) -> dict | None:
        if not (run_dir / rundir.METRICS_FILE).is_file():
            return None
        evals = [r for r in runlog.read(run_dir) if r.get("kind") == "eval"]
        return evals[-1] if evals else None

    return [name for name in names if runlog.collapsed(last_eval(out / name))]


def _set(key: str, value) -> list[str]:
    return ["--set", f"{key}={json.dumps(value) if isinstance(value, str) else _toml(value)}"]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def command(plan: Plan, run: Run, run_dir: Path, resume: bool) -> list[str]:
    """The `rqvae train` command of one run."""
    train = [sys.executable, "-m", "rqvae.cli", "train", "--run-dir", str(run_dir), "-q"]
    if resume:
        return [*train, "--resume", *plan.train_args]
    sets = [word for key, value in run.settings.items() for word in _set(key, value)]
    return [*train, *(["-c", plan.config] if plan.config else []), *sets, *plan.train_args]


def slots(parallel: int) -> list[dict]:
    """The environment of each process slot: one GPU each where GPUs are visible, else
    `parallel` slots on the CPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g for g in visible.split(",") if g.strip()]
    elif shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        gpus = [str(i) for i, line in enumerate(listed.stdout.splitlines())
                if line.startswith("GPU")]
    else:
        gpus = []
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in gpus]
    return [{} for _ in range(parallel)]


def prepare(out: Path, plan: Plan, resume: bool) -> None:
    """Checks the sweep folder and records the plan; writes nothing on a refusal."""
    recorded = out / SWEEP_FILE
    if resume:
        if not recorded.is_file():
            raise UserError(f"{out} holds no sweep to resume (no {SWEEP_FILE}); check --out")
        saved = json.loads(recorded.read_text())
        if saved != asdict(plan):
            raise UserError(f"{out} holds another sweep (its grid, seeds, config or flags "
                            f"differ: {saved}); resume it with the same arguments, or choose "
                            f"a new --out")
        return
    if recorded.is_file():
        raise UserError(f"{out} already holds a sweep; pass --resume to continue it, or choose a "
                        f"new --out")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} holds other files; choose a new or empty --out")
    rundir.check_writable(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    (out / LOGS_DIR).mkdir(exist_ok=True)
    rundir.write_atomically(recorded, lambda f: f.write(json.dumps(asdict(plan), indent=2)
                                                        .encode()))


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(f"sweep interrupted by {signal.Signals(signum).name}: the runs under way "
                         f"stopped after their step with a checkpoint")
        self.signum = signum


def execute(plan: Plan, out: Path, parallel: int, steps: int | None, say
            ) -> tuple[dict[str, str], str | None]:
    """Runs every run not yet done, as many at a time as there are slots. Returns each run's
    outcome (done: already, completed, failed: the loss went non-finite or the process failed,
    interrupted) and, if a run was refused for bad input (which would refuse every run, so the
    sweep stopped starting more), its output. `say` prints a line. Raises Interrupted on SIGINT
    or SIGTERM, after passing it to the runs under way, which save a checkpoint first."""
    outcomes, todo, bad_input = {}, [], None
    for run in runs_of(plan):
        state = state_of(out / run.name, steps)
        if state in ("done", "failed"):
            outcomes[run.name] = "done" if state == "done" else "failed"
        else:
            todo.append((run, state == "resume"))
    free, active = slots(parallel), {}
    stop, signalled = [], set()
    previous = {sig: signal.signal(sig, lambda signum, _: stop.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while todo or active:
            while todo and free and not stop:
                run, resume = todo.pop(0)
                env = free.pop(0)
                log = open(out / LOGS_DIR / f"{run.name}.log", "a")
                # A session of its own: a Ctrl-C at the terminal reaches the sweep alone, which
                # passes each run one SIGTERM (a second would quit it without a checkpoint).
                process = subprocess.Popen(command(plan, run, out / run.name, resume),
                                           stdout=log, stderr=subprocess.STDOUT,
                                           env={**os.environ, **env}, start_new_session=True)
                active[process] = (run, env, log)
                say(f"started {run.name}" + (" (resuming)" if resume else "")
                    + (f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if env else ""))
            if stop and active:
                for process in set(active) - signalled:
                    process.send_signal(signal.SIGTERM)
                    signalled.add(process)
            for process in [p for p in active if p.poll() is not None]:
                run, env, log = active.pop(process)
                log.close()
                free.append(env)
                outcome = _outcome(process.returncode)
                outcomes[run.name] = outcome
                say(f"{outcome} {run.name}" + ("" if outcome == "completed" else
                                                f" (exit {process.returncode}; see "
                                                f"{out / LOGS_DIR / run.name}.log)"))
                if process.returncode == BAD_INPUT and not stop:
                    todo.clear()  # the same bad input would fail every run
                    bad_input = (out / LOGS_DIR / f"{run.name}.log").read_text().strip()
            if stop and not active:
                raise Interrupted(stop[0])
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return outcomes, bad_input


# Train flags a sweep sets itself, and what to use instead.
OWN_FLAGS = {"run_dir": "--out names the sweep's folder, and each run gets a folder in it",
             "resume": "use the sweep's own --resume with the same arguments",
             "seed": "use the sweep's --seeds"}


def train_flags(ctx: typer.Context, train_args: list[str]) -> tuple[list[str], dict]:
    """The --set assignments and named flags among the `rqvae train` flags a sweep passes to
    every run, parsed as `train` parses them, so that a mistyped or misplaced flag is refused
    before any run starts. Raises UserError."""
    train = ctx.parent.command.get_command(ctx.parent, "train")
    try:
        parsed = train.make_context("train", list(train_args), parent=ctx.parent).params
    except Exception as err:  # Click's usage errors, which Typer re-exports under its own names
        if not hasattr(err, "format_message"):
            raise
        raise UserError(f"a train flag for every run is wrong: {err.format_message()}; see "
                        f"rqvae train --help") from None
    for name, instead in OWN_FLAGS.items():
        if parsed.get(name):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} is not for a sweep's runs: {instead}")
    flags = {key: parsed[support.parameter_name(flag)]
             for key, (flag, _) in support.TRAIN_FLAGS.items()
             if parsed.get(support.parameter_name(flag)) is not None}
    return list(parsed.get("set_") or []), flags


def _steps(train_args: list[str]) -> int | None:
    """The --steps among the train flags, if given."""
    for i, word in enumerate(train_args):
        if word == "--steps" or word.startswith("--steps="):
            text = word.partition("=")[2] or (train_args[i + 1] if i + 1 < len(train_args) else "")
            if not text.isdigit():
                raise ConfigError(f"--steps takes a number of steps, got '{text}'")
            return int(text)
    return None


def _outcome(returncode: int) -> str:
    if returncode == 0:
        return "completed"
    if returncode >= 128 or returncode < 0:  # a signal's exit code, or killed by one
        return "interrupted"
    return "failed"


def sweep_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="The sweep's folder: sweep.json, a run directory per run, logs/.")],
    grid: Annotated[list[str], typer.Option("--grid", metavar="KEY=V1,V2", help="A config key and its values; repeat for a grid.")],
    seeds: Annotated[str, typer.Option(metavar="S1,S2", help="Seeds of each setting.")] = "0",
    config: Annotated[Optional[Path], typer.Option("--config", "-c", metavar="FILE", help="Base config file or preset.")] = None,
    parallel: Annotated[int, typer.Option(min=1, metavar="N", help="Runs at a time on CPU (one per GPU where GPUs are visible).")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the sweep in --out: keep finished runs, resume stopped ones.")] = False,
):
    """Train every combination of the --grid values with each seed, then report the sweep.

    Any other `rqvae train` flag (--steps 2000, --set model.num_codes=256) goes to every run.
    Runs are named by the values they set (lw0.5-eps0.1-seed1); a failed run does not stop the
    others. Exit 0 when every run completed, 1 when one failed.

    Examples:

    \b
      rqvae sweep --grid lambda_wasserstein=0,0.1,0.5 --seeds 0,1,2 --out runs/sw\\
          --steps 2000
      rqvae sweep -c hybrid --grid transport.epsilon=0.02,0.05 --out runs/eps \\
          --parallel 2
      rqvae sweep --resume ...   # the same arguments: finishes the sweep
    """
    with support.user_errors():
        plan = Plan(config=None if config is None else str(config), grid=parse_grid(grid),
                    seeds=parse_seeds(seeds), train_args=list(ctx.args))
        assignments, flags = train_flags(ctx, plan.train_args)
        for run in runs_of(plan):  # every run's config checked before any starts
            support.train_config(config, None, assignments, {**dict(run.settings), **flags},
                                 resume=False)
        steps = _steps(plan.train_args) or support.train_config(config, None, [], {},
                                                                resume=False).steps
        prepare(out, plan, resume)
    from rich.console import Console

    console = Console(stderr=True)
    say = functools.partial(console.print, highlight=False, markup=False)  # wraps at the width
    try:
        outcomes, bad_input = execute(plan, out, parallel, steps, say)
    except Interrupted as err:
        again = shlex.join(["rqvae", *sys.argv[1:], *([] if "--resume" in sys.argv else
                                                       ["--resume"])])
        support.fail(f"{err}; continue with the same command and --resume: {again}",
                     code=128 + err.signum)
    if bad_input:
        support.fail(f"a run was refused, and every run would be: {bad_input.splitlines()[-1]}")
    failed = sorted(name for name, outcome in outcomes.items() if outcome != "completed"
                    and outcome != "done")
    from rqvae.reports import report as report_lib

    with support.user_errors():
        report_lib.main([out], as_json=False, console=support.console())
    done = len(outcomes) - len(failed)
    collapsed = collapsed_runs(out, [name for name in sorted(outcomes) if name not in failed])
    say(f"sweep {out}: {done} of {len(outcomes)} runs completed"
        + (f"; collapsed (held-out recon no better than a constant output's): "
           f"{', '.join(collapsed)}" if collapsed else "")
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise typer.Exit(1)
