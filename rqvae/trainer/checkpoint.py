"""Checkpoints of the whole train state through orbax, under <run_dir>/checkpoints/<step>/.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so an
interrupted save never shadows the last good one; left-over temporaries are cleaned up on open.
Arrays are stored as tensorstore/OCDBT data, never pickled.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from rqvae.trainer.rundir import CHECKPOINT_DIR, SET_ASIDE_DIR


def manager(run_dir: str | Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINT_DIR, options=options)


def all_steps(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints, oldest first; reads without creating anything."""
    if not (Path(run_dir).absolute() / CHECKPOINT_DIR).is_dir():
        return []
    with _reader(run_dir) as mngr:
        return sorted(mngr.all_steps())


def _reader(run_dir: str | Path) -> ocp.CheckpointManager:
    """A manager of the run's checkpoints that creates, deletes and writes nothing."""
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINT_DIR,
                                 options=ocp.CheckpointManagerOptions(create=False))


def latest_step(run_dir: str | Path) -> int | None:
    """The newest complete checkpoint's step, or None."""
    steps = all_steps(run_dir)
    return steps[-1] if steps else None


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
    mngr.save(step, args=ocp.args.StandardSave(state))


def restore(mngr: ocp.CheckpointManager, step: int, like):
    """Restores the state saved at `step` into the structure, shapes and dtypes of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def restore_params(run_dir: str | Path, step: int):
    """The model parameters of the checkpoint at `step`, as saved (no template: the data set's
    size, which shapes the rest of the state, need not be known). Raises UserError if they do
    not read back."""
    from rqvae.trainer.errors import UserError

    with _reader(run_dir) as mngr:
        try:
            return jax.device_get(mngr.restore(step, args=ocp.args.StandardRestore())["params"])
        except Exception as err:  # orbax and tensorstore raise many kinds for bad bytes
            raise UserError(f"the checkpoint at step {step} of {run_dir} does not read back "
                            f"({reason(err)})") from None


def newest_readable(run_dir: str | Path, steps: list[int]) -> tuple[int | None, list[tuple]]:
    """The newest of `steps` whose checkpoint reads back whole, and (step, why) for each newer
    one that does not (flipped bits, a cut-off file). Reads every array of each one tried."""
    unreadable = []
    with _reader(run_dir) as mngr:
        for step in sorted(steps, reverse=True):
            try:
                jax.block_until_ready(mngr.restore(step, args=ocp.args.StandardRestore()))
                return step, unreadable
            except Exception as err:  # orbax and tensorstore raise many kinds for bad bytes
                unreadable.append((step, f"does not read back: {reason(err)}"))
    return None, unreadable


# Room a checkpoint needs beyond its arrays' bytes: metadata, OCDBT manifests.
SAVE_MARGIN_BYTES = 1 << 20


def room_for(run_dir: str | Path, state) -> str | None:
    """Why the disk under the run's checkpoints cannot take one more of `state` (its arrays
    uncompressed, and a margin), or None when it can."""
    directory = Path(run_dir).absolute() / CHECKPOINT_DIR
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state)) + SAVE_MARGIN_BYTES
    try:
        free = shutil.disk_usage(directory if directory.exists() else directory.parent).free
    except OSError:
        return None
    if free >= needed:
        return None
    return (f"{directory} has {free / 2**20:,.1f} MiB free and a checkpoint needs "
            f"{needed / 2**20:,.1f} MiB")


def save_failure(run_dir: str | Path, step: int, err: Exception, kept: int | None) -> str:
    """One line on a checkpoint save that failed: where, why, the space left, what was kept."""
    directory = Path(run_dir).absolute() / CHECKPOINT_DIR
    text = str(err)
    why = "no space left on the disk" if "No space left" in text or "RESOURCE_EXHAUSTED" in text \
        else reason(err)
    try:
        free = f"{shutil.disk_usage(directory).free / 2**20:,.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    return save_stopped(run_dir, step, f"writing it in {directory} failed ({why}; {free})", kept)


def save_stopped(run_dir: str | Path, step: int, problem: str, kept: int | None) -> str:
    """One line on a checkpoint that could not be saved: the problem, the last good checkpoint
    and how to go on."""
    last = f"step {kept}" if kept is not None else "none yet"
    return (f"cannot save the checkpoint at step {step}: {problem}; last good checkpoint: {last}; "
            f"make room, then resume with --resume --run-dir {run_dir}")


def reason(err: Exception) -> str:
    """A failed read's error in a phrase: its type and first sentence."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text.split('. ')[0]}"[:120]


def set_aside(run_dir: str | Path, steps: list[int]) -> Path:
    """Moves the checkpoints of `steps` out of the way of a resume from an earlier one, into
    <run_dir>/checkpoints-set-aside/<step>/ (kept, not deleted); returns that folder."""
    folder = Path(run_dir) / SET_ASIDE_DIR
    folder.mkdir(exist_ok=True)
    for step in steps:
        target = folder / str(step)
        if target.exists():  # set aside before, and trained past again since
            shutil.rmtree(target)
        (Path(run_dir) / CHECKPOINT_DIR / str(step)).rename(target)
    return folder
