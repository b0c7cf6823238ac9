"""The tables of one run: config, losses, codebook health, trends and the run's course. No JAX."""

import io
import random
import re

import pytest
from rich.cells import cell_len
from rich.console import Console
from synthetic_runs import (
    decreasing_run,
    make_run,
    plain,
    rendered,
    rows_of,
    section,
    tiny_cfg,
    train_record,
)

from rqvae.reports import report
from rqvae.reports.run_tables import MIN_TREND_POINTS, SPARKS, log_scaled, sparkline
from rqvae.reports.runs import load_run
from rqvae.trainer.runlog import LOSS_TERMS

# -- one run's tables -------------------------------------------------------------------------


def test_one_run_shows_its_config_losses_health_and_history(tmp_path):
    run = load_run(make_run(tmp_path, "hybrid-run", tiny_cfg(lambda_wasserstein=0.5)))
    text = rendered([run])
    assert text.startswith("run hybrid-run: step 40 of 40, completed\n")
    assert re.search(r"loss\.lambda_wasserstein\s*│\s*0\.5", text)
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
    # error, transport cost, solve epsilon, stale codes
    assert re.findall(r"[\d.]+", rows_of(levels, "2")[0]) == ["2", "3", "2.75", "4", "3", "4.125",
                                                             "3.875", "0.0375", "0.125",
                                                             "0.00625", "0"]
    assert re.findall(r"[\d.]+", rows_of(levels, "1")[0])[-1] == "3"
    assert "codes unused over the last 10 steps" in " ".join(levels.split())
    assert "stale: codes unpicked over the last 20 steps" in " ".join(levels.split())
    history = section(text, "losses over the run", "codebook health over the run")
    assert [re.findall(r"[\d.]+", row)[0] for row in rows_of(history, r"\d\d")] == [
        "10", "20", "30", "40"]


def test_the_wasserstein_column_is_left_out_of_runs_without_it(tmp_path):
    records = [train_record(s, 1 / s, 0.5 / s, 0.1, 0.2, 0.0) for s in (10, 20)]
    text = rendered([load_run(make_run(tmp_path, "plain", tiny_cfg(), records))])
    assert "lambda_wasserstein" in text
    assert not re.search(r"┃\s*W\s*┃", text) and "wasserstein" not in section(text, "\nlosses\n")
    assert "best (the lowest held-out recon): none before the first eval" in " ".join(text.split())
    assert "no eval yet" in text and "train\n" not in section(text, "codebook health per level")


def test_a_run_name_with_brackets_is_shown_verbatim(tmp_path):
    run = load_run(make_run(tmp_path, "sweep[bold]", tiny_cfg()))
    assert "run sweep[bold]: step 40" in rendered([run])


# -- sparklines and the run's course ----------------------------------------------------------


def test_sparkline_follows_the_values():
    assert sparkline([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == "▁▂▃▄▅▆▇█"
    assert sparkline([100.0, 10.0, 1.0, 0.1]) == "█▆▃▁"  # three decades: log scale
    assert log_scaled([100.0, 0.1]) and not log_scaled([1.0, 9.0])
    assert not log_scaled([-1.0, 100.0])  # not all positive: linear
    assert len(sparkline([float(v) for v in range(1000)], width=40)) == 40
    assert sparkline([1.0, float("nan"), 2.0, None]) == "▁ █ "
    assert sparkline([0.5] * 3) == "▄▄▄"


@pytest.mark.parametrize("seed", range(5))
def test_a_monotone_series_gives_a_monotone_sparkline(seed):
    rng = random.Random(seed)
    values = sorted(rng.uniform(1e-4, 1.0) for _ in range(rng.randrange(2, 200)))
    line = sparkline(values)
    levels = [SPARKS.index(c) for c in line]
    assert levels == sorted(levels) and line[0] == "▁" and line[-1] == "█"
    assert len(line) == min(len(values), 40)


def test_the_trends_table_has_a_sparkline_per_term_and_for_heldout_recon(tmp_path):
    text = rendered([load_run(decreasing_run(tmp_path))])
    trends = section(text, "trends over all 60 logged steps (step 10 to 600)", "losses over the")
    lines = {term: re.search(rf"│ {term}\s*│ (\S+) ", trends) for term in LOSS_TERMS}
    assert lines["wasserstein"] is None  # the OT term was off
    for term in ("total", "recon", "commit"):
        line = lines[term].group(1)
        levels = [SPARKS.index(c) for c in line]
        assert len(line) == 40 and levels == sorted(levels, reverse=True)
        assert line[0] == "█" and line[-1] == "▁"
    assert re.search(r"│ recon\s*│ \S+\s*│\s*0\.008333 │\s*0\.5 │\s*log │", trends)
    assert re.search(r"│ codebook\s*│ ▄+\s*│\s*0\.25 │\s*0\.25 │\s*linear │", trends)
    # held-out recon 4/200, 4/400, 4/600 at the run's three evals
    assert re.search(r"│ heldout\s*│ █▃▁\s*│\s*0\.006667 │\s*0\.02 │\s*linear │", trends)


def test_last_and_every_choose_the_rows_of_the_tables_over_the_run(tmp_path):
    run = load_run(decreasing_run(tmp_path))
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


def test_the_sparklines_shrink_to_fit_a_narrow_console(tmp_path):
    run = load_run(decreasing_run(tmp_path))
    for width in (200, 60):
        text = plain([run], width)
        trends = section(text, "trends over all 60 logged steps", "losses over the run")
        points = int(re.search(r"at up to (\d+) evenly spaced", " ".join(trends.split()))[1])
        assert points == 40 if width == 200 else MIN_TREND_POINTS < points < 40
        line = re.search(r"│ recon\s*│ (\S+) ", trends).group(1)
        assert len(line) == points and line[0] == "█" and line[-1] == "▁"
        assert max(map(cell_len, trends.splitlines())) == width if points < 40 else width > 80


def test_last_shows_only_the_chosen_steps(tmp_path):
    run = load_run(make_run(tmp_path, "run", tiny_cfg()))
    text = plain([run], 120, last=2)
    assert text.startswith("run run: step 40 of 40, completed")
    assert "config (" not in text and "codebook health per level" not in text
    history = section(text, "losses over the run", "codebook health over the run")
    assert [re.findall(r"[\d.]+", row)[0] for row in rows_of(history, r"\d\d")] == ["30", "40"]
