"""`rqvae report`'s entry on synthetic run directories: the console, options, JSON, CSV,
parents of runs, errors. No JAX."""

import csv
import io
import json
import re
import subprocess
import sys

import pytest
from rich.console import Console
from synthetic_runs import decreasing_run, eval_record, make_run, rendered, tiny_cfg, train_record

from rqvae.reports import report
from rqvae.reports.runs import NoRecords, find_runs, load_run
from rqvae.reports.summary import summarize
from rqvae.trainer import rundir
from rqvae.trainer.errors import ConfigError, UserError


def test_piped_output_is_80_columns_without_trailing_spaces(tmp_path, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = report.make_console(io.StringIO())
    assert console.width == report.PIPED_WIDTH == 80 and not console.is_terminal
    run = load_run(make_run(tmp_path, "run", tiny_cfg(lambda_wasserstein=0.5)))
    report.render([run], console)
    lines = console.file.getvalue().splitlines()
    assert len(lines) > 40 and max(map(len, lines)) <= 80
    assert [line for line in lines if line != line.rstrip()] == []

    monkeypatch.setenv("COLUMNS", "132")
    assert report.make_console(io.StringIO()).width == 132


# -- main -------------------------------------------------------------------------------------


def test_main_prints_the_summaries_as_json(tmp_path, capsys):
    dirs = [make_run(tmp_path, "a", tiny_cfg()), make_run(tmp_path, "b", tiny_cfg(seed=1))]
    report.main(dirs, as_json=True, console=Console(record=True))
    printed = json.loads(capsys.readouterr().out)
    # Two runs that differ only in their seed: one group, "all".
    assert printed == [summarize(load_run(d), group="all") for d in dirs]
    assert printed[1]["config"]["seed"] == 1 and "seed" not in printed[0]["config"]
    assert [s["status"] for s in printed] == ["completed", "completed"]


def test_main_renders_tables_and_stops_at_the_first_bad_directory(tmp_path, capsys):
    console = Console(file=io.StringIO(), record=True, width=200)
    report.main([make_run(tmp_path, "only", tiny_cfg())], as_json=False, console=console)
    assert "run only: step 40" in console.export_text()
    with pytest.raises(UserError, match="does not exist"):
        report.main([tmp_path / "only", tmp_path / "missing"], as_json=True, console=console)
    assert capsys.readouterr().out == ""


def test_a_run_without_records_is_skipped_in_tables_and_listed_in_json(tmp_path, capsys):
    make_run(tmp_path, "a-done", tiny_cfg())
    starting = make_run(tmp_path, "b-starting", tiny_cfg(), records=[])
    make_run(tmp_path, "c-died", tiny_cfg(), records=[])
    make_run(tmp_path, "d-diverged", tiny_cfg(), records=[
        {"kind": "end", "step": 0, "time": 0.5, "status": "failed",
         "reason": "the loss became non-finite at step 0 (total)"}])
    with rundir.Lock(starting):
        report.main([tmp_path], as_json=False, console=Console(file=io.StringIO()))
        _, err = capsys.readouterr()
        err = " ".join(err.split())  # notes are wrapped to the console's width
        report.main([tmp_path], as_json=True, console=Console())
        out, _ = capsys.readouterr()
    assert "note: skipped b-starting is still starting" in err
    assert "note: skipped c-died crashed (process ended without a final record)" in err
    # A script choosing the best setting sees every run, the diverged one with its status.
    listed = {s["run"]: (s["status"], s["final"], s["levels"]) for s in json.loads(out)}
    assert listed == {"a-done": ("completed", listed["a-done"][1], listed["a-done"][2]),
                      "b-starting": ("running", {}, []), "c-died": ("crashed", {}, []),
                      "d-diverged": ("failed", {}, [])}
    (single,) = json.loads(_json_of(tmp_path / "c-died", capsys))
    assert single["status"] == "crashed" and single["history"] == []
    with pytest.raises(NoRecords, match="c-died crashed"):
        report.main([tmp_path / "c-died"], as_json=False, console=Console())


def _json_of(run_dir, capsys) -> str:
    report.main([run_dir], as_json=True, console=Console())
    return capsys.readouterr().out


def test_a_garbage_line_in_the_log_is_reported_not_skipped_silently(tmp_path, capsys):
    run_dir = make_run(tmp_path, "run", tiny_cfg())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines.insert(2, "{not json at all\n")
    (run_dir / "metrics.jsonl").write_text("".join(lines) + '{"kind": "train", "st')  # + a cut line
    (summary,) = json.loads(_json_of(run_dir, capsys))
    assert summary["unreadable_lines"] == [3] and summary["status"] == "completed"
    console = Console(file=io.StringIO(), width=120, record=True)
    report.main([run_dir], as_json=False, console=console)
    assert "1 line of metrics.jsonl holds no record, skipped (line 3)" in " ".join(
        console.export_text().split())


@pytest.mark.parametrize("options, message", [
    ({"last": 0}, "--last takes a positive number of steps, not 0"),
    ({"every": -5}, "--every takes a positive number of steps, not -5"),
    ({"as_csv": True, "as_json": True}, "--json and --csv are two output formats; pass one"),
    ({"as_csv": True, "last": 3}, "--last chooses rows of the tables and JSON; --csv has every"),
])
def test_bad_options_are_config_errors(tmp_path, capsys, options, message):
    options = {"as_json": False} | options
    with pytest.raises(ConfigError, match=re.escape(message)):
        report.main([make_run(tmp_path, "run", tiny_cfg())], console=Console(), **options)
    assert capsys.readouterr().out == ""


def test_last_or_every_with_several_runs_is_refused_for_tables_not_for_json(tmp_path, capsys):
    dirs = [make_run(tmp_path, "a", tiny_cfg()), make_run(tmp_path, "b", tiny_cfg())]
    for option in ({"last": 2}, {"every": 20}):
        with pytest.raises(ConfigError, match="chooses the rows of one run's report, and 2 runs"):
            report.main(dirs, as_json=False, console=Console(), **option)
    assert capsys.readouterr().out == ""
    report.main(dirs, as_json=True, console=Console(), last=1)
    assert [len(s["history"]) for s in json.loads(capsys.readouterr().out)] == [1, 1]


def test_importing_the_report_loads_neither_jax_flax_nor_numpy():
    code = ("import rqvae.reports.report, sys; bad = {'jax', 'flax', 'numpy'} & set(sys.modules); "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- JSON, CSV and parent directories ---------------------------------------------------------


def test_json_history_and_health_follow_last_and_every(tmp_path, capsys):
    run_dir = decreasing_run(tmp_path, cfg=tiny_cfg(steps=600, lambda_wasserstein=0.5))
    report.main([run_dir], as_json=True, console=Console(), every=200)
    (summary,) = json.loads(capsys.readouterr().out)
    assert [h["step"] for h in summary["history"]] == [200, 400, 600]
    assert summary["history"][0] == {"step": 200, "total": 0.05, "recon": 0.025,
                                     "commit": 0.0025, "codebook": 0.25, "wasserstein": 0.0}
    assert summary["health"][1] == {"step": 400, "used": [0, 8], "perplexity": [4.25, 2.75],
                                    "dead": [8, 0], "sinkhorn_marginal_error": [0.0125, 0.0375]}
    assert summary["heldout_history"] == [{"step": s, "heldout_recon": 4 / s}
                                          for s in (200, 400, 600)]
    report.main([run_dir], as_json=True, console=Console(), every=200, last=1)
    (summary,) = json.loads(capsys.readouterr().out)
    assert [h["step"] for h in summary["health"]] == [600]


def test_csv_has_a_row_per_train_and_eval_record_of_every_run(tmp_path, capsys):
    records = [train_record(s, 1 / s, 0.5 / s, 0.1, 0.2, 0.01) for s in (10, 20, 30)]
    records.insert(2, eval_record(20, 0.5))
    make_run(tmp_path, "b-hybrid", tiny_cfg(lambda_wasserstein=0.5), records)
    plain_records = [{k: v for k, v in train_record(s, 2 / s, 1 / s, 0.1, 0.2, 0.0).items()
                      if k != "sinkhorn_marginal_error"} for s in (10, 20)]
    make_run(tmp_path, "a-plain", tiny_cfg(), plain_records)
    report.main([tmp_path], as_json=False, console=Console(), as_csv=True)
    text = capsys.readouterr().out
    assert "\r" not in text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["run", "step", "time", "total", "recon", "commit", "codebook",
                       "wasserstein", "used_L1", "dead_L1", "perplexity_L1",
                       "sinkhorn_marginal_error_L1", "used_L2", "dead_L2", "perplexity_L2",
                       "sinkhorn_marginal_error_L2", "kind", "heldout_recon", "heldout_psnr",
                       "constant_recon", "tuples_unique", "tuples_shared",
                       "tuples_largest_group", "shared_dead", "train_used_L1", "train_dead_L1",
                       "train_perplexity_L1", "heldout_used_L1",
                       "heldout_perplexity_L1", "train_used_L2", "train_dead_L2",
                       "train_perplexity_L2", "heldout_used_L2", "heldout_perplexity_L2"]
    assert [(r[0], r[1], r[16]) for r in rows[1:]] == [
        ("a-plain", "10", "train"), ("a-plain", "20", "train"), ("b-hybrid", "10", "train"),
        ("b-hybrid", "20", "train"), ("b-hybrid", "20", "eval"), ("b-hybrid", "30", "train")]
    assert rows[1] == ["a-plain", "10", "0.1", "0.2", "0.1", "0.1", "0.2", "0.0",
                       "5", "2", "4.25", "", "3", "4", "2.75", "", "train", "", "", "", "", "", "",
                       "", *[""] * 10]
    assert rows[4][3:5] == [repr(1 / 20), repr(0.5 / 20)] and rows[4][11] == "0.0125"
    assert rows[5][2:16] == [repr(20 / 90), *[""] * 13]
    assert rows[5][16:] == ["eval", "0.5", "18.5", "", "", "", "", "", "7", "1", "6.5", "7", "6.25",
                            "5", "3", "4.125", "5", "3.875"]

    report.main([tmp_path / "a-plain"], as_json=False, console=Console(), as_csv=True)
    header = capsys.readouterr().out.splitlines()[0]
    assert "sinkhorn" not in header and header.endswith("perplexity_L2,kind,heldout_recon,"
                                                        "heldout_psnr,constant_recon,"
                                                        "tuples_unique,tuples_shared,"
                                                        "tuples_largest_group,shared_dead")


def test_a_parent_directory_stands_for_every_run_in_it(tmp_path, capsys):
    for name in ("b-run", "a-run"):
        make_run(tmp_path, name, tiny_cfg())
    (tmp_path / "notes").mkdir()  # no run: not reported
    assert find_runs([tmp_path]) == [tmp_path / "a-run", tmp_path / "b-run"]
    assert find_runs([tmp_path / "a-run", tmp_path]) == [
        tmp_path / "a-run", tmp_path / "a-run", tmp_path / "b-run"]
    report.main([tmp_path], as_json=True, console=Console())
    assert [s["run"] for s in json.loads(capsys.readouterr().out)] == ["a-run", "b-run"]
    text = rendered([load_run(p) for p in find_runs([tmp_path])])
    assert "2 runs side by side" in text
    with pytest.raises(UserError, match=r"notes holds no metrics.jsonl; pass a directory"):
        report.main([tmp_path / "notes"], as_json=True, console=Console())


def test_a_groups_column_reads_in_one_fixed_point_format():
    from rqvae.reports.groups import _cell

    # The spread at the mean's decimals: no 7.6e-05 beside 0.0021.
    assert _cell((0.02407, 0.0021)) == "0.02407 ± 0.00210"
    assert _cell((0.02508, 7.6e-05)) == "0.02508 ± 0.00008"
    assert _cell((41.0, 1.0)) == "41.00 ± 1.00" and _cell((0.0, 0.0)) == "0 ± 0"
    assert _cell((2048.0, 3.0)) == "2048 ± 3"
