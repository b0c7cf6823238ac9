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


def check_memory(cfg: TrainerConfig, num_train: int) -> None:
    """Refuses a run whose largest arrays alone exceed a device's memory, before anything is
    written or allocated: the codebooks with their two Adam moments, each step's B x K distances
    per level (a grid latent: every position a point), and the training split placed on the
    device. A lower bound on what the run needs: XLA would fail, or the host swap, later."""
    m = cfg.model
    codebooks = 3 * (1 if m.shared_codebook else m.num_levels) * m.num_codes * m.latent_dim * 4
    points = cfg.batch_size * m.points_per_image // (cfg.run.num_devices or len(jax.devices()))
    distances = m.num_levels * points * m.num_codes * 4
    data = num_train * m.input_dim * 4
    available = device_memory()
    if available and codebooks + distances + data > available:
        raise ConfigError(
            f"this run needs more than a device's {_gib(available)} of memory: the codebooks "
            f"and their Adam moments take {_gib(codebooks)}, a step's distances to the codes "
            f"{_gib(distances)}, the training split {_gib(data)}; lower model.num_codes, "
            f"model.latent_dim or batch_size")


def device_memory() -> int | None:
    """Bytes a device can hold: an accelerator's limit, the host's memory for the CPU; None if
    unknown."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"


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
