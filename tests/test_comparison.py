"""Several runs side by side: the settings that differ and the best of each column. No JAX."""

import re

from synthetic_runs import (
    eval_record,
    make_run,
    rendered,
    rows_of,
    section,
    subdir,
    tiny_cfg,
    train_record,
)

from rqvae.reports.runs import load_run
from rqvae.trainer import rundir
from rqvae.trainer.config import DataConfig

BOLD_GREEN = "\x1b[1;32m"


def two_runs(tmp_path, second_cfg=None):
    good = make_run(tmp_path, "hybrid", tiny_cfg(lambda_wasserstein=0.5), records=[
        train_record(40, 0.50, 0.30, 0.03, 0.11, 0.02), eval_record(40, 0.3125, dead=(0, 1))])
    bad = make_run(tmp_path, "traditional", second_cfg or tiny_cfg(), records=[
        train_record(40, 0.75, 0.45, 0.04, 0.13, 0.0), eval_record(40, 0.5625, dead=(3, 5))])
    return [load_run(good), load_run(bad)]


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
    second = tiny_cfg(**{"transport.epsilon": 0.1, "transport.encoder_grad": True, "seed": 3})
    text = rendered(two_runs(tmp_path, second))
    settings = section(text, "settings that differ between the runs", "2 runs side by side")
    assert re.search(r"┃ run\s*┃\s*seed ┃\s*lw ┃\s*eps ┃\s*enc ┃", settings)
    assert re.findall(r"[\w.]+", rows_of(settings, "hybrid")[0])[1:] == ["0", "0.5", "0.05",
                                                                         "false"]
    assert re.findall(r"[\w.]+", rows_of(settings, "traditional")[0])[1:] == ["3", "0", "0.1",
                                                                              "true"]
    legend = " ".join(settings.split())
    assert ("lw: loss.lambda_wasserstein; eps: transport.epsilon; enc: transport.encoder_grad"
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
    styled = section(rendered([*runs, load_run(third)], styles=True), "runs side by side")
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
        text = rendered([load_run(evaluated), load_run(running)])
    assert re.findall(r"[\d.]+", rows_of(text, "evaluated")[0])[-2:] == ["2", "4"]
    running_row = rows_of(text, "running")[0]
    assert "20/40" in running_row and re.search(r"1\*\s*│\s*6\*", running_row)
    assert re.search(r"│ running\s*│ running\s*│", running_row)  # name and status
    assert "* no eval yet" in text


def test_runs_with_a_shared_codebook_get_its_dead_count_beside_the_per_level_ones(tmp_path):
    shared_eval = {**eval_record(40, 0.3, dead=(2, 5)), "shared_dead": 1}
    shared = make_run(tmp_path, "shared", tiny_cfg(), records=[
        train_record(40, 0.5, 0.3, 0.03, 0.11, 0.0), shared_eval])
    unshared = make_run(tmp_path, "unshared", tiny_cfg(), records=[
        train_record(40, 0.5, 0.3, 0.03, 0.11, 0.0), eval_record(40, 0.4, dead=(3, 4))])
    text = rendered([load_run(shared), load_run(unshared)])
    results = section(text, "2 runs side by side")
    assert re.findall(r"[\d.]+", rows_of(results, "shared")[0])[-3:] == ["2", "5", "1"]
    assert re.findall(r"[\d.]+", rows_of(results, "unshared")[0])[-2:] == ["3", "4"]
    assert "dead shared: of a codebook shared by the levels" in " ".join(results.split())
    assert "dead shared:" not in " ".join(rendered(two_runs(subdir(tmp_path, "plain"))).split())


def test_a_terminal_keeps_its_colours(tmp_path):
    styled = rendered(two_runs(tmp_path), styles=True)
    assert BOLD_GREEN in styled
