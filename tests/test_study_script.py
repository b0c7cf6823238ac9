"""scripts/transport_matrix.sh --dry-run: the runs of every cell and method, each a valid config
(every key and value as the CLI reads them), and nothing trained."""

import importlib.util
import os
import shlex
import subprocess
from pathlib import Path

from rqvae import cli_support
from rqvae.trainer import config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "transport_matrix.sh"


def _dry_run(tmp_path, *args, **env) -> list[list[str]]:
    out = tmp_path / "study"
    result = subprocess.run(["bash", str(SCRIPT), *args, "--out", str(out), "--dry-run"],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, **env})
    assert not out.exists(), "a dry run wrote into the study directory"
    return [shlex.split(line) for line in result.stdout.splitlines()]


def _config(command: list[str]):
    """The config `rqvae train` would train on for this command line, as the CLI builds it."""
    assert command[:2] in (["rqvae", "train"], ["python", "scripts/peer_train.py"])
    flags = {flag: key for key, (flag, _) in cli_support.TRAIN_FLAGS.items()}
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
            overrides.update(config.parse_assignments([f"{flags[word]}={value}"]))
    return cli_support.train_config(config_file, run_dir, assignments, overrides, resume=False)


def test_each_cell_trains_its_shape_and_each_method_sets_only_its_own_settings(tmp_path):
    commands = _dry_run(tmp_path)
    commands_of = {tuple(Path(c[c.index("--run-dir") + 1]).parts[-2:]): c for c in commands}
    runs = {key: _config(c) for key, c in commands_of.items()}
    cells = {cell for cell, _ in runs}
    assert cells == {"digits-2x64", "digits-2x256", "patches8-2x1024", "patches8-4x1024",
                     "patches8-2x4096", "patches16-2x512", "patches16-2x1024",
                     "semantic-ids-3x256", "tokens16-2x1024", "tokens16-2x4096",
                     "mnist-tokens-2x1024", "colour8-2x16384", "colour8-2x65536",
                     "colour-tokens-4x2048", "minilm-2x64", "minilm-2x256", "minilm-3x256"}
    for (cell, run), cfg in runs.items():
        m = cfg.model
        assert f"{m.num_levels}x{m.num_codes}" == cell.rpartition("-")[2], (cell, run)
        method = run.rpartition("-s")[0]
        as_hybrid = {"loss.lambda_wasserstein": 0.5, "remedies.dead_code_threshold": 0,
                     "transport.anchor_window": 20, "seed": 0, "run.run_dir": ""}
        weight, window = cfg.loss.lambda_wasserstein, cfg.transport.anchor_window
        if method == "hybrid":  # the flag on the cell's config, nothing else set
            assert weight == 0.5 and window == 20
        elif method == "restart":
            assert (cfg.remedies.dead_code_threshold, weight) == (20, 0.0)
        elif method == "hybrid-every-code":
            assert window == 0 and weight == 0.5
        elif method == "peer":  # the cell's config, trained by scripts/peer_train.py
            assert weight == 0 and commands_of[(cell, run)][:2] == ["python",
                                                                   "scripts/peer_train.py"]
        else:
            assert method == "traditional" and weight == 0
        # Every method of a cell trains the same model on the same data for as long.
        same_cell = [c for (other, _), c in runs.items() if other == cell]
        assert {config.dumps(config.replace(c, as_hybrid)) for c in same_cell} == {
            config.dumps(config.replace(cfg, as_hybrid))}
    # The peer where torch and vector-quantize-pytorch are installed.
    peer = bool(importlib.util.find_spec("torch")
                and importlib.util.find_spec("vector_quantize_pytorch"))
    for cell in cells:  # three seeds, but one for the term as it was
        assert {run for (other, run) in runs if other == cell} == {
            "traditional-s0", "traditional-s1", "traditional-s2", "restart-s0", "restart-s1",
            "restart-s2", "hybrid-s0", "hybrid-s1", "hybrid-s2", "hybrid-every-code-s0",
            *(["peer-s0", "peer-s1", "peer-s2"] if peer else [])}, cell


def test_cells_and_methods_pick_a_subset(tmp_path):
    commands = _dry_run(tmp_path, "--quick", CELLS="semantic-ids-3x256", METHODS="hybrid")
    (cfg,) = map(_config, commands)
    assert (cfg.batch_size, cfg.model.latent_dim, cfg.model.num_levels) == (1024, 32, 3)
    assert cfg.data.dataset.endswith("vectors64.npz") and cfg.steps == 1500
