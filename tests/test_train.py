import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rqvae import config, runlog, train

# One step of the tiny config on the first 16 training digits. Update these only for an intended
# change of the model, its init, the losses or the optimizer, never to make a refactor pass.
GOLDEN_TOTAL = 0.3785033
GOLDEN_STEP1_TOTAL = 0.3462415


def _first_batch(cfg, digits):
    return jnp.asarray(digits.train[: cfg.batch_size])


def test_golden_single_step(tiny_cfg, digits):
    state = train.init_state(tiny_cfg, len(digits.train))
    step = jax.jit(train.train_step, static_argnames="cfg")
    batch = _first_batch(tiny_cfg, digits)
    state, metrics = step(state, batch, cfg=tiny_cfg)
    _, metrics2 = step(state, batch, cfg=tiny_cfg)
    message = ("golden value changed: legitimate only if the model, init, losses or optimizer were "
               "changed on purpose; then update GOLDEN_* in tests/test_train.py")
    assert float(metrics["total"]) == pytest.approx(GOLDEN_TOTAL, rel=1e-5), message
    assert float(metrics2["total"]) == pytest.approx(GOLDEN_STEP1_TOTAL, rel=1e-5), message
    assert float(metrics2["total"]) < float(metrics["total"])


def test_a_step_of_the_loop_is_the_single_train_step(tiny_cfg, digits):
    # The configs of the golden test's step and of the runs below: their compilations are reused.
    cfg = train.compiled_part(tiny_cfg)
    state = train.init_state(cfg, len(digits.train))
    batch, perm = train.next_batch(state, jnp.asarray(digits.train), cfg)
    single_state, single = jax.jit(train.train_step, static_argnames="cfg")(
        state.replace(perm=perm), batch, cfg=tiny_cfg)
    loop_state, looped = train.run_steps(state, jnp.asarray(digits.train), 1, cfg=cfg)
    for key in train.LOSS_TERMS:
        assert float(looped[key]) == pytest.approx(float(single[key]), rel=1e-6)
        assert np.isfinite(float(looped[key]))
    assert int(loop_state.step) == 1 and int(loop_state.failed_step) == -1
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 jax.device_get(loop_state.params), jax.device_get(single_state.params))
    assert looped["batch_used"].shape == looped["window_dead"].shape == (cfg.model.num_levels,)


def test_non_finite_loss_freezes_the_state_and_names_the_step(tiny_cfg, digits):
    step = jax.jit(train.train_step, static_argnames="cfg")
    state = train.init_state(tiny_cfg, len(digits.train))
    batch = _first_batch(tiny_cfg, digits)
    state, _ = step(state, batch, cfg=tiny_cfg)
    good_params = jax.device_get(state.params)
    bad_state, metrics = step(state, batch.at[0, 0].set(jnp.nan), cfg=tiny_cfg)
    assert int(bad_state.failed_step) == 1 and int(bad_state.step) == 1
    failed = dict(zip(train.LOSS_TERMS, np.asarray(bad_state.failed_terms)))
    assert failed["recon"] and failed["total"]
    # Frozen: a good batch afterwards changes nothing.
    after, _ = step(bad_state, batch, cfg=tiny_cfg)
    assert int(after.failed_step) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.params), good_params)


@pytest.mark.parametrize("ok", [True, False])
def test_the_guard_branches_and_selects_alike(ok):
    old = {"w": jnp.arange(6.0).reshape(2, 3), "n": jnp.int32(4)}

    def update():
        return {"w": old["w"] * 2.0, "n": old["n"] + 1}

    results = [jax.jit(lambda ok, branch=branch: train._where_ok(ok, update, old, branch=branch))(ok)
               for branch in (True, False)]
    expected = update() if ok else old
    for result in results:
        jax.tree.map(np.testing.assert_array_equal, result, expected)


def test_the_cpu_loop_updates_parameters_in_place(tiny_cfg, digits):
    # With a select between the new and the old state instead of a branch, XLA copies every
    # parameter and Adam moment once per step (about a tenth of the MNIST-shaped step on CPU).
    cfg = train.compiled_part(tiny_cfg)  # as in the tests above: its compilations are reused
    state = train.init_state(cfg, len(digits.train))
    hlo = train.run_steps.lower(state, jnp.asarray(digits.train), 1, cfg=cfg).compile().as_text()
    copied = {tuple(int(n) for n in dims.split(",") if n)
              for dims in re.findall(r"= f32\[([\d,]*)\]\{[\d,]*\} copy\(", hlo)}
    param_shapes = {tuple(leaf.shape) for leaf in jax.tree.leaves(state.params)}
    assert not copied & param_shapes


def test_batches_follow_a_per_epoch_permutation(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, batch_size=4)
    images = jnp.arange(10, dtype=jnp.float32)[:, None]  # image i is the number i
    # Batching reads only the step and the epoch order.
    state = train.TrainState(step=jnp.int32(0), params=None, opt_state=None, last_used=None,
                             perm=jnp.arange(10, dtype=jnp.int32), failed_step=None,
                             failed_terms=None, sinkhorn_g=None)
    seen = []
    for step in range(4):  # two epochs of two batches; the 2 left-over images are dropped
        batch, perm = train.next_batch(state.replace(step=jnp.int32(step)), images, cfg)
        state = state.replace(perm=perm)
        seen.append(np.asarray(batch[:, 0]).astype(int).tolist())
    epoch0, epoch1 = seen[0] + seen[1], seen[2] + seen[3]
    assert len(set(epoch0)) == 8 and len(set(epoch1)) == 8
    assert epoch0 != epoch1


def test_evaluate_counts_dead_codes_over_the_training_split(tiny_cfg, digits):
    state = train.init_state(tiny_cfg, len(digits.train))
    result = train.evaluate(state.params, digits, tiny_cfg)
    levels = tiny_cfg.model.num_levels
    assert len(result["train_dead"]) == len(result["train_used"]) == levels
    assert all(u + d == tiny_cfg.model.num_codes
               for u, d in zip(result["train_used"], result["train_dead"]))
    assert 0 < result["heldout_recon"] < 1
    # The same counts by a direct pass, for comparison with the chunked one.
    _, aux = train.make_model(tiny_cfg).apply(state.params, jnp.asarray(digits.train))
    direct = [len(np.unique(level)) for level in np.asarray(aux["indices"])]
    assert result["train_used"] == direct


# -- the compiled loop and devices --------------------------------------------------------------

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_lowered: list[str] | None = None  # function names lowered while a test is counting


def _count_lowering(event, _duration, fun_name="", **_):
    if _lowered is not None and event == LOWERING_EVENT:
        _lowered.append(fun_name)


jax.monitoring.register_event_duration_secs_listener(_count_lowering)


def _fit(cfg, resume=False):
    from rich.console import Console

    from rqvae.progress import Display

    run = train.open_run(cfg, name="t", resume=resume)
    display = Display(cfg.batch_size, Console(quiet=True), quiet=True)
    return train.fit(run.cfg, run.dataset, run.run_dir, resume=resume, display=display)


def test_a_run_compiles_its_train_loop_once(tiny_cfg, tmp_path):
    global _lowered
    # Calls of 4, 3, 4, 3, 1, ... steps (4 per call, a log every 7): one program for them all.
    # A fresh seed makes it a program no other test compiled.
    cfg = config.replace(tiny_cfg, {"seed": 4242, "run.steps_per_call": 4, "run.log_every": 7,
                                    "run.run_dir": str(tmp_path / "run"), "steps": 20})
    assert train._call_end(0, cfg) == 4 and train._call_end(4, cfg) == 7
    _lowered = []
    try:
        _fit(cfg)
        first_run = list(_lowered)
        _lowered.clear()
        _fit(config.replace(cfg, {"steps": 30}), resume=True)  # resumed: nothing new to compile
        resumed = list(_lowered)
    finally:
        _lowered = None
    assert first_run.count("jit(run_steps)") == 1, first_run
    assert resumed == [], resumed
    records = [r for r in runlog.read(tmp_path / "run") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [7, 14, 20, 21, 28, 30]


MULTI_DEVICE_SCRIPT = """
import json, sys
from rqvae import config, data, train
from tests.test_train import _fit
try:
    train.make_mesh(config.replace(config.load(sys.argv[1]), {"batch_size": 10}))
except config.ConfigError as err:
    print(err)
devices = {}
for path in sys.argv[1:]:
    cfg = config.load(path)
    _fit(cfg)
    mesh = train.make_mesh(cfg)  # the program fit ran, looked up again: was it partitioned?
    train_images = data.load(cfg.data).train
    compiled = train.run_steps.lower(
        train.replicate(train.init_state(cfg, len(train_images)), mesh),
        train.replicate(train_images, mesh), 1, cfg=train.compiled_part(cfg),
        batch_sharding=train.batch_sharding(mesh)).compile()
    devices[cfg.run.run_dir] = [mesh.size, "all-reduce" in compiled.as_text()]
print(json.dumps(devices))
"""


def _losses(run_dir):
    return [(r["step"], [r[k] for k in train.LOSS_TERMS]) for r in runlog.read(run_dir)
            if r["kind"] == "train"]


TINY_PARALLEL = {"steps": 20, "batch_size": 16, "lambda_wasserstein": 0.5,
                 "model.encoder_hidden": (32,), "model.latent_dim": 4, "model.num_codes": 8,
                 "run.log_every": 1, "run.eval_every": 20, "run.checkpoint_every": 20}


def _write_config(path, overrides):
    path.write_text(config.dumps(config.replace(config.from_dict({}), {**TINY_PARALLEL,
                                                                        **overrides})))
    return path


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_four_devices_and_two_hosts_train_like_one_device(tmp_path):
    # The same 20 steps data-parallel over 4 (forced host) devices, over 2 processes x 2 devices
    # joined by jax.distributed, and on 1 device: the Wasserstein term is solved over the global
    # batch, so the losses agree to float32 rounding.
    repo = Path(__file__).parent.parent
    paths = [_write_config(tmp_path / f"{name}.toml", {"run.num_devices": n,
                                                        "run.run_dir": str(tmp_path / name)})
             for name, n in (("four", 0), ("one", 1))]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    single_host = subprocess.Popen([sys.executable, "-c", MULTI_DEVICE_SCRIPT, *map(str, paths)],
                                   env=env, cwd=repo, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    two_hosts_config = _write_config(tmp_path / "hosts.toml", {"run.distributed": True})
    port = _free_port()
    hosts = [subprocess.Popen(
        [sys.executable, "-m", "rqvae.cli", "train", "-c", str(two_hosts_config), "--run-dir",
         str(tmp_path / "hosts"), "-q"], cwd=repo, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
             "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo", "JAX_NUM_PROCESSES": "2",
             "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_PROCESS_ID": str(i)})
        for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in (single_host, *hosts)]
    for process, (_, stderr) in zip((single_host, *hosts), outputs):
        assert process.returncode == 0, stderr[-3000:]
    stdout = outputs[0][0]
    assert "batch_size 10 does not split evenly across 4 devices" in stdout
    devices = json.loads(stdout.strip().splitlines()[-1])
    assert devices == {str(tmp_path / "four"): [4, True], str(tmp_path / "one"): [1, False]}
    assert "final losses" in outputs[1][0] and "final losses" not in outputs[2][0]  # process 0
    one = _losses(tmp_path / "one")
    assert [s for s, _ in one] == list(range(1, 21))
    for run in ("four", "hosts"):
        losses = _losses(tmp_path / run)  # process 0 alone wrote the log: each step once
        assert [s for s, _ in losses] == list(range(1, 21)), run
        for (_, a), (_, b) in zip(losses, one):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    assert (tmp_path / "hosts" / "checkpoints" / "20").is_dir()


# -- the comparator remedies --------------------------------------------------------------------


def test_kmeans_init_fits_the_codebook_to_the_first_batches(tiny_cfg, digits):
    cfg = train.compiled_part(config.replace(tiny_cfg, {"kmeans_init": True,
                                                        "kmeans_init_batches": 2}))
    state = train.init_state(cfg, len(digits.train))
    fitted = train.kmeans_init(train.init_state(cfg, len(digits.train)), digits.train, cfg=cfg)
    images = jnp.asarray(digits.train)  # k-means saw 32 of them
    def level1_error(params):
        _, aux = train.make_model(cfg).apply(params, images)
        return float(jnp.mean((aux["z_e"] - aux["level_codes"][0]) ** 2))

    assert level1_error(fitted.params) < 0.5 * level1_error(state.params)
    # Only the codebook moved.
    np.testing.assert_array_equal(fitted.params["params"]["encoder"]["Dense_0"]["kernel"],
                                  state.params["params"]["encoder"]["Dense_0"]["kernel"])


def test_dead_code_restart_leaves_no_code_unused_past_the_threshold(tiny_cfg, digits):
    threshold = 3
    cfg = train.compiled_part(config.replace(tiny_cfg, {"dead_code_threshold": threshold,
                                                        "lambda_wasserstein": 0.0}))
    state = train.init_state(cfg, len(digits.train))
    state, _ = train.run_steps(state, jnp.asarray(digits.train), 12, cfg=cfg)
    assert int(state.step) == 12
    # Without restarts, codes that start far from the data are never picked (last_used -1).
    assert bool(jnp.all(state.last_used > state.step - 1 - threshold)), state.last_used
