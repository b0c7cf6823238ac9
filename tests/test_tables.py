"""Tables that fit the console: no value is cut at 80 or 120 columns. No JAX."""

import random
import re

import pytest
from rich.cells import cell_len
from synthetic_runs import end_record, eval_record, make_run, plain, tiny_cfg, train_record

from rqvae.reports.runs import load_run
from rqvae.reports.summary import summarize
from rqvae.reports.tables import fmt
from rqvae.trainer.config import DataConfig, ModelConfig


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
    return load_run(make_run(root, name, cfg, records + [end_record(100_000)]))


def comparison_numbers(run):
    """Every number the comparison shows of a run, as it formats it."""
    summary = summarize(run)
    numbers = {fmt(summary["final"][term]) for term in ("total", "recon")}
    numbers |= {fmt(summary["eval"]["heldout_recon"]), str(summary["steps_logged"])}
    numbers |= {fmt(level["eval_dead"]) for level in summary["levels"]}
    return numbers | {fmt(run.config[key]) for key in ("loss.lambda_wasserstein",
                                                        "transport.epsilon")}


def shown_numbers(summary):
    """Every number the tables of one run show, as they format it."""
    numbers = {fmt(v) for v in summary["final"].values()}
    numbers |= {fmt(b[k]) for b in summary["best"].values() for k in ("value", "step")}
    numbers |= {fmt(v) for h in summary["history"] for v in h.values()}
    numbers |= {fmt(v) for level in summary["levels"] for k, v in level.items()
                if k not in ("eval_used", "heldout_used")}  # in the JSON only
    numbers.add(fmt(summary["steps_logged"]))
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
            numbers = shown_numbers(summarize(shown[0]))
            assert {"1.234e-05", "-0.5", "1.235e+04", "100000"} <= numbers  # the widest kinds
        else:
            numbers = set().union(*map(comparison_numbers, shown))
            assert {"0.15", "2.5", "100000"} <= numbers
        for number in numbers:
            assert re.search(rf"(?<![\w.]){re.escape(number)}(?![\w.])", text), number
    single = plain([runs[0]], width)
    assert "hybrid-sweep-20261123-101500-lambda-0.5" in single  # the heading never folds
    assert "npz:/data/sets/a-rather-long-path/images.npz" in single
