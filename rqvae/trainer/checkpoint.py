"""Checkpoints of the whole train state through orbax, under <run_dir>/checkpoints/<step>/.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so an
interrupted save never shadows the last good one; left-over temporaries are cleaned up on open.
Arrays are stored as tensorstore/OCDBT data, never pickled.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from rqvae.trainer.rundir import CHECKPOINT_DIR


def manager(run_dir: str | Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINT_DIR, options=options)


def all_steps(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints, oldest first; reads without creating anything."""
    directory = Path(run_dir).absolute() / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    options = ocp.CheckpointManagerOptions(create=False)
    with ocp.CheckpointManager(directory, options=options) as mngr:
        return sorted(mngr.all_steps())


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
