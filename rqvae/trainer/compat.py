"""What earlier versions of rqvae saved, read as today's: config keys that moved, settings that
were retired, the values of keys a run saved before they existed, and renamed log and summary
keys. Data only; `config` (configs), `runlog` (log records) and `reports.summary` (the JSON
summary) apply it. A saved run of any earlier version keeps loading through these maps
(tests/fixtures holds such runs)."""

from __future__ import annotations

from rqvae.quantizer.settings import KMEANS_BATCHES

# Keys of the flat format before the tree was grouped, and where each lives now. They still load,
# from files and --set, so configs and scripts written for earlier versions keep working.
MOVED = {
    "learning_rate": "optimizer.learning_rate",
    "lambda_commit": "loss.lambda_commit",
    "lambda_codebook": "loss.lambda_codebook",
    "lambda_wasserstein": "loss.lambda_wasserstein",
    "sinkhorn_epsilon": "transport.epsilon",
    "sinkhorn_iters": "transport.iters",
    "sinkhorn_tolerance": "transport.tolerance",
    "sinkhorn_overrelaxation": "transport.overrelaxation",
    "wasserstein_anchor_window": "transport.anchor_window",
    "wasserstein_encoder_grad": "transport.encoder_grad",
    "dead_code_threshold": "remedies.dead_code_threshold",
    "kmeans_init": "remedies.kmeans_init",
}

# Settings no measured result supported, removed (docs/results.md keeps their rows), each with
# the value that does what the code does now: a config holding it loads, any other is refused.
RETIRED = {
    "codebook_loss": "per_level",
    "sinkhorn_epsilon_mode": "relative",
    "wasserstein_scale": "per_element",
    "wasserstein_level_weights": [],
    "wasserstein_levels": 0,
    "sinkhorn_warm_start": False,
    "sinkhorn_unroll": False,
    "ot_queue_size": 0,
    "kmeans_init_batches": KMEANS_BATCHES,
    "model.codebook_init_scale": 0.0,
}

# Keys added to the flat format after runs were first saved, with the values that reproduce how a
# run saved before trained: a run's config.toml lists every key it knew.
BEFORE_KEY_EXISTED = {"codebook_loss": "sum", "sinkhorn_epsilon_mode": "absolute",
                      "sinkhorn_tolerance": 0.0, "wasserstein_scale": "whole",
                      "sinkhorn_overrelaxation": 1.0, "wasserstein_anchor_window": 0}


# Keys of the nested format that runs written before them lack, with the value those runs used.
NESTED_BEFORE_KEY_EXISTED = {"optimizer.decay_fraction": 0.0, "model.sigmoid_grad": "exact"}


# Old key -> new key, by record kind, for logs written before today's names (`runlog`).
RENAMED = {
    "train": {"used": "batch_used", "perplexity": "batch_perplexity", "dead": "window_dead",
              "wasserstein_levels": "transport_cost", "sinkhorn_epsilon": "solve_epsilon"},
    "eval": {"used": "train_used", "dead": "train_dead", "perplexity": "train_perplexity"},
}

# `levels` keys of the JSON summary's first schema, kept beside their new names for scripts that
# read them (`reports.summary`).
FORMER_LEVEL_NAMES = {"wasserstein_levels": "transport_cost", "sinkhorn_epsilon": "solve_epsilon"}
