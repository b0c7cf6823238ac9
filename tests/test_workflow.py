"""The GPU-box workflow's pieces that need no training: presets from any directory, automatic
run names from the settings a command changes, run names whole in tables."""

import json
import re
import tomllib
from pathlib import Path

import pytest
from synthetic_runs import make_run, plain, tiny_cfg, train_record
from typer.testing import CliRunner

from rqvae import cli, cli_support
from rqvae.reports.runs import load_run
from rqvae.trainer import config, launch, names, presets, runlog
from rqvae.trainer.errors import ConfigError, UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()


def test_presets_ship_with_the_package_and_load_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    listed = dict(presets.listing())
    assert set(listed) == {p.stem for p in CONFIGS.glob("*.toml")}
    for name in ("hybrid", "hybrid.toml"):
        cfg = cli_support.train_config(Path(name), None, [], {}, resume=False)
        assert cfg == config.load(CONFIGS / "hybrid.toml")
    result = runner.invoke(cli.app, ["configs"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == len(listed) and all(len(line) <= 80 for line in lines)
    assert any(re.match(r"hybrid\s+\S", line) for line in lines)
    with pytest.raises(UserError, match="not found; pass a TOML file or a preset: cifar10-tokens, "):
        cli_support.train_config(Path("nonesuch"), None, [], {}, resume=False)


def test_each_preset_states_its_purpose_on_its_first_line():
    for path in CONFIGS.glob("*.toml"):
        first = path.read_text().splitlines()[0]
        # `rqvae configs` prints it after the names (up to 14 columns and 2 spaces): 80 in all
        assert first.startswith("# ") and first.endswith(".") and len(first) <= 66, path.name
        assert tomllib.loads(path.read_text()) is not None


def test_run_names_carry_the_settings_the_command_changed():
    changed = {"loss.lambda_wasserstein": 0.1, "model.num_codes": 1024, "run.log_every": 5,
               "data.dataset": "npz:/data/sets/patches8.npz", "transport.encoder_grad": True,
               "model.encoder_hidden": [512, 256]}
    assert names.run_name("hybrid", changed) == "hybrid-lw0.1-codes1024-datapatches8-encon"
    assert names.run_name("default", {}) == "default"


def test_train_names_its_run_from_the_config_and_the_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = {}

    def open_run(cfg, *, name, resume, resume_step=None):
        seen["name"] = name
        raise ConfigError("stopped before training")

    monkeypatch.setattr(launch, "open_run", open_run)
    result = runner.invoke(cli.app, ["train", "-c", "hybrid", "--lambda-wasserstein", "0.1",
                                     "--set", "model.num_codes=1024"])
    assert result.exit_code == 2 and seen["name"] == "hybrid-lw0.1-codes1024"
    runner.invoke(cli.app, ["train", "-c", "hybrid", "--lambda-wasserstein", "0.5"])
    assert seen["name"] == "hybrid"  # the preset's own value: nothing changed


def test_run_names_are_never_broken_across_lines_in_the_comparison(tmp_path):
    long_names = ["hybrid-lw0.1-codes1024-eps0.1-seed2-20261205-090000",
                  "traditional-codes1024-eps0.1-seed2-20261205-090001"]
    runs = [load_run(make_run(tmp_path, name, tiny_cfg(seed=i)))
            for i, name in enumerate(long_names)]
    text = plain(runs, 80)
    for name in long_names:
        assert text.count(name) >= 2, name  # whole, in the settings table and the results
    assert max(map(len, text.splitlines())) <= 80


def _events(folder):
    """Every scalar of the event files in `folder`: {tag: [(step, value)]}, read back through
    tensorboardX's own record format and protos."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_export_holds_every_logged_value(tmp_path):
    run_dir = make_run(tmp_path, "hybrid-run", tiny_cfg(lambda_wasserstein=0.5))
    result = runner.invoke(cli.app, ["export", str(run_dir), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    scalars = _events(tmp_path / "tb" / "hybrid-run")
    records = runlog.read(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert scalars["loss/total"] == [(r["step"], pytest.approx(r["total"])) for r in train]
    assert scalars["level2/window_dead"] == [(r["step"], r["window_dead"][1]) for r in train]
    assert scalars["eval/heldout_recon"] == [(r["step"], pytest.approx(r["heldout_recon"]))
                                             for r in evals]
    assert scalars["level1/train_dead"] == [(r["step"], r["train_dead"][0]) for r in evals]
    # Exported again after the run logged more: only the new records are added, once each.
    with open(run_dir / "metrics.jsonl", "a") as log:
        log.write(json.dumps(train_record(50, 0.5, 0.3, 0.03, 0.1, 0.02)) + "\n")
    again = runner.invoke(cli.app, ["export", str(run_dir), "--tensorboard", str(tmp_path / "tb")])
    new = len(runlog.LOSS_TERMS) + 2 * len(runlog.TRAIN_PER_LEVEL)  # one train record, 2 levels
    assert again.exit_code == 0 and f"wrote {new} new values of 1 runs" in " ".join(
        again.output.split()) and "(pip install tensorboard)" in again.output
    grown = _events(tmp_path / "tb" / "hybrid-run")
    assert grown["loss/total"] == [*scalars["loss/total"], (50, pytest.approx(0.5))]
    assert grown["eval/heldout_recon"] == scalars["eval/heldout_recon"]
    # A folder with event files another program wrote is refused.
    (tmp_path / "other" / "hybrid-run").mkdir(parents=True)
    (tmp_path / "other" / "hybrid-run" / "events.out.tfevents.1.host").write_bytes(b"")
    refused = runner.invoke(cli.app, ["export", str(run_dir), "--tensorboard",
                                      str(tmp_path / "other")])
    assert refused.exit_code == 2 and "that rqvae export did not write" in refused.output


@pytest.mark.parametrize("command", ["train", "sweep", "report", "eval", "encode", "plot",
                                     "export", "configs"])
def test_help_fits_80_columns(command):
    result = runner.invoke(cli.app, [command, "--help"], terminal_width=80)
    assert result.exit_code == 0
    assert max(map(len, result.output.splitlines())) <= 80, result.output
    if command == "train":  # each named flag says its default
        assert "Default: the config's value (0.0 without" in " ".join(result.output.split())
