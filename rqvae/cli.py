"""The `rqvae` command: a thin Typer shell that parses, validates and delegates.

JAX is imported only inside the commands that need it and rich only where a command prints, so
`--help` and `report` answer quickly (`scripts/bench_report.py` times both). Bad input of any kind
(ConfigError, UserError) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rqvae import cli_support as support
from rqvae.sweep import sweep_command
from rqvae.trainer import config as config_lib
from rqvae.trainer.errors import UserError

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


@app.command(short_help="Train an RQ-VAE.")
@support.with_config_flags(support.TRAIN_FLAGS)
def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", metavar="FILE", help="TOML config file, or a preset's name (rqvae configs).")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(metavar="DIR", help="Run directory; default runs/<config>-<changed settings>-<time>.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Any config key, repeatable: --set model.num_codes=256 --set remedies.kmeans_init=true.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --run-dir from its newest checkpoint that reads back.")] = False,
    step: Annotated[Optional[int], typer.Option("--step", metavar="N", help="With --resume: the checkpoint to continue from; newer ones are set aside.")] = None,
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
      rqvae train --resume --run-dir runs/x --step 4000    # an earlier checkpoint
    """
    if quiet and verbose:
        support.fail("--quiet and --verbose contradict each other; pass one")
    if resume and run_dir is None:
        support.fail("--resume needs --run-dir naming the run to continue")
    if step is not None and not resume:
        support.fail("--step chooses the checkpoint a --resume continues from; add --resume")
    with support.user_errors():
        cfg = support.train_config(config, run_dir, set_ or [], overrides, resume)
        support.use_compilation_cache()
        from rqvae.trainer import devices, launch
        from rqvae.trainer import loop as train_lib  # JAX loads here, after the cheap checks

        run = launch.open_run(cfg, name=support.run_name(config, cfg), resume=resume,
                              resume_step=step)
    from rqvae.trainer.progress import Display, print_set_aside, print_start, print_summary

    quiet = quiet or not devices.is_primary()  # in a multi-host run, process 0 alone prints
    console = support.console()
    if devices.is_primary():
        print_set_aside(run, console)
    if not quiet:
        print_start(run, console, devices, resume)
    elif resume and run.resume_from is None and devices.is_primary():  # said even with --quiet
        console.print("no complete checkpoint yet: starting again from step 0", highlight=False)
    if verbose:
        console.print(config_lib.dumps(run.cfg), highlight=False, markup=False)

    try:
        summary = train_lib.fit(run, display=Display(run.cfg.batch_size, console, quiet, verbose))
    except train_lib.TrainingFailed as err:
        support.fail(str(err), code=1)
    except train_lib.Interrupted as err:
        support.fail(f"{err}. Continue with: rqvae train --resume --run-dir {run.run_dir}",
              code=128 + err.signum)
    finally:
        if run.lock is not None:
            run.lock.release()
    if devices.is_primary():
        print_summary(summary, run.run_dir, console, quiet=quiet)


app.command("sweep", short_help="Train a grid of settings x seeds, then report it.",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
            )(sweep_command)


@app.command(short_help="Export runs' logs as TensorBoard event files.")
def export(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR...", help="Run directories, or directories holding runs (a sweep).")],
    tensorboard: Annotated[Path, typer.Option("--tensorboard", metavar="DIR", help="Where the event files go, a folder per run.")],
):
    """Write every logged value of the runs as TensorBoard scalars, a folder per run.

    Needs tensorboardX (pip install 'rqvae[tensorboard]'); no TensorFlow.

    Example:

    \b
      rqvae export runs/sw --tensorboard tb/ && tensorboard --logdir tb/
    """
    from rqvae.reports.export import to_tensorboard
    from rqvae.reports.runs import find_runs, load_runs
    from rqvae.trainer import rundir

    with support.user_errors():
        rundir.check_writable(tensorboard, "--tensorboard")
        runs, _ = load_runs(find_runs(run_dirs))
        written, values = to_tensorboard(runs, tensorboard)
    print(f"wrote {values} new values of {len(written)} runs under {tensorboard} (rerun to add "
          f"what the runs log next); view them with: tensorboard --logdir {tensorboard} (pip "
          f"install tensorboard)")


@app.command(short_help="List the presets that ship with rqvae, or print one.")
def configs(name: Annotated[Optional[str], typer.Argument(
        help="A preset to print; 'default' prints every setting with its meaning.")] = None):
    """List the presets: `rqvae train -c NAME` runs one from any directory.

    Each file starts with the command that runs it, its time and what to expect; `rqvae configs
    NAME` prints it, and `rqvae train -c NAME -v` prints the config it resolves to.
    """
    from rqvae.trainer import presets

    listed = presets.listing()
    if name is not None:
        text = presets.text(name)
        if text is None:
            support.fail(f"no preset named '{name}'; use one of: "
                         f"{', '.join(n for n, _ in listed)}")
        print(text, end="")
        return
    width = max(len(name) for name, _ in listed) + 1
    for name, purpose in listed:
        print(f"{name:{width}s} {purpose}")


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

    with support.user_errors():
        report_lib.main(run_dirs, as_json=json_output, console=support.console(), last=last,
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
    support.use_compilation_cache()
    from rqvae.trainer import launch
    from rqvae.trainer.evaluate import evaluate as evaluate_params

    with support.user_errors():
        _, step_cfg, dataset, params, step = launch.load_trained(run_dir, step)
    result = {"run": str(run_dir), "step": step, **evaluate_params(params, dataset, step_cfg)}
    if json_output:
        print(json.dumps(result, indent=2))
        return
    from rqvae.reports.run_tables import print_eval

    print_eval(support.console(), f"{run_dir} at step {step}", dataset, result,
               step_cfg.model.num_codes)


@app.command(short_help="Write the code indices of a split to .npy.")
def encode(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory written by `rqvae train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="The .npy file to write.")],
    split: Annotated[str, typer.Option(metavar="SPLIT", help="'train' or 'heldout'.")] = "train",
    dataset: Annotated[Optional[str], typer.Option(metavar="DATA", help="Another data set of the run's shape: npz:FILE (its 'train' or 'heldout' array, in order), digits or tfds:NAME. Default: the run's own.")] = None,
    step: Annotated[Optional[int], typer.Option(metavar="N", help="Checkpoint step; default the newest.")] = None,
    ids: Annotated[bool, typer.Option("--ids", help="Semantic IDs: each code tuple plus a last position that tells apart the examples sharing it (vector latents).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
):
    """Write the per-level code indices of a split, (images, levels) int32, to train a prior on.

    Examples:

    \b
      rqvae encode runs/hybrid-20261123-101500 --out codes.npy --split train
      rqvae encode runs/x --dataset npz:new.npz --out new_codes.npy
      rqvae encode runs/items --dataset npz:items.npz --ids --out ids.npy
    """
    if split not in ("train", "heldout"):
        support.fail(f"--split must be 'train' or 'heldout', got '{split}'")
    support.check_npy_out(out, force, "the codes")
    support.use_compilation_cache()
    from rich.console import Console

    from rqvae.trainer.trained import load_run, semantic_ids

    with support.user_errors():
        run = load_run(run_dir, step)
        if ids and run.config.model.latent == "grid":
            raise UserError("--ids gives one ID per example from its code tuple; a grid latent "
                            "has a tuple per position: drop --ids")
        codes = run.encode(run.split(dataset, split))
    if ids:
        codes, collisions = semantic_ids(codes)
    support.write_npy(out, codes)
    grid = "".join(f" x {n}" for n in codes.shape[1:-1])  # a grid latent's positions
    source = f"{split} split" + (f" of {dataset}" if dataset else "")
    what = (f"semantic IDs ({codes.shape[-1] - 1} levels of codes and a de-duplicating "
            f"position)" if ids else f"{codes.shape[-1]} levels of codes")
    Console().print(f"wrote {out}: {codes.shape[0]} images{grid} x {what} (step {run.step}, "
                    f"{source})", highlight=False)
    if ids:
        Console().print(support.collision_line(collisions), highlight=False)


@app.command(short_help="Write the reconstructions of codes to .npy.")
def decode(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory written by `rqvae train`.")],
    codes_file: Annotated[Path, typer.Argument(metavar="CODES", help="An .npy of codes as `rqvae encode` writes them.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="The .npy file to write.")],
    step: Annotated[Optional[int], typer.Option(metavar="N", help="Checkpoint step; default the newest.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
):
    """Write the reconstructions of codes: images (N, H, W, C) float32 in [0, 1], or vectors (N, D).

    Example:

    \b
      rqvae decode runs/x codes.npy --out recon.npy
    """
    support.check_npy_out(out, force, "the reconstructions")
    support.use_compilation_cache()
    import numpy as np
    from rich.console import Console

    from rqvae.trainer.trained import load_run

    with support.user_errors():
        try:
            codes = np.load(codes_file, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {codes_file} as an .npy array ({err}); pass the file "
                            f"rqvae encode wrote") from None
        run = load_run(run_dir, step)
        recons = run.decode(codes)
    support.write_npy(out, recons)
    Console().print(f"wrote {out}: {recons.shape[0]} reconstructions of shape "
                    f"{recons.shape[1:]} (step {run.step})", highlight=False)


@app.command(short_help="Write PNGs of runs' curves, codes and reconstructions.")
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR...", help="One run, or several to overlay their curves; a folder of runs (a sweep's) stands for them.")],
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
    from rqvae.reports.runs import find_runs, load_run
    from rqvae.trainer import rundir

    run_dirs = find_runs(run_dirs)  # a sweep's folder, or runs/, stands for the runs in it
    with support.user_errors():
        if not run_dirs:
            raise UserError("no run among the paths given (only a sweep's sweep.json and logs/); "
                            "pass run directories or the sweep's folder")
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
        if len(run_dirs) > 1:
            written.append(plot_lib.dead_codes(run_dirs, out))
        if len(run_dirs) == 1:
            support.use_compilation_cache()
            written += support.checkpoint_pictures(run_dirs[0], out)
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
      rqvae data prepare tfds:mnist && rqvae train -c mnist
    """
    from rqvae.trainer import prepare

    with support.user_errors():
        where = prepare.prepare(dataset, data_dir)
    from rich.console import Console

    Console().print(f"prepared {dataset} in {where}", highlight=False)


def main():
    # A closed pipe (`rqvae report x | head`) ends quietly, as for other Unix tools.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app()


if __name__ == "__main__":
    sys.exit(main())
