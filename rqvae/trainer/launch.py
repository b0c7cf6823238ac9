"""Opening a run directory to train (every check before the first write) and loading a trained
run's parameters; JAX and the data loaders load when called."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from rqvae.trainer import config as config_lib
from rqvae.trainer.config import TrainerConfig
from rqvae.trainer.errors import ConfigError
from rqvae.trainer.rundir import (
    CONFIG_FILE,
    Lock,
    UserError,
    check_writable,
    claim,
    holds_run,
    record_resume,
    write_config,
)

if TYPE_CHECKING:
    from rqvae.trainer.data import Dataset


# Fields that fix the shapes of parameters; a resumed run may not change them.
SHAPE_KEYS = tuple(key for key, declared in config_lib.declarations().items() if declared.shape)


def _flat(cfg: TrainerConfig) -> dict:
    return config_lib.flatten(config_lib.to_dict(cfg))


def shape_differences(a: TrainerConfig, b: TrainerConfig) -> list[str]:
    """The SHAPE_KEYS on which two configs differ, as "key: old -> new" lines."""
    flat_a, flat_b = _flat(a), _flat(b)
    return [f"{k}: {flat_a[k]} -> {flat_b[k]}" for k in SHAPE_KEYS if flat_a[k] != flat_b[k]]


def differences(old: TrainerConfig, new: TrainerConfig, ignore: tuple[str, ...] = ()
                ) -> dict[str, list]:
    """{"dotted.key": [old value, new value]} for every key on which two configs differ."""
    flat_old, flat_new = _flat(old), _flat(new)
    return {k: [flat_old[k], flat_new[k]] for k in flat_new
            if k not in ignore and flat_old.get(k) != flat_new[k]}


@dataclasses.dataclass(frozen=True)
class Run:
    """A run directory opened to train: checked, claimed, its config written."""

    cfg: TrainerConfig  # resolved: image shape from the data, run.run_dir filled in
    dataset: Dataset
    run_dir: Path
    lock: Lock | None  # held while training; None on processes other than 0
    resume_from: int | None  # the checkpoint step it continues from; None: from step 0
    changed: dict[str, list]  # on a resume, the settings that changed: {key: [old, new]}
    # On a resume: the newer checkpoints moved to rundir.SET_ASIDE_DIR, each with why (it does
    # not read back, or --step chose an earlier one).
    set_aside: tuple[tuple[int, str], ...] = ()


def with_data_shape(cfg: TrainerConfig, dataset: Dataset) -> TrainerConfig:
    """The model's input shape and kind (images or vectors) come from the data set."""
    model = dataclasses.replace(cfg.model, image_shape=dataset.image_shape,
                                data_kind=dataset.kind)
    return config_lib.validate(dataclasses.replace(cfg, model=model))


def _resume_point(run_dir: Path, step: int | None) -> tuple[int | None, list[tuple[int, str]]]:
    """The checkpoint a resume continues from, `step` or else the newest that reads back whole,
    and the newer ones to set aside with why; (None, []) for a run without checkpoints."""
    from rqvae.trainer import checkpoint

    if not holds_run(run_dir):
        raise UserError(f"{run_dir} holds no run to resume; check --run-dir")
    steps = checkpoint.all_steps(run_dir)
    if step is not None and step not in steps:
        raise UserError(f"{run_dir} has no checkpoint at step {step}; it has "
                        f"{', '.join(map(str, steps)) or 'none'}")
    candidates = [s for s in steps if step is None or s <= step]
    if not candidates:
        return None, []
    readable, unreadable = checkpoint.newest_readable(run_dir, candidates)
    if readable is None:
        raise UserError(f"no checkpoint of {run_dir} reads back (step {unreadable[0][0]}: "
                        f"{unreadable[0][1]}); start a new --run-dir")
    why = dict(unreadable)
    return readable, [(s, why.get(s, "newer than --step")) for s in steps if s > readable]


def open_run(cfg: TrainerConfig, *, name: str, resume: bool, resume_step: int | None = None
             ) -> Run:
    """Checks everything a run needs, then claims its directory and writes config.toml.

    Every check comes before the first write, so a refused command leaves no trace and never
    touches an existing run. A resume of a run that has no checkpoint yet starts from step 0
    (`resume_from` None); it continues from `resume_step`, or else the newest checkpoint that
    reads back, and sets the newer ones aside. Raises ConfigError or UserError with the problem
    and its fix.
    """
    from rqvae.trainer import data, devices

    devices.initialize_distributed(cfg)
    hosts = devices.process_count()
    if hosts > 1 and not cfg.run.run_dir:
        raise UserError(f"a run on {hosts} hosts needs --run-dir, on a file system every host "
                        f"sees (each would name its own default directory)")
    explicit = Path(cfg.run.run_dir) if cfg.run.run_dir else None
    if explicit is not None:
        check_writable(explicit)
    resume_from, changed, newer = None, {}, []
    if resume:
        resume_from, newer = _resume_point(explicit, resume_step)
    elif explicit is not None and holds_run(explicit):
        raise UserError(f"{explicit} already holds a run; pass --resume to continue it, or "
                        f"choose a new --run-dir")
    elif explicit is not None and explicit.is_dir() and any(explicit.iterdir()):
        raise UserError(f"{explicit} holds other files and no run; choose a new or empty "
                        f"--run-dir, so the run's files are not mixed with them")
    dataset = data.load(cfg.data)
    cfg = with_data_shape(cfg, dataset)
    if cfg.batch_size > len(dataset.train):
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training split of "
                          f"{dataset.name} ({len(dataset.train)} images); lower --batch-size")
    devices.make_mesh(cfg)  # enough devices, and a batch that splits evenly across them
    devices.check_memory(cfg, len(dataset.train))
    if resume:
        retired = config_lib.retired_values(explicit / CONFIG_FILE)
        if retired:
            settings = ", ".join(f"{k} = {v!r}" for k, v in retired.items())
            raise UserError(f"{explicit} trained with {settings}, which this version no longer "
                            f"has; it can be reported and evaluated, not resumed: start a new "
                            f"--run-dir")
        saved = config_lib.load_saved(explicit / CONFIG_FILE)
        shape_changes = shape_differences(saved, cfg)
        if shape_changes:
            raise UserError(f"--resume cannot change the model's shape "
                            f"({'; '.join(shape_changes)}); drop those settings or start a new "
                            f"--run-dir")
        if resume_from is not None and resume_from >= cfg.steps:
            raise UserError(f"{explicit} already reached step {resume_from}; pass --steps larger "
                            f"than {resume_from} to train further")
        # Its length is free to change, but where the learning rate decays moves with it.
        ignore = ("run.run_dir",) if cfg.optimizer.decay_fraction > 0 else ("steps", "run.run_dir")
        changed = differences(saved, cfg, ignore=ignore)
    devices.sync("rqvae: run directory checked")  # every host checked before process 0 writes
    lock = None
    run_dir = explicit
    if devices.is_primary():
        run_dir, lock = claim(explicit, name)
        try:
            if not resume and holds_run(run_dir):  # another run got there between check and claim
                raise UserError(f"{run_dir} already holds a run; pass --resume to continue it, "
                                f"or choose a new --run-dir")
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run,
                                                                   run_dir=str(run_dir)))
            if newer:
                from rqvae.trainer import checkpoint

                checkpoint.set_aside(run_dir, [step for step, _ in newer])
            if changed or (resume and resume_from is None):
                record_resume(run_dir, resume_from or 0, changed)
            write_config(run_dir, config_lib.dumps(cfg))
        except BaseException:
            lock.release()
            raise
    else:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, run_dir=str(run_dir)))
    return Run(cfg, dataset, run_dir, lock, resume_from, changed, tuple(newer))


def load_trained(run_dir: Path, step: int | None = None):
    """The config, step config, data set, parameters and step of a run's checkpoint (default:
    the newest). Raises UserError when the run or the checkpoint is missing."""
    cfg, step_cfg, dataset, state, step = load_train_state(run_dir, step)
    return cfg, step_cfg, dataset, state.params, step


def saved_checkpoint(run_dir: Path, step: int | None) -> tuple[TrainerConfig, int, list[int]]:
    """A trained run's config, the step of the checkpoint asked for (None: the newest) and
    every saved step; UserError when the run or the checkpoint is not there."""
    from rqvae.trainer import checkpoint

    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; pass a directory written by "
                        f"`rqvae train`")
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{run_dir} holds no run (no {CONFIG_FILE}); pass a directory written "
                        f"by `rqvae train`")
    saved_steps = checkpoint.all_steps(run_dir)
    if not saved_steps:
        raise UserError(f"{run_dir} has no complete checkpoint yet")
    step = saved_steps[-1] if step is None else step
    if step not in saved_steps:
        raise UserError(f"{run_dir} has no checkpoint at step {step}; it has "
                        f"{', '.join(map(str, saved_steps))}")
    return config_lib.load_saved(config_path), step, saved_steps


def load_train_state(run_dir: Path, step: int | None = None):
    """`load_trained`, with the whole train state (`rqvae.trainer.step.TrainState`) in place of
    its parameters."""
    from rqvae.trainer import checkpoint, data
    from rqvae.trainer.step import init_state

    run_dir = Path(run_dir)
    cfg, step, saved_steps = saved_checkpoint(run_dir, step)
    dataset = data.load(cfg.data)
    cfg = with_data_shape(cfg, dataset)
    step_cfg = config_lib.step_config(cfg)
    like = init_state(step_cfg, len(dataset.train))
    with checkpoint.manager(run_dir, cfg.run.keep_checkpoints) as mngr:
        try:
            state = checkpoint.restore(mngr, step, like)
        except Exception as err:  # orbax and tensorstore raise many kinds for bad bytes
            others = ", ".join(str(s) for s in saved_steps if s != step) or "none"
            raise UserError(f"the checkpoint at step {step} of {run_dir} does not read back "
                            f"({checkpoint.reason(err)}); pass --step with another of its "
                            f"checkpoints: {others}") from None
    return cfg, step_cfg, dataset, state, step
