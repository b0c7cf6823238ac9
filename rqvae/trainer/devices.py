"""Devices: the mesh a run trains on, how its data and state are placed, multi-host runs."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rqvae.trainer.config import TrainerConfig
from rqvae.trainer.errors import ConfigError, UserError

DATA_AXIS = "data"


def initialize_distributed(cfg: TrainerConfig) -> None:
    """Joins a multi-host run when `run.distributed` or RQVAE_DISTRIBUTED=1 asks for it.

    Under SLURM (srun) or Open MPI, jax finds the coordinator and the process ids itself.
    Elsewhere set JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID in every process. Must run before anything touches a device.
    """
    if not (cfg.run.distributed or os.environ.get("RQVAE_DISTRIBUTED") == "1"):
        return
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if os.environ.get(name):
            kwargs[key] = int(os.environ[name])
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"could not join a multi-host run ({reason}); run under srun, or set "
                          f"JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID "
                          f"in every process") from err


def make_mesh(cfg: TrainerConfig) -> Mesh:
    """A one-axis mesh over the devices the run trains on: `run.num_devices` of them, or all.

    Raises ConfigError when there are too few devices or the batch does not split evenly.
    """
    devices = jax.devices()  # every host's devices, in the same order on every host
    count = cfg.run.num_devices or len(devices)
    if count > len(devices):
        raise ConfigError(f"run.num_devices is {count} but only {len(devices)} "
                          f"{devices[0].platform} devices are visible; lower run.num_devices")
    if cfg.batch_size % count:
        raise ConfigError(f"batch_size {cfg.batch_size} does not split evenly across {count} "
                          f"devices; use a multiple of {count} or set run.num_devices")
    return Mesh(np.array(devices[:count]), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    """Host or device arrays -> global arrays with a full copy on every device of the mesh.

    Built from each process's own copy, which works across hosts as well as on one.
    """
    sharding = NamedSharding(mesh, PartitionSpec())

    def place(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, jax.device_get(tree))


def batch_sharding(mesh: Mesh) -> NamedSharding | None:
    """How a batch is split: along the mesh's data axis; None on a single device."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS)) if mesh.size > 1 else None


def is_primary() -> bool:
    """Only process 0 writes the run log and prints; orbax coordinates checkpoint writes."""
    return jax.process_index() == 0


def local_copy(tree, mesh: Mesh):
    """The tree on this process's first device, for evaluation (which runs on one device)."""
    if mesh.size == 1:
        return tree
    return jax.device_put(jax.device_get(tree), jax.local_devices()[0])


def sync(name: str) -> None:
    """Waits until every process of a multi-host run reaches this point; a no-op on one host."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def process_count() -> int:
    return jax.process_count()
