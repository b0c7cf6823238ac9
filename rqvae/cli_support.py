"""What the commands of `rqvae` share: one-line errors, the console, the config a run trains on
(defaults, file or preset, --set, the named flags) with its automatic name, writing arrays
to .npy (`encode`, `decode`), and the arrays `plot` draws of a checkpoint."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from rqvae.trainer import config as config_lib
from rqvae.trainer.errors import ConfigError, UserError

if TYPE_CHECKING:
    from rich.console import Console


def console() -> Console:
    """COLUMNS wide if set, else the terminal's width, else 80 (a log file or pipe)."""
    from rqvae.reports.report import make_console

    return make_console()


def fail(message: str, code: int = 2):
    from rich.console import Console
    from rich.markup import escape

    stderr = Console(stderr=True)
    # One line in a file or pipe; on a terminal wrapped between words, not mid-word.
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                 soft_wrap=not stderr.is_terminal)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors():
    """Bad input, whatever the module that found it, as one line and exit 2."""
    try:
        yield
    except (ConfigError, UserError) as err:
        fail(str(err))


def use_compilation_cache():
    """Keeps compiled programs on disk, so a second run (or a resume) starts in seconds.

    JAX_COMPILATION_CACHE_DIR chooses the place; the default is under XDG_CACHE_HOME or ~/.cache.
    """
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_home / "rqvae" / "xla"))


# The named flags of `rqvae train`, from the settings' declarations: config key -> (flag, help).
# The flag's type is the config field's, its default None (the config's value). Every other key
# is reached with --set.
TRAIN_FLAGS = {key: (declared.flag, declared.meaning[0].upper() + declared.meaning[1:] + ".")
               for key, declared in config_lib.declarations().items() if declared.flag}


def parameter_name(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _flag_parameter(key: str, flag: str, help_text: str) -> inspect.Parameter:
    kind = typing.get_type_hints(config_lib.section_of(key))[key.rpartition(".")[2]]
    default = config_lib.flatten(config_lib.to_dict(config_lib.TrainerConfig()))[key]
    help_text += f" Default: the config's value ({default} without one)."
    option = typer.Option(flag, help=help_text,
                          metavar=kind.__name__.upper() if kind is not str else "TEXT")
    return inspect.Parameter(parameter_name(flag), inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], option])


def with_config_flags(flags: dict[str, tuple[str, str]]):
    """Adds a named option per entry of `flags` to a command, and passes their values to it as
    `overrides` ({config key: value}, only the flags given)."""

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        added = [_flag_parameter(key, flag, text) for key, (flag, text) in flags.items()]
        kept = [p for p in signature.parameters.values() if p.name != "overrides"]

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {key: kwargs.pop(parameter_name(flag)) for key, (flag, _) in flags.items()}
            return command(overrides={k: v for k, v in values.items() if v is not None},
                           **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*kept, *added])
        wrapper.__annotations__ = {p.name: p.annotation for p in (*kept, *added)}
        return wrapper

    return decorate


def run_name(config: Path | None, cfg: config_lib.TrainerConfig) -> str:
    """The automatic run name: the config's name, then the settings the command line changed."""
    from rqvae.trainer import launch, names, presets

    path = None if config is None else (presets.find(str(config)) or config)
    stem = "default" if config is None else Path(config).stem
    loaded = config_lib.load(path)
    return names.run_name(stem, {k: new for k, (_, new) in
                                 launch.differences(loaded, cfg).items()})


def train_config(config: Path | None, run_dir: Path | None, assignments: list[str],
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


def collision_line(collisions: dict) -> str:
    """What `semantic_ids` found, in one line."""
    c = collisions
    return (f"collisions: {c['tuples_shared']} of {c['examples']} examples share their code tuple "
            f"with another ({c['tuples_unique']} unique tuples; the largest group holds "
            f"{c['tuples_largest_group']}); the last ID position tells them apart")


def check_npy_out(out: Path, force: bool, what: str) -> None:
    """Refuses, before any work, an --out that cannot take an .npy file."""
    from rqvae.trainer import rundir

    with user_errors():
        rundir.check_out_file(out, force)
    if out.suffix != ".npy":
        fail(f"--out {out}: {what} are written as a NumPy array (np.save); name a .npy "
                     f"file, e.g. {out.with_suffix('.npy')}")


def write_npy(out: Path, array) -> None:
    import numpy as np

    from rqvae.trainer import rundir

    try:
        rundir.write_atomically(out, lambda file: np.save(file, array))
    except OSError as err:
        fail(f"cannot write {out} ({err.strerror}); choose another --out")


def checkpoint_pictures(run_dir: Path, out: Path) -> list[Path]:
    """`rqvae plot`'s pictures of one run's newest checkpoint: the arrays from its model."""
    from rqvae.reports import plot as plot_lib
    from rqvae.trainer.trained import load_run as load_trained

    run = load_trained(run_dir)
    train, heldout = run.split(), run.split(split="heldout")[:10]
    codebook_LxKxD, level_inputs_LxNxD = run.codebooks_and_inputs(train[:2000])
    m = run.config.model
    return plot_lib.checkpoint_pictures(
        out, codes_NxL=run.encode(train), heldout_NxP=heldout,
        heldout_codes_NxL=run.encode(heldout), level_recons_LxNxP=run.level_reconstructions(heldout),
        codebook_LxKxD=codebook_LxKxD, level_inputs_LxNxD=level_inputs_LxNxD,
        num_codes=m.num_codes, image_shape=m.image_shape, grid=m.latent == "grid",
        run_name=run_dir.name)
