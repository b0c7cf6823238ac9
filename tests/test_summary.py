"""`summarize` and `select`: one run's `--json` summary, and its documented keys. No JAX."""

import json
import re

import pytest
from synthetic_runs import (
    TRAIN_LOSSES,
    decreasing_run,
    default_records,
    eval_record,
    make_run,
    rendered,
    rows_of,
    section,
    subdir,
    tiny_cfg,
    train_record,
)

import rqvae.reports.summary
from rqvae.reports.runs import load_run
from rqvae.reports.summary import select, summarize
from rqvae.trainer import config, rundir
from rqvae.trainer.compat import BEFORE_KEY_EXISTED, MOVED, NESTED_BEFORE_KEY_EXISTED
from rqvae.trainer.config import TrainerConfig
from rqvae.trainer.runlog import LOSS_TERMS

ALWAYS_SHOWN = {"loss.lambda_wasserstein", "loss.lambda_codebook", "loss.lambda_commit",
                "steps", "model.num_levels", "model.num_codes", "data.dataset"}


# -- summarize --------------------------------------------------------------------------------


def test_final_lowest_and_best_heldout(tmp_path):
    summary = summarize(load_run(make_run(tmp_path, "run", tiny_cfg())))
    assert summary["run"] == "run" and summary["path"] == str(tmp_path / "run")
    assert summary["steps_logged"] == 40
    assert summary["final"] == dict(zip(LOSS_TERMS, TRAIN_LOSSES[-1][1:]))
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
    summary = summarize(load_run(make_run(tmp_path, "r", tiny_cfg(), records)))
    assert summary["best"]["total"] == {"value": 0.90, "step": 10}
    assert summary["best"]["recon"] == {"value": 0.1, "step": 20}
    assert summary["best_heldout"] == {"step": 10, "heldout_recon": 0.5}


def test_config_brief_is_the_changed_keys_plus_the_always_shown_ones(tmp_path):
    cfg = config.replace(TrainerConfig(), {
        "optimizer.learning_rate": 3e-4, "loss.lambda_wasserstein": 0.5, "transport.iters": 200,
        "model.latent_dim": 8, "model.num_codes": 64, "run.run_dir": str(tmp_path / "run"),
        "run.eval_every": 500})
    brief = summarize(load_run(make_run(tmp_path, "run", cfg)))["config"]
    # transport.iters and num_codes are at their defaults; run.run_dir is the run's own path.
    assert set(brief) == ALWAYS_SHOWN | {"optimizer.learning_rate", "model.latent_dim",
                                         "run.eval_every"}
    shown = rqvae.reports.summary.ALWAYS_SHOWN
    assert list(brief)[: len(shown)] == list(shown)
    assert brief["optimizer.learning_rate"] == 3e-4 and brief["model.latent_dim"] == 8
    assert brief["run.eval_every"] == 500 and brief["loss.lambda_wasserstein"] == 0.5
    assert brief["loss.lambda_codebook"] == 1.0 and brief["data.dataset"] == "digits"


def test_a_partial_config_toml_shows_defaults_for_the_always_shown_keys(tmp_path):
    run_dir = make_run(tmp_path, "partial", None)
    (run_dir / rundir.CONFIG_FILE).write_text("lambda_codebook = 0.0\n[model]\nnum_codes = 16\n")
    brief = summarize(load_run(run_dir))["config"]
    # A key the file lacks takes its default, except those added to the flat format after runs
    # were first saved: a run without them trained with their earlier values. Those of them still
    # settings differ from the defaults; the retired ones are not shown.
    later = {MOVED[k]: v for k, v in BEFORE_KEY_EXISTED.items() if k in MOVED}
    later.update(NESTED_BEFORE_KEY_EXISTED)
    assert set(brief) == ALWAYS_SHOWN | set(later)
    assert {key: brief[key] for key in later} == later
    assert brief["loss.lambda_codebook"] == 0 and brief["model.num_codes"] == 16
    assert brief["steps"] == TrainerConfig().steps


def test_levels_take_window_counts_from_train_and_dead_codes_from_the_last_eval(tmp_path):
    records = [train_record(*TRAIN_LOSSES[0], used=(6, 2), dead=(2, 6)), eval_record(10, 0.5),
               eval_record(10, 0.4, dead=(0, 5))]
    run = load_run(make_run(tmp_path, "run", tiny_cfg(lambda_wasserstein=0.5), records))
    assert summarize(run)["levels"] == [  # the JSON keeps the first release's names
        {"level": 1, "used": 6, "perplexity": 4.25, "dead": 2, "eval_used": 8, "eval_dead": 0,
         "eval_perplexity": 6.5, "heldout_used": 7, "heldout_perplexity": 6.25,
         "sinkhorn_marginal_error": 0.0125, "transport_cost": 0.25, "solve_epsilon": 0.0125,
         "anchor_stale": 3, "wasserstein_levels": 0.25, "sinkhorn_epsilon": 0.0125},
        {"level": 2, "used": 2, "perplexity": 2.75, "dead": 6, "eval_used": 3, "eval_dead": 5,
         "eval_perplexity": 4.125, "heldout_used": 5, "heldout_perplexity": 3.875,
         "sinkhorn_marginal_error": 0.0375, "transport_cost": 0.125, "solve_epsilon": 0.00625,
         "anchor_stale": 0, "wasserstein_levels": 0.125, "sinkhorn_epsilon": 0.00625},
    ]


def test_levels_without_an_eval_or_wasserstein_have_only_window_counts(tmp_path):
    records = [train_record(10, 0.9, 0.6, 0.05, 0.2, 0.0)]
    summary = summarize(load_run(make_run(tmp_path, "run", tiny_cfg(), records)))
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
    new = summarize(load_run(make_run(tmp_path, "run", tiny_cfg())))
    old_dir = make_run(subdir(tmp_path, "old"), "run", tiny_cfg(),
                       [old_names(r) for r in default_records()])
    old = summarize(load_run(old_dir))
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
    run = load_run(make_run(tmp_path, "run", tiny_cfg(), records))
    history = summarize(run, points=points)["history"]
    assert [h["step"] for h in history] == expected
    assert all(h["total"] == 1 / h["step"] and set(h) == {"step", *LOSS_TERMS}
               for h in history)


def test_resumes_come_from_the_log_or_else_from_resumes_jsonl(tmp_path):
    records = default_records()
    records.insert(2, {"kind": "resume", "step": 20, "time": 3.0,
                       "changed": {"lambda_wasserstein": [0.0, 0.5], "steps": [20, 40]}})
    logged = load_run(make_run(tmp_path, "logged", tiny_cfg(), records))
    assert summarize(logged)["resumes"] == [
        {"step": 20, "changed": {"lambda_wasserstein": [0.0, 0.5], "steps": [20, 40]}}]
    text = rendered([logged])
    (row,) = rows_of(section(text, "resumed 1 time(s)", "\nlosses\n"), "20")
    assert "lambda_wasserstein: 0 -> 0.5; steps: 20 -> 40" in row

    filed = make_run(tmp_path, "filed", tiny_cfg())
    rundir.record_resume(filed, 30, {"learning_rate": [0.001, 0.0005]})
    assert summarize(load_run(filed))["resumes"] == [
        {"step": 30, "changed": {"learning_rate": [0.001, 0.0005]}}]
    assert "resumed" not in rendered([load_run(make_run(tmp_path, "never", tiny_cfg()))])


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
    indices = select(steps, points=3, last=last, every=every)
    assert [steps[i] for i in indices] == expected


# -- the JSON schema --------------------------------------------------------------------------


def documented_json_keys() -> dict[str, set]:
    """{top-level key: its documented sub-keys} from the `--json` list in report's docstring."""
    keys, parent = {}, None
    for line in rqvae.reports.summary.__doc__.split("`--json`")[1].splitlines():
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
    for record in records:  # what evals log today (shared_dead: a shared codebook's)
        if record["kind"] == "eval":
            record.update(constant_recon=0.07, tuples_unique=12, tuples_shared=30,
                          tuples_largest_group=4, shared_dead=3)
    run_dir = make_run(tmp_path, "run", tiny_cfg(steps=600, lambda_wasserstein=0.5), records)
    summary = summarize(load_run(run_dir))
    documented = documented_json_keys()
    assert set(documented) == set(summary)
    assert {"run", "path", "config", "steps_logged", "final", "best", "levels", "eval",
            "history", "health"} <= set(summary)  # the keys of earlier releases stay
    for key in ("levels", "history", "health", "heldout_history", "resumes"):
        assert documented[key] == set().union(*summary[key]), key
    for key in ("eval", "best_heldout"):
        assert documented[key] == set(summary[key]), key
    assert set(summary["final"]) == set(summary["best"]) == set(LOSS_TERMS)


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
        summaries = [summarize(load_run(d), **options) for d in (compact, other)]
        for summary in summaries:
            del summary["run"], summary["path"]
        assert summaries[0] == summaries[1]
        assert summaries[0]["best"]["total"] == {"value": 10 / 600, "step": 600}
