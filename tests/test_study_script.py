"""scripts/dead_code_study.sh --dry-run: the runs each study and METHODS choose, each a valid
config (every variant's keys and values as the CLI reads them), and nothing trained."""

import os
import shlex
import subprocess
from pathlib import Path

from rqvae import cli, config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "dead_code_study.sh"


def _dry_run(tmp_path, *args, **env) -> list[list[str]]:
    out = tmp_path / "study"
    result = subprocess.run(["bash", str(SCRIPT), *args, "--out", str(out), "--dry-run"],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "MNIST": "0", **env})
    assert not out.exists(), "a dry run wrote into the study directory"
    return [shlex.split(line) for line in result.stdout.splitlines()]


def _config(command: list[str]):
    """The config `rqvae train` would train on for this command line, as the CLI builds it."""
    assert command[:2] == ["rqvae", "train"]
    flags = {key.rpartition(".")[2].replace("_", "-"): key for key in cli.TRAIN_FLAGS}
    config_file = run_dir = None
    assignments, overrides = [], {}
    words = iter(command[2:])
    for word in words:
        if word == "--quiet":
            continue
        value = next(words)
        if word == "-c":
            config_file = Path(value)
        elif word == "--run-dir":
            run_dir = Path(value)
        elif word == "--set":
            assignments.append(value)
        else:
            overrides.update(config.parse_assignments([f"{flags[word[2:]]}={value}"]))
    return cli._train_config(config_file, run_dir, assignments, overrides, resume=False)


def test_methods_pick_the_runs_and_each_variant_is_a_valid_config(tmp_path):
    methods = "restart hybrid hybrid-relative-queue hybrid-original hybrid-restart"
    commands = _dry_run(tmp_path, "--quick", METHODS=methods)
    names = [Path(c[c.index("--run-dir") + 1]).name for c in commands]
    assert names == [f"{m}-s0" for m in methods.split()]
    restart, hybrid, queue, original, hybrid_restart = map(_config, commands)
    assert restart.dead_code_threshold > 0 and restart.lambda_wasserstein == 0
    assert (hybrid.sinkhorn_epsilon_mode, hybrid.wasserstein_levels) == ("nearest", 1)
    assert (queue.sinkhorn_epsilon_mode, queue.sinkhorn_epsilon) == ("relative", 0.05)
    assert queue.ot_queue_size == 4 * queue.batch_size and queue.wasserstein_levels == 0
    assert (original.sinkhorn_epsilon_mode, original.sinkhorn_iters) == ("absolute", 20)
    assert original.codebook_loss == "sum" and original.sinkhorn_tolerance == 0
    assert (hybrid_restart.lambda_wasserstein, hybrid_restart.dead_code_threshold) == (0.1, 200)
    assert hybrid_restart.wasserstein_levels == hybrid.wasserstein_levels
    assert {c.steps for c in (restart, hybrid, queue, original, hybrid_restart)} == {1000}


def test_the_large_study_runs_each_setting_and_seed_on_the_patches(tmp_path):
    commands = _dry_run(tmp_path, "--large", METHODS="hybrid", SEEDS="0 1",
                        LARGE_SETTINGS="2x4096 4x1024", STEPS="7")
    configs = [_config(c) for c in commands]
    assert [(c.model.num_levels, c.model.num_codes, c.seed) for c in configs] == [
        (2, 4096, 0), (2, 4096, 1), (4, 1024, 0), (4, 1024, 1)]
    patches = str(tmp_path / "study" / "patches8.npz")
    assert {(c.data.dataset, c.batch_size, c.steps) for c in configs} == {
        (f"npz:{patches}", 256, 7)}
