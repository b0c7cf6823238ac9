"""Train state, the pure train step, held-out evaluation and the train loop."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rqvae import checkpoint, codebook, data, metrics, runlog
from rqvae import config as config_lib
from rqvae.config import ConfigError, TrainerConfig
from rqvae.data import Dataset
from rqvae.losses import compute_losses
from rqvae.model import RQVAE

LOSS_TERMS = runlog.LOSS_TERMS
PER_LEVEL = runlog.TRAIN_PER_LEVEL


class TrainingFailed(RuntimeError):
    """The loss went non-finite; the message names the step and the terms."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved at `step`."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32: optimizer steps taken
    params: Any
    opt_state: Any
    last_used: jax.Array  # (L, K) int32: step at which each code was last picked, -1 never
    perm: jax.Array  # (N,) int32: this epoch's order of the training images
    failed_step: jax.Array  # int32: -1, or the step whose loss went non-finite (state frozen)
    failed_terms: jax.Array  # (len(LOSS_TERMS),) bool: which terms were non-finite then
    sinkhorn_g: jax.Array  # (L, K) codebook-side OT potentials of the last step, for a warm start


def make_model(cfg: TrainerConfig) -> RQVAE:
    return RQVAE(cfg.model)


def make_optimizer(cfg: TrainerConfig) -> optax.GradientTransformation:
    return optax.adam(cfg.learning_rate)


def init_state(cfg: TrainerConfig, num_train: int) -> TrainState:
    """The state before step 1. Compiled as one program: eagerly, each of its small operations
    would be compiled on its own, which costs seconds."""
    return _init_state(compiled_part(cfg), num_train)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_state(cfg: TrainerConfig, num_train: int) -> TrainState:
    root = jax.random.key(cfg.seed)
    dummy = jnp.zeros((1, cfg.model.input_dim), jnp.float32)
    params = make_model(cfg).init(jax.random.fold_in(root, 0), dummy)
    m = cfg.model
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_optimizer(cfg).init(params),
        last_used=jnp.full((m.num_levels, m.num_codes), -1, jnp.int32),
        perm=jnp.arange(num_train, dtype=jnp.int32),
        failed_step=jnp.full((), -1, jnp.int32),
        failed_terms=jnp.zeros(len(LOSS_TERMS), bool),
        sinkhorn_g=jnp.zeros((m.num_levels, m.num_codes), jnp.float32),
    )


def loss_fn(params, batch_BxP, sinkhorn_g, cfg: TrainerConfig):
    x_recon, aux = make_model(cfg).apply(params, batch_BxP)
    losses = compute_losses(
        batch_BxP,
        x_recon,
        aux["z_e"],
        aux["z_q"],
        aux["codebook"],
        lambda_commit=cfg.lambda_commit,
        lambda_codebook=cfg.lambda_codebook,
        lambda_wasserstein=cfg.lambda_wasserstein,
        sinkhorn_epsilon=cfg.sinkhorn_epsilon,
        sinkhorn_iters=cfg.sinkhorn_iters,
        level_inputs=aux["level_inputs"],
        level_weights=cfg.wasserstein_level_weights or None,
        wasserstein_encoder_grad=cfg.wasserstein_encoder_grad,
        sinkhorn_init_g=sinkhorn_g if cfg.sinkhorn_warm_start else None,
        sinkhorn_unroll=cfg.sinkhorn_unroll,
    )
    return losses["total"], (losses, aux)


def train_step(state: TrainState, batch_BxP, *, cfg: TrainerConfig):
    """One Adam step on a batch. Pure: returns the new state and a dict of on-device metrics.

    A non-finite loss leaves the state as it was and records the step in `failed_step`; from
    then on the state stays frozen, so the loop can stop and the bad state is never saved.
    """
    new_state, outcome = _update(state, batch_BxP, cfg)
    return new_state, step_metrics(new_state, outcome, cfg)


def _update(state: TrainState, batch_BxP, cfg: TrainerConfig):
    """The step itself: the new state, and what `step_metrics` needs of the step (its losses,
    code counts and index). The loop carries only that, and summarizes the last step once."""
    grads, (losses, aux) = jax.grad(loss_fn, has_aux=True)(
        state.params, batch_BxP, state.sinkhorn_g, cfg
    )
    counts_LxK = metrics.code_counts(aux["indices"], cfg.model.num_codes)
    finite_terms = jnp.stack([jnp.isfinite(losses[k]) for k in LOSS_TERMS])
    healthy = state.failed_step < 0
    ok = healthy & jnp.all(finite_terms)

    def advance():
        updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        last_used = metrics.update_last_used(state.last_used, counts_LxK, state.step)
        if cfg.dead_code_threshold:
            params, opt_state, last_used = _restart_dead_codes(
                params, opt_state, last_used, state.step, aux["level_inputs"], cfg)
        return params, opt_state, last_used, losses["sinkhorn_g"]

    params, opt_state, last_used, sinkhorn_g = _where_ok(
        ok, advance, (state.params, state.opt_state, state.last_used, state.sinkhorn_g),
        branch=jax.default_backend() == "cpu")
    new_state = state.replace(
        step=state.step + ok.astype(jnp.int32),
        params=params,
        opt_state=opt_state,
        last_used=last_used,
        failed_step=jnp.where(healthy & ~ok, state.step, state.failed_step),
        failed_terms=jnp.where(healthy & ~ok, ~finite_terms, state.failed_terms),
        sinkhorn_g=sinkhorn_g,
    )
    outcome = {k: losses[k] for k in (*LOSS_TERMS, "sinkhorn_marginal_error")}
    outcome.update(counts=counts_LxK, step=state.step)
    return new_state, outcome


def _where_ok(ok, update, old, *, branch: bool):
    """`update()` if `ok`, else `old` (a tree of the same structure).

    branch: decide with `lax.cond`. On CPU a select between the new and the old tree keeps both
    alive, and XLA then copies every parameter and Adam moment once per step; a branch updates
    them in place. On accelerators the select: there a branch reads its predicate back to the
    host, which would stall the device once per step, and the copies are cheap.
    """
    if branch:
        return jax.lax.cond(ok, update, lambda: old)
    return jax.tree.map(lambda new, previous: jnp.where(ok, new, previous), update(), old)


def step_metrics(new_state: TrainState, outcome: dict, cfg: TrainerConfig) -> dict:
    """The flat on-device metrics of a step: loss terms, and per level the codes the batch used,
    their perplexity, the codes dead over the last `run.dead_window` steps and the Sinkhorn
    marginal error."""
    result = {k: outcome[k] for k in LOSS_TERMS}
    counts_LxK = outcome["counts"]
    result.update(
        batch_used=metrics.codes_used(counts_LxK),
        batch_perplexity=metrics.perplexity(counts_LxK),
        window_dead=metrics.dead_in_window(new_state.last_used, outcome["step"], cfg.run.dead_window),
        sinkhorn_marginal_error=outcome["sinkhorn_marginal_error"],
        failed_step=new_state.failed_step,
    )
    return result


def _restart_dead_codes(params, opt_state, last_used_LxK, step, level_inputs_LxBxD, cfg):
    """The comparator remedy: codes unused for `dead_code_threshold` steps are re-seeded from
    this batch's level inputs, with fresh Adam moments."""
    stale_LxK = codebook.stale_codes(last_used_LxK, step, cfg.dead_code_threshold)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), 2), step)
    codebook_LxKxD, last_used_LxK, _ = codebook.restart_dead_codes(
        params["params"]["codebook"], last_used_LxK, step, level_inputs_LxBxD, key,
        threshold=cfg.dead_code_threshold)
    return (_with_codebook(params, codebook_LxKxD),
            codebook.reset_adam_moments(opt_state, stale_LxK), last_used_LxK)


def _with_codebook(params, codebook_LxKxD):
    return {**params, "params": {**params["params"], "codebook": codebook_LxKxD}}


@functools.partial(jax.jit, static_argnames="cfg", donate_argnums=0)
def kmeans_init(state: TrainState, images_NxP, *, cfg: TrainerConfig) -> TrainState:
    """The comparator remedy: each level's codebook fitted by k-means to the encoder outputs
    (and residuals) of the first `kmeans_init_batches` batches the run will train on."""
    batches, walker = [], state
    for i in range(cfg.kmeans_init_batches):
        batch_BxP, perm = next_batch(walker.replace(step=jnp.int32(i)), images_NxP, cfg)
        batches.append(batch_BxP)
        walker = walker.replace(perm=perm)
    z_NxD = make_model(cfg).apply(state.params, jnp.concatenate(batches),
                                  method=lambda model, x: model.encoder(x))
    m = cfg.model
    key = jax.random.fold_in(jax.random.key(cfg.seed), 3)
    codebook_LxKxD = codebook.kmeans_codebooks(z_NxD, m.num_levels, m.num_codes, key)
    return state.replace(params=_with_codebook(state.params, codebook_LxKxD))


def next_batch(state: TrainState, images_NxP, cfg: TrainerConfig, batch_sharding=None):
    """The next batch, by index into on-device data, and the epoch order it came from.

    Each epoch's order is a permutation drawn from fold_in(key, epoch): a resumed run draws the
    same batches as one that never stopped. The last partial batch of an epoch is dropped.
    With a `batch_sharding`, each device gathers only its own slice of the batch.
    """
    num_images = images_NxP.shape[0]
    epoch, position = jnp.divmod(state.step, num_images // cfg.batch_size)
    data_key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    perm = jax.lax.cond(
        position == 0,
        lambda: jax.random.permutation(jax.random.fold_in(data_key, epoch), num_images),
        lambda: state.perm,
    ).astype(jnp.int32)
    index_B = jax.lax.dynamic_slice(perm, (position * cfg.batch_size,), (cfg.batch_size,))
    if batch_sharding is not None:
        index_B = jax.lax.with_sharding_constraint(index_B, batch_sharding)
    return jnp.take(images_NxP, index_B, axis=0), perm


def _update_on_device_data(state: TrainState, images_NxP, cfg: TrainerConfig,
                           batch_sharding=None):
    batch_BxP, perm = next_batch(state, images_NxP, cfg, batch_sharding)
    return _update(state.replace(perm=perm), batch_BxP, cfg)


@functools.partial(jax.jit, static_argnames=("cfg", "batch_sharding"), donate_argnums=0)
def run_steps(state: TrainState, images_NxP, num_steps, *, cfg: TrainerConfig,
              batch_sharding=None):
    """`num_steps` train steps in one call; returns the new state and the last step's metrics.

    The steps run in a `lax.fori_loop` whose trip count is an argument, not a constant: XLA makes
    it one while loop, so calls of any length share a single compilation, and the host dispatches
    once per call instead of once per step. `batch_sharding` splits each batch across devices
    (data parallel; the state is replicated and XLA adds the cross-device sums).
    """
    step = functools.partial(_update_on_device_data, cfg=cfg, batch_sharding=batch_sharding)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(step, state, images_NxP)[1])
    state, outcome = jax.lax.fori_loop(0, num_steps, lambda _, carry: step(carry[0], images_NxP),
                                       (state, zeros))
    return state, step_metrics(state, outcome, cfg)


# -- evaluation -------------------------------------------------------------------------------

EVAL_CHUNK = 4096


@functools.partial(jax.jit, static_argnames="cfg")
def _eval_chunk(params, x_BxP, valid_B, *, cfg: TrainerConfig):
    x_recon, aux = make_model(cfg).apply(params, x_BxP)
    counts_LxK = metrics.code_counts(aux["indices"], cfg.model.num_codes, valid_B)
    squared_error = jnp.sum(valid_B * jnp.mean((x_BxP - x_recon) ** 2, axis=-1))
    return counts_LxK, squared_error


def _pass(params, images_NxP: np.ndarray, cfg: TrainerConfig):
    """Code counts (L, K) and summed per-image MSE over a whole split, in padded chunks."""
    chunk = min(EVAL_CHUNK, len(images_NxP))
    counts, squared_error = 0, 0.0
    for start in range(0, len(images_NxP), chunk):  # summed on the host: no eager device ops
        x = images_NxP[start : start + chunk]
        valid = np.ones(chunk, np.int32)
        if len(x) < chunk:  # pad, so every chunk has one shape and compiles once
            valid[len(x) :] = 0
            x = np.concatenate([x, np.zeros((chunk - len(x), x.shape[1]), x.dtype)])
        chunk_counts, chunk_error = jax.device_get(_eval_chunk(params, x, valid, cfg=cfg))
        counts, squared_error = counts + chunk_counts, squared_error + float(chunk_error)
    return counts, squared_error


def evaluate(params, dataset: Dataset, cfg: TrainerConfig) -> dict:
    """Held-out recon MSE and PSNR, and per-level code use over full passes of both splits.

    Keys and their meaning: `runlog` (eval records). The full pass of the training split is the
    definitive dead-code count: a code no training image picks is dead.
    """
    train_counts, _ = _pass(params, dataset.train, cfg)
    heldout_counts, heldout_error = _pass(params, dataset.heldout, cfg)
    train_used, train_perplexity, heldout_used, heldout_perplexity = (
        x.tolist() for x in jax.device_get(_usage(train_counts, heldout_counts)))
    mse = heldout_error / len(dataset.heldout)
    return {
        "heldout_recon": mse,
        "heldout_psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))),
        "train_used": train_used,
        "train_dead": [cfg.model.num_codes - u for u in train_used],
        "train_perplexity": train_perplexity,
        "heldout_used": heldout_used,
        "heldout_perplexity": heldout_perplexity,
    }


@jax.jit
def _usage(train_counts_LxK, heldout_counts_LxK):
    return (metrics.codes_used(train_counts_LxK), metrics.perplexity(train_counts_LxK),
            metrics.codes_used(heldout_counts_LxK), metrics.perplexity(heldout_counts_LxK))


@functools.partial(jax.jit, static_argnames="cfg")
def _encode_chunk(params, x_BxP, *, cfg: TrainerConfig):
    return make_model(cfg).apply(params, x_BxP, method=RQVAE.encode).T


def encode(params, images_NxP: np.ndarray, cfg: TrainerConfig) -> np.ndarray:
    """Per-level code indices of every image, (N, L) int32, in padded chunks (one compile)."""
    chunk = min(EVAL_CHUNK, len(images_NxP))
    parts = []
    for start in range(0, len(images_NxP), chunk):
        x = images_NxP[start : start + chunk]
        padded = np.concatenate([x, np.zeros((chunk - len(x), x.shape[1]), x.dtype)])
        parts.append(np.asarray(_encode_chunk(params, padded, cfg=cfg))[: len(x)])
    return np.concatenate(parts).astype(np.int32)


def load_trained(run_dir: Path, step: int | None = None):
    """The config, data set, parameters and step of a run's checkpoint (default: the newest).

    Raises ConfigError when the run or the checkpoint is missing.
    """
    config_path = Path(run_dir) / runlog.CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} holds no run (no config.toml); pass a directory written by "
                          f"`rqvae train`")
    cfg = config_lib.load(config_path)
    saved_steps = checkpoint.all_steps(run_dir)
    if not saved_steps:
        raise ConfigError(f"{run_dir} has no complete checkpoint yet")
    step = saved_steps[-1] if step is None else step
    if step not in saved_steps:
        raise ConfigError(f"{run_dir} has no checkpoint at step {step}; it has {saved_steps}")
    dataset = data.load(cfg.data)
    cfg = compiled_part(with_image_shape(cfg, dataset))
    with checkpoint.manager(run_dir, cfg.run.keep_checkpoints) as mngr:
        state = checkpoint.restore(mngr, step, init_state(cfg, len(dataset.train)))
    return cfg, dataset, state.params, step


# -- devices ----------------------------------------------------------------------------------

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
        raise ConfigError(f"could not join a multi-host run ({reason}); run under srun, or set "
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


# -- the loop ---------------------------------------------------------------------------------


def compiled_part(cfg: TrainerConfig) -> TrainerConfig:
    """The config with the fields compiled functions never read set to fixed values.

    Runs that differ only in their length or run settings (directory, intervals) then share one
    compilation, e.g. a run and its resumption, or the tests' many short runs.
    """
    run = config_lib.RunConfig(dead_window=cfg.run.dead_window)
    return dataclasses.replace(cfg, steps=1, run=run)


def _record(step: int, elapsed: float, host_metrics: dict) -> dict:
    record = {"kind": "train", "step": step, "time": round(elapsed, 3)}
    record.update({k: float(host_metrics[k]) for k in LOSS_TERMS})
    record.update({k: np.asarray(host_metrics[k]).tolist() for k in PER_LEVEL})
    return record


def _failure_message(state: TrainState, last_checkpoint: int | None) -> str:
    failed_step, failed_terms = jax.device_get((state.failed_step, state.failed_terms))
    terms = ", ".join(t for t, bad in zip(LOSS_TERMS, failed_terms) if bad)
    kept = f"step {last_checkpoint}" if last_checkpoint is not None else "none yet"
    return (
        f"loss became non-finite at step {int(failed_step) + 1} ({terms}); last good checkpoint: "
        f"{kept}; lower --learning-rate or the lambdas and resume or start a new run"
    )


class _SignalFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, _frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def _call_end(done: int, cfg: TrainerConfig) -> int:
    """Where the next compiled call stops: the next log, eval or checkpoint step, the end of the
    run, or `steps_per_call` steps on, whichever comes first."""
    r = cfg.run
    ends = [cfg.steps, done + r.steps_per_call]
    ends += [(done // every + 1) * every for every in (r.log_every, r.eval_every, r.checkpoint_every)]
    return min(ends)


class _NoLog:
    """The run log of a process other than 0: writes nothing."""

    def write(self, record: dict) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def fit(cfg: TrainerConfig, dataset: Dataset, run_dir: Path, *, resume: bool, display) -> dict:
    """Trains from scratch or from the run's newest checkpoint up to `cfg.steps`.

    Writes metrics.jsonl and checkpoints into `run_dir`. Returns the last train and eval records.
    Raises TrainingFailed on a non-finite loss and Interrupted on SIGINT/SIGTERM.
    """
    mesh = make_mesh(cfg)
    sharding = batch_sharding(mesh)
    step_cfg = compiled_part(cfg)
    state = init_state(cfg, len(dataset.train))
    if cfg.kmeans_init and not resume:
        state = kmeans_init(state, dataset.train, cfg=step_cfg)
    state = replicate(state, mesh)
    mngr = checkpoint.manager(run_dir, cfg.run.keep_checkpoints)
    primary = is_primary()
    start, time_offset = 0, 0.0
    if resume:
        start = mngr.latest_step()
        state = checkpoint.restore(mngr, start, state)
        if primary:
            runlog.truncate_after(run_dir, start)
        previous = runlog.read(run_dir)
        time_offset = previous[-1]["time"] if previous else 0.0
    images = replicate(dataset.train, mesh)
    last_checkpoint = start if resume else None
    summary: dict = {}
    pending = None  # (step, on-device metrics) awaiting a lagged fetch

    def flush():
        nonlocal pending
        if pending is None:
            return
        step, device_metrics = pending
        pending = None
        host = jax.device_get(device_metrics)
        if int(host["failed_step"]) >= 0:
            raise TrainingFailed(_failure_message(state, last_checkpoint))
        summary["train"] = _record(step, time_offset + time.perf_counter() - t0, host)
        log.write(summary["train"])
        display.log(summary["train"])

    def save(step):
        nonlocal last_checkpoint
        flush()
        if int(jax.device_get(state.failed_step)) >= 0:
            raise TrainingFailed(_failure_message(state, last_checkpoint))
        checkpoint.save(mngr, step, state)
        last_checkpoint = step

    def at(step, every):
        return step % every == 0 or step == cfg.steps

    t0 = time.perf_counter()
    run_log = runlog.RunLog(run_dir) if primary else _NoLog()
    with run_log as log, _SignalFlag() as signals, mngr, display:
        display.start(start, cfg.steps)
        step = start
        while step < cfg.steps:
            end = _call_end(step, cfg)
            state, device_metrics = run_steps(state, images, end - step, cfg=step_cfg,
                                              batch_sharding=sharding)
            step = end
            flush()  # the previous call's metrics, fetched once this call is queued
            if at(step, cfg.run.log_every):
                pending = (step, device_metrics)
            display.advance(step)
            if at(step, cfg.run.eval_every):
                flush()
                summary["eval"] = {"kind": "eval", "step": step,
                                   "time": round(time_offset + time.perf_counter() - t0, 3)}
                summary["eval"].update(evaluate(_local_copy(state.params, mesh), dataset, step_cfg))
                log.write(summary["eval"])
                display.log(summary["eval"])
            if at(step, cfg.run.checkpoint_every):
                save(step)
            if signals.signum is not None:
                if last_checkpoint != step:
                    save(step)
                mngr.wait_until_finished()
                raise Interrupted(signals.signum, step)
        flush()
        mngr.wait_until_finished()
    return summary


def _local_copy(tree, mesh: Mesh):
    """The tree on this process's first device, for evaluation (which runs on one device)."""
    if mesh.size == 1:
        return tree
    return jax.device_put(jax.device_get(tree), jax.local_devices()[0])


def with_image_shape(cfg: TrainerConfig, dataset: Dataset) -> TrainerConfig:
    """The model's input shape comes from the data set."""
    model = dataclasses.replace(cfg.model, image_shape=dataset.image_shape)
    return dataclasses.replace(cfg, model=model)


# -- run directories --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    cfg: TrainerConfig  # resolved: image shape from the data, run_dir filled in
    dataset: Dataset
    run_dir: Path


def _holds_run(run_dir: Path) -> bool:
    names = (runlog.CONFIG_FILE, runlog.METRICS_FILE, checkpoint.CHECKPOINT_DIR)
    return any((run_dir / name).exists() for name in names)


def open_run(cfg: TrainerConfig, *, name: str, resume: bool) -> Run:
    """Checks everything a run needs, then creates its directory and writes config.toml.

    Every check comes before the first write, so a refused command leaves no trace and never
    touches an existing run. Raises ConfigError with the problem and its fix.
    """
    initialize_distributed(cfg)
    hosts = jax.process_count()
    if hosts > 1 and not cfg.run.run_dir:
        raise ConfigError(f"a run on {hosts} hosts needs --run-dir, on a file system every host "
                          f"sees (each would name its own default directory)")
    run_dir = Path(cfg.run.run_dir or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if resume:
        if not _holds_run(run_dir):
            raise ConfigError(f"{run_dir} holds no run to resume; check --run-dir")
        latest = checkpoint.latest_step(run_dir)
        if latest is None:
            raise ConfigError(f"{run_dir} has no complete checkpoint to resume from; "
                              f"start a new run in another --run-dir")
    elif _holds_run(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, "
                          f"or choose a new --run-dir")
    dataset = data.load(cfg.data)
    cfg = with_image_shape(cfg, dataset)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, run_dir=str(run_dir)))
    if cfg.batch_size > len(dataset.train):
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training split of "
                          f"{dataset.name} ({len(dataset.train)} images); lower --batch-size")
    make_mesh(cfg)  # enough devices, and a batch that splits evenly across them
    if resume:
        saved = config_lib.load(run_dir / runlog.CONFIG_FILE)
        changed = config_lib.shape_differences(saved, cfg)
        if changed:
            raise ConfigError(f"--resume cannot change the model's shape ({'; '.join(changed)}); "
                              f"drop those settings or start a new --run-dir")
        if latest >= cfg.steps:
            raise ConfigError(f"{run_dir} already reached step {latest} of {cfg.steps}; "
                              f"pass a larger --steps to train further")
    if hosts > 1:  # every host has checked the directory before process 0 writes to it
        multihost_utils.sync_global_devices("rqvae: run directory checked")
    if is_primary():
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / (runlog.CONFIG_FILE + ".tmp")
        tmp.write_text(config_lib.dumps(cfg))
        tmp.replace(run_dir / runlog.CONFIG_FILE)
    return Run(cfg, dataset, run_dir)


def print_summary(summary: dict, run_dir: Path, console) -> None:
    """The end-of-run table and the command to run next."""
    from rich.table import Table

    final, last_eval = summary.get("train"), summary.get("eval")
    table = Table(title=f"run {run_dir.name}: step {final['step']}", title_justify="left")
    for column in ("level", "used (window)", "dead (window)", "dead (train split)", "perplexity"):
        table.add_column(column, justify="right")
    for level, (used, dead) in enumerate(zip(final["batch_used"], final["window_dead"])):
        full_dead = str(last_eval["train_dead"][level]) if last_eval else "-"
        perplexity = f"{last_eval['train_perplexity'][level]:.1f}" if last_eval else "-"
        table.add_row(str(level + 1), str(used), str(dead), full_dead, perplexity)
    console.print(table)
    losses = "  ".join(f"{k} {final[k]:.4g}" for k in LOSS_TERMS)
    heldout = f"  heldout recon {last_eval['heldout_recon']:.4g}" if last_eval else ""
    console.print(f"final losses: {losses}{heldout}", highlight=False, soft_wrap=True)
    console.print(f"next: [bold]rqvae report {run_dir}[/]", highlight=False)
