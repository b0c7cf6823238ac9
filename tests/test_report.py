"""`rqvae report` on synthetic run directories: summaries, status, tables that fit, comparisons,
errors. No JAX."""

import csv
import io
import json
import random
import re
import subprocess
import sys

import pytest
from rich.cells import cell_len
from rich.console import Console

from rqvae import config, report, rundir
from rqvae.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainerConfig

BOLD_GREEN = "\x1b[1;32m"
ALWAYS_SHOWN = {"lambda_wasserstein", "lambda_codebook", "lambda_commit", "steps",
                "model.num_levels", "model.num_codes", "data.dataset"}

# Losses that are not monotone, so the lowest value of a term is not the final one.
TRAIN_LOSSES = [
    # step, total, recon, commit, codebook, wasserstein
    (10, 0.90, 0.60, 0.050, 0.20, 0.040),
    (20, 0.70, 0.45, 0.030, 0.12, 0.025),
    (30, 0.55, 0.33, 0.041, 0.11, 0.031),
    (40, 0.61, 0.35, 0.036, 0.15, 0.022),
]


def train_record(step, total, recon, commit, codebook, wasserstein, *, used=(5, 3), dead=(2, 4)):
    return {"kind": "train", "step": step, "time": step / 100, "total": total, "recon": recon,
            "commit": commit, "codebook": codebook, "wasserstein": wasserstein,
            "batch_used": list(used), "batch_perplexity": [4.25, 2.75], "window_dead": list(dead),
            "sinkhorn_marginal_error": [0.0125, 0.0375]}


def eval_record(step, heldout_recon, *, dead=(1, 3)):
    return {"kind": "eval", "step": step, "time": step / 90, "heldout_recon": heldout_recon,
            "heldout_psnr": 18.5, "train_used": [8 - d for d in dead], "train_dead": list(dead),
            "train_perplexity": [6.5, 4.125], "heldout_used": [7, 5],
            "heldout_perplexity": [6.25, 3.875]}


def end_record(step, status="completed", reason=""):
    return {"kind": "end", "step": step, "time": step / 80, "status": status, "reason": reason}


def default_records():
    records = [train_record(*losses) for losses in TRAIN_LOSSES]
    records.insert(3, eval_record(30, 0.38))
    return records + [eval_record(40, 0.3625), end_record(40)]


def make_run(root, name, cfg=None, records=None):
    """A run directory as `rqvae train` writes it; cfg=None writes no config.toml."""
    run_dir = root / name
    run_dir.mkdir()
    if cfg is not None:
        (run_dir / rundir.CONFIG_FILE).write_text(config.dumps(cfg))
    with open(run_dir / rundir.METRICS_FILE, "w", encoding="utf-8") as log:
        for record in default_records() if records is None else records:
            log.write(json.dumps(record, separators=(",", ":")) + "\n")
    return run_dir


def tiny_cfg(run_dir="", **changes):
    return TrainerConfig(**{"steps": 40, "model": ModelConfig(num_codes=8),
                            "run": RunConfig(run_dir=str(run_dir), dead_window=10), **changes})


def rendered(runs, styles=False, points=8, width=200):
    console = Console(file=io.StringIO(), record=True, width=width, force_terminal=True,
                      color_system="standard")
    report.render(runs, console, points=points)
    return console.export_text(styles=styles)


def plain(runs, width, **options):
    """What `rqvae report` prints to a pipe `width` columns wide."""
    console = Console(width=width, file=io.StringIO(), force_terminal=False)
    report.render(runs, console, **options)
    return console.file.getvalue()


def rows_of(text, first_cell):
    return [line for line in text.splitlines() if re.match(rf"[│|]\s*{first_cell}\s*[│|]", line)]


def subdir(root, name):
    (root / name).mkdir()
    return root / name


def section(text, title, next_title=None):
    after = text.split(title, 1)[1]
    return after.split(next_title, 1)[0] if next_title else after


# -- load_run ---------------------------------------------------------------------------------


def test_load_run_splits_the_records_and_reads_the_config_through_config_load(tmp_path):
    run = report.load_run(make_run(tmp_path, "hybrid", tiny_cfg(lambda_wasserstein=0.5)))
    assert run.name == "hybrid" and run.path == tmp_path / "hybrid"
    assert [r["step"] for r in run.train] == [10, 20, 30, 40]
    assert [r["step"] for r in run.evals] == [30, 40]
    assert run.config == config.flatten(config.to_dict(tiny_cfg(lambda_wasserstein=0.5)))
    assert run.config_note is None and run.status == "completed"


def test_a_run_without_config_toml_loads_with_an_empty_config_and_a_note(tmp_path):
    run = report.load_run(make_run(tmp_path, "bare"))
    assert run.config == {} and run.config_note == "no config.toml in the run directory"
    summary = report.summarize(run)
    assert summary["config"] == {} and summary["config_note"] == run.config_note
    assert summary["final"]["total"] == TRAIN_LOSSES[-1][1]
    assert "config: no config.toml in the run directory" in rendered([run])


@pytest.mark.parametrize("text, named", [
    ("steps = = 3\n", "is not valid TOML"),
    ("steps = 0\n", "steps must be >= 1, got 0"),
    ("[model]\nnum_codez = 8\n", "unknown config key 'model.num_codez'"),
])
def test_a_config_that_does_not_load_is_a_note_not_an_error(tmp_path, text, named):
    run_dir = make_run(tmp_path, "broken", tiny_cfg())
    (run_dir / rundir.CONFIG_FILE).write_text(text)
    run = report.load_run(run_dir)
    assert run.config == {} and named in run.config_note
    assert "config.toml does not load" in run.config_note
    assert named in rendered([run]) and report.summarize(run)["final"]["recon"] == 0.35


def test_a_cut_off_last_line_is_skipped(tmp_path):
    run_dir = make_run(tmp_path, "writing", tiny_cfg(), records=[
        train_record(*TRAIN_LOSSES[0]), train_record(*TRAIN_LOSSES[1])])
    with open(run_dir / rundir.METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(train_record(*TRAIN_LOSSES[2]))[:40])
    run = report.load_run(run_dir)
    assert [r["step"] for r in run.train] == [10, 20]
    assert report.summarize(run)["final"]["total"] == TRAIN_LOSSES[1][1]


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "run directory {d} does not exist; pass a directory written by `rqvae train`"),
    (lambda d: d.write_text("x"), "{d} is not a directory"),
    (lambda d: d.mkdir(), "{d} holds no metrics.jsonl; pass a directory written by `rqvae train`"),
])
def test_paths_that_are_no_run_raise_one_line_user_errors(tmp_path, make, message):
    run_dir = tmp_path / "run"
    make(run_dir)
    with pytest.raises(rundir.UserError) as err:
        report.load_run(run_dir)
    assert not isinstance(err.value, ConfigError)
    assert message.format(d=run_dir) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("log", ["", '{"kind": "train", "st', '{"kind":"eval","step":5}\n'])
def test_a_run_without_train_records_that_no_process_holds_crashed(tmp_path, log):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / rundir.METRICS_FILE).write_text(log)
    with pytest.raises(report.NoRecords, match=r"crashed \(process ended without a final record\) "
                                               r"before its first train record"):
        report.load_run(run_dir)


def test_a_held_run_without_records_is_still_starting(tmp_path):
    run_dir = make_run(tmp_path, "new", tiny_cfg(), records=[])
    with rundir.Lock(run_dir):
        with pytest.raises(report.NoRecords, match="new is still starting: no train record yet"):
            report.load_run(run_dir)


def test_a_run_that_failed_before_its_first_train_record_says_why(tmp_path):
    run_dir = make_run(tmp_path, "bad", tiny_cfg(), records=[end_record(0, "failed", "no data")])
    with pytest.raises(report.NoRecords, match="bad failed before its first train record: no data"):
        report.load_run(run_dir)


def test_a_parent_of_runs_is_named_with_the_runs_below_it(tmp_path):
    make_run(tmp_path, "a", tiny_cfg())
    make_run(tmp_path, "b", tiny_cfg())
    below = r"holds no metrics.jsonl but 2 run\(s\) below it \(a, b\)"
    with pytest.raises(rundir.UserError, match=below):
        report.load_run(tmp_path)


# -- status -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ending, held, status", [
    ([end_record(40)], False, "completed"),
    ([end_record(30, "interrupted", "SIGINT")], False, "interrupted"),
    ([end_record(30, "failed", "non-finite loss at step 30")], False, "failed"),
    ([end_record(30, "interrupted", "SIGTERM"), {"kind": "resume", "step": 30, "time": 5.0,
                                                 "changed": {}}], True, "running"),
    ([], True, "running"),
    ([], False, "crashed"),
])
def test_the_status_comes_from_the_end_record_or_the_lock(tmp_path, ending, held, status):
    records = [train_record(*losses) for losses in TRAIN_LOSSES[:3]] + ending
    run_dir = make_run(tmp_path, "run", tiny_cfg(), records)
    if held:
        with rundir.Lock(run_dir):
            run = report.load_run(run_dir)
    else:
        run = report.load_run(run_dir)
    summary = report.summarize(run)
    assert summary["status"] == run.status == status
    heading = rendered([run]).splitlines()[0]
    assert heading.startswith(f"run run: step 30 of 40, {status}")
    if status in ("interrupted", "failed"):
        reason = ending[0]["reason"]
        assert f"({reason})" in heading and summary["status_reason"] == reason
    if status == "crashed":
        assert "crashed (process ended without a final record)" in heading


def test_an_old_log_without_end_records_that_reached_its_steps_completed(tmp_path):
    records = [train_record(*losses) for losses in TRAIN_LOSSES]
    assert report.load_run(make_run(tmp_path, "old", tiny_cfg(), records)).status == "completed"
    assert report.load_run(make_run(tmp_path, "short", tiny_cfg(steps=50), records)).status == \
        "crashed"


def test_repeated_steps_are_marked(tmp_path):
    records = [train_record(*losses) for losses in TRAIN_LOSSES]
    records.insert(2, train_record(20, 0.65, 0.4, 0.03, 0.12, 0.02))  # step 20 twice
    run_dir = make_run(tmp_path, "joined", tiny_cfg(), records + [end_record(40)])
    run = report.load_run(run_dir)
    summary = report.summarize(run)
    assert summary["repeated_steps"] == [20] and summary["status"] == "completed"
    assert "completed; repeated steps: 20 (logged twice)" in rendered([run]).splitlines()[0]
    other = report.load_run(make_run(tmp_path, "other", tiny_cfg()))
    assert report.summarize(other)["repeated_steps"] == []
    (row,) = rows_of(rendered([run, other]), "joined")
    assert "completed, repeated steps" in row


# -- summarize --------------------------------------------------------------------------------


def test_final_lowest_and_best_heldout(tmp_path):
    summary = report.summarize(report.load_run(make_run(tmp_path, "run", tiny_cfg())))
    assert summary["run"] == "run" and summary["path"] == str(tmp_path / "run")
    assert summary["steps_logged"] == 40
    assert summary["final"] == dict(zip(report.LOSS_TERMS, TRAIN_LOSSES[-1][1:]))
    assert summary["best"] == {
        "total": {"value": 0.55, "step": 30},
        "recon": {"value": 0.33, "step": 30},
        "commit": {"value": 0.030, "step": 20},
        "codebook": {"value": 0.11, "step": 30},
        "wasserstein": {"value": 0.022, "step": 40},
    }
    assert summary["best_heldout"] == {"step": 40, "heldout_recon": 0.3625}
    assert summary["eval"] == {"step": 40, "heldout_recon": 0.3625, "heldout_psnr": 18.5}
    assert summary["heldout_history"] == [{"step": 30, "heldout_recon": 0.38},
                                          {"step": 40, "heldout_recon": 0.3625}]


def test_best_ignores_non_finite_values(tmp_path):
    records = [train_record(*TRAIN_LOSSES[0]), train_record(20, float("nan"), 0.1, 0.01, 0.1, 0.0),
               eval_record(10, 0.5), eval_record(20, float("nan"))]
    summary = report.summarize(report.load_run(make_run(tmp_path, "r", tiny_cfg(), records)))
    assert summary["best"]["total"] == {"value": 0.90, "step": 10}
    assert summary["best"]["recon"] == {"value": 0.1, "step": 20}
    assert summary["best_heldout"] == {"step": 10, "heldout_recon": 0.5}


def test_config_brief_is_the_changed_keys_plus_the_always_shown_ones(tmp_path):
    cfg = TrainerConfig(learning_rate=3e-4, lambda_wasserstein=0.5, sinkhorn_iters=20,
                        model=ModelConfig(latent_dim=8, num_codes=64),
                        run=RunConfig(run_dir=str(tmp_path / "run"), eval_every=500))
    brief = report.summarize(report.load_run(make_run(tmp_path, "run", cfg)))["config"]
    # sinkhorn_iters and num_codes are set to their defaults; run.run_dir is the run's own path.
    assert set(brief) == ALWAYS_SHOWN | {"learning_rate", "model.latent_dim", "run.eval_every"}
    assert list(brief)[: len(report.ALWAYS_SHOWN)] == list(report.ALWAYS_SHOWN)
    assert brief["learning_rate"] == 3e-4 and brief["model.latent_dim"] == 8
    assert brief["run.eval_every"] == 500 and brief["lambda_wasserstein"] == 0.5
    assert brief["lambda_codebook"] == 1.0 and brief["data.dataset"] == "digits"


def test_a_partial_config_toml_shows_defaults_for_the_always_shown_keys(tmp_path):
    run_dir = make_run(tmp_path, "partial", None)
    (run_dir / rundir.CONFIG_FILE).write_text("lambda_codebook = 0.0\n[model]\nnum_codes = 16\n")
    brief = report.summarize(report.load_run(run_dir))["config"]
    assert set(brief) == ALWAYS_SHOWN
    assert brief["lambda_codebook"] == 0 and brief["model.num_codes"] == 16
    assert brief["steps"] == TrainerConfig().steps


def test_levels_take_window_counts_from_train_and_dead_codes_from_the_last_eval(tmp_path):
    records = [train_record(*TRAIN_LOSSES[0], used=(6, 2), dead=(2, 6)), eval_record(10, 0.5),
               eval_record(10, 0.4, dead=(0, 5))]
    run = report.load_run(make_run(tmp_path, "run", tiny_cfg(lambda_wasserstein=0.5), records))
    assert report.summarize(run)["levels"] == [  # the JSON keeps the first release's names
        {"level": 1, "used": 6, "perplexity": 4.25, "dead": 2, "eval_used": 8, "eval_dead": 0,
         "eval_perplexity": 6.5, "heldout_used": 7, "heldout_perplexity": 6.25,
         "sinkhorn_marginal_error": 0.0125},
        {"level": 2, "used": 2, "perplexity": 2.75, "dead": 6, "eval_used": 3, "eval_dead": 5,
         "eval_perplexity": 4.125, "heldout_used": 5, "heldout_perplexity": 3.875,
         "sinkhorn_marginal_error": 0.0375},
    ]


def test_levels_without_an_eval_or_wasserstein_have_only_window_counts(tmp_path):
    records = [train_record(10, 0.9, 0.6, 0.05, 0.2, 0.0)]
    summary = report.summarize(report.load_run(make_run(tmp_path, "run", tiny_cfg(), records)))
    assert summary["eval"] is None and summary["best_heldout"] is None
    assert summary["heldout_history"] == []
    assert summary["levels"] == [{"level": 1, "used": 5, "perplexity": 4.25, "dead": 2},
                                 {"level": 2, "used": 3, "perplexity": 2.75, "dead": 4}]


def old_names(record):
    """The record as logs before the current names held it."""
    renamed = {"batch_used": "used", "batch_perplexity": "perplexity", "window_dead": "dead",
               "train_used": "used", "train_dead": "dead", "train_perplexity": "perplexity"}
    return {renamed.get(k, k): v for k, v in record.items()
            if k not in ("heldout_used", "heldout_psnr")}


def test_a_log_with_the_old_names_reports_as_one_with_the_new(tmp_path):
    new = report.summarize(report.load_run(make_run(tmp_path, "run", tiny_cfg())))
    old_dir = make_run(subdir(tmp_path, "old"), "run", tiny_cfg(),
                       [old_names(r) for r in default_records()])
    old = report.summarize(report.load_run(old_dir))
    assert old["levels"][0]["eval_dead"] == 1 and old["levels"][1]["perplexity"] == 2.75
    for summary in (old, new):
        del summary["path"], summary["eval"]
        for level in summary["levels"]:
            level.pop("heldout_used", None)
    assert old == new


@pytest.mark.parametrize("logged, points, expected", [
    (range(10, 210, 10), 5, [10, 60, 110, 150, 200]),
    (range(10, 210, 10), 2, [10, 200]),
    (range(10, 40, 10), 8, [10, 20, 30]),
    (range(10, 20, 10), 8, [10]),
])
def test_history_is_evenly_spaced_and_keeps_the_first_and_last_step(tmp_path, logged, points,
                                                                     expected):
    records = [train_record(s, 1 / s, 0.5 / s, 0.1, 0.2, 0.0) for s in logged]
    run = report.load_run(make_run(tmp_path, "run", tiny_cfg(), records))
    history = report.summarize(run, points=points)["history"]
    assert [h["step"] for h in history] == expected
    assert all(h["total"] == 1 / h["step"] and set(h) == {"step", *report.LOSS_TERMS}
               for h in history)


def test_resumes_come_from_the_log_or_else_from_resumes_jsonl(tmp_path):
    records = default_records()
    records.insert(2, {"kind": "resume", "step": 20, "time": 3.0,
                       "changed": {"lambda_wasserstein": [0.0, 0.5], "steps": [20, 40]}})
    logged = report.load_run(make_run(tmp_path, "logged", tiny_cfg(), records))
    assert report.summarize(logged)["resumes"] == [
        {"step": 20, "changed": {"lambda_wasserstein": [0.0, 0.5], "steps": [20, 40]}}]
    text = rendered([logged])
    (row,) = rows_of(section(text, "resumed 1 time(s)", "\nlosses\n"), "20")
    assert "lambda_wasserstein: 0 -> 0.5; steps: 20 -> 40" in row

    filed = make_run(tmp_path, "filed", tiny_cfg())
    rundir.record_resume(filed, 30, {"learning_rate": [0.001, 0.0005]})
    assert report.summarize(report.load_run(filed))["resumes"] == [
        {"step": 30, "changed": {"learning_rate": [0.001, 0.0005]}}]
    assert "resumed" not in rendered([report.load_run(make_run(tmp_path, "never", tiny_cfg()))])


# -- render -----------------------------------------------------------------------------------


def test_one_run_shows_its_config_losses_health_and_history(tmp_path):
    run = report.load_run(make_run(tmp_path, "hybrid-run", tiny_cfg(lambda_wasserstein=0.5)))
    text = rendered([run])
    assert text.startswith("run hybrid-run: step 40 of 40, completed\n")
    assert re.search(r"lambda_wasserstein\s*│\s*0\.5", text)
    losses = section(text, "\nlosses\n", "codebook health per level")
    assert re.search(r"┃\s*total\s*┃\s*recon\s*┃\s*commit\s*┃\s*codebook\s*┃\s*W\s*┃\s*heldout\s*┃",
                     losses)
    final = rows_of(losses, r"final \(step 40\)")[0]
    assert re.findall(r"[\d.]+", final)[1:] == ["0.61", "0.35", "0.036", "0.15", "0.022", "0.3625"]
    lowest = rows_of(losses, "lowest logged")[0]
    assert re.findall(r"[\d.]+", lowest) == ["0.55", "0.33", "0.03", "0.11", "0.022", "0.3625"]
    assert re.findall(r"\d+", rows_of(losses, "at step")[0]) == ["30", "30", "20", "30", "40", "40"]
    assert "best: the lowest held-out recon, 0.3625 at step 40" in " ".join(losses.split())
    levels = section(text, "codebook health per level (8 codes each)", "trends over")
    # level, batch used, batch ppl, window dead, train dead, train ppl, heldout ppl, sinkhorn
    assert re.findall(r"[\d.]+", rows_of(levels, "2")[0]) == ["2", "3", "2.75", "4", "3", "4.125",
                                                             "3.875", "0.0375"]
    assert "codes unused over the last 10 steps" in " ".join(levels.split())
    history = section(text, "losses over the run", "codebook health over the run")
    assert [re.findall(r"[\d.]+", row)[0] for row in rows_of(history, r"\d\d")] == [
        "10", "20", "30", "40"]


def test_the_wasserstein_column_is_left_out_of_runs_without_it(tmp_path):
    records = [train_record(s, 1 / s, 0.5 / s, 0.1, 0.2, 0.0) for s in (10, 20)]
    text = rendered([report.load_run(make_run(tmp_path, "plain", tiny_cfg(), records))])
    assert "lambda_wasserstein" in text
    assert not re.search(r"┃\s*W\s*┃", text) and "wasserstein" not in section(text, "\nlosses\n")
    assert "best (the lowest held-out recon): none before the first eval" in " ".join(text.split())
    assert "no eval yet" in text and "train\n" not in section(text, "codebook health per level")


def test_a_run_name_with_brackets_is_shown_verbatim(tmp_path):
    run = report.load_run(make_run(tmp_path, "sweep[bold]", tiny_cfg()))
    assert "run sweep[bold]: step 40" in rendered([run])


def two_runs(tmp_path, second_cfg=None):
    good = make_run(tmp_path, "hybrid", tiny_cfg(lambda_wasserstein=0.5), records=[
        train_record(40, 0.50, 0.30, 0.03, 0.11, 0.02), eval_record(40, 0.3125, dead=(0, 1))])
    bad = make_run(tmp_path, "traditional", second_cfg or tiny_cfg(), records=[
        train_record(40, 0.75, 0.45, 0.04, 0.13, 0.0), eval_record(40, 0.5625, dead=(3, 5))])
    return [report.load_run(good), report.load_run(bad)]


def test_several_runs_give_one_comparison_with_the_best_in_bold_green(tmp_path):
    runs = two_runs(tmp_path)
    text = rendered(runs)
    assert text.count("2 runs side by side") == 1 and "losses over the run" not in text
    results = section(text, "2 runs side by side")
    (good_row,), (bad_row,) = rows_of(results, "hybrid"), rows_of(results, "traditional")
    assert re.findall(r"[\d.]+", good_row) == ["40", "0.5", "0.3", "0.3125", "0", "1"]
    assert re.findall(r"[\d.]+", bad_row) == ["40", "0.75", "0.45", "0.5625", "3", "5"]
    assert "completed" in good_row  # no end record, but the log reached its 40 steps

    styled = section(rendered(runs, styles=True), "2 runs side by side")
    (good_styled,) = [line for line in styled.splitlines() if "hybrid" in line]
    (bad_styled,) = [line for line in styled.splitlines() if "traditional" in line]
    assert good_styled.count(BOLD_GREEN) == 4  # recon, heldout, dead L1, L2 (not the total)
    assert BOLD_GREEN not in bad_styled


def test_the_comparison_shows_the_settings_that_differ(tmp_path):
    second = tiny_cfg(sinkhorn_epsilon=0.1, wasserstein_encoder_grad=True, seed=3)
    text = rendered(two_runs(tmp_path, second))
    settings = section(text, "settings that differ between the runs", "2 runs side by side")
    assert re.search(r"┃ run\s*┃\s*w_W ┃\s*eps ┃\s*W_enc ┃\s*seed ┃", settings)
    assert re.findall(r"[\w.]+", rows_of(settings, "hybrid")[0])[1:] == ["0.5", "0.05", "false",
                                                                         "0"]
    assert re.findall(r"[\w.]+", rows_of(settings, "traditional")[0])[1:] == ["0", "0.1", "true",
                                                                              "3"]
    legend = " ".join(settings.split())
    assert ("w_W: lambda_wasserstein; eps: sinkhorn_epsilon; W_enc: wasserstein_encoder_grad"
            in legend)
    assert "lambda_codebook" not in settings and "steps" not in settings  # equal in both

    same = rendered(two_runs(subdir(tmp_path, "same"), tiny_cfg(lambda_wasserstein=0.5)))
    assert "settings: no config key differs between the runs" in same


def test_best_is_marked_only_among_runs_on_the_same_data_set(tmp_path):
    mnist = tiny_cfg(data=DataConfig(dataset="tfds:mnist"))
    runs = two_runs(tmp_path, mnist)
    styled = section(rendered(runs, styles=True), "2 runs side by side")
    assert BOLD_GREEN not in styled  # one run per data set: nothing to single out
    third = make_run(tmp_path, "mnist-2", mnist, records=[
        train_record(40, 0.7, 0.5, 0.04, 0.13, 0.0), eval_record(40, 0.55, dead=(3, 5))])
    styled = section(rendered([*runs, report.load_run(third)], styles=True), "runs side by side")
    (mnist_row,) = [line for line in styled.splitlines() if "traditional" in line]
    (mnist_2_row,) = [line for line in styled.splitlines() if "mnist-2" in line]
    assert mnist_2_row.count(BOLD_GREEN) == 1 and mnist_row.count(BOLD_GREEN) == 1  # heldout/recon
    assert BOLD_GREEN not in [line for line in styled.splitlines() if "hybrid" in line][0]


def test_the_comparison_uses_window_counts_for_a_run_without_an_eval(tmp_path):
    evaluated = make_run(tmp_path, "evaluated", tiny_cfg(), records=[
        train_record(40, 0.5, 0.3, 0.03, 0.11, 0.0, dead=(7, 7)),
        eval_record(40, 0.3, dead=(2, 4))])
    running = make_run(tmp_path, "running", tiny_cfg(), records=[
        train_record(20, 0.9, 0.6, 0.05, 0.2, 0.0, dead=(1, 6))])
    with rundir.Lock(running):
        text = rendered([report.load_run(evaluated), report.load_run(running)])
    assert re.findall(r"[\d.]+", rows_of(text, "evaluated")[0])[-2:] == ["2", "4"]
    running_row = rows_of(text, "running")[0]
    assert "20/40" in running_row and re.search(r"1\*\s*│\s*6\*", running_row)
    assert re.search(r"│ running\s*│ running\s*│", running_row)  # name and status
    assert "* no eval yet" in text


# -- fitting the console: nothing cut, nothing padded -------------------------------------------


def awkward_run(root, name, seed):
    """A long run with numbers of every width .4g writes: exponents, negatives, >= 1000."""
    rng = random.Random(seed)
    steps = range(1000, 100_001, 1000)
    values = [1.234e-05, -0.5, 12345.67, 0.1234, 3.0, 987.6, 1e-09, 0.5]
    records = []
    for step in steps:
        losses = [rng.choice(values) for _ in range(5)]
        records.append(train_record(step, *losses, used=(61, 64, 17, 2), dead=(3, 0, 47, 62)))
        records[-1]["batch_perplexity"] = [53.25, 1.004e-06, 12.5, 1.0]
        records[-1]["sinkhorn_marginal_error"] = [1.234e-05, 0.5, 2.5e-07, 0.125]
        if step % 20_000 == 0:
            records.append(eval_record(step, rng.choice(values), dead=(1, 12)))
    cfg = tiny_cfg(steps=100_000, lambda_wasserstein=0.5 + seed, sinkhorn_epsilon=0.05 * (seed + 1),
                   wasserstein_encoder_grad=bool(seed % 2),
                   model=ModelConfig(num_codes=64, num_levels=4),
                   data=DataConfig(dataset="npz:/data/sets/a-rather-long-path/images.npz"))
    return report.load_run(make_run(root, name, cfg, records + [end_record(100_000)]))


def comparison_numbers(run):
    """Every number the comparison shows of a run, as it formats it."""
    summary = report.summarize(run)
    numbers = {report._fmt(summary["final"][term]) for term in ("total", "recon")}
    numbers |= {report._fmt(summary["eval"]["heldout_recon"]), str(summary["steps_logged"])}
    numbers |= {report._fmt(level["eval_dead"]) for level in summary["levels"]}
    return numbers | {report._fmt(run.config[key]) for key in ("lambda_wasserstein",
                                                                "sinkhorn_epsilon")}


def shown_numbers(summary):
    """Every number the tables of one run show, as they format it."""
    numbers = {report._fmt(v) for v in summary["final"].values()}
    numbers |= {report._fmt(b[k]) for b in summary["best"].values() for k in ("value", "step")}
    numbers |= {report._fmt(v) for h in summary["history"] for v in h.values()}
    numbers |= {report._fmt(v) for level in summary["levels"] for k, v in level.items()
                if k not in ("eval_used", "heldout_used")}  # in the JSON only
    numbers.add(report._fmt(summary["steps_logged"]))
    return numbers


@pytest.mark.parametrize("width", [80, 120])
def test_no_value_is_cut_at_80_or_120_columns(tmp_path, width):
    runs = [awkward_run(tmp_path, "hybrid-sweep-20261123-101500-lambda-0.5", 0),
            awkward_run(tmp_path, "b", 1), awkward_run(tmp_path, "c", 2)]
    for shown in ([runs[0]], runs):
        text = plain(shown, width)
        assert "…" not in text
        assert max(map(cell_len, text.splitlines())) <= width
        if len(shown) == 1:
            numbers = shown_numbers(report.summarize(shown[0]))
            assert {"1.234e-05", "-0.5", "1.235e+04", "100000"} <= numbers  # the widest kinds
        else:
            numbers = set().union(*map(comparison_numbers, shown))
            assert {"0.15", "2.5", "100000"} <= numbers
        for number in numbers:
            assert re.search(rf"(?<![\w.]){re.escape(number)}(?![\w.])", text), number
    single = plain([runs[0]], width)
    assert "hybrid-sweep-20261123-101500-lambda-0.5" in single  # the heading never folds
    assert "npz:/data/sets/a-rather-long-path/images.npz" in single


def test_the_sparklines_shrink_to_fit_a_narrow_console(tmp_path):
    run = report.load_run(decreasing_run(tmp_path))
    for width in (200, 60):
        text = plain([run], width)
        trends = section(text, "trends over all 60 logged steps", "losses over the run")
        points = int(re.search(r"at up to (\d+) evenly spaced", " ".join(trends.split()))[1])
        assert points == 40 if width == 200 else report.MIN_TREND_POINTS < points < 40
        line = re.search(r"│ recon\s*│ (\S+) ", trends).group(1)
        assert len(line) == points and line[0] == "█" and line[-1] == "▁"
        assert max(map(cell_len, trends.splitlines())) == width if points < 40 else width > 80


def test_piped_output_is_80_columns_without_trailing_spaces(tmp_path, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = report.make_console(io.StringIO())
    assert console.width == report.PIPED_WIDTH == 80 and not console.is_terminal
    run = report.load_run(make_run(tmp_path, "run", tiny_cfg(lambda_wasserstein=0.5)))
    report.render([run], console)
    lines = console.file.getvalue().splitlines()
    assert len(lines) > 40 and max(map(len, lines)) <= 80
    assert [line for line in lines if line != line.rstrip()] == []

    monkeypatch.setenv("COLUMNS", "132")
    assert report.make_console(io.StringIO()).width == 132


def test_a_terminal_keeps_its_colours(tmp_path):
    styled = rendered(two_runs(tmp_path), styles=True)
    assert BOLD_GREEN in styled


# -- main ---------------------------------------------------------------------------------------


def test_main_prints_the_summaries_as_json(tmp_path, capsys):
    dirs = [make_run(tmp_path, "a", tiny_cfg()), make_run(tmp_path, "b", tiny_cfg(seed=1))]
    report.main(dirs, as_json=True, console=Console(record=True))
    printed = json.loads(capsys.readouterr().out)
    assert printed == [report.summarize(report.load_run(d)) for d in dirs]
    assert printed[1]["config"]["seed"] == 1 and "seed" not in printed[0]["config"]
    assert [s["status"] for s in printed] == ["completed", "completed"]


def test_main_renders_tables_and_stops_at_the_first_bad_directory(tmp_path, capsys):
    console = Console(file=io.StringIO(), record=True, width=200)
    report.main([make_run(tmp_path, "only", tiny_cfg())], as_json=False, console=console)
    assert "run only: step 40" in console.export_text()
    with pytest.raises(rundir.UserError, match="does not exist"):
        report.main([tmp_path / "only", tmp_path / "missing"], as_json=True, console=console)
    assert capsys.readouterr().out == ""


def test_a_run_without_records_is_skipped_with_a_note(tmp_path, capsys):
    make_run(tmp_path, "a-done", tiny_cfg())
    starting = make_run(tmp_path, "b-starting", tiny_cfg(), records=[])
    make_run(tmp_path, "c-died", tiny_cfg(), records=[])
    with rundir.Lock(starting):
        report.main([tmp_path], as_json=True, console=Console())
    out, err = capsys.readouterr()
    assert [s["run"] for s in json.loads(out)] == ["a-done"]
    assert re.search(r"note: skipped \S*b-starting is still starting", err)
    assert re.search(r"note: skipped \S*c-died crashed \(process ended without a final record\)",
                     err)
    with pytest.raises(report.NoRecords, match="c-died crashed"):
        report.main([tmp_path / "c-died"], as_json=True, console=Console())


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
    code = ("import rqvae.report, sys; bad = {'jax', 'flax', 'numpy'} & set(sys.modules); "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- sparklines, --last / --every, CSV, parent directories, the JSON schema ----------------------


def decreasing_run(root, name="long", steps=range(10, 610, 10), cfg=None):
    """Losses falling as 1/step (three decades for recon), an eval every 200 steps."""
    records = []
    for s in steps:
        records.append(train_record(s, 10 / s, 5 / s, 0.5 / s, 0.25, 0.0, used=(s % 8, 8),
                                    dead=(8 - s % 8, 0)))
        if s % 200 == 0:
            records.append(eval_record(s, 4 / s))
    return make_run(root, name, cfg or tiny_cfg(steps=steps[-1]), records)


def test_sparkline_follows_the_values():
    assert report.sparkline([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == "▁▂▃▄▅▆▇█"
    assert report.sparkline([100.0, 10.0, 1.0, 0.1]) == "█▆▃▁"  # three decades: log scale
    assert report.log_scaled([100.0, 0.1]) and not report.log_scaled([1.0, 9.0])
    assert not report.log_scaled([-1.0, 100.0])  # not all positive: linear
    assert len(report.sparkline([float(v) for v in range(1000)], width=40)) == 40
    assert report.sparkline([1.0, float("nan"), 2.0, None]) == "▁ █ "
    assert report.sparkline([0.5] * 3) == "▄▄▄"


@pytest.mark.parametrize("seed", range(5))
def test_a_monotone_series_gives_a_monotone_sparkline(seed):
    rng = random.Random(seed)
    values = sorted(rng.uniform(1e-4, 1.0) for _ in range(rng.randrange(2, 200)))
    line = report.sparkline(values)
    levels = [report.SPARKS.index(c) for c in line]
    assert levels == sorted(levels) and line[0] == "▁" and line[-1] == "█"
    assert len(line) == min(len(values), 40)


@pytest.mark.parametrize("last, every, expected", [
    (None, None, [10, 50, 100]),  # 4.5 rounds to even
    (3, None, [80, 90, 100]),
    (20, None, list(range(10, 110, 10))),
    (None, 30, [30, 60, 90, 100]),  # multiples of 30, and the last
    (None, 50, [50, 100]),  # the last is a multiple: not twice
    (None, 1000, [100]),
    (2, 30, [90, 100]),  # the last 2 of those every 30 keeps
])
def test_select_chooses_the_last_n_multiples_of_k_or_evenly_spaced_steps(last, every, expected):
    steps = list(range(10, 110, 10))
    indices = report.select(steps, points=3, last=last, every=every)
    assert [steps[i] for i in indices] == expected


def test_the_trends_table_has_a_sparkline_per_term_and_for_heldout_recon(tmp_path):
    text = rendered([report.load_run(decreasing_run(tmp_path))])
    trends = section(text, "trends over all 60 logged steps (step 10 to 600)", "losses over the")
    lines = {term: re.search(rf"│ {term}\s*│ (\S+) ", trends) for term in report.LOSS_TERMS}
    assert lines["wasserstein"] is None  # the OT term was off
    for term in ("total", "recon", "commit"):
        line = lines[term].group(1)
        levels = [report.SPARKS.index(c) for c in line]
        assert len(line) == 40 and levels == sorted(levels, reverse=True)
        assert line[0] == "█" and line[-1] == "▁"
    assert re.search(r"│ recon\s*│ \S+\s*│\s*0\.008333 │\s*0\.5 │\s*log │", trends)
    assert re.search(r"│ codebook\s*│ ▄+\s*│\s*0\.25 │\s*0\.25 │\s*linear │", trends)
    # held-out recon 4/200, 4/400, 4/600 at the run's three evals
    assert re.search(r"│ heldout\s*│ █▃▁\s*│\s*0\.006667 │\s*0\.02 │\s*linear │", trends)


def test_last_and_every_choose_the_rows_of_the_tables_over_the_run(tmp_path):
    run = report.load_run(decreasing_run(tmp_path))
    history = section(rendered([run], points=8), "losses over the run", "codebook health over")
    assert [r.split()[1] for r in rows_of(history, r"\d+")] == [
        "10", "90", "180", "260", "350", "430", "520", "600"]

    console = Console(file=io.StringIO(), record=True, width=200)
    report.main([run.path], as_json=False, console=console, last=2)
    text = console.export_text()
    history, health = section(text, "losses over the run (the last 2 logged steps)").split(
        "codebook health over the run (the last 2 logged steps)")
    assert [r.split()[1] for r in rows_of(history, r"\d+")] == ["590", "600"]
    assert [r.split()[1] for r in rows_of(health, r"\d+")] == ["590", "600"]
    # used (590 % 8 = 6, 8) of 8 codes in %, perplexity and dead per level
    assert re.search(r"│\s*590 │\s*75 / 100 │\s*4\.25 / 2\.75 │\s*2 / 0 │", health)

    console = Console(file=io.StringIO(), record=True, width=200)
    report.main([run.path], as_json=False, console=console, every=250)
    text = console.export_text()
    assert "losses over the run (logged steps at multiples of 250, and the last)" in text
    history = section(text, "losses over the run", "codebook health over")
    assert [r.split()[1] for r in rows_of(history, r"\d+")] == ["250", "500", "600"]


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
                       "train_used_L1", "train_dead_L1", "train_perplexity_L1", "heldout_used_L1",
                       "heldout_perplexity_L1", "train_used_L2", "train_dead_L2",
                       "train_perplexity_L2", "heldout_used_L2", "heldout_perplexity_L2"]
    assert [(r[0], r[1], r[16]) for r in rows[1:]] == [
        ("a-plain", "10", "train"), ("a-plain", "20", "train"), ("b-hybrid", "10", "train"),
        ("b-hybrid", "20", "train"), ("b-hybrid", "20", "eval"), ("b-hybrid", "30", "train")]
    assert rows[1] == ["a-plain", "10", "0.1", "0.2", "0.1", "0.1", "0.2", "0.0",
                       "5", "2", "4.25", "", "3", "4", "2.75", "", "train", "", "",
                       *[""] * 10]
    assert rows[4][3:5] == [repr(1 / 20), repr(0.5 / 20)] and rows[4][11] == "0.0125"
    assert rows[5][2:16] == [repr(20 / 90), *[""] * 13]
    assert rows[5][16:] == ["eval", "0.5", "18.5", "7", "1", "6.5", "7", "6.25",
                            "5", "3", "4.125", "5", "3.875"]

    report.main([tmp_path / "a-plain"], as_json=False, console=Console(), as_csv=True)
    header = capsys.readouterr().out.splitlines()[0]
    assert "sinkhorn" not in header and header.endswith("perplexity_L2,kind,heldout_recon,"
                                                        "heldout_psnr")


def test_a_parent_directory_stands_for_every_run_in_it(tmp_path, capsys):
    for name in ("b-run", "a-run"):
        make_run(tmp_path, name, tiny_cfg())
    (tmp_path / "notes").mkdir()  # no run: not reported
    assert report.find_runs([tmp_path]) == [tmp_path / "a-run", tmp_path / "b-run"]
    assert report.find_runs([tmp_path / "a-run", tmp_path]) == [
        tmp_path / "a-run", tmp_path / "a-run", tmp_path / "b-run"]
    report.main([tmp_path], as_json=True, console=Console())
    assert [s["run"] for s in json.loads(capsys.readouterr().out)] == ["a-run", "b-run"]
    text = rendered([report.load_run(p) for p in report.find_runs([tmp_path])])
    assert "2 runs side by side" in text
    with pytest.raises(rundir.UserError, match=r"notes holds no metrics.jsonl; pass a directory"):
        report.main([tmp_path / "notes"], as_json=True, console=Console())


def documented_json_keys() -> dict[str, set]:
    """{top-level key: its documented sub-keys} from the `--json` list in report's docstring."""
    keys, parent = {}, None
    for line in report.__doc__.split("`--json`")[1].splitlines():
        if match := re.match(r"(  )?- ([\w, ]+):", line):
            names = set(match.group(2).split(", "))
            if match.group(1):
                keys[parent] |= names
            else:
                (parent,) = names
                keys[parent] = set()
    return keys


def test_the_json_keys_are_the_documented_ones(tmp_path):
    records = [json.loads(line) for line in
               (decreasing_run(tmp_path, "x") / rundir.METRICS_FILE).read_text().splitlines()]
    records.insert(5, {"kind": "resume", "step": 40, "time": 1.0, "changed": {"seed": [0, 1]}})
    run_dir = make_run(tmp_path, "run", tiny_cfg(steps=600, lambda_wasserstein=0.5), records)
    summary = report.summarize(report.load_run(run_dir))
    documented = documented_json_keys()
    assert set(documented) == set(summary)
    assert {"run", "path", "config", "steps_logged", "final", "best", "levels", "eval",
            "history", "health"} <= set(summary)  # the keys of earlier releases stay
    for key in ("levels", "history", "health", "heldout_history", "resumes"):
        assert documented[key] == set().union(*summary[key]), key
    for key in ("eval", "best_heldout"):
        assert documented[key] == set(summary[key]), key
    assert set(summary["final"]) == set(summary["best"]) == set(report.LOSS_TERMS)


@pytest.mark.parametrize("dump", [json.dumps, lambda r: json.dumps(dict(sorted(r.items())))])
def test_a_log_in_another_json_layout_gives_the_same_summary(tmp_path, dump):
    compact = decreasing_run(tmp_path, "compact", cfg=tiny_cfg(steps=600, lambda_wasserstein=0.5))
    other = tmp_path / "other"
    other.mkdir()
    (other / rundir.CONFIG_FILE).write_bytes((compact / rundir.CONFIG_FILE).read_bytes())
    lines = (compact / rundir.METRICS_FILE).read_text().splitlines()
    (other / rundir.METRICS_FILE).write_text("".join(dump(json.loads(line)) + "\n"
                                                     for line in lines))
    for options in ({}, {"last": 3}, {"every": 70}):
        summaries = [report.summarize(report.load_run(d), **options) for d in (compact, other)]
        for summary in summaries:
            del summary["run"], summary["path"]
        assert summaries[0] == summaries[1]
        assert summaries[0]["best"]["total"] == {"value": 10 / 600, "step": 600}
