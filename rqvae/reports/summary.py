"""`rqvae report --json`: one run's summary (`summarize`), and the train records its history shows
(`select`).

`--json` prints a list with one summary per run (`summarize`). Keys are kept stable: new ones may
be added, none renamed or dropped. Values are as logged; a non-finite loss prints as NaN or
Infinity, as Python's json writes it.

- run: the run directory's name
- group: the settings that set the run's group apart among the runs reported together (runs
  differing only in their seed share one, "all" if every run does; null without a config)
- path: the run directory as given
- config: the always-shown keys (lambdas, steps, model shape, data set), then every other key of
  config.toml that differs from the default, flat ("model.num_codes"); {} without a config.toml
  or when it does not load
- config_note: why config is empty (no config.toml, or the error loading it), else null
- status: completed, collapsed (completed, no better than a constant output), running,
  interrupted, failed or crashed (see `rqvae.reports.runs`); a run
  that has no train record (one that failed at its first step, or is starting) is listed too,
  with empty final, best, levels and history
- status_reason: the end record's reason, or what the status was inferred from
- repeated_steps: train steps the log holds more than once, ascending ([] normally)
- unreadable_lines: numbers (from 1) of lines of metrics.jsonl that hold no record and were
  skipped ([] normally; a last line still being written is not counted)
- steps_logged: the highest step of any record in the log
- final: the last train record's loss terms, {term: value}
- best: the lowest logged finite value of each loss term, {term: {"value", "step"}} (first on a
  tie); a term that rises while the run improves has its lowest early, so see best_heldout
- best_heldout: the lowest held-out recon of any eval, or null before the first
  - step: the eval's step
  - heldout_recon: its held-out reconstruction loss
- levels: one per quantization level, from the last train record and the last eval record
  - level: 1-based level number
  - used: codes picked in the last train batch (batch_used)
  - perplexity: exp(entropy) of the codes picked in the last train batch (batch_perplexity)
  - dead: codes unused over the last run.dead_window steps (window_dead)
  - eval_used: codes picked by any training image at the last eval (only with an eval)
  - eval_dead: codes no training image picks at the last eval (only with an eval)
  - eval_perplexity: perplexity of the codes over the training split (only with an eval)
  - heldout_used: codes picked by any held-out image (only if the eval logged it)
  - heldout_perplexity: the same over the held-out split (only if the eval logged it)
  - sinkhorn_marginal_error: the transport plan's row-marginal error (only if logged and the
    transport term was on)
  - transport_cost: the level's transport cost per latent dimension (only likewise)
  - solve_epsilon: the epsilon of the level's solve, in squared latent units (only likewise)
  - wasserstein_levels, sinkhorn_epsilon: transport_cost and solve_epsilon under their first
    names
  - anchor_stale: codes unpicked over the stale window (transport.anchor_window steps, or
    sweeps of the codebook), which the transport term moves and re-anchors (only likewise,
    and if logged)
- eval: the last eval record, or null before the first
  - step: its step
  - heldout_recon: reconstruction loss on the held-out split
  - heldout_psnr: PSNR on the held-out split in dB (only if the eval logged it)
  - constant_recon: the held-out MSE of the training mean image (only if the eval logged it)
  - tuples_unique: distinct code tuples over the training split (vector latents, if logged)
  - tuples_shared: training examples whose tuple another has too (likewise)
  - tuples_largest_group: the most examples sharing one tuple (likewise)
  - shared_dead: a shared codebook's codes no level picks over the training split (if logged)
- heldout_history: every eval record in log order, [{step, heldout_recon}]
  - step, heldout_recon: as in eval
- resumes: each time the run resumed, oldest first: from the log's resume records, or from
  resumes.jsonl for a run whose log holds none
  - step: the checkpoint's step it resumed from
  - changed: {key: [old, new]} for every setting that changed
- history: loss terms at the selected train records: 8 evenly spaced ones (first and last
  included), or those `last` / `every` choose
  - step: the record's step
  - total, recon, commit, codebook, wasserstein: the loss terms at that step
- health: codebook health at the same train records as history, per level as lists
  - step: the record's step
  - used, perplexity, dead: as in levels, one entry per level
  - sinkhorn_marginal_error: one entry per level (only if logged and the Wasserstein term was on)
"""

from __future__ import annotations

from collections.abc import Sequence

from rqvae.quantizer.settings import LOSS_TERMS
from rqvae.reports.runs import LoggedRun, finite_extremes, level_value
from rqvae.trainer import config
from rqvae.trainer.compat import FORMER_LEVEL_NAMES

# Shown in the config brief whether or not they differ from the defaults: they say what kind of run
# this is and how big its codebooks are.
ALWAYS_SHOWN = (
    "loss.lambda_codebook",
    "loss.lambda_commit",
    "loss.lambda_wasserstein",
    "steps",
    "model.num_levels",
    "model.num_codes",
    "data.dataset",
)
# Differs in every run and is the run's path, which the report prints anyway.
NEVER_SHOWN = ("run.run_dir",)
HISTORY_POINTS = 8  # train records in the history and health tables unless last/every choose


def _defaults() -> dict:
    return config.flatten(config.to_dict(config.TrainerConfig()))


def config_brief(run_config: dict) -> dict:
    """The ALWAYS_SHOWN keys, then every other key whose value differs from the defaults.

    An empty config (no config.toml) gives an empty brief: nothing is known about the run.
    """
    if not run_config:
        return {}
    defaults = _defaults()
    brief = {key: run_config[key] for key in ALWAYS_SHOWN if key in run_config}
    for key, value in run_config.items():
        if key not in brief and key not in NEVER_SHOWN and defaults.get(key) != value:
            brief[key] = value
    return brief


def wasserstein_on(run: LoggedRun) -> bool:
    """Whether the run used the OT term: a positive weight, or any non-zero logged value."""
    weight = run.config.get("loss.lambda_wasserstein", 0) or 0
    return weight > 0 or any(run.series["wasserstein"])


def _best(run: LoggedRun) -> dict:
    """The lowest finite value of each loss term and its step (the first on a tie)."""
    return {term: {"value": found[0], "step": run.series["step"][found[1]]}
            for term, found in run.extremes.items() if found is not None}


def _best_heldout(evals: list[dict]) -> dict | None:
    found = finite_extremes([r.get("heldout_recon") for r in evals])
    return None if found is None else {"step": evals[found[1]]["step"], "heldout_recon": found[0]}


# Every per-level value the report shows: its name in `levels`, the CSV and the tables' code
# (the first release's where it had one) -> (its key in the run log, its table header). Every
# reader takes both from here.
LEVEL_VALUES = {
    "used": ("batch_used", "batch\nused"),
    "perplexity": ("batch_perplexity", "batch\nppl"),
    "dead": ("window_dead", "window\ndead"),
    "eval_used": ("train_used", "train\nused"),
    "eval_dead": ("train_dead", "train\ndead"),
    "eval_perplexity": ("train_perplexity", "train\nppl"),
    "heldout_used": ("heldout_used", "heldout\nused"),
    "heldout_perplexity": ("heldout_perplexity", "heldout\nppl"),
    "sinkhorn_marginal_error": ("sinkhorn_marginal_error", "sinkhorn\nerror"),
    "transport_cost": ("transport_cost", "transport\ncost"),
    "solve_epsilon": ("solve_epsilon", "solve\neps"),
    "anchor_stale": ("anchor_stale", "stale"),
}
# Table headers of the loss terms where they differ from the term's name.
TERM_HEADERS = {"wasserstein": "W"}
TRAIN_LEVEL = ("used", "perplexity", "dead")  # from the last train record
EVAL_LEVEL = ("eval_used", "eval_dead", "eval_perplexity")  # from the last eval
HELDOUT_LEVEL = ("heldout_used", "heldout_perplexity")  # from the last eval, if it logged them
TRANSPORT_LEVEL = ("sinkhorn_marginal_error", "transport_cost", "solve_epsilon", "anchor_stale")


def _level(record: dict, name: str, i: int):
    return level_value(record, LEVEL_VALUES[name][0], i)


def _levels(run: LoggedRun, final: dict, ot_on: bool) -> list[dict]:
    last_eval = run.evals[-1] if run.evals else None
    with_transport = ot_on and "sinkhorn_marginal_error" in final
    levels = []
    for i in range(len(final.get("batch_used") or [])):
        level = {"level": i + 1, **{name: _level(final, name, i) for name in TRAIN_LEVEL}}
        if last_eval is not None:
            level.update({name: _level(last_eval, name, i) for name in EVAL_LEVEL})
            level.update({name: _level(last_eval, name, i) for name in HELDOUT_LEVEL
                          if LEVEL_VALUES[name][0] in last_eval})
        if with_transport:
            level.update({name: _level(final, name, i) for name in TRANSPORT_LEVEL
                          if LEVEL_VALUES[name][0] in final})
            level.update({old: level[new] for old, new in FORMER_LEVEL_NAMES.items() if new in level})
        levels.append(level)
    return levels


def evenly_spaced(records: Sequence, points: int) -> list:
    """Up to `points` (at least 2) records at evenly spaced positions, always the first and last."""
    points = max(points, 2)
    if len(records) <= points:
        return list(records)
    stride = (len(records) - 1) / (points - 1)  # > 1, so the rounded positions are distinct
    return [records[round(i * stride)] for i in range(points)]


def select(steps: list[int], points: int = HISTORY_POINTS, last: int | None = None,
           every: int | None = None) -> list[int]:
    """Indices of the train records (with these steps) that the history and health show.

    By default `points` evenly spaced ones, the first and last included. `every` keeps the
    records whose step is a multiple of it, and the last; `last` keeps the last N records (of
    those `every` kept, when both are given).
    """
    if not steps:
        return []
    if every is None and last is None:
        return evenly_spaced(range(len(steps)), points)
    indices = list(range(len(steps)))
    if every is not None:
        indices = [i for i, step in enumerate(steps) if step % every == 0]
        if not indices or indices[-1] != len(steps) - 1:
            indices.append(len(steps) - 1)
    return indices[-last:] if last is not None else indices


def _eval_summary(record: dict | None) -> dict | None:
    if record is None:
        return None
    keys = ("step", "heldout_recon", *(k for k in ("heldout_psnr", "constant_recon",
                                                    "tuples_unique", "tuples_shared",
                                                    "tuples_largest_group", "shared_dead")
                                          if k in record))
    return {k: record.get(k) for k in keys}


def _health_entry(record: dict, with_sinkhorn: bool) -> dict:
    entry = {"step": record["step"]}
    entry.update({name: record[LEVEL_VALUES[name][0]] for name in TRAIN_LEVEL
                  if LEVEL_VALUES[name][0] in record})
    if with_sinkhorn and "sinkhorn_marginal_error" in record:
        entry["sinkhorn_marginal_error"] = record["sinkhorn_marginal_error"]
    return entry


def summarize(run: LoggedRun, points: int = HISTORY_POINTS, *, last: int | None = None,
              every: int | None = None, group: str | None = None) -> dict:
    """A JSON-ready summary of one run; its keys are listed in the module docstring.

    `points`, `last` and `every` choose the train records of history and health (see `select`).
    """
    shown = [run.train[i] for i in select(run.series["step"], points, last, every)]
    final = run.train[-1] if run.train else {}
    with_sinkhorn = wasserstein_on(run)
    return {
        "run": run.name,
        "group": group,
        "path": str(run.path),
        "config": config_brief(run.config),
        "config_note": run.config_note,
        "status": run.status,
        "status_reason": run.status_reason,
        "repeated_steps": run.repeated_steps,
        "unreadable_lines": run.unreadable_lines,
        "steps_logged": max(max(run.series["step"], default=0),
                            max((r["step"] for r in run.evals), default=0)),
        "final": {term: final[term] for term in LOSS_TERMS if term in final},
        "best": _best(run),
        "best_heldout": _best_heldout(run.evals),
        "levels": _levels(run, final, with_sinkhorn),
        "eval": _eval_summary(run.evals[-1] if run.evals else None),
        "heldout_history": [{"step": r["step"], "heldout_recon": r.get("heldout_recon")}
                            for r in run.evals],
        "resumes": run.resumes,
        "history": [{k: r[k] for k in ("step", *LOSS_TERMS) if k in r} for r in shown],
        "health": [_health_entry(r, with_sinkhorn) for r in shown],
    }
