"""The `rqvae` command: a thin Typer shell that parses, validates and delegates.

JAX is imported only inside the commands that need it and rich only where a command prints, so
`--help` and `report` answer quickly (`scripts/bench_report.py` times both). Bad input of any kind
(ConfigError, UserError) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import signal
import sys
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from rqvae.trainer import config as config_lib
from rqvae.trainer.errors import ConfigError, UserError

if TYPE_CHECKING:
    from rich.console import Console

EXIT_CODES = """Exit codes: 0 ok, 1 training failed (non-finite loss), 2 bad input,
130 interrupted (SIGINT), 143 terminated (SIGTERM)."""


app = typer.Typer(
    help=f"Train residual-quantized VAEs whose codebook entries all stay alive.\n\n{EXIT_CODES}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it through rich costs 0.1-0.2 s per call
)


def _version(value: bool):
    if value:
        from importlib.metadata import version

        print(f"rqvae {version('rqvae')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    pass


def _console() -> Console:
    """COLUMNS wide if set, else the terminal's width, else 80 (a log file or pipe)."""
    from rqvae.reports.report import make_console

    return make_console()


def _fail(message: str, code: int = 2):
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True)
    # One line in a file or pipe; on a terminal wrapped between words, not mid-word.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                  soft_wrap=not console.is_terminal)
    raise typer.Exit(code)


@contextlib.contextmanager
def _user_errors():
    """Bad input, whatever the module that found it, as one line and exit 2."""
    try:
        yield
    except (ConfigError, UserError) as err:
        _fail(str(err))


def _use_compilation_cache():
    """Keeps compiled programs on disk, so a second run (or a resume) starts in seconds.

    JAX_COMPILATION_CACHE_DIR chooses the place; the default is under XDG_CACHE_HOME or ~/.cache.
    """
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_home / "rqvae" / "xla"))


# The named flags of `rqvae train`: config key -> (flag, help). The flag's type is the config
# field's, its default None (the config's value). Every other key is reached with --set.
TRAIN_FLAGS = {
    "loss.lambda_wasserstein": ("--lambda-wasserstein", "Weight of the transport term."),
    "transport.epsilon": ("--sinkhorn-epsilon", "Entropic regularization of the transport term: "
                          "a fraction of each level's mean cost."),
    "loss.lambda_commit": ("--lambda-commit", "Weight of the commitment loss."),
    "loss.lambda_codebook": ("--lambda-codebook", "Weight of the codebook loss."),
    "optimizer.learning_rate": ("--learning-rate", "Adam step size."),
    "steps": ("--steps", "Optimizer steps in the run."),
    "batch_size": ("--batch-size", "Images per step."),
    "seed": ("--seed", "Seed of parameters and batches."),
    "data.dataset": ("--dataset", "'digits', 'tfds:<name>' or 'npz:<path>'."),
}


def _parameter_name(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _flag_parameter(key: str, flag: str, help_text: str) -> inspect.Parameter:
    kind = typing.get_type_hints(config_lib.section_of(key))[key.rpartition(".")[2]]
    default = config_lib.flatten(config_lib.to_dict(config_lib.TrainerConfig()))[key]
    help_text += f" Default: the config's value ({default} without one)."
    option = typer.Option(flag, help=help_text,
                          metavar=kind.__name__.upper() if kind is not str else "TEXT")
    return inspect.Parameter(_parameter_name(flag), inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], option])


def _with_config_flags(flags: dict[str, tuple[str, str]]):
    """Adds a named option per entry of `flags` to a command, and passes their values to it as
    `overrides` ({config key: value}, only the flags given)."""

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        added = [_flag_parameter(key, flag, text) for key, (flag, text) in flags.items()]
        kept = [p for p in signature.parameters.values() if p.name != "overrides"]

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {key: kwargs.pop(_parameter_name(flag)) for key, (flag, _) in flags.items()}
            return command(overrides={k: v for k, v in values.items() if v is not None},
                           **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*kept, *added])
        wrapper.__annotations__ = {p.name: p.annotation for p in (*kept, *added)}
        return wrapper

    return decorate


@app.command(short_help="Train an RQ-VAE.")
@_with_config_flags(TRAIN_FLAGS)
def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", metavar="FILE", help="TOML config file, or a preset's name (rqvae configs).")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(metavar="DIR", help="Run directory; default runs/<config>-<changed settings>-<time>.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Any config key, repeatable: --set model.num_codes=256 --set remedies.kmeans_init=true.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --run-dir from its last checkpoint.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print the resolved config, and a line per logged step also on a terminal.")] = False,
    *,
    overrides: dict,
):
    """Train an RQ-VAE; writes config.toml, metrics.jsonl and checkpoints/ into the run directory.

    Examples:

    \b
      rqvae train                           # the embedded digits: 14 s on 2 cores
      rqvae train -c hybrid                 # a preset (rqvae configs lists them)
      rqvae train --lambda-wasserstein 0.5 --steps 2000
      rqvae train -c restart --set model.num_codes=256
      srun rqvae train -c mnist --set run.distributed=true       # multi-host
      rqvae train --resume --run-dir runs/default-20261123-101500 --steps 8000
    """
    if quiet and verbose:
        _fail("--quiet and --verbose contradict each other; pass one")
    if resume and run_dir is None:
        _fail("--resume needs --run-dir naming the run to continue")
    with _user_errors():
        cfg = _train_config(config, run_dir, set_ or [], overrides, resume)
        _use_compilation_cache()
        from rqvae.trainer import devices, launch
        from rqvae.trainer import loop as train_lib  # JAX loads here, after the cheap checks

        run = launch.open_run(cfg, name=_run_name(config, cfg), resume=resume)
    from rqvae.trainer.progress import Display, print_start, print_summary

    quiet = quiet or not devices.is_primary()  # in a multi-host run, process 0 alone prints
    console = _console()
    if not quiet:
        print_start(run, console, devices, resume)
    if verbose:
        console.print(config_lib.dumps(run.cfg), highlight=False, markup=False)

    try:
        summary = train_lib.fit(run, display=Display(run.cfg.batch_size, console, quiet, verbose))
    except train_lib.TrainingFailed as err:
        _fail(str(err), code=1)
    except train_lib.Interrupted as err:
        _fail(f"{err}. Continue with: rqvae train --resume --run-dir {run.run_dir}",
              code=128 + err.signum)
    finally:
        if run.lock is not None:
            run.lock.release()
    if devices.is_primary():
        print_summary(summary, run.run_dir, console)


def _run_name(config: Path | None, cfg: config_lib.TrainerConfig) -> str:
    """The automatic run name: the config's name, then the settings the command line changed."""
    from rqvae.trainer import launch, names, presets

    path = None if config is None else (presets.find(str(config)) or config)
    stem = "default" if config is None else Path(config).stem
    loaded = config_lib.load(path)
    return names.run_name(stem, {k: new for k, (_, new) in
                                 launch.differences(loaded, cfg).items()})


def _train_config(config: Path | None, run_dir: Path | None, assignments: list[str],
                  overrides: dict, resume: bool) -> config_lib.TrainerConfig:
    """The config a run trains on: the defaults, or the file (on a resume without one, the run's
    own config.toml), then --set, then the named flags."""
    from rqvae.trainer import rundir

    base = config
    if resume and base is None:
        base = run_dir / rundir.CONFIG_FILE
        if not base.is_file():
            raise UserError(f"{run_dir} holds no run to resume (no {rundir.CONFIG_FILE}); check "
                            f"--run-dir")
    elif base is not None and base.is_dir():
        raise UserError(f"--config {base} is a directory; pass a TOML file, e.g. "
                        f"{base / 'hybrid.toml'}")
    elif base is not None and not base.exists():
        from rqvae.trainer import presets

        base = presets.find(str(base)) or base
        if not base.exists():
            names = ", ".join(name for name, _ in presets.listing())
            raise UserError(f"config file {base} not found; pass a TOML file or a preset: "
                            f"{names} (rqvae configs lists them)")
    merged = {**config_lib.parse_assignments(assignments), **overrides}
    if run_dir is not None:
        merged["run.run_dir"] = str(run_dir)
    saved = resume and config is None  # the run's own config.toml, as it trained
    return config_lib.replace((config_lib.load_saved if saved else config_lib.load)(base), merged)


@app.command(short_help="Train a grid of settings x seeds, then report it.",
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep(
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
      rqvae sweep --grid lambda_wasserstein=0,0.1,0.5 --seeds 0,1,2 --out runs/sw --steps 2000
      rqvae sweep -c hybrid --grid transport.epsilon=0.02,0.05 --out runs/eps --parallel 2
      rqvae sweep --resume --grid lambda_wasserstein=0,0.1,0.5 --seeds 0,1,2 --out runs/sw \\
          --steps 2000
    """
    from rqvae import sweep as sweep_lib

    with _user_errors():
        plan = sweep_lib.Plan(config=None if config is None else str(config),
                              grid=sweep_lib.parse_grid(grid), seeds=sweep_lib.parse_seeds(seeds),
                              train_args=list(ctx.args))
        for run in sweep_lib.runs_of(plan):  # every run's config checked before any starts
            _train_config(config, None, [], dict(run.settings), resume=False)
        sweep_lib.prepare(out, plan, resume)
    from rich.console import Console

    console = Console(stderr=True)
    say = functools.partial(console.print, highlight=False, markup=False, soft_wrap=True)
    steps = _train_config(config, None, [], {}, resume=False).steps
    if "--steps" in ctx.args:
        steps = int(ctx.args[ctx.args.index("--steps") + 1])
    try:
        outcomes, bad_input = sweep_lib.execute(plan, out, parallel, steps, say)
    except sweep_lib.Interrupted as err:
        _fail(f"{err}; continue with the same command and --resume", code=128 + err.signum)
    if bad_input:
        _fail(f"a run was refused, and every run would be: {bad_input.splitlines()[-1]}")
    failed = sorted(name for name, outcome in outcomes.items() if outcome != "completed"
                    and outcome != "done")
    from rqvae.reports import report as report_lib

    with _user_errors():
        report_lib.main([out], as_json=False, console=_console())
    done = len(outcomes) - len(failed)
    say(f"sweep {out}: {done} of {len(outcomes)} runs completed"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise typer.Exit(1)


@app.command(short_help="List the presets that ship with rqvae.")
def configs():
    """List the presets: `rqvae train -c NAME` runs one from any directory.

    Each file starts with the command that runs it, its time and what to expect; `rqvae train -c
    NAME -v` prints the config it resolves to.
    """
    from rqvae.trainer import presets

    for name, purpose in presets.listing():
        print(f"{name:12s} {purpose}")


@app.command(short_help="Tables of runs' losses and codebook health.")
def report(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR...", help="Run directories written by `rqvae train`, or directories holding runs.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")] = False,
    csv_output: Annotated[bool, typer.Option("--csv", help="Print every train and eval record as CSV.")] = False,
    last: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="History of one run: the last N logged steps.")] = None,
    every: Annotated[Optional[int], typer.Option(min=1, metavar="K", help="History of one run: steps that are multiples of K.")] = None,
):
    """Tables of a run's losses and codebook health; several runs side by side.

    A directory that holds runs (such as runs/) stands for every run in it.

    Examples:

    \b
      rqvae report runs/default-20261123-101500
      rqvae report runs/traditional-* runs/hybrid-*     # one comparison table
      rqvae report runs/x --json | jq '.[0].final'
      rqvae report runs/x --last 5                      # the last 5 logged steps
      rqvae report runs/ --csv > all_runs.csv           # every run under runs/
    """
    from rqvae.reports import report as report_lib

    with _user_errors():
        report_lib.main(run_dirs, as_json=json_output, console=_console(), last=last,
                        every=every, as_csv=csv_output)


@app.command("eval", short_help="Evaluate a checkpoint on the held-out split.")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory written by `rqvae train`.")],
    step: Annotated[Optional[int], typer.Option(metavar="N", help="Checkpoint step; default the newest.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Evaluate a checkpoint on the held-out split: recon MSE, PSNR and per-level code use.

    Examples:

    \b
      rqvae eval runs/hybrid-20261123-101500
      rqvae eval runs/x --step 4000 --json
    """
    _use_compilation_cache()
    from rqvae.trainer import launch
    from rqvae.trainer.evaluate import evaluate as evaluate_params

    with _user_errors():
        _, step_cfg, dataset, params, step = launch.load_trained(run_dir, step)
    result = {"run": str(run_dir), "step": step, **evaluate_params(params, dataset, step_cfg)}
    if json_output:
        print(json.dumps(result, indent=2))
        return
    from rqvae.reports.run_tables import print_eval

    print_eval(_console(), f"{run_dir} at step {step}", dataset, result,
               step_cfg.model.num_codes)


@app.command(short_help="Write the code indices of a split to .npy.")
def encode(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory written by `rqvae train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="The .npy file to write.")],
    split: Annotated[str, typer.Option(metavar="SPLIT", help="'train' or 'heldout'.")] = "train",
    step: Annotated[Optional[int], typer.Option(metavar="N", help="Checkpoint step; default the newest.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
):
    """Write the per-level code indices of a split, (images, levels) int32, to train a prior on.

    Example:

    \b
      rqvae encode runs/hybrid-20261123-101500 --out codes.npy --split train
    """
    if split not in ("train", "heldout"):
        _fail(f"--split must be 'train' or 'heldout', got '{split}'")
    from rqvae.trainer import rundir

    with _user_errors():
        rundir.check_out_file(out, force)
    _use_compilation_cache()
    import numpy as np
    from rich.console import Console

    from rqvae.trainer import launch
    from rqvae.trainer.evaluate import encode as encode_images

    with _user_errors():
        _, step_cfg, dataset, params, step = launch.load_trained(run_dir, step)
    codes = encode_images(params, getattr(dataset, split), step_cfg)
    try:
        rundir.write_atomically(out, lambda file: np.save(file, codes))
    except OSError as err:
        _fail(f"cannot write {out} ({err.strerror}); choose another --out")
    Console().print(f"wrote {out}: {codes.shape[0]} images x {codes.shape[1]} levels of codes "
                    f"(step {step}, {split} split)", highlight=False)


@app.command(short_help="Write PNGs of runs' curves, codes and reconstructions.")
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR...", help="One run, or several to overlay their curves.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Folder for the PNGs (created if needed).")],
    log_scale: Annotated[bool, typer.Option("--log", help="Log-scale loss axes.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace PNGs already in --out.")] = False,
):
    """Write PNGs: loss curves; for one run also code use, reconstructions and codebooks.

    Needs matplotlib (pip install 'rqvae[plot]').

    Examples:

    \b
      rqvae plot runs/hybrid-20261123-101500 --out plots/
      rqvae plot runs/traditional-* runs/hybrid-* --out plots/compare --log
    """
    from rqvae.reports import plot as plot_lib
    from rqvae.reports.runs import load_run
    from rqvae.trainer import rundir

    with _user_errors():
        for run_dir in run_dirs:
            if not (run_dir / rundir.METRICS_FILE).is_file():
                raise UserError(f"{run_dir} holds no {rundir.METRICS_FILE}; pass directories "
                                f"written by `rqvae train`")
        plot_lib.check_out(out, force, plot_lib.png_names(len(run_dirs)))
        for run_dir in run_dirs:
            load_run(run_dir)  # a run with no train record yet has nothing to plot
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create --out {out} ({err.strerror}); choose another "
                            f"--out") from None
        written = [plot_lib.loss_curves(run_dirs, out, log_scale)]
        if len(run_dirs) == 1:
            _use_compilation_cache()
            written += plot_lib.checkpoint_pictures(run_dirs[0], out)
    from rich.console import Console

    for path in written:
        Console().print(f"wrote {path}", highlight=False)


data_app = typer.Typer(help="Data set chores.", no_args_is_help=True)
app.add_typer(data_app, name="data", short_help="Data set chores (prepare a tfds data set).")


@data_app.command("prepare", short_help="Download and prepare a tfds data set.")
def data_prepare(
    dataset: Annotated[str, typer.Argument(metavar="tfds:NAME", help="tfds:<name>, e.g. tfds:mnist.")],
    data_dir: Annotated[Optional[Path], typer.Option(metavar="DIR", help="Where to write it; default $TFDS_DATA_DIR or ~/tensorflow_datasets.")] = None,
):
    """Download and prepare a tfds data set (ArrayRecord, as `rqvae train` reads it).

    Needs internet and TensorFlow (pip install 'rqvae[prepare]'); training does not.

    Example:

    \b
      rqvae data prepare tfds:mnist && rqvae train -c configs/mnist.toml
    """
    from rqvae.trainer import data

    with _user_errors():
        where = data.prepare(dataset, data_dir)
    from rich.console import Console

    Console().print(f"prepared {dataset} in {where}", highlight=False)


def main():
    # A closed pipe (`rqvae report x | head`) ends quietly, as for other Unix tools.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app()


if __name__ == "__main__":
    sys.exit(main())
