"""Nothing lost: SIGKILL at any moment (a checkpoint save included), SIGINT/SIGTERM, a non-finite
loss and an interrupted save. Each runs the real command in a subprocess."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from rqvae.cli import app
from rqvae.trainer import checkpoint, data, rundir, runlog
from rqvae.trainer.config import load, step_config
from rqvae.trainer.step import init_state
from tests.conftest import TINY_TOML

# A run long enough to be killed mid-way, with a checkpoint every 5 steps.
# The learning rate decays over the last 24 steps, so resumes land before and inside the decay.
FAULT_TOML = TINY_TOML.replace("steps = 30", "steps = 120").replace(
    "checkpoint_every = 15", "checkpoint_every = 10").replace("log_every = 10", "log_every = 5"
    ).replace("decay_fraction = 0.0", "decay_fraction = 0.2")


def _command(*args):
    return [sys.executable, "-m", "rqvae.cli", *map(str, args)]


def _start(config, run_dir, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(_command("train", "-c", config, "--run-dir", run_dir, *extra), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.001)


def _logged_steps(run_dir):
    path = run_dir / runlog.METRICS_FILE
    return [r["step"] for r in runlog.read(run_dir) if r["kind"] == "train"] if path.exists() else []


def _saving(run_dir):
    directory = run_dir / rundir.CHECKPOINT_DIR
    return directory.exists() and any("tmp" in p.name for p in directory.iterdir())


def _complete_checkpoints(run_dir):
    directory = run_dir / rundir.CHECKPOINT_DIR
    return directory.exists() and [p for p in directory.iterdir() if p.name.isdigit()]


def _final_params(run_dir, step):
    cfg = load(run_dir / rundir.CONFIG_FILE)
    like = init_state(step_config(cfg), len(data.load(cfg.data).train))
    with checkpoint.manager(run_dir, 5) as mngr:
        return jax.device_get(checkpoint.restore(mngr, step, like).params)


@pytest.fixture(scope="module")
def fault_setup(tmp_path_factory):
    """The config, and the same run done without interruption (in-process) for reference."""
    root = tmp_path_factory.mktemp("faults")
    config = root / "fault.toml"
    config.write_text(FAULT_TOML)
    reference = root / "reference"
    result = CliRunner().invoke(app, ["train", "-c", str(config), "--run-dir", str(reference)])
    assert result.exit_code == 0, result.output
    return config, reference


def _assert_same_as_reference(run_dir, reference, same_schedule=True):
    jax.tree.map(np.testing.assert_array_equal, _final_params(run_dir, 120),
                 _final_params(reference, 120))
    keys = _measured(run_dir)
    assert len(keys) == len(set(keys))  # every record once
    if same_schedule:
        assert keys == _measured(reference)
    assert [r["total"] for r in runlog.read(run_dir) if r["kind"] == "train"] == \
        [r["total"] for r in runlog.read(reference) if r["kind"] == "train"]


def _measured(run_dir):
    """The train and eval records' (kind, step); resume and end records mark the interruptions."""
    return [(r["kind"], r["step"]) for r in runlog.read(run_dir) if r["kind"] in ("train", "eval")]


def _resume_in_process(run_dir):
    result = CliRunner().invoke(app, ["train", "--resume", "--run-dir", str(run_dir), "-q"])
    assert result.exit_code == 0, result.output


def test_sigkill_during_a_save_and_between_steps_then_resume_is_bitwise_identical(
        fault_setup, tmp_path):
    config, reference = fault_setup
    run_dir = tmp_path / "run"
    process = _start(config, run_dir)
    # A run killed before its first checkpoint completes has nothing to resume (exit 2, tested
    # in test_cli), so wait for one complete checkpoint and a second save under way.
    _wait_for(lambda: _complete_checkpoints(run_dir) and _saving(run_dir), process)
    process.send_signal(signal.SIGKILL)  # while a checkpoint is being written
    process.communicate()
    assert any("tmp" in p.name for p in (run_dir / "checkpoints").iterdir())
    killed_at = _logged_steps(run_dir)[-1]

    process = subprocess.Popen(_command("train", "--resume", "--run-dir", run_dir),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _logged_steps(run_dir)[-1] >= killed_at + 20, process)
    process.send_signal(signal.SIGKILL)  # between steps, records past the checkpoint on disk
    process.communicate()

    _resume_in_process(run_dir)
    assert not any("tmp" in p.name for p in (run_dir / "checkpoints").iterdir())
    _assert_same_as_reference(run_dir, reference)


def test_sigterm_and_sigint_save_a_checkpoint_and_say_how_to_resume(fault_setup, tmp_path):
    config, reference = fault_setup
    run_dir = tmp_path / "run"
    process = _start(config, run_dir)
    for signum, code in [(signal.SIGTERM, 143), (signal.SIGINT, 130)]:
        logged = len(_logged_steps(run_dir))
        _wait_for(lambda: len(_logged_steps(run_dir)) >= logged + 2, process)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == code, stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"rqvae train --resume --run-dir {run_dir}" in lines[0]
        saved = checkpoint.latest_step(run_dir)
        assert saved is not None and saved >= _logged_steps(run_dir)[-1]
        if signum == signal.SIGTERM:
            process = subprocess.Popen(_command("train", "--resume", "--run-dir", run_dir),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _resume_in_process(run_dir)
    _assert_same_as_reference(run_dir, reference)


def test_left_over_temporary_checkpoint_is_ignored_and_cleaned(fault_setup, tmp_path):
    config, reference = fault_setup
    run_dir = tmp_path / "run"
    # As if killed while saving step 110, inside the learning rate's decay: its checkpoints
    # after step 100 gone, a temporary one left.
    shutil.copytree(reference, run_dir)
    for saved in (run_dir / "checkpoints").iterdir():
        if int(saved.name) > 100:
            shutil.rmtree(saved)
    junk = run_dir / "checkpoints" / "110.orbax-checkpoint-tmp-1700000000000000"
    junk.mkdir()
    (junk / "partial").write_bytes(b"\0" * 10)
    assert checkpoint.latest_step(run_dir) == 100
    _resume_in_process(run_dir)
    assert not junk.exists()
    _assert_same_as_reference(run_dir, reference)


def test_a_disk_without_room_for_a_checkpoint_stops_the_run_in_one_line(tmp_path,
                                                                         monkeypatch):
    # A full disk: 300 kB free, where a checkpoint of the tiny run takes over 1 MB.
    real = shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=300_000))
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    result = CliRunner().invoke(app, ["train", "-c", str(tmp_path / "tiny.toml"), "--run-dir",
                                      str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    line = " ".join(result.output.split("error: ")[-1].split())
    assert line.startswith("cannot save the checkpoint at step 15: ") and (
        "has 0.3 MiB free and a checkpoint needs" in line and "last good checkpoint: none yet"
        in line), line
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    assert checkpoint.all_steps(tmp_path / "run") == []
    (end,) = [r for r in runlog.read(tmp_path / "run") if r["kind"] == "end"]
    assert end["status"] == "failed" and end["step"] == 15


def _flip_bits(checkpoint_dir):
    for data_file in (checkpoint_dir / "default").rglob("d/*"):
        raw = bytearray(data_file.read_bytes())
        raw[16::7] = bytes(b ^ 0xFF for b in raw[16::7])
        data_file.write_bytes(bytes(raw))


def test_a_corrupt_newest_checkpoint_is_named_and_set_aside_and_the_run_resumes_bitwise(
        fault_setup, tmp_path):
    config, reference = fault_setup
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)  # checkpoints at 100, 110 and 120 (keep 5: 80-120)
    _flip_bits(run_dir / "checkpoints" / "120")
    evaluated = CliRunner().invoke(app, ["eval", str(run_dir)])
    assert evaluated.exit_code == 2 and evaluated.output.count("\n") == 1, evaluated.output
    assert ("the checkpoint at step 120 of" in evaluated.output
            and "pass --step with another of its checkpoints: 80, 90, 100, 110"
            in " ".join(evaluated.output.split()))
    # --step picks an earlier one; the newer ones are set aside, kept.
    refused = CliRunner().invoke(app, ["train", "--resume", "--run-dir", str(run_dir),
                                       "--step", 95])
    assert refused.exit_code == 2 and "has no checkpoint at step 95; it has 80, 90, 100, 110, " \
        "120" in " ".join(refused.output.split())
    result = CliRunner().invoke(app, ["train", "--resume", "--run-dir", str(run_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert "set aside the checkpoint at step 120 (does not read back: " in result.output
    assert sorted(p.name for p in (run_dir / rundir.SET_ASIDE_DIR).iterdir()) == ["120"]
    _assert_same_as_reference(run_dir, reference)
    # --step picks an earlier checkpoint; the newer ones are set aside too, and kept.
    earlier = tmp_path / "earlier"
    shutil.copytree(reference, earlier)
    result = CliRunner().invoke(app, ["train", "--resume", "--run-dir", str(earlier), "-q",
                                      "--step", 100])
    assert result.exit_code == 0, result.output
    assert "set aside the checkpoint at step 110 (newer than --step)" in " ".join(
        result.output.split())
    assert sorted(p.name for p in (earlier / rundir.SET_ASIDE_DIR).iterdir()) == ["110", "120"]
    _assert_same_as_reference(earlier, reference)


def test_a_multi_host_run_without_a_coordinator_is_one_line_and_writes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "SLURM"))}
    result = subprocess.run(_command("train", "--steps", "2", "--run-dir", tmp_path / "run"),
                            env={**env, "RQVAE_DISTRIBUTED": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: could not join a multi-host run") and "JAX_COORDINATOR_ADDRESS" in line
    assert not (tmp_path / "run").exists()


# A step of about a second on 2 cores: a call of the default 100 steps would last minutes.
SLOW_TOML = """\
steps = 1000
batch_size = 1024
[model]
encoder_hidden = [2048, 2048]
latent_dim = 8
num_codes = 8
[run]
log_every = 1
eval_every = 1000
checkpoint_every = 1000
"""


def test_signals_act_within_a_step_or_two_of_a_slow_run(tmp_path):
    config = tmp_path / "slow.toml"
    config.write_text(SLOW_TOML)
    # Once: the run stops after the step under way, with a checkpoint there.
    run_dir = tmp_path / "once"
    process = _start(config, run_dir)
    _wait_for(lambda: len(_logged_steps(run_dir)) >= 3, process, timeout=300)
    signalled_at = _logged_steps(run_dir)[-1]
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr
    assert "SIGTERM: stopping once the steps under way end" in stdout
    saved = checkpoint.latest_step(run_dir)
    assert signalled_at < saved <= signalled_at + 3, (signalled_at, saved)
    assert runlog.read(run_dir)[-1]["status"] == "interrupted"
    # Twice: the run quits at once without saving and names the checkpoint it keeps (none).
    run_dir = tmp_path / "twice"
    process = _start(config, run_dir)
    _wait_for(lambda: len(_logged_steps(run_dir)) >= 3, process, timeout=300)
    signalled_at = _logged_steps(run_dir)[-1]
    process.send_signal(signal.SIGINT)
    while "SIGINT: stopping once the steps under way end" not in process.stdout.readline():
        pass  # the first one is taken, and the step under way goes on: now the second
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    (line,) = [line for line in stderr.splitlines() if line.strip()]
    assert "SIGINT twice" in line and "last checkpoint: none yet" in line
    assert checkpoint.latest_step(run_dir) is None
    assert _logged_steps(run_dir)[-1] <= signalled_at + 3
