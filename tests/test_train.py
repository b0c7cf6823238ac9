"""The run loop and devices: one compilation per run, calls sized to the step time, data-parallel
and multi-host runs that train like one device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from rqvae.trainer import config, launch, runlog
from rqvae.trainer import loop as train
from rqvae.trainer.runlog import LOSS_TERMS

# -- the compiled loop and devices --------------------------------------------------------------

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_lowered: list[str] | None = None  # function names lowered while a test is counting


def _count_lowering(event, _duration, fun_name="", **_):
    if _lowered is not None and event == LOWERING_EVENT:
        _lowered.append(fun_name)


jax.monitoring.register_event_duration_secs_listener(_count_lowering)


def _fit(cfg, resume=False):
    from rich.console import Console

    from rqvae.trainer.progress import Display

    run = launch.open_run(cfg, name="t", resume=resume)
    display = Display(cfg.batch_size, Console(quiet=True), quiet=True)
    try:
        return train.fit(run, display=display)
    finally:
        run.lock.release()


def test_a_run_compiles_its_train_loop_once(tiny_cfg, tmp_path):
    global _lowered
    # Calls of 1, 1, 4, 1, 4, 3, ... steps (one until a step is timed, then at most 4 per call,
    # a log every 7): one program for them all. A fresh seed makes it a program no other test
    # compiled.
    cfg = config.replace(tiny_cfg, {"seed": 4242, "run.steps_per_call": 4, "run.log_every": 7,
                                    "run.run_dir": str(tmp_path / "run"), "steps": 20})
    calls = train._CallSize(cfg)
    assert calls.end(0) == 1
    calls.timed(1, 1e-4)
    assert calls.end(2) == 6 and calls.end(4) == 7
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
import jax.numpy as jnp
from rqvae.trainer import config, data, devices, launch, step
from rqvae.trainer.errors import ConfigError
from tests.test_train import _fit
try:
    devices.make_mesh(config.replace(config.load(sys.argv[1]), {"batch_size": 10}))
except ConfigError as err:
    print(err)
meshes = {}
for path in sys.argv[1:]:
    cfg = config.load(path)
    _fit(cfg)
    mesh = devices.make_mesh(cfg)  # the program fit ran, looked up again: was it partitioned?
    train_images = data.load(cfg.data).train
    step_cfg = config.step_config(launch.with_data_shape(cfg, data.load(cfg.data)))
    compiled = step.run_steps.lower(  # with the arguments fit passes: its program, cached
        devices.replicate(step.init_state(step_cfg, len(train_images)), mesh),
        devices.replicate(train_images, mesh), 1, jnp.bool_(True), jnp.int32(cfg.steps),
        cfg=step_cfg, batch_sharding=devices.batch_sharding(mesh)).compile()
    meshes[cfg.run.run_dir] = [mesh.size, "all-reduce" in compiled.as_text()]
print(json.dumps(meshes))
"""


def _losses(run_dir):
    return [(r["step"], [r[k] for k in LOSS_TERMS]) for r in runlog.read(run_dir)
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
    flags = os.environ.get("XLA_FLAGS", "")  # the suite's (conftest), then the devices
    env = {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=4"}
    single_host = subprocess.Popen([sys.executable, "-c", MULTI_DEVICE_SCRIPT, *map(str, paths)],
                                   env=env, cwd=repo, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    two_hosts_config = _write_config(tmp_path / "hosts.toml", {"run.distributed": True})
    port = _free_port()
    hosts = [subprocess.Popen(
        [sys.executable, "-m", "rqvae.cli", "train", "-c", str(two_hosts_config), "--run-dir",
         str(tmp_path / "hosts"), "-q"], cwd=repo, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=2",
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
    # Process 0 alone prints the (quiet, one-line) summary.
    assert "next: rqvae report" in outputs[1][0] and "next: rqvae report" not in outputs[2][0]
    one = _losses(tmp_path / "one")
    assert [s for s, _ in one] == list(range(1, 21))
    for run in ("four", "hosts"):
        losses = _losses(tmp_path / run)  # process 0 alone wrote the log: each step once
        assert [s for s, _ in losses] == list(range(1, 21)), run
        for (_, a), (_, b) in zip(losses, one):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    assert (tmp_path / "hosts" / "checkpoints" / "20").is_dir()


