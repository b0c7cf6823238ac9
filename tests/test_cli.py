"""End-to-end runs of the `rqvae` command through Typer's CliRunner, on the tiny config."""

import ast
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from rqvae.cli import app
from rqvae.trainer import checkpoint, data, runlog
from rqvae.trainer.config import load, step_config
from rqvae.trainer.errors import ConfigError
from rqvae.trainer.step import init_state

runner = CliRunner()


def rqvae(*args):
    return runner.invoke(app, [str(a) for a in args])


def _params_at(run_dir, step):
    cfg = load(run_dir / "config.toml")
    like = init_state(step_config(cfg), len(data.load(cfg.data).train))
    with checkpoint.manager(run_dir, 5) as mngr:
        return jax.device_get(checkpoint.restore(mngr, step, like))


def _keys(run_dir):
    return [(r["kind"], r["step"]) for r in runlog.read(run_dir)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """30 steps of the tiny config in one go; checkpoints at 15 and 30."""
    from tests.conftest import TINY_TOML

    root = tmp_path_factory.mktemp("full")
    (root / "tiny.toml").write_text(TINY_TOML)
    result = rqvae("train", "-c", root / "tiny.toml", "--run-dir", root / "run")
    assert result.exit_code == 0, result.output
    return root / "run", result.output


def test_train_writes_config_log_and_checkpoints(full_run):
    run_dir, output = full_run
    assert "rqvae report" in output and "final losses" in output
    assert load(run_dir / "config.toml").loss.lambda_wasserstein == 0.5
    assert _keys(run_dir) == [("train", 10), ("eval", 15), ("train", 20), ("train", 30),
                              ("eval", 30), ("end", 30)]
    assert runlog.read(run_dir)[-1]["status"] == "completed"
    record = runlog.read(run_dir)[-3]
    assert set(runlog.LOSS_TERMS) <= set(record) and record["wasserstein"] > 0
    assert (len(record["batch_used"]) == len(record["window_dead"])
            == len(record["batch_perplexity"]) == 2)
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()) == [15, 30]


def test_report_shows_the_run_and_json_agrees(full_run):
    run_dir, _ = full_run
    result = rqvae("report", run_dir)
    assert result.exit_code == 0, result.output
    assert run_dir.name in result.output
    result = rqvae("report", run_dir, "--json")
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.output)
    last_train = [r for r in runlog.read(run_dir) if r["kind"] == "train"][-1]
    assert summary["final"]["total"] == pytest.approx(last_train["total"])


def test_resume_continues_bitwise_and_logs_every_step_once(full_run, tiny_toml, tmp_path):
    full_dir, _ = full_run
    run_dir = tmp_path / "run"
    assert rqvae("train", "-c", tiny_toml, "--run-dir", run_dir, "--steps", 15).exit_code == 0
    result = rqvae("train", "--resume", "--run-dir", run_dir, "--steps", 30)
    assert result.exit_code == 0, result.output
    jax.tree.map(np.testing.assert_array_equal, _params_at(run_dir, 30), _params_at(full_dir, 30))
    full = {(r["kind"], r["step"]): r for r in runlog.read(full_dir)}
    resumed = {(r["kind"], r["step"]): r for r in runlog.read(run_dir)}
    assert len(resumed) == len(_keys(run_dir))  # nothing logged twice
    for key in [("train", 20), ("train", 30), ("eval", 30)]:
        assert resumed[key]["total" if key[0] == "train" else "heldout_recon"] == \
            full[key]["total" if key[0] == "train" else "heldout_recon"]


def test_a_run_with_a_retired_setting_evaluates_but_does_not_resume(full_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(full_run[0], run_dir)
    config_path = run_dir / "config.toml"
    config_path.write_text('codebook_loss = "sum"\n' + config_path.read_text())
    before = _snapshot(run_dir)
    result = rqvae("train", "--resume", "--run-dir", run_dir, "--steps", 45)
    assert result.exit_code == 2
    assert "trained with codebook_loss = 'sum', which this version no longer has" in result.output
    assert _snapshot(run_dir) == before
    result = rqvae("eval", run_dir)
    assert result.exit_code == 0, result.output


def test_a_resumed_run_that_reanchors_codes_is_bitwise_the_uninterrupted_one(tiny_toml,
                                                                            tmp_path):
    # 64 codes from batches of 16 and a window of 5 steps: codes are re-anchored at every step
    # from step 4 on, on both sides of the resume at step 6.
    anchoring = ["--set", "model.num_codes=64", "--set", "transport.anchor_window=5"]
    assert rqvae("train", "-c", tiny_toml, "--run-dir", tmp_path / "full", "--steps", 12,
                 *anchoring).exit_code == 0
    assert rqvae("train", "-c", tiny_toml, "--run-dir", tmp_path / "run", "--steps", 6,
                 *anchoring).exit_code == 0
    result = rqvae("train", "--resume", "--run-dir", tmp_path / "run", "--steps", 12)
    assert result.exit_code == 0, result.output
    resumed, full = _params_at(tmp_path / "run", 12), _params_at(tmp_path / "full", 12)
    jax.tree.map(np.testing.assert_array_equal, resumed, full)


def test_resume_drops_records_written_after_the_last_checkpoint(full_run, tmp_path):
    full_dir, _ = full_run
    run_dir = tmp_path / "run"
    shutil.copytree(full_dir, run_dir)
    # As if killed after logging step 30 but before its checkpoint was finalized.
    shutil.rmtree(run_dir / "checkpoints" / "30")
    result = rqvae("train", "--resume", "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert "resuming from the checkpoint at step 15" in result.output
    expected = _keys(full_dir)
    expected.insert(expected.index(("eval", 15)) + 1, ("resume", 15))
    assert _keys(run_dir) == expected
    jax.tree.map(np.testing.assert_array_equal, _params_at(run_dir, 30), _params_at(full_dir, 30))


def test_a_resume_that_lengthens_a_decaying_run_says_the_decay_moved(full_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(full_run[0], run_dir)  # a 30-step run at a constant rate: steps free
    config_path = run_dir / "config.toml"
    config_path.write_text(config_path.read_text().replace("decay_fraction = 0.0",
                                                           "decay_fraction = 0.2"))
    result = rqvae("train", "--resume", "--run-dir", run_dir, "--steps", 35)
    assert result.exit_code == 0, result.output
    assert ("changed on resume: steps 30 -> 35 (the learning rate now decays over the last 20% "
            "of 35 steps)") in " ".join(result.output.split())
    resumes = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert resumes[-1]["changed"] == {"steps": [30, 35]}


def test_a_resume_records_what_it_changed_and_one_without_a_checkpoint_starts_over(full_run,
                                                                                   tmp_path):
    run_dir, _ = full_run
    fresh = tmp_path / "fresh"  # a run killed before its first checkpoint
    fresh.mkdir()
    (fresh / "config.toml").write_text((run_dir / "config.toml").read_text())
    (fresh / "metrics.jsonl").write_text('{"kind":"train","step":10,"time":1.0}\n')
    # A changed setting the step does not compile on, so the restart reuses full_run's programs.
    result = rqvae("train", "--resume", "--run-dir", fresh, "--set", "run.keep_checkpoints=4",
                   "--steps", 15, "--quiet")
    assert result.exit_code == 0, result.output
    # Said even with --quiet: the run does not continue where the user may think.
    assert "no complete checkpoint yet: starting again from step 0" in result.output
    assert load(fresh / "config.toml").run.keep_checkpoints == 4
    resumes = [json.loads(line) for line in (fresh / "resumes.jsonl").read_text().splitlines()]
    assert [(r["step"], r["changed"]) for r in resumes] == [
        (0, {"run.keep_checkpoints": [5, 4]})]
    records = runlog.read(fresh)
    assert records[0] == {"kind": "resume", "step": 0, "time": records[0]["time"],
                          "changed": {"run.keep_checkpoints": [5, 4]}}
    assert _keys(fresh)[1:] == [("train", 10), ("train", 15), ("eval", 15), ("end", 15)]


def _snapshot(path):
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


BAD_INPUTS = [
    (["--lambda-wasserstein", -1], "loss.lambda_wasserstein must be a finite number >= 0"),
    (["--lambda-wasserstein", "inf"], "loss.lambda_wasserstein must be a finite number >= 0"),
    (["--sinkhorn-epsilon", 0], "transport.epsilon must be a finite number > 0"),
    (["--batch-size", 100000], "batch_size 100000 is larger than the training split"),
    (["--dataset", "imagenet"], "unknown data set 'imagenet'"),
    (["-c", "{tmp}/missing.toml"], "not found"),
    (["-c", "{tmp}/typo.toml"], "did you mean 'loss.lambda_wasserstein'"),
    (["-c", "{tmp}/broken.toml"], "line 1"),
    (["-c", "{tmp}/iters.toml"], "transport.iters must be >= 1, got 0"),
    (["-c", "{tmp}/levels.toml"], "model.num_levels must be >= 1, got 0"),
    (["-c", "{tmp}/codes.toml"], "model.num_codes must be >= 1, got 0"),
    (["-c", "{tmp}/type.toml"], "steps must be int, got str '100'"),
    (["--run-dir", "{tmp}/afile"], "is a file, not a directory"),
    (["--run-dir", "{tmp}/afile/run"], "afile is a file"),
    (["-c", "{tmp}"], "is a directory; pass a TOML file"),
    (["-c", "{tmp}/wide.toml", "--resume", "--run-dir", "{run}"],
     "cannot change the model's shape (model.num_codes: 8 -> 16)"),
    (["--run-dir", "{run}"], "already holds a run; pass --resume"),
    (["--resume", "--run-dir", "{tmp}/empty"], "holds no run to resume"),
    (["--run-dir", "{tmp}/notes"], "holds other files and no run; choose a new or empty"),
    (["-c", "nonesuch"], "config file nonesuch not found; pass a TOML file or a preset"),
    (["--resume", "--run-dir", "{run}"], "already reached step 30; pass --steps larger than 30"),
    (["--set", "num_codes"], "--set takes KEY=VALUE"),
    (["--set", "ot_queue_size=20"], "ot_queue_size = 20 is no longer a setting"),
    (["--set", "num_codes=4"], "unknown config key 'num_codes'; did you mean 'model.num_codes'?"),
    (["--set", "run.num_devices=64"], "run.num_devices is 64 but only 1 cpu devices are visible"),
    (["--steps", 10**12], "steps must be at most 2,147,483,647 (a 32-bit integer on the device)"),
    (["--set", "transport.anchor_window=3000000000"], "transport.anchor_window must be at most"),
    (["--set", "model.num_codes=1000000000"],
     "this run needs more than a device's"),  # which would hang in allocation
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(full_run, tmp_path, monkeypatch, args,
                                                          message):
    run_dir, _ = full_run
    monkeypatch.chdir(tmp_path)  # where a default runs/<name> directory would appear
    (tmp_path / "typo.toml").write_text("lambda_wasserstien = 1.0\n")
    (tmp_path / "broken.toml").write_text("steps = = 3\n")
    (tmp_path / "wide.toml").write_text(
        (run_dir / "config.toml").read_text().replace("num_codes = 8", "num_codes = 16"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "iters.toml").write_text("[transport]\niters = 0\n")
    (tmp_path / "levels.toml").write_text("[model]\nnum_levels = 0\n")
    (tmp_path / "codes.toml").write_text("[model]\nnum_codes = 0\n")
    (tmp_path / "type.toml").write_text('steps = "100"\n')
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    before = _snapshot(run_dir)
    others = _snapshot(tmp_path)
    args = [str(a).format(tmp=tmp_path, run=run_dir) for a in args]
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    assert _snapshot(run_dir) == before and _snapshot(tmp_path) == others
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "empty").iterdir())


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "no metrics.jsonl"),
    (lambda d: (d.mkdir(), (d / "config.toml").write_text("steps = 3\n")), "no metrics.jsonl"),
])
def test_report_on_a_bad_dir(tmp_path, make, message):
    make(tmp_path / "run")
    result = rqvae("report", tmp_path / "run")
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_eval_matches_the_runs_last_evaluation(full_run):
    run_dir, _ = full_run
    result = rqvae("eval", run_dir, "--json")
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.output)
    last_eval = [r for r in runlog.read(run_dir) if r["kind"] == "eval"][-1]
    assert evaluated["step"] == 30
    assert evaluated["heldout_recon"] == pytest.approx(last_eval["heldout_recon"], rel=1e-5)
    assert evaluated["heldout_psnr"] == pytest.approx(-10 * np.log10(last_eval["heldout_recon"]),
                                                 rel=1e-4)
    assert rqvae("eval", run_dir, "--step", 15).exit_code == 0
    result = rqvae("eval", run_dir, "--step", 7)
    assert result.exit_code == 2 and "no checkpoint at step 7" in result.output


def test_encode_writes_the_codes_of_a_split_and_never_overwrites(full_run, tmp_path):
    run_dir, _ = full_run
    out = tmp_path / "codes.npy"
    result = rqvae("encode", run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    codes = np.load(out)
    last_eval = [r for r in runlog.read(run_dir) if r["kind"] == "eval"][-1]
    assert codes.shape == (1438, 2) and codes.dtype == np.int32
    assert [len(np.unique(level)) for level in codes.T] == last_eval["train_used"]
    before = out.read_bytes()
    result = rqvae("encode", run_dir, "--out", out, "--split", "heldout")
    assert result.exit_code == 2 and "--force" in result.output and out.read_bytes() == before
    assert rqvae("encode", run_dir, "--out", out, "--split", "heldout", "--force").exit_code == 0
    assert np.load(out).shape == (359, 2)


def test_plot_writes_the_pictures_of_a_run(full_run, tmp_path):
    from PIL import Image

    run_dir, _ = full_run
    result = rqvae("plot", run_dir, "--out", tmp_path / "plots")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["code_use.png", "codebooks.png", "losses.png", "reconstructions.png"]
    for name in names:
        pixels = np.asarray(Image.open(tmp_path / "plots" / name).convert("L"))
        assert pixels.shape[0] > 100 and pixels.std() > 5  # a picture, not a blank
    result = rqvae("plot", run_dir, run_dir, "--out", tmp_path / "compare", "--log")
    assert result.exit_code == 0 and sorted(p.name for p in (tmp_path / "compare").iterdir()) == [
        "dead_codes.png", "losses.png"]


def test_plot_without_matplotlib_names_the_extra(full_run, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = rqvae("plot", full_run[0], "--out", tmp_path / "plots")
    assert result.exit_code == 2 and "pip install 'rqvae[plot]'" in result.output


def test_plot_refuses_what_it_cannot_draw_or_write_in_one_line(full_run, tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.toml").write_text((full_run[0] / "config.toml").read_text())
    (empty / "metrics.jsonl").write_text("")
    result = rqvae("plot", empty, "--out", tmp_path / "plots")
    assert result.exit_code == 2 and "crashed" in result.output
    assert not (tmp_path / "plots").exists()
    result = rqvae("plot", full_run[0], "--out", "/proc/plots")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "choose another --out" in " ".join(result.output.split())


def test_verbose_prints_the_resolved_config_and_quiet_prints_only_the_summary(tiny_toml, tmp_path):
    verbose = rqvae("train", "-c", tiny_toml, "--run-dir", tmp_path / "v", "--steps", 10, "-v",
                    "--set", "run.log_every=5", "--set", "steps=20")  # --steps wins over --set
    assert verbose.exit_code == 0, verbose.output
    assert "[model]" in verbose.output and "num_codes = 8" in verbose.output
    assert "log_every = 5" in verbose.output and "steps = 10" in verbose.output
    assert "step 5/10" in verbose.output and "step 10/10" in verbose.output
    quiet = rqvae("train", "-c", tiny_toml, "--run-dir", tmp_path / "q", "--steps", 10, "-q")
    assert quiet.exit_code == 0 and "step 10/10" not in quiet.output
    # One line: where the run got, its dead codes and what to run next.
    (line,) = quiet.output.strip().splitlines()
    # (Ten steps leave the tiny model no better than a constant output, and the line says so.)
    assert re.match(r"run q: step 10, total \S+, dead \(train split\) \d+ / \d+, heldout recon "
                    r"\S+(; collapsed: held-out recon .*)?; next: rqvae report ", line), line


def test_report_options_last_every_csv_and_a_parent_dir(full_run):
    run_dir, _ = full_run
    result = rqvae("report", run_dir, "--last", 1)
    assert result.exit_code == 0, result.output
    history = result.output.split("losses over the run")[1].split("codebook health over")[0]
    assert "│   30 │" in history and "│   10 │" not in history
    assert "trends over all" not in result.output  # --last: the chosen steps alone
    assert "trends over all" in rqvae("report", run_dir).output
    csv_text = rqvae("report", run_dir.parent, "--csv").output  # the parent holds this one run
    rows = list(csv.DictReader(io.StringIO(csv_text)))  # 3 train records and 2 evals
    assert [(row["kind"], row["step"]) for row in rows] == [
        ("train", "10"), ("eval", "15"), ("train", "20"), ("train", "30"), ("eval", "30")]
    result = rqvae("report", run_dir, "--json", "--csv")
    assert result.exit_code == 2 and "pass one" in result.output


# -- what a command loads ----------------------------------------------------------------------
# Run as the console script runs it, then list the heavy packages it imported: JAX only in
# commands that train or load checkpoints, rich not for help. How long they take: scripts/bench_report.py.

IMPORTED = """
import sys
from rqvae.cli import main
sys.argv[0] = "rqvae"
try:
    main()
except SystemExit as exit:
    status = exit.code
heavy = ("jax", "flax", "numpy", "rich")
print(sorted(m for m in heavy if m in sys.modules), status, file=sys.stderr)
"""


def _imported(*args):
    """The heavy packages `rqvae ARGS` imports, its exit status and its output."""
    result = subprocess.run([sys.executable, "-c", IMPORTED, *map(str, args)], check=False,
                            capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parents[1])
    modules, status = result.stderr.strip().splitlines()[-1].rsplit(" ", 1)
    return ast.literal_eval(modules), int(status or 0), result.stdout + result.stderr


HELP_SHOWS = {  # command -> a line of its help: an example, or the shell completion options
    "": "--install-completion",
    "train": "rqvae train -c hybrid",
    "sweep": "rqvae sweep --grid lambda_wasserstein=0,0.1,0.5 --seeds 0,1,2 --out runs/sw",
    "export": "rqvae export runs/sw --tensorboard tb/",
    "configs": "rqvae train -c",
    "report": "rqvae report runs/x --json | jq '.[0].final'",
    "eval": "rqvae eval runs/x --step 4000 --json",
    "encode": "rqvae encode runs/hybrid-20261123-101500 --out codes.npy --split train",
    "plot": "rqvae plot runs/hybrid-20261123-101500 --out plots/",
    "data prepare": "rqvae data prepare tfds:mnist && rqvae train -c mnist",
}


@pytest.mark.parametrize("command", HELP_SHOWS)
def test_help_keeps_its_examples_and_imports_no_jax_or_rich(command):
    modules, status, output = _imported(*command.split(), "--help")
    assert status == 0 and HELP_SHOWS[command] in output
    assert modules == []


def test_report_imports_no_jax(full_run):
    run_dir, _ = full_run
    modules, status, output = _imported("report", run_dir, "--last", 2, "--every", 10)
    assert status == 0 and "codebook health over the run" in output
    assert modules == ["rich"]
    modules, status, output = _imported("report", run_dir, "--last", 0)
    assert status == 2 and "Invalid value for '--last'" in output  # Typer's message, as before


def test_option_values_reach_the_commands_as_typer_converts_them(tmp_path, monkeypatch):
    from rqvae import cli
    from rqvae.reports import report

    seen = {}
    monkeypatch.setattr(report, "main", lambda run_dirs, **options: seen.update(
        run_dirs=run_dirs, **options))
    assert rqvae("report", tmp_path / "a", "b", "--every", "10").exit_code == 0
    assert seen["run_dirs"] == [tmp_path / "a", Path("b")]
    assert seen["every"] == 10 and type(seen["every"]) is int and seen["last"] is None

    def replace(cfg, overrides):
        seen.update(overrides)
        raise ConfigError("stopped before training")

    monkeypatch.setattr(cli.config_lib, "replace", replace)
    result = rqvae("train", "--lambda-wasserstein", "0.5", "--sinkhorn-epsilon", "1e-3",
                   "--learning-rate", ".5", "--steps", "007", "--dataset", "npz:x.npz",
                   "--run-dir", tmp_path / "r", "--set", "model.num_codes=16")
    assert result.exit_code == 2 and "stopped before training" in result.output
    assert {key: (seen[key], type(seen[key])) for key in (
        "loss.lambda_wasserstein", "transport.epsilon", "optimizer.learning_rate", "steps",
        "data.dataset", "run.run_dir", "model.num_codes")} == {
        "loss.lambda_wasserstein": (0.5, float), "transport.epsilon": (0.001, float),
        "optimizer.learning_rate": (0.5, float), "steps": (7, int),
        "data.dataset": ("npz:x.npz", str),
        "run.run_dir": (str(tmp_path / "r"), str), "model.num_codes": (16, int)}
    assert "seed" not in seen  # flags left out override nothing
    result = rqvae("train", "--steps", "many")
    assert result.exit_code == 2 and "Invalid value for '--steps'" in result.output


# -- runs that never mix, file mistakes, output that fits ---------------------------------------


def _cli(*args, cwd=None, env=None):
    return subprocess.Popen([sys.executable, "-m", "rqvae.cli", *map(str, args)], cwd=cwd,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_runs_started_together_get_their_own_directories(full_run, tiny_toml, tmp_path):
    # The same config and name, told apart by a setting the step does not compile on (so both
    # reuse the programs `full_run` compiled), started at once: two directories, each its own.
    processes = [_cli("train", "-c", tiny_toml, "--steps", 10, "--set", f"run.log_every={every}",
                      "-q", cwd=tmp_path) for every in (5, 10)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    run_dirs = sorted((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 2
    by_interval = {load(d / "config.toml").run.log_every: d for d in run_dirs}
    assert sorted(by_interval) == [5, 10]
    assert _keys(by_interval[5]) == [("train", 5), ("train", 10), ("eval", 10), ("end", 10)]
    assert _keys(by_interval[10]) == [("train", 10), ("eval", 10), ("end", 10)]
    for run_dir in run_dirs:  # each log has each step once, and its own checkpoint
        assert (run_dir / "checkpoints" / "10").is_dir()


def test_a_held_run_directory_refuses_a_second_process_and_reports_running(full_run, tmp_path):
    from rqvae.reports.runs import load_run
    from rqvae.trainer import rundir

    run_dir = tmp_path / "held"
    shutil.copytree(full_run[0], run_dir)
    records = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(records[:3]) + "\n")  # up to step 20
    before = _snapshot(run_dir)
    with rundir.Lock(run_dir):  # as a run that trains now holds it
        second = _cli("train", "--resume", "--run-dir", run_dir, "--steps", 60)
        _, stderr = second.communicate(timeout=300)
        assert load_run(run_dir).status == "running"
    assert second.returncode == 2
    (line,) = [line for line in stderr.splitlines() if line.strip()]
    assert "is in use by another rqvae process" in line and f"pid {os.getpid()}" in line
    assert _snapshot(run_dir) == before
    assert load_run(run_dir).status == "crashed"  # no end record, and nobody holds it


@pytest.mark.parametrize("args, message", [
    (["encode", "{run}", "--out", "{tmp}/missing/codes.npy"], "folder {tmp}/missing does not exist"),
    (["encode", "{run}", "--out", "{tmp}", "--force"], "is a directory"),
    (["encode", "{run}", "--out", "{tmp}/codes.txt"], "name a .npy file, e.g. {tmp}/codes.npy"),
    (["plot", "{run}", "--out", "{tmp}/afile"], "afile"),
    (["train", "--dataset", "npz:{tmp}/x.npy", "--run-dir", "{tmp}/r"], "x.npy"),
])
def test_file_mistakes_are_one_line_exit_2_and_leave_nothing(full_run, tmp_path, args, message):
    run_dir, _ = full_run
    (tmp_path / "afile").write_text("a file")
    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8)))
    before = _snapshot(tmp_path)
    args = [str(a).format(tmp=tmp_path, run=run_dir) for a in args]
    result = rqvae(*args)
    assert result.exit_code == 2, result.output
    assert message.format(tmp=tmp_path) in " ".join(result.output.split())
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    assert _snapshot(tmp_path) == before and sorted(tmp_path.iterdir()) == sorted(before)


@pytest.mark.parametrize("columns", [80, 120])
def test_report_fits_the_columns_and_cuts_no_value(full_run, tmp_path, columns):
    run_dir, _ = full_run
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    config = (other / "config.toml").read_text()
    (other / "config.toml").write_text(config.replace("epsilon = 0.05", "epsilon = 0.01"))
    for args in ([run_dir], [run_dir, other]):
        process = _cli("report", *args, env={"COLUMNS": str(columns)})
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        lines = stdout.splitlines()
        assert max(map(len, lines)) <= columns and "…" not in stdout
        assert all(line == line.rstrip() for line in lines)
    assert "transport.epsilon" in stdout or "eps" in stdout  # the key on which the two differ
