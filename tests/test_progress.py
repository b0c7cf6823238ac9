"""The training display: what the live line and the logged lines hold, at terminal widths."""

import re
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from rqvae.trainer import progress
from rqvae.trainer.progress import Display, RecentRate, status_line

TRAIN = {"kind": "train", "step": 1200, "time": 12.0, "total": 0.53481234, "recon": 0.019123456,
         "commit": 0.0031234, "codebook": 0.012345, "wasserstein": 0.0,
         "batch_used": [120, 88, 64], "batch_perplexity": [90.1, 70.2, 50.3],
         "window_dead": [1, 0, 3], "sinkhorn_marginal_error": [0.0, 0.0, 0.0]}
EVAL = {"kind": "eval", "step": 12000, "time": 99.0, "heldout_recon": 0.0123456,
        "heldout_psnr": 19.0912, "train_used": [256, 253, 244], "train_dead": [0, 3, 12],
        "train_perplexity": [201.3, 180.5, 1.23], "heldout_used": [250, 240, 230],
        "heldout_perplexity": [190.0, 170.0, 1.2]}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _every_form(record):
    """Every whole field the line may show for `record`, in full or shortened."""
    forms = {form for field in progress._loss_fields(record) for form in field}
    return forms | {"dead [1, 0, 3]", "used [120, 88, 64]"}


@pytest.mark.parametrize("width", [80, 120])
def test_status_line_leads_with_bar_count_and_eta_and_cuts_no_value(width):
    line = status_line(width, 1200, 10000, steps_per_s=350.0, batch_size=128, record=TRAIN).plain
    assert len(line) <= width
    bar, *fields = line.split(progress.SEPARATOR)
    assert set(bar) == {"━", "─"} and bar.startswith("━")
    assert fields[:3] == ["1,200/10,000", "ETA 0:25", "44,800 img/s"]
    assert fields[3:], "no loss term fits"
    for field in fields[3:]:
        assert field in _every_form(TRAIN), f"{field!r} is cut"


def test_status_line_keeps_more_terms_on_a_wider_terminal_and_the_most_important_first():
    narrow = status_line(80, 1200, 10000, 350.0, 128, TRAIN).plain
    wide = status_line(120, 1200, 10000, 350.0, 128, TRAIN).plain
    assert "total 0.5348" in narrow
    assert "recon" not in narrow
    assert "recon 0.01912" in wide and "dead [1, 0, 3]" in wide


def test_status_line_on_a_tiny_terminal_keeps_the_count_and_fits():
    line = status_line(20, 1200, 10000, 350.0, 128, TRAIN).plain
    assert len(line) <= 20
    assert "1,200/10,000" in line


def test_status_line_before_any_rate_or_record():
    line = status_line(80, 0, 10000, None, 128, None).plain
    assert "0/10,000" in line and "ETA -:--" in line and "img/s" not in line


def test_format_duration():
    assert progress.format_duration(3725) == "1:02:05"
    assert progress.format_duration(65) == "1:05"


def test_rate_reflects_the_fast_steps_not_the_slow_compilation():
    clock = FakeClock()
    display = Display(128, Console(file=StringIO()), clock=clock)
    display.start(0, 10000)
    clock.now = 40.0  # the first call: compilation and 100 steps
    display.advance(100)
    for _ in range(20):  # then 100 steps per 0.1 s
        clock.now += 0.1
        display.advance(display.step + 100)
    assert display.rate.steps_per_s() == pytest.approx(1000.0)


def test_rate_forgets_a_slow_interval_older_than_its_window():
    clock = FakeClock()
    rate = RecentRate(window_s=5.0, clock=clock)
    rate.add(0)
    clock.now = 10.0  # a slow stretch: an evaluation or a checkpoint
    rate.add(10)
    assert rate.steps_per_s() == pytest.approx(1.0)
    for step in range(110, 1110, 100):  # 100 steps per second for 10 s
        clock.now += 1.0
        rate.add(step)
    assert rate.steps_per_s() == pytest.approx(100.0)


def _terminal(width):
    return Console(width=width, force_terminal=True, file=StringIO(), color_system="standard")


def _lines(console):
    text = ANSI.sub("", console.file.getvalue()).replace("\r", "\n")
    return [line for line in text.split("\n") if line.strip()]


def test_display_on_a_terminal_draws_the_bar_line():
    clock = FakeClock()
    console = _terminal(80)
    with Display(128, console, clock=clock) as display:
        display.start(0, 10000)
        clock.now = 30.0
        display.advance(100)
        clock.now = 33.0
        display.advance(1200)
        display.log(TRAIN)
    lines = _lines(console)
    assert lines and all(len(line) <= 80 for line in lines)
    assert any(line.startswith("━") and "1,200/10,000" in line and "ETA 0:24" in line
               and "46,933 img/s" in line for line in lines)
    assert not any(line.startswith("step") for line in lines), "a train line without --verbose"


@pytest.mark.parametrize("record, verbose", [(EVAL, False), (TRAIN, True)])
def test_printed_lines_fit_80_columns_and_break_between_fields(record, verbose):
    console = _terminal(80)
    with Display(128, console, verbose=verbose) as display:
        display.start(0, 10000)
        display.log(record)
    printed = [line for line in _lines(console) if not line.startswith(("━", "─"))]
    assert len(printed) >= 2 and all(len(line) <= 80 for line in printed)
    fields = (progress.eval_fields(record) if record["kind"] == "eval"
              else progress.train_fields(1200, 10000, None, 128, record))
    on_lines = [field for line in printed for field in line.strip().split(progress.SEPARATOR)]
    assert on_lines == fields


def test_plain_output_is_one_line_per_record():
    console = Console(width=80, file=StringIO())  # not a terminal: a log file
    with Display(128, console) as display:
        display.start(0, 10000)
        display.log(TRAIN)
        display.log(EVAL)
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("step 1,200/10,000") and "dead [1, 0, 3]" in lines[0]
    assert lines[1].startswith("eval at step 12,000") and "PSNR 19.1 dB" in lines[1]


def test_an_eval_no_better_than_a_constant_output_says_the_run_collapsed():
    healthy = {**EVAL, "constant_recon": 0.0672}
    assert not any("collapsed" in field for field in progress.eval_fields(healthy))
    collapsed = {**EVAL, "heldout_recon": 0.1141, "constant_recon": 0.0672}
    assert progress.eval_fields(collapsed)[-1] == (
        "collapsed: held-out recon 0.1141 is no better than a constant output's (0.0672, the "
        "training mean)")
    console = Console(width=200, file=StringIO())
    progress.print_summary({"train": TRAIN, "eval": collapsed}, Path("runs/x"), console,
                           quiet=True)
    assert "heldout recon 0.1141; collapsed: held-out recon 0.1141 is no better" in (
        console.file.getvalue())


def test_notice_prints_above_the_live_line_and_quiet_prints_nothing():
    console = _terminal(80)
    with Display(128, console) as display:
        display.start(0, 100)
        display.notice("stopping after step 50, saving a checkpoint...")
    assert "stopping after step 50, saving a checkpoint..." in _lines(console)
    console = _terminal(80)
    with Display(128, console, quiet=True) as display:
        display.start(0, 100)
        display.log(TRAIN)
        display.notice("stopping")
    assert console.file.getvalue() == ""


def test_an_80_column_line_shows_the_dead_codes_after_the_total():
    line = status_line(80, 3300, 80000, 95.0, 128, TRAIN).plain
    assert len(line) <= 80
    assert re.search(r"total 0\.5348  dead \[1, 0, 3\]", line), line
