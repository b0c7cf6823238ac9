"""Finding and loading run directories, and a run's status. No JAX."""

import json
import random

import pytest
from synthetic_runs import (
    TRAIN_LOSSES,
    end_record,
    eval_record,
    make_run,
    rendered,
    rows_of,
    tiny_cfg,
    train_record,
)

from rqvae.reports.runs import NoRecords, find_runs, finite_extremes, load_run, load_runs
from rqvae.reports.summary import summarize
from rqvae.trainer import config, rundir, runlog
from rqvae.trainer.errors import ConfigError, UserError

# -- load_run ---------------------------------------------------------------------------------


def test_load_run_splits_the_records_and_reads_the_config_through_config_load(tmp_path):
    run = load_run(make_run(tmp_path, "hybrid", tiny_cfg(lambda_wasserstein=0.5)))
    assert run.name == "hybrid" and run.path == tmp_path / "hybrid"
    assert [r["step"] for r in run.train] == [10, 20, 30, 40]
    assert [r["step"] for r in run.evals] == [30, 40]
    assert run.config == config.flatten(config.to_dict(tiny_cfg(lambda_wasserstein=0.5)))
    assert run.config_note is None and run.status == "completed"


def test_a_run_without_config_toml_loads_with_an_empty_config_and_a_note(tmp_path):
    run = load_run(make_run(tmp_path, "bare"))
    assert run.config == {} and run.config_note == "no config.toml in the run directory"
    summary = summarize(run)
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
    run = load_run(run_dir)
    assert run.config == {} and named in run.config_note
    assert "config.toml does not load" in run.config_note
    assert named in rendered([run]) and summarize(run)["final"]["recon"] == 0.35


def test_a_cut_off_last_line_is_skipped(tmp_path):
    run_dir = make_run(tmp_path, "writing", tiny_cfg(), records=[
        train_record(*TRAIN_LOSSES[0]), train_record(*TRAIN_LOSSES[1])])
    with open(run_dir / rundir.METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(train_record(*TRAIN_LOSSES[2]))[:40])
    run = load_run(run_dir)
    assert [r["step"] for r in run.train] == [10, 20]
    assert summarize(run)["final"]["total"] == TRAIN_LOSSES[1][1]


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "run directory {d} does not exist; pass a directory written by `rqvae train`"),
    (lambda d: d.write_text("x"), "{d} is not a directory"),
    (lambda d: d.mkdir(), "{d} holds no metrics.jsonl; pass a directory written by `rqvae train`"),
])
def test_paths_that_are_no_run_raise_one_line_user_errors(tmp_path, make, message):
    run_dir = tmp_path / "run"
    make(run_dir)
    with pytest.raises(UserError) as err:
        load_run(run_dir)
    assert not isinstance(err.value, ConfigError)
    assert message.format(d=run_dir) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("log", ["", '{"kind": "train", "st', '{"kind":"eval","step":5}\n'])
def test_a_run_without_train_records_that_no_process_holds_crashed(tmp_path, log):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / rundir.METRICS_FILE).write_text(log)
    with pytest.raises(NoRecords, match=r"crashed \(process ended without a final record\) "
                                               r"before its first train record"):
        load_run(run_dir)


def test_a_held_run_without_records_is_still_starting(tmp_path):
    run_dir = make_run(tmp_path, "new", tiny_cfg(), records=[])
    with rundir.Lock(run_dir):
        with pytest.raises(NoRecords, match="new is still starting: no train record yet"):
            load_run(run_dir)


def test_a_run_that_failed_before_its_first_train_record_says_why(tmp_path):
    run_dir = make_run(tmp_path, "bad", tiny_cfg(), records=[end_record(0, "failed", "no data")])
    with pytest.raises(NoRecords, match="bad failed before its first train record: no data"):
        load_run(run_dir)


def test_a_parent_of_runs_is_named_with_the_runs_below_it(tmp_path):
    make_run(tmp_path, "a", tiny_cfg())
    make_run(tmp_path, "b", tiny_cfg())
    below = r"holds no metrics.jsonl but 2 run\(s\) below it \(a, b\)"
    with pytest.raises(UserError, match=below):
        load_run(tmp_path)


def test_a_folder_of_runs_and_sweeps_stands_for_every_run_below_it(tmp_path):
    make_run(tmp_path, "a", tiny_cfg())
    for sweep in ("sw1", "sw2"):  # sweep folders: runs, sweep.json and logs/ side by side
        (tmp_path / sweep).mkdir()
        (tmp_path / sweep / "logs").mkdir()
        (tmp_path / sweep / "sweep.json").write_text("{}")
        for name in ("lw0-seed0", f"only-{sweep}"):
            make_run(tmp_path / sweep, name, tiny_cfg())
    (tmp_path / "a" / "checkpoints" / "nested").mkdir(parents=True)  # a run is not entered
    found = find_runs([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a", "sw1/lw0-seed0", "sw1/only-sw1", "sw2/lw0-seed0", "sw2/only-sw2"]
    runs, _ = load_runs(found)
    assert [run.name for run in runs] == ["a", "sw1/lw0-seed0", "only-sw1", "sw2/lw0-seed0",
                                          "only-sw2"]
    # runs/sw1/* names the sweep's own sweep.json and logs/ too: they are no runs, and no error.
    assert find_runs(sorted((tmp_path / "sw1").iterdir())) == [tmp_path / "sw1" / "lw0-seed0",
                                                               tmp_path / "sw1" / "only-sw1"]


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
            run = load_run(run_dir)
    else:
        run = load_run(run_dir)
    summary = summarize(run)
    assert summary["status"] == run.status == status
    heading = rendered([run]).splitlines()[0]
    assert heading.startswith(f"run run: step 30 of 40, {status}")
    if status in ("interrupted", "failed"):
        reason = ending[0]["reason"]
        assert f"({reason})" in heading and summary["status_reason"] == reason
    if status == "crashed":
        assert "crashed (process ended without a final record)" in heading


@pytest.mark.parametrize("heldout, constant, status", [
    (0.0812, 0.0727, "collapsed"),  # worse than the training mean: an all-black output's 0.114
    (0.0727, 0.0727, "collapsed"),  # no better
    (0.0412, 0.0727, "completed"),
    (0.0812, None, "completed"),  # a log from before the figure was recorded: nothing to say
])
def test_a_completed_run_no_better_than_a_constant_output_collapsed(tmp_path, heldout,
                                                                    constant, status):
    last_eval = eval_record(40, heldout)
    if constant is not None:
        last_eval["constant_recon"] = constant
    records = [train_record(*losses) for losses in TRAIN_LOSSES] + [last_eval, end_record(40)]
    run = load_run(make_run(tmp_path, "run", tiny_cfg(), records))
    assert run.status == summarize(run)["status"] == status
    heading = rendered([run]).splitlines()[0]
    if status == "collapsed":
        assert heading.startswith(f"run run: step 40 of 40, collapsed (held-out recon {heldout} "
                                  f"is no better than a constant output's ({constant}, the "
                                  f"training mean))")


def test_an_old_log_without_end_records_that_reached_its_steps_completed(tmp_path):
    records = [train_record(*losses) for losses in TRAIN_LOSSES]
    assert load_run(make_run(tmp_path, "old", tiny_cfg(), records)).status == "completed"
    assert load_run(make_run(tmp_path, "short", tiny_cfg(steps=50), records)).status == \
        "crashed"


def test_repeated_steps_are_marked(tmp_path):
    records = [train_record(*losses) for losses in TRAIN_LOSSES]
    records.insert(2, train_record(20, 0.65, 0.4, 0.03, 0.12, 0.02))  # step 20 twice
    run_dir = make_run(tmp_path, "joined", tiny_cfg(), records + [end_record(40)])
    run = load_run(run_dir)
    summary = summarize(run)
    assert summary["repeated_steps"] == [20] and summary["status"] == "completed"
    assert "completed; repeated steps: 20 (logged twice)" in rendered([run]).splitlines()[0]
    other = load_run(make_run(tmp_path, "other", tiny_cfg()))
    assert summarize(other)["repeated_steps"] == []
    (row,) = rows_of(rendered([run, other]), "joined")
    assert "completed, repeated steps" in row


# -- finite_extremes --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_finite_extremes_are_those_of_the_finite_numbers(seed):
    rng = random.Random(seed)
    pool = [0.5, 1.0, 0, 1, 2.5, -3, 0.0, True, False, None, "1.0", [1], float("nan"),
            float("inf"), float("-inf")]
    for _ in range(3000):
        values = tuple(rng.choice(pool) for _ in range(rng.randrange(7)))
        finite = [v for v in values if runlog.is_finite(v)]
        expected = (min(finite), values.index(min(finite)), max(finite)) if finite else None
        assert repr(finite_extremes(values)) == repr(expected), values
