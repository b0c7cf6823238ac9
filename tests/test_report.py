"""`rqvae report` on synthetic run directories: summaries, tables, comparisons, errors. No JAX."""

import csv
import io
import json
import random
import re
import subprocess
import sys

import pytest
from rich.console import Console

from rqvae import config, report, runlog
from rqvae.config import ConfigError, ModelConfig, RunConfig, TrainerConfig

BOLD_GREEN = "\x1b[1;32m"
ALWAYS_SHOWN = {"lambda_wasserstein", "lambda_codebook", "lambda_commit", "steps",
                "model.num_levels", "model.num_codes", "data.dataset"}

# Losses that are not monotone, so the best value of a term is not the final one.
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
            "used": list(used), "perplexity": [4.25, 2.75], "dead": list(dead),
            "sinkhorn_marginal_error": [0.0125, 0.0375]}


def eval_record(step, heldout_recon, *, dead=(1, 3)):
    return {"kind": "eval", "step": step, "time": step / 90, "heldout_recon": heldout_recon,
            "used": [8 - d for d in dead], "perplexity": [6.5, 4.125], "dead": list(dead),
            "heldout_perplexity": [6.25, 3.875]}


def make_run(root, name, cfg=None, records=None):
    """A run directory as `rqvae train` writes it; cfg=None writes no config.toml."""
    run_dir = root / name
    run_dir.mkdir()
    if cfg is not None:
        (run_dir / runlog.CONFIG_FILE).write_text(config.dumps(cfg))
    if records is None:
        records = [train_record(*losses) for losses in TRAIN_LOSSES]
        records.insert(3, eval_record(30, 0.38))
        records.append(eval_record(40, 0.3625))
    with runlog.RunLog(run_dir) as log:
        for record in records:
            log.write(record)
    return run_dir


def tiny_cfg(run_dir="", **changes):
    return TrainerConfig(**{"steps": 40, "model": ModelConfig(num_codes=8),
                            "run": RunConfig(run_dir=str(run_dir), dead_window=10), **changes})


def rendered(runs, styles=False, points=8):
    console = Console(file=io.StringIO(), record=True, width=200, force_terminal=True,
                      color_system="standard")
    report.render(runs, console, points=points)
    return console.export_text(styles=styles)


def rows_of(text, first_cell):
    return [line for line in text.splitlines() if re.match(rf"[│|]\s*{first_cell}\s*[│|]", line)]


# -- load_run ---------------------------------------------------------------------------------


def test_load_run_splits_train_and_eval_records_and_flattens_the_config(tmp_path):
    run = report.load_run(make_run(tmp_path, "hybrid", tiny_cfg(lambda_wasserstein=0.5)))
    assert run.name == "hybrid" and run.path == tmp_path / "hybrid"
    assert [r["step"] for r in run.train] == [10, 20, 30, 40]
    assert [r["step"] for r in run.evals] == [30, 40]
    assert run.config["lambda_wasserstein"] == 0.5 and run.config["model.num_codes"] == 8


def test_a_run_without_config_toml_loads_with_an_empty_config(tmp_path):
    run = report.load_run(make_run(tmp_path, "bare"))
    assert run.config == {}
    summary = report.summarize(run)
    assert summary["config"] == {}
    assert summary["final"]["total"] == TRAIN_LOSSES[-1][1]
    assert "bare" in rendered([run])


def test_a_cut_off_last_line_is_skipped(tmp_path):
    run_dir = make_run(tmp_path, "writing", tiny_cfg(), records=[
        train_record(*TRAIN_LOSSES[0]), train_record(*TRAIN_LOSSES[1])])
    with open(run_dir / runlog.METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(train_record(*TRAIN_LOSSES[2]))[:40])
    run = report.load_run(run_dir)
    assert [r["step"] for r in run.train] == [10, 20]
    assert report.summarize(run)["final"]["total"] == TRAIN_LOSSES[1][1]


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "run directory {d} does not exist; pass a directory written by `rqvae train`"),
    (lambda d: d.write_text("x"), "{d} is not a directory"),
    (lambda d: d.mkdir(), "{d} holds no metrics.jsonl; pass a directory written by `rqvae train`"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("")), "holds no train records yet"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"kind": "train", "st')),
     "holds no train records yet"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"kind":"eval","step":5}\n')),
     "holds no train records yet"),
])
def test_bad_run_directories_raise_one_line_config_errors(tmp_path, make, message):
    run_dir = tmp_path / "run"
    make(run_dir)
    with pytest.raises(ConfigError) as err:
        report.load_run(run_dir)
    assert message.format(d=run_dir) in str(err.value)
    assert "\n" not in str(err.value)


def test_a_parent_of_runs_is_named_with_the_runs_below_it(tmp_path):
    make_run(tmp_path, "a", tiny_cfg())
    make_run(tmp_path, "b", tiny_cfg())
    below = r"holds no metrics.jsonl but 2 run\(s\) below it \(a, b\)"
    with pytest.raises(ConfigError, match=below):
        report.load_run(tmp_path)


def test_an_invalid_config_toml_is_a_config_error(tmp_path):
    run_dir = make_run(tmp_path, "broken", tiny_cfg())
    (run_dir / runlog.CONFIG_FILE).write_text("steps = = 3\n")
    with pytest.raises(ConfigError, match="config.toml is not valid TOML"):
        report.load_run(run_dir)


# -- summarize --------------------------------------------------------------------------------


def test_final_and_best_are_the_last_record_and_the_minimum_of_each_term(tmp_path):
    summary = report.summarize(report.load_run(make_run(tmp_path, "run", tiny_cfg())))
    assert summary["run"] == "run" and summary["path"] == str(tmp_path / "run")
    assert summary["steps_logged"] == 40
    last = TRAIN_LOSSES[-1]
    assert summary["final"] == dict(zip(report.LOSS_TERMS, last[1:]))
    assert summary["best"] == {
        "total": {"value": 0.55, "step": 30},
        "recon": {"value": 0.33, "step": 30},
        "commit": {"value": 0.030, "step": 20},
        "codebook": {"value": 0.11, "step": 30},
        "wasserstein": {"value": 0.022, "step": 40},
    }
    assert summary["eval"] == {"step": 40, "heldout_recon": 0.3625}


def test_best_ignores_non_finite_values(tmp_path):
    records = [train_record(*TRAIN_LOSSES[0]), train_record(20, float("nan"), 0.1, 0.01, 0.1, 0.0)]
    summary = report.summarize(report.load_run(make_run(tmp_path, "r", tiny_cfg(), records)))
    assert summary["best"]["total"] == {"value": 0.90, "step": 10}
    assert summary["best"]["recon"] == {"value": 0.1, "step": 20}


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
    (run_dir / runlog.CONFIG_FILE).write_text("lambda_codebook = 0\n[model]\nnum_codes = 16\n")
    brief = report.summarize(report.load_run(run_dir))["config"]
    assert set(brief) == ALWAYS_SHOWN
    assert brief["lambda_codebook"] == 0 and brief["model.num_codes"] == 16
    assert brief["steps"] == TrainerConfig().steps


def test_levels_take_window_counts_from_train_and_dead_codes_from_the_last_eval(tmp_path):
    records = [train_record(*TRAIN_LOSSES[0], used=(6, 2), dead=(2, 6)), eval_record(10, 0.5),
               eval_record(10, 0.4, dead=(0, 5))]
    run = report.load_run(make_run(tmp_path, "run", tiny_cfg(lambda_wasserstein=0.5), records))
    assert report.summarize(run)["levels"] == [
        {"level": 1, "used": 6, "perplexity": 4.25, "dead": 2, "eval_used": 8, "eval_dead": 0,
         "eval_perplexity": 6.5, "heldout_perplexity": 6.25, "sinkhorn_marginal_error": 0.0125},
        {"level": 2, "used": 2, "perplexity": 2.75, "dead": 6, "eval_used": 3, "eval_dead": 5,
         "eval_perplexity": 4.125, "heldout_perplexity": 3.875, "sinkhorn_marginal_error": 0.0375},
    ]


def test_levels_without_an_eval_or_wasserstein_have_only_window_counts(tmp_path):
    records = [train_record(10, 0.9, 0.6, 0.05, 0.2, 0.0)]
    summary = report.summarize(report.load_run(make_run(tmp_path, "run", tiny_cfg(), records)))
    assert summary["eval"] is None
    assert summary["levels"] == [{"level": 1, "used": 5, "perplexity": 4.25, "dead": 2},
                                 {"level": 2, "used": 3, "perplexity": 2.75, "dead": 4}]


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


# -- render -----------------------------------------------------------------------------------


def test_one_run_shows_its_config_losses_health_and_history(tmp_path):
    run = report.load_run(make_run(tmp_path, "hybrid-run", tiny_cfg(lambda_wasserstein=0.5)))
    text = rendered([run])
    assert "run hybrid-run: step 40 of 40" in text
    assert re.search(r"lambda_wasserstein\s*│\s*0\.5", text)
    final = rows_of(text, r"final \(step 40\)")[0]
    assert re.findall(r"[\d.]+", final)[1:] == ["0.61", "0.35", "0.036", "0.15", "0.022"]
    best = rows_of(text, "best")[0]
    assert re.findall(r"[\d.]+", best) == ["0.55", "0.33", "0.03", "0.11", "0.022"]
    assert "held-out recon 0.3625 at step 40" in text
    for header in ("dead (last 10 steps)", "dead (full pass)", "perplexity (full pass)",
                   "heldout perplexity", "Sinkhorn marginal error"):
        assert header in text
    # level, used, perplexity, dead (window), dead (full pass), perplexity (full pass), heldout
    assert re.findall(r"[\d.]+", rows_of(text, "2")[0]) == ["2", "3", "2.75", "4", "3", "4.125",
                                                           "3.875", "0.0375"]
    history = text.split("losses over the run")[1].split("codebook health over the run")[0]
    history_steps = [re.findall(r"[\d.]+", row)[0] for row in rows_of(history, r"\d\d")]
    assert history_steps == ["10", "20", "30", "40"]
    assert len(re.findall(r"┃\s*wasserstein\s*┃", text)) == 2  # losses and history tables


def test_the_wasserstein_column_is_left_out_of_runs_without_it(tmp_path):
    records = [train_record(s, 1 / s, 0.5 / s, 0.1, 0.2, 0.0) for s in (10, 20)]
    text = rendered([report.load_run(make_run(tmp_path, "plain", tiny_cfg(), records))])
    assert "lambda_wasserstein" in text
    assert not re.search(r"┃\s*wasserstein\s*┃", text)
    assert "wasserstein" not in text.split("losses: final and best")[1]
    assert "no eval record yet" in text and "dead (full pass)" not in text


def test_a_run_name_with_brackets_is_shown_verbatim(tmp_path):
    run = report.load_run(make_run(tmp_path, "sweep[bold]", tiny_cfg()))
    assert "run sweep[bold]: step 40" in rendered([run])


def test_several_runs_give_one_comparison_table_with_the_best_in_bold_green(tmp_path):
    good = make_run(tmp_path, "hybrid", tiny_cfg(lambda_wasserstein=0.5), records=[
        train_record(40, 0.50, 0.30, 0.03, 0.11, 0.02), eval_record(40, 0.3125, dead=(0, 1))])
    bad = make_run(tmp_path, "traditional", tiny_cfg(), records=[
        train_record(40, 0.75, 0.45, 0.04, 0.13, 0.0), eval_record(40, 0.5625, dead=(3, 5))])
    runs = [report.load_run(good), report.load_run(bad)]
    text = rendered(runs)
    assert text.count("2 runs side by side") == 1 and "losses over the run" not in text
    (good_row,), (bad_row,) = rows_of(text, "hybrid"), rows_of(text, "traditional")
    assert re.findall(r"[\d.]+", good_row) == ["1", "0.5", "40", "0.5", "0.3", "0.3125", "0", "1"]
    assert re.findall(r"[\d.]+", bad_row) == ["1", "0", "40", "0.75", "0.45", "0.5625", "3", "5"]

    styled = rendered(runs, styles=True)
    (good_styled,) = [line for line in styled.splitlines() if "hybrid" in line]
    (bad_styled,) = [line for line in styled.splitlines() if "traditional" in line]
    assert good_styled.count(BOLD_GREEN) == 4  # final recon, heldout, dead L1, L2 (not the total)
    assert BOLD_GREEN not in bad_styled


def test_the_comparison_uses_window_counts_for_a_run_without_an_eval(tmp_path):
    evaluated = make_run(tmp_path, "evaluated", tiny_cfg(), records=[
        train_record(40, 0.5, 0.3, 0.03, 0.11, 0.0, dead=(7, 7)),
        eval_record(40, 0.3, dead=(2, 4))])
    running = make_run(tmp_path, "running", tiny_cfg(), records=[
        train_record(20, 0.9, 0.6, 0.05, 0.2, 0.0, dead=(1, 6))])
    text = rendered([report.load_run(evaluated), report.load_run(running)])
    assert re.findall(r"[\d.]+", rows_of(text, "evaluated")[0])[-2:] == ["2", "4"]
    running_row = rows_of(text, "running")[0]
    assert "20/40" in running_row and re.search(r"1\*\s*│\s*6\*", running_row)
    assert "* no eval yet" in text


def test_main_prints_the_summaries_as_json(tmp_path, capsys):
    dirs = [make_run(tmp_path, "a", tiny_cfg()), make_run(tmp_path, "b", tiny_cfg(seed=1))]
    report.main(dirs, as_json=True, console=Console(record=True))
    printed = json.loads(capsys.readouterr().out)
    assert printed == [report.summarize(report.load_run(d)) for d in dirs]
    assert printed[1]["config"]["seed"] == 1 and "seed" not in printed[0]["config"]


def test_main_renders_tables_and_stops_at_the_first_bad_directory(tmp_path, capsys):
    console = Console(file=io.StringIO(), record=True, width=200)
    report.main([make_run(tmp_path, "only", tiny_cfg())], as_json=False, console=console)
    assert "run only: step 40" in console.export_text()
    with pytest.raises(ConfigError, match="does not exist"):
        report.main([tmp_path / "only", tmp_path / "missing"], as_json=True, console=console)
    assert capsys.readouterr().out == ""


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


def test_the_trends_table_has_a_sparkline_per_term_over_the_whole_run(tmp_path):
    text = rendered([report.load_run(decreasing_run(tmp_path))])
    assert "trends over all 60 logged steps" in text
    trends = text.split("trends over all")[1].split("losses over the run")[0]
    lines = {term: re.search(rf"│ {term}\s*│ (\S+) ", trends) for term in report.LOSS_TERMS}
    assert lines["wasserstein"] is None  # the OT term was off
    for term in ("total", "recon", "commit"):
        line = lines[term].group(1)
        levels = [report.SPARKS.index(c) for c in line]
        assert len(line) == 40 and levels == sorted(levels, reverse=True)
        assert line[0] == "█" and line[-1] == "▁"
    assert re.search(r"│ recon\s*│ \S+ │\s*0\.008333 │\s*0\.5 │\s*log │", trends)
    assert re.search(r"│ codebook\s*│ ▄+ │\s*0\.25 │\s*0\.25 │\s*linear │", trends)


def test_last_and_every_choose_the_rows_of_the_tables_over_the_run(tmp_path):
    run = report.load_run(decreasing_run(tmp_path))
    text = rendered([run], points=8)
    history = text.split("losses over the run")[1].split("codebook health over the run")[0]
    assert [r.split()[1] for r in rows_of(history, r"\d+")] == [
        "10", "90", "180", "260", "350", "430", "520", "600"]

    console = Console(file=io.StringIO(), record=True, width=200)
    report.main([run.path], as_json=False, console=console, last=2)
    text = console.export_text()
    history = text.split("losses over the run (the last 2 logged steps)")[1]
    history, health = history.split("codebook health over the run (the last 2 logged steps)")
    assert [r.split()[1] for r in rows_of(history, r"\d+")] == ["590", "600"]
    assert [r.split()[1] for r in rows_of(health, r"\d+")] == ["590", "600"]
    # used (590 % 8 = 6, 8) of 8 codes in %, perplexity and dead per level
    assert re.search(r"│\s*590 │\s*75 / 100 │\s*4\.25 / 2\.75 │\s*2 / 0 │", health)

    console = Console(file=io.StringIO(), record=True, width=200)
    report.main([run.path], as_json=False, console=console, every=250)
    text = console.export_text()
    assert "losses over the run (logged steps at multiples of 250, and the last)" in text
    history = text.split("losses over the run")[1].split("codebook health over")[0]
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
    report.main([run_dir], as_json=True, console=Console(), every=200, last=1)
    (summary,) = json.loads(capsys.readouterr().out)
    assert [h["step"] for h in summary["health"]] == [600]


def test_csv_has_a_row_per_train_record_of_every_run(tmp_path, capsys):
    records = [train_record(s, 1 / s, 0.5 / s, 0.1, 0.2, 0.01) for s in (10, 20, 30)]
    records.insert(2, eval_record(20, 0.5))
    make_run(tmp_path, "b-hybrid", tiny_cfg(lambda_wasserstein=0.5), records)
    plain = [{k: v for k, v in train_record(s, 2 / s, 1 / s, 0.1, 0.2, 0.0).items()
              if k != "sinkhorn_marginal_error"} for s in (10, 20)]
    make_run(tmp_path, "a-plain", tiny_cfg(), plain)
    report.main([tmp_path], as_json=False, console=Console(), as_csv=True)
    text = capsys.readouterr().out
    assert "\r" not in text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["run", "step", "time", "total", "recon", "commit", "codebook",
                       "wasserstein", "used_L1", "dead_L1", "perplexity_L1",
                       "sinkhorn_marginal_error_L1", "used_L2", "dead_L2", "perplexity_L2",
                       "sinkhorn_marginal_error_L2"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("a-plain", "10"), ("a-plain", "20"),
                                                ("b-hybrid", "10"), ("b-hybrid", "20"),
                                                ("b-hybrid", "30")]
    assert rows[1] == ["a-plain", "10", "0.1", "0.2", "0.1", "0.1", "0.2", "0.0",
                       "5", "2", "4.25", "", "3", "4", "2.75", ""]
    assert rows[4][3:5] == [repr(1 / 20), repr(0.5 / 20)] and rows[4][11] == "0.0125"

    report.main([tmp_path / "a-plain"], as_json=False, console=Console(), as_csv=True)
    header = capsys.readouterr().out.splitlines()[0]
    assert "sinkhorn" not in header and header.endswith("perplexity_L2")


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
    with pytest.raises(ConfigError, match=r"notes holds no metrics.jsonl; pass a directory"):
        report.main([tmp_path / "notes"], as_json=True, console=Console())


@pytest.mark.parametrize("options, message", [
    ({"last": 0}, "--last takes a positive number of steps, not 0"),
    ({"every": -5}, "--every takes a positive number of steps, not -5"),
    ({"as_csv": True, "as_json": True}, "--json and --csv are two output formats; pass one"),
])
def test_bad_options_are_config_errors(tmp_path, capsys, options, message):
    options = {"as_json": False} | options
    with pytest.raises(ConfigError, match=re.escape(message)):
        report.main([make_run(tmp_path, "run", tiny_cfg())], console=Console(), **options)
    assert capsys.readouterr().out == ""


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
    run_dir = decreasing_run(tmp_path, cfg=tiny_cfg(steps=600, lambda_wasserstein=0.5))
    summary = report.summarize(report.load_run(run_dir))
    documented = documented_json_keys()
    assert set(documented) == set(summary)
    assert {"run", "path", "config", "steps_logged", "final", "best", "levels", "eval",
            "history"} <= set(summary)  # the keys of the first release stay
    for key in ("levels", "history", "health"):
        assert documented[key] == set().union(*summary[key]), key
    assert documented["eval"] == set(summary["eval"])
    assert set(summary["final"]) == set(summary["best"]) == set(report.LOSS_TERMS)


def test_a_log_in_another_layout_gives_the_same_summary(tmp_path):
    """The fast reader (RunLog's layout) and the line-by-line one agree on every key."""
    fast = decreasing_run(tmp_path, "fast", cfg=tiny_cfg(steps=600, lambda_wasserstein=0.5))
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / runlog.CONFIG_FILE).write_bytes((fast / runlog.CONFIG_FILE).read_bytes())
    lines = (fast / runlog.METRICS_FILE).read_text().splitlines()
    (slow / runlog.METRICS_FILE).write_text(
        "\n".join(json.dumps(json.loads(line), indent=None) for line in lines) + "\n")
    for options in ({}, {"last": 3}, {"every": 70}):
        summaries = [report.summarize(report.load_run(d), **options) for d in (fast, slow)]
        for summary in summaries:
            del summary["run"], summary["path"]
        assert summaries[0] == summaries[1]
        assert summaries[0]["best"]["total"] == {"value": 10 / 600, "step": 600}
