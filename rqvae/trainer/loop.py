"""The run loop: drives the compiled step to `cfg.steps`, logs, evaluates, checkpoints, and stops
cleanly on a signal or a non-finite loss."""

from __future__ import annotations

import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from rqvae.trainer import checkpoint, devices, runlog
from rqvae.trainer.config import TrainerConfig, step_config
from rqvae.trainer.evaluate import evaluate
from rqvae.trainer.launch import Run
from rqvae.trainer.runlog import LOSS_TERMS, TRAIN_PER_LEVEL
from rqvae.trainer.step import TrainState, init_state, kmeans_init, run_steps

# A compiled call of many steps cannot be interrupted, so the loop sizes calls to last about this
# long once it has timed a step: a signal then acts within about this much of arriving.
CALL_SECONDS = 0.5


class TrainingFailed(RuntimeError):
    """The loss went non-finite; the message names the step and the terms."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived. Once: a checkpoint was saved at `step`. Twice: the run quit at
    once, and `kept` is the last checkpoint (None: none yet)."""

    def __init__(self, signum: int, step: int, *, saved: bool = True, kept: int | None = None):
        name = signal.Signals(signum).name
        if saved:
            message = f"interrupted by {name} at step {step}; checkpoint saved"
        else:
            message = (f"{name} twice: quit at step {step} without saving; last checkpoint: "
                       f"{'step ' + str(kept) if kept is not None else 'none yet'}")
        super().__init__(message)
        self.signum, self.step, self.saved = signum, step, saved


class _Signals:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks between calls, and says so at
    once; a second one quits at once (at the end of the compiled call under way), keeping the
    last checkpoint. `where()` gives the last step done and the last checkpoint."""

    def __init__(self, display, where):
        self.signum = None
        self._display, self._where = display, where

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, _frame):
        step, kept = self._where()
        if self.signum is None:
            self.signum = signum
            self._display.notice(f"{signal.Signals(signum).name}: stopping once the steps under "
                                 f"way end (the compiled call that began after step {step}), "
                                 f"then saving a checkpoint; again to quit without saving")
            return
        raise Interrupted(signum, step, saved=False, kept=kept)

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def _train_record(step: int, elapsed: float, host_metrics: dict) -> dict:
    record = {"kind": "train", "step": step, "time": round(elapsed, 3)}
    record.update({k: float(host_metrics[k]) for k in LOSS_TERMS})
    record.update({k: np.asarray(host_metrics[k]).tolist() for k in TRAIN_PER_LEVEL})
    return record


def _end_record(step: int, elapsed: float, status: str, reason: str) -> dict:
    """How the run ended (runlog's "end" record)."""
    return {"kind": "end", "step": step, "time": elapsed, "status": status, "reason": reason}


def _failure_message(state: TrainState, last_checkpoint: int | None) -> str:
    failed_step, failed_terms = jax.device_get((state.failed_step, state.failed_terms))
    terms = ", ".join(t for t, bad in zip(LOSS_TERMS, failed_terms) if bad)
    kept = f"step {last_checkpoint}" if last_checkpoint is not None else "none yet"
    return (
        f"loss became non-finite at step {int(failed_step) + 1} ({terms}); last good checkpoint: "
        f"{kept}; lower --learning-rate or the lambdas and resume or start a new run"
    )


class _CallSize:
    """How many steps the next compiled call takes: up to `run.steps_per_call`, and no more than
    fit in CALL_SECONDS at the step time measured so far (a conv model at batch 1024 can take
    seconds a step). The first two calls take one step: the first compiles, the second is timed.
    Only the first TIMED_CALLS calls after the compiling one are timed: timing waits for the call
    to finish, which would keep the host from queueing the next call ahead of the device.
    Calls also end at log, eval and checkpoint steps."""

    TIMED_CALLS = 3

    def __init__(self, cfg: TrainerConfig):
        self.cfg, self.step_seconds = cfg, None

    def wants_timing(self, call_index: int) -> bool:
        """Whether the call with this index (0: the one that compiles) is to be timed."""
        return 1 <= call_index <= self.TIMED_CALLS

    def end(self, done: int) -> int:
        r, limit = self.cfg.run, 1  # one step until a step has been timed
        if self.step_seconds is not None:
            limit = max(1, min(r.steps_per_call, int(CALL_SECONDS / self.step_seconds)))
        ends = [self.cfg.steps, done + limit]
        ends += [(done // every + 1) * every
                 for every in (r.log_every, r.eval_every, r.checkpoint_every)]
        return min(ends)

    def timed(self, steps: int, seconds: float) -> None:
        self.step_seconds = max(seconds / steps, 1e-9)


class _NoLog:
    """The run log of a process other than 0: writes nothing."""

    def write(self, record: dict) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _initial_state(run: Run, step_cfg, mesh):
    state = init_state(step_cfg, len(run.dataset.train))
    if run.cfg.remedies.kmeans_init and run.resume_from is None:
        state = kmeans_init(state, run.dataset.train, cfg=step_cfg)
    return devices.replicate(state, mesh)


def fit(run: Run, *, display) -> dict:
    """Trains from scratch or from the run's checkpoint `run.resume_from` up to `cfg.steps`.

    Writes metrics.jsonl and checkpoints into the run directory. Returns the last train and eval
    records. Raises TrainingFailed on a non-finite loss and Interrupted on SIGINT/SIGTERM; the
    log ends with an "end" record either way.
    """
    cfg, dataset, run_dir = run.cfg, run.dataset, run.run_dir
    mesh = devices.make_mesh(cfg)
    sharding = devices.batch_sharding(mesh)
    step_cfg = step_config(cfg, mesh.devices.flat[0].platform)
    state = _initial_state(run, step_cfg, mesh)
    mngr = checkpoint.manager(run_dir, cfg.run.keep_checkpoints)
    primary = devices.is_primary()
    start, time_offset = run.resume_from or 0, 0.0
    if run.resume_from is not None:
        state = checkpoint.restore(mngr, start, state)
    if primary:  # on a resume, each step is logged once and the clock continues
        last_kept = runlog.truncate_after(run_dir, start)
        time_offset = last_kept.get("time", 0.0) if last_kept else 0.0
    images = devices.replicate(dataset.train, mesh)
    last_checkpoint = saving = run.resume_from
    summary: dict = {}
    pending = None  # (step, on-device metrics) awaiting a lagged fetch
    t0 = time.perf_counter()

    def elapsed() -> float:
        return round(time_offset + time.perf_counter() - t0, 3)

    def flush():
        nonlocal pending
        if pending is None:
            return
        step, device_metrics = pending
        pending = None
        host = jax.device_get(device_metrics)
        if int(host["failed_step"]) >= 0:
            raise TrainingFailed(_failure_message(state, last_checkpoint))
        summary["train"] = _train_record(step, elapsed(), host)
        log.write(summary["train"])
        display.log(summary["train"])

    def save(step):
        nonlocal last_checkpoint, saving
        flush()
        if int(jax.device_get(state.failed_step)) >= 0:
            raise TrainingFailed(_failure_message(state, last_checkpoint))
        check_saves()
        problem = checkpoint.room_for(run_dir, state)
        if problem:  # before orbax starts writing, whose threads would each print a traceback
            raise TrainingFailed(checkpoint.save_stopped(run_dir, step, problem,
                                                         last_checkpoint))
        checkpoint.save(mngr, step, state)
        saving, last_checkpoint = step, step

    def check_saves(wait=False):
        """Stops at the first checkpoint save that failed (a full disk), saying where."""
        nonlocal last_checkpoint
        try:
            mngr.wait_until_finished() if wait else mngr.check_for_errors()
        except Exception as err:  # orbax re-raises what its writer thread met
            kept = [s for s in checkpoint.all_steps(run_dir) if s != saving]
            last_checkpoint = kept[-1] if kept else None
            raise TrainingFailed(checkpoint.save_failure(run_dir, saving, err, last_checkpoint)
                                 ) from None

    def at(step, every):
        return step % every == 0 or step == cfg.steps

    run_log = runlog.RunLog(run_dir) if primary else _NoLog()
    calls = _CallSize(cfg)
    step, call_index = start, 0
    total_steps = jnp.int32(cfg.steps)  # where the learning rate decays (step.learning_rate_scale)
    with (run_log as log, _Signals(display, lambda: (step, last_checkpoint)) as signals, mngr,
          display):
        if run.resume_from is not None or run.changed:
            log.write({"kind": "resume", "step": start, "time": elapsed(),
                       "changed": run.changed})
        display.start(start, cfg.steps)
        try:
            while step < cfg.steps:
                end = calls.end(step)
                call_start = time.perf_counter()
                logged = at(end, cfg.run.log_every)  # only then are the call's metrics read
                state, device_metrics = run_steps(state, images, end - step, jnp.bool_(logged),
                                                  total_steps, cfg=step_cfg,
                                                  batch_sharding=sharding)
                flush()  # the previous call's metrics, fetched once this call is queued
                if logged:
                    pending = (end, device_metrics)
                if calls.wants_timing(call_index):
                    jax.block_until_ready(state.step)
                    calls.timed(end - step, time.perf_counter() - call_start)
                step, call_index = end, call_index + 1
                display.advance(step)
                check_saves()
                if at(step, cfg.run.eval_every):
                    flush()
                    summary["eval"] = {"kind": "eval", "step": step, "time": elapsed(),
                                       **evaluate(devices.local_copy(state.params, mesh),
                                                  dataset, step_cfg)}
                    log.write(summary["eval"])
                    display.log(summary["eval"])
                if at(step, cfg.run.checkpoint_every):
                    save(step)
                if signals.signum is not None:
                    if last_checkpoint != step:
                        save(step)
                    check_saves(wait=True)
                    raise Interrupted(signals.signum, step)
            flush()
            check_saves(wait=True)
        except (TrainingFailed, Interrupted) as err:
            status = "failed" if isinstance(err, TrainingFailed) else "interrupted"
            log.write(_end_record(step, elapsed(), status, str(err)))
            raise
        log.write(_end_record(step, elapsed(), "completed", ""))
    return summary
