"""Mean and spread per method of a dead-code study: reads `rqvae report --json` on stdin.

    rqvae report runs/study/*/ --json | python scripts/study_table.py

Runs are grouped by their parent directory (the setting, e.g. digits-64) and their name without
the seed suffix (hybrid-s0, hybrid-s1 -> hybrid). Per level: codes alive over a full pass of the
training split at the last evaluation (% of the codebook), codes the held-out split uses (%) and
the perplexity of its codes (blank past a setting's last level); then bits/token, the held-out
codes' entropy summed over the levels (log2 of each level's perplexity: what a prior over the
codes must model per position), held-out recon MSE and ms/step (the wall time between the first
and the last train record of the run's log, over the steps between them: compilation excluded,
checkpoints included). Each cell is mean ± standard deviation over the seeds, with the seed count
in n. Prints a Markdown table, as pasted into the README's Results section.

    rqvae report runs/matrix/minilm-*/ --json | python scripts/study_table.py --ids

--ids (semantic IDs, vector latents): per run, how the training examples' code tuples collide
at the last evaluation instead of the per-level columns: distinct tuples, examples whose tuple
another example has too (what a de-duplicating last ID position must tell apart) and the
largest group sharing one tuple; then alive codes (%) of the levels together, held-out recon.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from rqvae.trainer import runlog

METHOD_ORDER = ["traditional", "traditional-sum", "kmeans", "restart", "peer", "wasserstein",
                "hybrid", "hybrid-every-code",
                "hybrid-all-levels", "hybrid-relative", "hybrid-relative-eps0.02",
                "hybrid-relative-queue", "hybrid-relative-encoder-grad", "hybrid-original"]


def spread(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def ms_per_step(run_dir: str) -> float:
    train = [r for r in runlog.read(Path(run_dir)) if r["kind"] == "train"]
    if len(train) < 2:
        return math.nan
    first, last = train[0], train[-1]
    return 1e3 * (last["time"] - first["time"]) / (last["step"] - first["step"])


def main() -> None:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for summary in json.load(sys.stdin):
        if summary.get("eval") is None or summary["eval"]["step"] != summary["config"]["steps"]:
            continue  # not finished: no full-split evaluation at the last step yet
        path = Path(summary["path"].rstrip("/"))
        method = re.sub(r"-s\d+$", "", path.name)
        groups[(path.parent.name, method)].append(summary)
    if not groups:
        sys.exit("error: no finished runs on stdin; pass `rqvae report DIR --json` of study runs")

    def order(key):
        setting, method = key
        rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        return setting, rank, method

    if "--ids" in sys.argv[1:]:
        print_ids(groups, order)
        return
    levels = max(len(s["levels"]) for runs in groups.values() for s in runs)
    header = ["setting", "method", "n"]
    for level in range(1, levels + 1):
        header += [f"alive L{level} (%)", f"held-out used L{level} (%)",
                   f"held-out perplexity L{level}"]
    header += ["bits/token", "held-out recon MSE", "ms/step"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for key in sorted(groups, key=order):
        runs = groups[key]
        num_codes = runs[0]["config"]["model.num_codes"]
        row = [key[0], key[1], str(len(runs))]
        for level in range(levels):
            if level >= len(runs[0]["levels"]):
                row += ["", "", ""]
                continue
            alive = [100 * s["levels"][level]["eval_used"] / num_codes for s in runs]
            used = [100 * s["levels"][level]["heldout_used"] / num_codes for s in runs]
            perplexity = [s["levels"][level]["heldout_perplexity"] for s in runs]
            row += [spread(alive, 1), spread(used, 1), spread(perplexity, 1)]
        row.append(spread([sum(math.log2(level["heldout_perplexity"]) for level in s["levels"])
                           for s in runs], 2))
        row.append(spread([s["eval"]["heldout_recon"] for s in runs], 4))
        row.append(spread([ms_per_step(s["path"]) for s in runs], 1))
        print("| " + " | ".join(row) + " |")


def print_ids(groups: dict, order) -> None:
    header = ["setting", "method", "n", "distinct tuples", "examples sharing a tuple",
              "largest group", "alive (%)", "held-out recon MSE"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for key in sorted(groups, key=order):
        runs = groups[key]
        if any(s["eval"].get("tuples_unique") is None for s in runs):
            continue  # a grid latent: no tuples per example
        codes = runs[0]["config"]["model.num_codes"] * len(runs[0]["levels"])
        alive = [100 * sum(level["eval_used"] for level in s["levels"]) / codes for s in runs]
        row = [key[0], key[1], str(len(runs))]
        row += [spread([s["eval"][k] for s in runs], 0)
                for k in ("tuples_unique", "tuples_shared", "tuples_largest_group")]
        row += [spread(alive, 1), spread([s["eval"]["heldout_recon"] for s in runs], 4)]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
