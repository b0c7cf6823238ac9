"""What each digits preset gives: the figures in the README's Quickstart table and in the
`Expected:` lines of configs/*.toml come from this script's output.

    python scripts/preset_results.py [--presets traditional hybrid ...] [--out runs/presets]

Runs `rqvae train -c configs/<preset>.toml` for each preset (8000 steps on the embedded digits,
the presets' own settings), timing the whole command, then prints one row per preset: wall time,
dead codes per level over a full pass of the training split (of num_codes), the final train recon
and the held-out recon MSE at the end. Uses an empty compilation cache, as a first run does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rqvae.trainer import config, rundir, runlog

REPO = Path(__file__).resolve().parent.parent
PRESETS = ("traditional", "wasserstein", "hybrid", "kmeans", "restart")


def run_preset(preset: str, out: Path, cache: str) -> dict:
    run_dir = out / preset
    if run_dir.exists():
        raise SystemExit(f"error: {run_dir} exists; pass another --out or remove it")
    command = ["rqvae", "train", "-c", str(REPO / "configs" / f"{preset}.toml"), "--run-dir",
               str(run_dir), "-q"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "JAX_COMPILATION_CACHE_DIR": cache})
    wall = time.perf_counter() - start
    records = runlog.read(run_dir)
    final = [r for r in records if r["kind"] == "train"][-1]
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    cfg = config.load(run_dir / rundir.CONFIG_FILE)
    return {"preset": preset, "wall": wall, "steps": final["step"],
            "codes": cfg.model.num_codes, "dead": last_eval["train_dead"],
            "recon": final["recon"], "heldout": last_eval["heldout_recon"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--out", type=Path, default=None,
                        help="where the runs go; default a temporary folder")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="rqvae-presets-"))
    print(f"{os.cpu_count()} CPU cores; runs in {out}", flush=True)
    print("| preset | wall time | dead codes L1 / L2 (of codes) | train recon | held-out recon |")
    print("| --- | --- | --- | --- | --- |")
    for preset in args.presets:
        with tempfile.TemporaryDirectory(prefix="rqvae-xla-") as cache:
            row = run_preset(preset, out, cache)
        dead = " / ".join(map(str, row["dead"]))
        print(f"| `{preset}.toml` | {row['wall']:.0f} s | {dead} (of {row['codes']}) | "
              f"{row['recon']:.4f} | {row['heldout']:.4f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
