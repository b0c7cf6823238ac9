"""The `rqvae` command: a thin Typer shell that parses, validates and delegates.

JAX is imported only inside the commands that train, rich only where a command prints, and
pydantic (which Typer 0.2x converts option values with) not for the values these commands take,
so `--help` and `report` answer at once (`scripts/bench_report.py` times both).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, get_args, get_origin

import typer

from rqvae import config as config_lib
from rqvae.config import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

EXIT_CODES = """Exit codes: 0 ok, 1 training failed (non-finite loss), 2 bad input,
130 interrupted (SIGINT), 143 terminated (SIGTERM)."""


# -- option values without pydantic -----------------------------------------------------------
# Typer 0.2x converts every value but a flag's through a pydantic TypeAdapter, and importing
# pydantic takes longer than a whole `rqvae report` of a short run. The values these commands take
# (none, a path, an integer, a decimal, a word) are converted here instead. Any other value, and
# every one Typer would reject, goes on to Typer's own conversion: what a command receives and
# every error message stay Typer's. A Typer without that conversion (older ones) is left as it is.

_PLAIN_TEXT = {  # type -> the text it is converted from here; bool: only "no value"
    int: re.compile(r"-?[0-9]+"),
    float: re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?"),
    str: re.compile(r".*", re.DOTALL),
    Path: re.compile(r".+", re.DOTALL),
    bool: None,
}
# Typer's defaults for a path, under which it only checks that an existing path is readable.
_PLAIN_PATH = {"exists": False, "file_okay": True, "dir_okay": True, "readable": True,
               "writable": False, "resolve_path": False, "allow_dash": False, "path_type": None}


class _PlainValues:
    """Converts the plain values of one parameter; Typer converts the others."""

    def __init__(self, kind: type, info):
        self.kind, self.info, self.text = kind, info, _PLAIN_TEXT[kind]

    def coerce(self, value, param, ctx):
        many = param.multiple or param.nargs == -1
        if value is None:
            return () if many else None
        items = value if many and isinstance(value, list | tuple) else [value]
        values = [self._convert(item) for item in items]
        if None in values or (many and isinstance(value, str)):
            param._runtime_param = None  # Typer's conversion from here on
            return param.get_runtime_param().coerce(value, param=param, ctx=ctx)
        return values if many else values[0]

    def _convert(self, text):
        """The value of `text`, or None where Typer is to convert it."""
        if self.text is None or not isinstance(text, str) or not self.text.fullmatch(text):
            return None
        value, low, high = self.kind(text), self.info.min, self.info.max
        if (low is not None and value < low) or (high is not None and value > high):
            return None
        if self.kind is Path and os.path.exists(text) and not os.access(text, os.R_OK):
            return None
        return value


def _convert_plain_values(command, ctx) -> None:
    """Gives each parameter of the command tree that Typer would convert through pydantic (it has
    a `type_descriptor` and no `_runtime_param` yet) a `_PlainValues`, if its type is plain."""
    for param in command.get_params(ctx):  # get_params: with --help, made once per command
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", False) is not None:
            continue
        info, kind = descriptor.parameter_info, descriptor.annotation
        if get_origin(kind) is list and len(get_args(kind)) == 1:
            kind = get_args(kind)[0]
        if (kind in _PLAIN_TEXT and info.parser is None and not info.clamp
                and descriptor.file_annotation is None
                and (kind is not Path or all(getattr(info, key, None) == value
                                             for key, value in _PLAIN_PATH.items()))):
            param._runtime_param = _PlainValues(kind, info)
    for subcommand in getattr(command, "commands", {}).values():
        _convert_plain_values(subcommand, ctx)


class _RootGroup(typer.core.TyperGroup):
    """The `rqvae` command group, whose commands convert plain values without pydantic."""

    def parse_args(self, ctx, args):
        _convert_plain_values(self, ctx)
        return super().parse_args(ctx, args)


app = typer.Typer(
    help=f"Train residual-quantized VAEs whose codebook entries all stay alive.\n\n{EXIT_CODES}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it through rich costs 0.1-0.2 s per call
    cls=_RootGroup,
)


def _console() -> Console:
    """The terminal's width on a terminal; wide enough for every table in a log file or pipe."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def _fail(message: str, code: int = 2):
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                               soft_wrap=True)
    raise typer.Exit(code)


def _use_compilation_cache():
    """Keeps compiled programs on disk, so a second run (or a resume) starts in seconds.

    JAX_COMPILATION_CACHE_DIR chooses the place; the default is under XDG_CACHE_HOME or ~/.cache.
    """
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_home / "rqvae" / "xla"))


# CLI flag -> dotted config key.
FLAG_KEYS = {
    "learning_rate": "learning_rate",
    "lambda_commit": "lambda_commit",
    "lambda_codebook": "lambda_codebook",
    "lambda_wasserstein": "lambda_wasserstein",
    "sinkhorn_epsilon": "sinkhorn_epsilon",
    "steps": "steps",
    "batch_size": "batch_size",
    "seed": "seed",
    "dataset": "data.dataset",
}


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file (see configs/).")] = None,
    lambda_wasserstein: Annotated[Optional[float], typer.Option(help="Weight of the Sinkhorn OT term.")] = None,
    sinkhorn_epsilon: Annotated[Optional[float], typer.Option(help="Entropic regularization of the OT term.")] = None,
    lambda_commit: Annotated[Optional[float], typer.Option(help="Weight of the commitment loss.")] = None,
    lambda_codebook: Annotated[Optional[float], typer.Option(help="Weight of the codebook loss.")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Adam step size.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in the run.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of parameters and batches.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="'digits', 'tfds:<name>' or 'npz:<path>'.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory; default runs/<config>-<time>.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE for any config key, repeatable: --set model.num_codes=256 --set kmeans_init=true.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --run-dir from its last checkpoint.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print the resolved config, and a line per logged step also on a terminal.")] = False,
):
    """Train an RQ-VAE; writes config.toml, metrics.jsonl and checkpoints/ into the run directory.

    Examples:

    \b
      rqvae train                                       # embedded digits, about 20 s on CPU
      rqvae train -c configs/hybrid.toml                # codebook + Wasserstein losses
      rqvae train --lambda-wasserstein 0.5 --steps 2000
      rqvae train -c configs/hybrid.toml --set model.num_codes=256 --set dead_code_threshold=20
      srun rqvae train -c configs/mnist.toml --set run.distributed=true   # multi-host
      rqvae train --resume --run-dir runs/default-20261123-101500 --steps 8000
    """
    flags = dict(locals())
    if quiet and verbose:
        _fail("--quiet and --verbose contradict each other; pass one")
    try:
        overrides = config_lib.parse_assignments(set_ or [])  # named flags win over --set
        overrides.update({FLAG_KEYS[k]: flags[k] for k in FLAG_KEYS if flags[k] is not None})
        if run_dir is not None:
            overrides["run.run_dir"] = str(run_dir)
        base = config
        if resume and base is None:
            if overrides.get("run.run_dir") is None:
                _fail("--resume needs --run-dir naming the run to continue")
            resume_dir = Path(overrides["run.run_dir"])
            base = resume_dir / "config.toml"
            if not base.is_file():
                _fail(f"{resume_dir} holds no run to resume (no config.toml); check --run-dir")
        cfg = config_lib.replace(config_lib.load(base), overrides)
        name = config.stem if config is not None else "default"
        _use_compilation_cache()
        from rich.markup import escape

        from rqvae import train as train_lib  # JAX loads here, after the cheap checks
        from rqvae.progress import Display

        run = train_lib.open_run(cfg, name=name, resume=resume)
    except ConfigError as err:
        _fail(str(err))
    primary = train_lib.is_primary()  # in a multi-host run, process 0 alone prints
    quiet = quiet or not primary
    console = _console()
    if not quiet:
        devices = train_lib.make_mesh(run.cfg).devices.flat
        on = f"{len(devices)} {devices[0].platform} devices" if len(devices) > 1 else "1 device"
        console.print(f"run directory: [bold]{escape(str(run.run_dir))}[/] (training on {on})",
                      highlight=False)
    if verbose:
        console.print(config_lib.dumps(run.cfg), highlight=False, markup=False)
    try:
        summary = train_lib.fit(run.cfg, run.dataset, run.run_dir, resume=resume,
                                display=Display(run.cfg.batch_size, console, quiet, verbose))
    except train_lib.TrainingFailed as err:
        _fail(str(err), code=1)
    except train_lib.Interrupted as err:
        _fail(f"{err}; checkpoint saved. Continue with: rqvae train --resume --run-dir {run.run_dir}",
              code=128 + err.signum)
    if primary:
        train_lib.print_summary(summary, run.run_dir, console)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories written by `rqvae train`.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")] = False,
    csv_output: Annotated[bool, typer.Option("--csv", help="Print every logged train step as CSV.")] = False,
    last: Annotated[Optional[int], typer.Option(min=1, help="History: the last N logged steps.")] = None,
    every: Annotated[Optional[int], typer.Option(min=1, help="History: steps that are multiples of K.")] = None,
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
    from rqvae import report as report_lib

    try:
        report_lib.main(run_dirs, as_json=json_output, console=_console(), last=last,
                        every=every, as_csv=csv_output)
    except ConfigError as err:
        _fail(str(err))


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `rqvae train`.")],
    step: Annotated[Optional[int], typer.Option(help="Checkpoint step; default the newest.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Evaluate a checkpoint on the held-out split: recon MSE, PSNR and per-level code use.

    Examples:

    \b
      rqvae eval runs/hybrid-20261123-101500
      rqvae eval runs/x --step 4000 --json
    """
    _use_compilation_cache()
    from rqvae import train as train_lib

    try:
        cfg, dataset, params, step = train_lib.load_trained(run_dir, step)
    except ConfigError as err:
        _fail(str(err))
    result = train_lib.evaluate(params, dataset, cfg)
    result = {"run": str(run_dir), "step": step, **result}
    if json_output:
        print(json.dumps(result, indent=2))
        return
    from rich.table import Table

    console = _console()
    console.print(f"{run_dir} at step {step}, held-out split of {dataset.name} "
                  f"({len(dataset.heldout)} images): recon MSE {result['heldout_recon']:.4g}, "
                  f"PSNR {result['heldout_psnr']:.2f} dB", highlight=False)
    table = Table(title="code use on the held-out split", title_justify="left")
    for column in ("level", "codes used", "dead (held out)", "perplexity"):
        table.add_column(column, justify="right")
    for level, (used, perplexity) in enumerate(zip(result["heldout_used"], result["heldout_perplexity"])):
        table.add_row(str(level + 1), str(used), str(cfg.model.num_codes - used), f"{perplexity:.1f}")
    console.print(table)


@app.command()
def encode(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `rqvae train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .npy file to write.")],
    split: Annotated[str, typer.Option(help="'train' or 'heldout'.")] = "train",
    step: Annotated[Optional[int], typer.Option(help="Checkpoint step; default the newest.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
):
    """Write the per-level code indices of a split, (images, levels) int32, to train a prior on.

    Example:

    \b
      rqvae encode runs/hybrid-20261123-101500 --out codes.npy --split train
    """
    if split not in ("train", "heldout"):
        _fail(f"--split must be 'train' or 'heldout', got '{split}'")
    if out.exists() and not force:
        _fail(f"{out} exists; pass --force to overwrite it or choose another --out")
    _use_compilation_cache()
    import numpy as np
    from rich.console import Console

    from rqvae import train as train_lib

    try:
        cfg, dataset, params, step = train_lib.load_trained(run_dir, step)
    except ConfigError as err:
        _fail(str(err))
    codes = train_lib.encode(params, getattr(dataset, split), cfg)
    tmp = out.with_name(out.name + ".tmp.npy")
    np.save(tmp, codes)
    tmp.replace(out)
    Console().print(f"wrote {out}: {codes.shape[0]} images x {codes.shape[1]} levels of codes "
                    f"(step {step}, {split} split)", highlight=False)


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="One run, or several to overlay their curves.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs (created if needed).")],
    log_scale: Annotated[bool, typer.Option("--log", help="Log-scale loss axes.")] = False,
):
    """Write PNGs: loss curves; for one run also code use, reconstructions and codebooks.

    Needs matplotlib (pip install 'rqvae[plot]').

    Examples:

    \b
      rqvae plot runs/hybrid-20261123-101500 --out plots/
      rqvae plot runs/traditional-* runs/hybrid-* --out plots/compare --log
    """
    from rqvae import plot as plot_lib

    try:
        for run_dir in run_dirs:
            if not (run_dir / "metrics.jsonl").is_file():
                raise ConfigError(f"{run_dir} holds no metrics.jsonl; pass directories written "
                                  f"by `rqvae train`")
        out.mkdir(parents=True, exist_ok=True)
        written = [plot_lib.loss_curves(run_dirs, out, log_scale)]
        if len(run_dirs) == 1:
            written += _plot_checkpoint(run_dirs[0], out, plot_lib)
    except ConfigError as err:
        _fail(str(err))
    from rich.console import Console

    for path in written:
        Console().print(f"wrote {path}", highlight=False)


def _plot_checkpoint(run_dir: Path, out: Path, plot_lib) -> list[Path]:
    """The pictures that need the model: code use, reconstructions, codebooks."""
    _use_compilation_cache()
    import jax
    import numpy as np

    from rqvae import train as train_lib

    cfg, dataset, params, _ = train_lib.load_trained(run_dir)
    codes = train_lib.encode(params, dataset.train, cfg)
    apply = jax.jit(train_lib.make_model(cfg).apply)
    recon, _ = apply(params, dataset.heldout[:10])
    sample = dataset.train[:2000]
    _, aux = apply(params, sample)
    return [
        plot_lib.code_use(codes, cfg.model.num_codes, out),
        plot_lib.reconstructions(dataset.heldout[:10], np.asarray(recon), cfg.model.image_shape,
                                 out),
        plot_lib.codebooks(np.asarray(aux["codebook"]), np.asarray(aux["level_inputs"]),
                           codes[: len(sample)], out),
    ]


data_app = typer.Typer(help="Data set chores.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(
    dataset: Annotated[str, typer.Argument(help="tfds:<name>, e.g. tfds:mnist.")],
    data_dir: Annotated[Optional[Path], typer.Option(help="Where to write it; default $TFDS_DATA_DIR or ~/tensorflow_datasets.")] = None,
):
    """Download and prepare a tfds data set (ArrayRecord, as `rqvae train` reads it).

    Needs internet and TensorFlow (pip install 'rqvae[prepare]'); training does not.

    Example:

    \b
      rqvae data prepare tfds:mnist && rqvae train -c configs/mnist.toml
    """
    kind, _, name = dataset.partition(":")
    if kind != "tfds" or not name:
        _fail(f"only tfds data sets are prepared; got '{dataset}', expected tfds:<name>")
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        _fail("preparing a tfds data set needs TensorFlow (reading it does not); "
              "pip install 'rqvae[prepare]' and run this again")
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        _fail(f"unknown tfds data set '{name}'; see the tensorflow-datasets catalog for names")
    builder.download_and_prepare()
    from rich.console import Console

    Console().print(f"prepared tfds:{name} in {builder.data_dir}", highlight=False)


def main():
    # A closed pipe (`rqvae report x | head`) ends quietly, as for other Unix tools.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app()


if __name__ == "__main__":
    sys.exit(main())
