"""The train step: state, loss, update, and many steps in one device-side loop.

Everything here is a pure function of arrays and a `StepConfig` (the exact config it compiles
on); nothing reads files, prints or looks at the clock. `loop` drives it.
"""

from __future__ import annotations

import enum
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rqvae.quantizer import codebook, metrics
from rqvae.quantizer.losses import LOSS_TERMS, quantizer_losses
from rqvae.quantizer.settings import KMEANS_BATCHES
from rqvae.quantizer.state import CodebookState, update_codebook
from rqvae.trainer.config import StepConfig
from rqvae.trainer.model import RQVAE
from rqvae.trainer.runlog import TRANSPORT_PER_LEVEL


class Stream(enum.IntEnum):
    """The random streams of a run, each `fold_in(key(seed), stream)`. The numbers are part of
    what makes a run reproducible: changing one changes every run's draws."""

    PARAMS = 0  # parameter initialization
    DATA = 1  # each epoch's order of the training images (then folded with the epoch)
    RESTART = 2  # which batch points re-seed dead codes (then folded with the step)
    KMEANS = 3  # k-means initial centroids
    ANCHOR = 4  # which batch points re-anchor stale codes (then folded with the step)


def stream_key(seed: int, stream: Stream) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), int(stream))


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32: optimizer steps taken
    params: Any
    opt_state: Any
    last_used: jax.Array  # (L, K) int32: step at which each code was last picked, -1 never
    perm: jax.Array  # (N,) int32: this epoch's order of the training images
    failed_step: jax.Array  # int32: -1, or the step whose loss went non-finite (state frozen)
    failed_terms: jax.Array  # (len(LOSS_TERMS),) bool: which terms were non-finite then
    # Neither is read: the checkpoints of earlier runs hold them (a warm start's potentials, a
    # queue of past batches), and a restore needs the same layout.
    sinkhorn_g: jax.Array  # (L, K) float32 zeros
    ot_queue: None = None


def make_model(cfg: StepConfig) -> RQVAE:
    return RQVAE(cfg.model)


def make_optimizer(cfg: StepConfig) -> optax.GradientTransformation:
    return optax.adam(cfg.optimizer.learning_rate)


def learning_rate_scale(step, total_steps, decay_fraction: float):
    """The factor on the learning rate at the step after `step` steps (traced) of a run of
    `total_steps` (traced; 0: no schedule): 1, then a half cosine from 1 toward 0 over the last
    `decay_fraction` of the steps. Adam's update is linear in its step size, so scaling the
    update is Adam with this schedule; the run's length stays out of the compiled program."""
    decay_steps = jnp.round(total_steps * decay_fraction)
    into_decay = jnp.clip((step - (total_steps - decay_steps)) / jnp.maximum(decay_steps, 1), 0, 1)
    scale = 0.5 * (1 + jnp.cos(jnp.pi * into_decay))
    return jnp.where((total_steps > 0) & (decay_steps > 0), scale, 1.0).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_state(cfg: StepConfig, num_train: int) -> TrainState:
    """The state before step 1. Compiled as one program: eagerly, each of its small operations
    would be compiled on its own, which costs seconds."""
    dummy = jnp.zeros((1, cfg.model.input_dim), jnp.float32)
    params = make_model(cfg).init(stream_key(cfg.seed, Stream.PARAMS), dummy)
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


def loss_fn(params, batch_BxP, cfg: StepConfig, codebook_state: CodebookState | None = None,
            logged=True):
    """The step's loss: the reconstruction's MSE plus the library's `quantizer_losses` on the
    model's aux, reading the codes' use across steps (`codebook_state`; None: the transport
    term moves every code). Returns the total and (the loss terms, the aux)."""
    x_recon, aux = make_model(cfg).apply(params, batch_BxP)
    recon = jnp.mean((batch_BxP - x_recon) ** 2)
    losses = quantizer_losses(aux, cfg.loss, cfg.transport, state=codebook_state, logged=logged,
                              platform=cfg.platform)
    losses.update(recon=recon, total=recon + losses["total"])
    return losses["total"], (losses, aux)


def train_step(state: TrainState, batch_BxP, *, cfg: StepConfig):
    """One Adam step on a batch. Pure: returns the new state and a dict of on-device metrics.

    A non-finite loss leaves the state as it was and records the step in `failed_step`; from
    then on the state stays frozen, so the loop can stop and the bad state is never saved.
    """
    new_state, outcome = _update(state, batch_BxP, cfg)
    return new_state, step_metrics(new_state, outcome, cfg)


def _update(state: TrainState, batch_BxP, cfg: StepConfig, logged=True, total_steps=0):
    """The step itself: the new state, and what `step_metrics` needs of the step (its losses,
    code counts and index). The loop carries only that, and summarizes the last step once.
    `logged` (traced bool): whether the step's values are read; a step that is not read skips
    the transport solve where it would move nothing (`rqvae.quantizer.state.transport_schedule`).
    `total_steps` (traced int): the run's length, for the learning rate's decay
    (`learning_rate_scale`); 0: a constant learning rate."""
    codebook_state = CodebookState(state.last_used, state.step, cfg.model.shared_codebook)
    grads, (losses, aux) = jax.grad(loss_fn, has_aux=True)(
        state.params, batch_BxP, cfg, codebook_state, logged)
    counts_LxK = aux["counts"]
    finite_terms = jnp.stack([jnp.isfinite(losses[k]) for k in LOSS_TERMS])
    healthy = state.failed_step < 0
    ok = healthy & jnp.all(finite_terms)

    def advance():
        updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, state.params)
        scale = learning_rate_scale(state.step, total_steps, cfg.optimizer.decay_fraction)
        updates = jax.tree.map(lambda u: u * scale, updates)
        params = optax.apply_updates(state.params, updates)
        # The picks recorded, then the comparator remedy (restart) and the transport term's
        # re-anchoring, each with its own random stream.
        params, opt_state, upkept = update_codebook(
            params, opt_state, codebook_state, aux, losses, _step_key(cfg, Stream.ANCHOR, state),
            restart_threshold=cfg.remedies.dead_code_threshold,
            restart_key=_step_key(cfg, Stream.RESTART, state))
        return params, opt_state, upkept.last_used

    params, opt_state, last_used = where_ok(
        ok, advance, (state.params, state.opt_state, state.last_used),
        branch=cfg.platform.branch)
    new_state = state.replace(
        step=state.step + ok.astype(jnp.int32),
        params=params,
        opt_state=opt_state,
        last_used=last_used,
        failed_step=jnp.where(healthy & ~ok, state.step, state.failed_step),
        failed_terms=jnp.where(healthy & ~ok, ~finite_terms, state.failed_terms),
    )
    outcome = {k: losses[k] for k in (*LOSS_TERMS, *TRANSPORT_PER_LEVEL)}
    # Per level, the codes still stale once the step re-anchored what it could.
    stale_LxK = losses["schedule"].stale(new_state.last_used, state.step)
    outcome.update(counts=counts_LxK, step=state.step,
                   anchor_stale=jnp.sum(stale_LxK, axis=1, dtype=jnp.int32))
    return new_state, outcome


def where_ok(ok, update, old, *, branch: bool):
    """`update()` if `ok`, else `old` (a tree of the same structure).

    `branch` (`Platform.branch`, on CPU): decide with `lax.cond`. On CPU a select between the
    new and the old tree keeps both alive, and XLA then copies every parameter and Adam moment
    once per step; a branch updates them in place. Otherwise a select: on accelerators a branch
    reads its predicate back to the host, which would stall the device once per step, and the
    copies are cheap.
    """
    if branch:
        return jax.lax.cond(ok, update, lambda: old)
    return jax.tree.map(lambda new, previous: jnp.where(ok, new, previous), update(), old)


def step_metrics(new_state: TrainState, outcome: dict, cfg: StepConfig) -> dict:
    """The flat on-device metrics of a step, named as in `runlog` (train records), and the
    failed step."""
    counts_LxK = outcome["counts"]
    result = {k: outcome[k] for k in LOSS_TERMS}
    result.update(
        batch_used=metrics.codes_used(counts_LxK),
        batch_perplexity=metrics.perplexity(counts_LxK),
        window_dead=metrics.dead_in_window(new_state.last_used, outcome["step"], cfg.dead_window),
        **{k: outcome[k] for k in TRANSPORT_PER_LEVEL},
        anchor_stale=outcome["anchor_stale"],
        failed_step=new_state.failed_step,
    )
    return result


def _step_key(cfg: StepConfig, stream: Stream, state: TrainState) -> jax.Array:
    return jax.random.fold_in(stream_key(cfg.seed, stream), state.step)


@functools.partial(jax.jit, static_argnames="cfg", donate_argnums=0)
def kmeans_init(state: TrainState, images_NxP, *, cfg: StepConfig) -> TrainState:
    """The comparator remedy: each level's codebook fitted by k-means to the encoder outputs
    (and residuals) of the first KMEANS_BATCHES batches the run will train on."""
    batches, walker = [], state
    for i in range(KMEANS_BATCHES):
        batch_BxP, perm = next_batch(walker.replace(step=jnp.int32(i)), images_NxP, cfg)
        batches.append(batch_BxP)
        walker = walker.replace(perm=perm)
    z_e = make_model(cfg).apply(state.params, jnp.concatenate(batches),
                                method=lambda model, x: model.encoder(x))
    z_NxD = z_e.reshape(-1, z_e.shape[-1])  # a grid latent's positions are points too
    m = cfg.model
    codebook_LxKxD = codebook.kmeans_codebooks(z_NxD, m.num_levels, m.num_codes,
                                               stream_key(cfg.seed, Stream.KMEANS))
    if m.shared_codebook:  # the shared codebook starts as level 1's
        codebook_LxKxD = codebook_LxKxD[:1]
    return state.replace(params=codebook.with_codebook(state.params, codebook_LxKxD))


def next_batch(state: TrainState, images_NxP, cfg: StepConfig, batch_sharding=None):
    """The next batch, by index into on-device data, and the epoch order it came from.

    Each epoch's order is a permutation drawn from fold_in(key, epoch): a resumed run draws the
    same batches as one that never stopped. The last partial batch of an epoch is dropped.
    With a `batch_sharding`, each device gathers only its own slice of the batch.
    """
    num_images = images_NxP.shape[0]
    epoch, position = jnp.divmod(state.step, num_images // cfg.batch_size)
    data_key = stream_key(cfg.seed, Stream.DATA)
    perm = jax.lax.cond(
        position == 0,
        lambda: jax.random.permutation(jax.random.fold_in(data_key, epoch), num_images),
        lambda: state.perm,
    ).astype(jnp.int32)
    index_B = jax.lax.dynamic_slice(perm, (position * cfg.batch_size,), (cfg.batch_size,))
    if batch_sharding is not None:
        index_B = jax.lax.with_sharding_constraint(index_B, batch_sharding)
    return jnp.take(images_NxP, index_B, axis=0), perm


def _update_on_device_data(state: TrainState, images_NxP, cfg: StepConfig, batch_sharding=None,
                           logged=True, total_steps=0):
    batch_BxP, perm = next_batch(state, images_NxP, cfg, batch_sharding)
    return _update(state.replace(perm=perm), batch_BxP, cfg, logged, total_steps)


@functools.partial(jax.jit, static_argnames=("cfg", "batch_sharding"), donate_argnums=0)
def run_steps(state: TrainState, images_NxP, num_steps, record_last=True, total_steps=0, *,
              cfg: StepConfig, batch_sharding=None):
    """`num_steps` train steps in one call; returns the new state and the last step's metrics.

    `record_last` (traced bool): whether those metrics are read. A call whose metrics nobody
    reads (one the loop ends between log steps) gives the transport term's values of its last
    step only if that step solved anyway; what the steps compute is the same either way.
    `total_steps` (traced): the run's length, which sets the learning rate's decay; 0: none.

    The steps run in a `lax.fori_loop` whose trip count is an argument, not a constant: XLA makes
    it one while loop, so calls of any length share a single compilation, and the host dispatches
    once per call instead of once per step. `batch_sharding` splits each batch across devices
    (data parallel; the state is replicated and XLA adds the cross-device sums).
    """
    step = functools.partial(_update_on_device_data, cfg=cfg, batch_sharding=batch_sharding)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(step, state, images_NxP)[1])
    state, outcome = jax.lax.fori_loop(
        0, num_steps,
        lambda i, carry: step(carry[0], images_NxP, logged=(i == num_steps - 1) & record_last,
                              total_steps=total_steps),
        (state, zeros))
    return state, step_metrics(state, outcome, cfg)
