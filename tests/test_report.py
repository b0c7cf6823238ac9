import json
import subprocess
import sys

import pytest
from rich.console import Console

from rqvae import config, report, runlog
from rqvae.config import ConfigError, TrainerConfig


def train_record(step, total, dead=(3, 1), wasserstein=0.0):
    return {"kind": "train", "step": step, "time": step / 10, "total": total, "recon": total / 2,
            "commit": 0.1, "codebook": 0.1, "wasserstein": wasserstein, "used": [5, 7],
            "perplexity": [4.5, 6.5], "dead": list(dead), "sinkhorn_marginal_error": [0.2, 0.01]}


def eval_record(step, heldout, dead):
    return {"kind": "eval", "step": step, "time": 1.0, "heldout_recon": heldout,
            "used": [8 - d for d in dead], "perplexity": [6.0, 7.0], "dead": list(dead),
            "heldout_perplexity": [5.0, 6.0]}


def make_run(path, cfg, records):
    path.mkdir(parents=True)
    (path / runlog.CONFIG_FILE).write_text(config.dumps(cfg))
    with runlog.RunLog(path) as log:
        for record in records:
            log.write(record)
    return path


@pytest.fixture
def hybrid(tmp_path):
    cfg = config.replace(TrainerConfig(), {"lambda_wasserstein": 0.5, "learning_rate": 0.003})
    records = [train_record(s, t, wasserstein=0.3) for s, t in [(10, 0.9), (20, 0.4), (30, 0.5)]]
    return make_run(tmp_path / "hybrid", cfg, records + [eval_record(30, 0.07, (0, 2))])


def test_summary_final_best_and_levels(hybrid):
    summary = report.summarize(report.load_run(hybrid))
    assert summary["final"]["total"] == 0.5 and summary["steps_logged"] == 30
    assert summary["best"]["total"] == {"value": 0.4, "step": 20}
    assert summary["eval"] == {"step": 30, "heldout_recon": 0.07}
    assert [lv["eval_dead"] for lv in summary["levels"]] == [0, 2]
    assert [lv["dead"] for lv in summary["levels"]] == [3, 1]
    assert summary["levels"][0]["sinkhorn_marginal_error"] == 0.2
    # The brief holds what differs from the defaults plus the always-shown keys.
    assert set(summary["config"]) == {"learning_rate", *report.ALWAYS_SHOWN}
    assert summary["config"]["learning_rate"] == 0.003


def test_history_is_evenly_spaced_and_keeps_both_ends(tmp_path):
    records = [train_record(s, 1.0 / s) for s in range(10, 1010, 10)]
    run = report.load_run(make_run(tmp_path / "long", TrainerConfig(), records))
    steps = [r["step"] for r in report.summarize(run, points=5)["history"]]
    assert steps[0] == 10 and steps[-1] == 1000 and len(steps) == 5
    assert len(set(b - a for a, b in zip(steps, steps[1:]))) <= 2


def test_render_one_run_shows_numbers_and_wasserstein(hybrid):
    console = Console(record=True, width=200)
    report.render([report.load_run(hybrid)], console)
    text = console.export_text()
    assert "hybrid" in text and "wasserstein" in text and "0.07" in text
    assert "Sinkhorn marginal error" in text


def test_render_hides_wasserstein_when_off(tmp_path):
    run = make_run(tmp_path / "plain", TrainerConfig(), [train_record(10, 0.5)])
    console = Console(record=True, width=200)
    report.render([report.load_run(run)], console)
    assert "wasserstein" not in console.export_text().split("losses")[1]


def test_comparison_marks_the_best_run(hybrid, tmp_path):
    worse = make_run(tmp_path / "traditional", TrainerConfig(),
                     [train_record(30, 0.8, dead=(40, 9)), eval_record(30, 0.2, (41, 9))])
    console = Console(record=True, width=200, force_terminal=True, color_system="standard")
    report.render([report.load_run(worse), report.load_run(hybrid)], console)
    lines = console.export_text(styles=True).splitlines()
    (worse_row,) = [line for line in lines if "traditional" in line]
    (best_row,) = [line for line in lines if "hybrid" in line]
    bold_green = "\x1b[1;32m"
    # recon, held-out recon and both dead-code columns go to the hybrid run.
    assert best_row.count(bold_green) == 4 and bold_green not in worse_row


def test_parent_dir_reports_every_run_under_it(hybrid, tmp_path):
    make_run(tmp_path / "other", TrainerConfig(), [train_record(10, 0.5)])
    assert [p.name for p in report.find_runs([tmp_path])] == ["hybrid", "other"]


def test_cut_off_last_line_is_skipped(hybrid):
    with open(hybrid / runlog.METRICS_FILE, "a") as log:
        log.write('{"kind": "train", "step": 40, "tot')
    assert report.summarize(report.load_run(hybrid))["steps_logged"] == 30


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "holds no metrics.jsonl"),
    (lambda d: (d.mkdir(), (d / runlog.METRICS_FILE).write_text("")), "no train records yet"),
])
def test_bad_run_dirs(tmp_path, make, message):
    make(tmp_path / "run")
    with pytest.raises(ConfigError, match=message):
        report.load_run(tmp_path / "run")


def test_json_is_plain_json(hybrid, capsys):
    report.main([hybrid], as_json=True, console=Console())
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["run"] == "hybrid" and summary["best"]["total"]["value"] == 0.4


def test_report_never_imports_jax():
    code = "import sys, rqvae.cli, rqvae.report; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
