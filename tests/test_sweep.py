"""`rqvae sweep`: a grid of short runs on CPU, its names, groups and failures, and a resume after
SIGTERM that retrains nothing that finished."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rqvae import sweep
from rqvae.trainer import runlog
from rqvae.trainer.errors import ConfigError

TRAIN = ["--steps", "6", "--set", "run.eval_every=6", "--set", "run.checkpoint_every=3",
         "--set", "run.log_every=3"]


def _sweep(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rqvae.cli", "sweep", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env={**os.environ,
                                                                        "COLUMNS": "80"})


def test_grid_and_seed_arguments():
    assert sweep.parse_grid(["lambda_wasserstein=0,0.5", "data.dataset=digits,npz:x.npz"]) == {
        "lambda_wasserstein": [0, 0.5], "data.dataset": ["digits", "npz:x.npz"]}
    assert sweep.parse_seeds("0,1,2") == [0, 1, 2]
    for bad, message in [(["lambda_wasserstein"], "--grid takes KEY=VALUE"),
                         (["a=1", "a=2"], "given twice"), (["a=1,,2"], "empty value")]:
        with pytest.raises(ConfigError, match=message):
            sweep.parse_grid(bad)
    with pytest.raises(ConfigError, match=r"seeds are set by --seeds \(e.g. --seeds 1,2\)"):
        sweep.parse_grid(["seed=1,2"])
    with pytest.raises(ConfigError, match="--seeds takes integers"):
        sweep.parse_seeds("0,one")
    plan = sweep.Plan(None, {"lambda_wasserstein": [0, 0.5], "model.num_codes": [8]}, [0, 1], [])
    assert [run.name for run in sweep.runs_of(plan)] == [
        "lw0-codes8-seed0", "lw0-codes8-seed1", "lw0.5-codes8-seed0", "lw0.5-codes8-seed1"]


def test_a_sweep_trains_every_run_reports_groups_and_the_failed_ones(tiny_toml, tmp_path):
    # 2 learning rates x 2 seeds; a learning rate of 1e30 diverges at once. A checkpoint every
    # step, so a diverged run keeps its last good one.
    out = tmp_path / "sw"
    result = _sweep("-c", tiny_toml, "--grid", "learning_rate=0.001,1e30", "--seeds", "0,1",
                    "--out", out, "--parallel", 2, *TRAIN, "--set", "run.checkpoint_every=1",
                    cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    # A non-finite loss stops a run in one line that names the step and the last good
    # checkpoint (step 1 is fine; its update sends the loss of step 2 to inf / NaN), which it
    # keeps, and logs no step past it.
    failed = out / "lr1e+30-seed0"
    log = (out / "logs" / "lr1e+30-seed0.log").read_text()
    (line,) = [line for line in log.splitlines() if line.strip()]
    assert "non-finite at step 2 (total, recon" in line and "last good checkpoint: step 1" in line
    assert sorted(int(p.name) for p in (failed / "checkpoints").iterdir()) == [1]
    assert all(r["step"] < 2 for r in runlog.read(failed) if r["kind"] == "train")
    # Six steps leave the others no better than a constant output: the summary says so.
    assert ("2 of 4 runs completed; collapsed (held-out recon no better than a constant "
            "output's): lr0.001-seed0, lr0.001-seed1; failed: lr1e+30-seed0, lr1e+30-seed1"
            in " ".join(result.stderr.split()))
    assert max(map(len, (result.stdout + result.stderr).splitlines())) <= 80
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "logs") == sorted(
        f"lr{lr}-seed{s}" for lr in ("0.001", "1e+30") for s in (0, 1))
    listed = json.loads(subprocess.run([sys.executable, "-m", "rqvae.cli", "report", out,
                                        "--json"], capture_output=True, text=True).stdout)
    status = {s["run"]: (s["status"], s["group"]) for s in listed}
    assert status["lr1e+30-seed1"] == ("failed", "lr1e+30")
    assert status["lr0.001-seed0"] == ("collapsed", "lr0.001")
    # The group's mean and standard deviation are numpy's over its runs' own logs.
    heldout = [[r for r in runlog.read(out / f"lr0.001-seed{s}") if r["kind"] == "eval"]
               [-1]["heldout_recon"] for s in (0, 1)]
    row = next(line for line in result.stdout.splitlines() if "± " in line and "lr0.001" in line)
    mean, std = np.mean(heldout), np.std(heldout, ddof=1)
    decimals = 3 - int(np.floor(np.log10(mean)))  # 4 significant digits, fixed point
    assert f"{mean:.{decimals}f} ± {std:.{decimals}f}" in row


@pytest.mark.parametrize("args, message", [
    (["--bogus-flag", "3"], "a train flag for every run is wrong: No such option: --bogus-flag"),
    (["--steps", "abc"], "Invalid value for '--steps'"),
    (["--run-dir", "foo"], "--run-dir is not for a sweep's runs: --out names the sweep's folder"),
    (["--seed", "3"], "--seed is not for a sweep's runs: use the sweep's --seeds"),
    (["--set", "model.num_codes=0"], "model.num_codes must be >= 1, got 0"),
])
def test_train_flags_for_every_run_are_checked_before_any_starts(tmp_path, args, message):
    result = _sweep("--grid", "lambda_wasserstein=0,0.5", "--out", tmp_path / "sw", *args,
                    cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("error:") == 1, result.stderr
    assert message in " ".join(result.stderr.split())
    assert sorted(tmp_path.iterdir()) == []  # no sweep folder, no ./foo


def test_a_sweep_stopped_by_ctrl_c_saves_its_runs_and_resumes_without_retraining_finished_ones(tiny_toml, tmp_path):
    out = tmp_path / "sw"
    args = ["-c", tiny_toml, "--grid", "lambda_wasserstein=0,0.5", "--seeds", "0", "--out", out,
            *TRAIN]
    process = subprocess.Popen([sys.executable, "-m", "rqvae.cli", "sweep", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path, start_new_session=True)
    first = out / "lw0-seed0"
    deadline = time.time() + 120
    while not (first / "metrics.jsonl").is_file() or not any(
            r["kind"] == "end" for r in runlog.read(first)):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    # Ctrl-C at a terminal: SIGINT to the whole process group, while the second run trains or
    # is about to start. The sweep alone gets it, and passes the run one SIGTERM.
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, err
    assert "continue with the same command and --resume: rqvae sweep" in " ".join(err.split())
    assert "failed" not in err
    stopped = [r for r in runlog.read(out / "lw0.5-seed0") if r["kind"] == "end"] if (
        out / "lw0.5-seed0" / "metrics.jsonl").is_file() else []
    assert all(r["status"] == "interrupted" and "checkpoint saved" in r["reason"]
               for r in stopped)
    finished = (first / "metrics.jsonl").read_bytes()
    result = _sweep(*args, "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (first / "metrics.jsonl").read_bytes() == finished  # not trained again
    assert "2 of 2 runs completed" in " ".join(result.stderr.split())
    second = [r for r in runlog.read(out / "lw0.5-seed0") if r["kind"] == "end"]
    assert second[-1]["status"] == "completed" and second[-1]["step"] == 6
    # Another grid in the same folder is refused, and nothing is written.
    refused = _sweep("-c", tiny_toml, "--grid", "lambda_wasserstein=1", "--out", out, "--resume",
                     *TRAIN, cwd=tmp_path)
    assert refused.returncode == 2 and "holds another sweep" in refused.stderr
