#!/usr/bin/env bash
# Does the Wasserstein loss keep every code alive, and at what price? Trains the five methods
# (traditional, k-means init, dead-code restart, pure Wasserstein, hybrid) over several seeds,
# prints the `rqvae report` comparison of every run and a table of mean and spread per method.
# Variants ride along: traditional with the original codebook loss on the sum of the codes
# (codebook_loss = "sum"); the hybrid with its transport term on every level (hybrid-all-levels);
# and the previous hybrid (relative epsilon 0.05 of the mean cost, every level: hybrid-relative)
# alone, with a finer plan (sinkhorn_epsilon 0.02), with a transport queue of four batches
# (ot_queue_size), with the transport gradient into the encoder as well
# (wasserstein_encoder_grad), and with the original transport (absolute epsilon 0.05, a fixed 20
# plain iterations, whole squared distances, the sum-form codebook loss); and the hybrid with a
# fifth of its transport weight (lambda_wasserstein 0.1) plus dead-code restart after 200 unpicked
# steps (hybrid-restart).
#
#   scripts/dead_code_study.sh [--quick | --large] [--out DIR] [--dry-run]
#
# Digits (embedded): 2 levels x 64 codes and x 256 codes, latent 16, STEPS steps, 3 seeds.
# With tfds MNIST prepared (rqvae data prepare tfds:mnist) it also runs configs/mnist.toml
# (2 levels x 512 codes); set MNIST=0 to skip it, MNIST=1 to require it. --quick: 1 seed, 64
# codes, 1000 steps, no MNIST. Runs already in DIR that reached their final step are kept and
# reused, so an interrupted study continues where it stopped.
#
# --large: codebooks larger than the batch, on 8x8 grayscale image patches (scripts/make_patches.py,
# written to DIR/patches8.npz first; needs pip install -e '.[study]'): 2 levels x 1,024, 4,096 and
# 16,384 codes and 4 levels x 1,024, latent 16, batch 256, STEPS (1500) steps, SEEDS ("0 1 2");
# traditional, k-means init, dead-code restart, hybrid and the variants above but the original
# transport.
# LARGE_SETTINGS (levels x codes, default "2x1024 2x4096 2x16384 4x1024") picks settings; in
# either study METHODS (e.g. "hybrid restart") picks methods. The tables cover every run in DIR.
# The hybrid solve at 16,384 codes takes seconds a step on 2 CPU cores: size it to the machine.
# --dry-run prints the `rqvae train` command of every run the study would train, and trains
# nothing.
set -euo pipefail

out=runs/study
quick=0
large=0
dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --large) large=1 ;;
    --dry-run) dry=1 ;;
    --out) out="$2"; shift ;;
    *) echo "error: unknown argument '$1'; use [--quick | --large] [--out DIR] [--dry-run]" >&2
       exit 2 ;;
  esac
  shift
done

batch=128
methods=(traditional traditional-sum kmeans restart wasserstein hybrid hybrid-restart
         hybrid-all-levels hybrid-relative hybrid-relative-eps0.02 hybrid-relative-queue
         hybrid-relative-encoder-grad hybrid-original)
if [[ $quick == 1 && $large == 1 ]]; then
  echo "error: --quick and --large are two different studies; pass one" >&2; exit 2
elif [[ $quick == 1 ]]; then
  seeds=(0); groups=(digits-64); steps=${STEPS:-1000}; mnist=0
elif [[ $large == 1 ]]; then
  read -r -a seeds <<< "${SEEDS:-0 1 2}"; steps=${STEPS:-1500}; mnist=0; batch=256
  read -r -a settings <<< "${LARGE_SETTINGS:-2x1024 2x4096 2x16384 4x1024}"
  groups=("${settings[@]/#/patches-}")
  methods=(traditional kmeans restart hybrid hybrid-restart hybrid-all-levels hybrid-relative
           hybrid-relative-eps0.02 hybrid-relative-queue hybrid-relative-encoder-grad)
else
  seeds=(0 1 2); groups=(digits-64 digits-256); steps=${STEPS:-3000}; mnist=${MNIST:-auto}
fi
if [[ -n ${METHODS:-} ]]; then  # a subset, e.g. to add seeds to some methods only
  read -r -a methods <<< "$METHODS"
fi
out=$(realpath -m "$out")  # relative to where the script was started, not the repository
cd "$(dirname "$0")/.."
patches="$out/patches8.npz"
variant() {  # method -> config name and extra arguments
  # The hybrid preset before the nearest-code epsilon and wasserstein_levels (hybrid-relative*)
  local previous="hybrid --set sinkhorn_epsilon_mode=relative --set wasserstein_levels=0"
  case $1 in
    traditional-sum) echo "traditional --set codebook_loss=sum" ;;
    hybrid-all-levels) echo "hybrid --set wasserstein_levels=0" ;;
    hybrid-restart) echo "hybrid --lambda-wasserstein 0.1 --set dead_code_threshold=200" ;;
    hybrid-relative) echo "$previous --sinkhorn-epsilon 0.05" ;;
    hybrid-relative-eps0.02) echo "$previous --sinkhorn-epsilon 0.02" ;;
    hybrid-relative-queue) echo "$previous --sinkhorn-epsilon 0.05
      --set ot_queue_size=$((4 * batch))" ;;
    hybrid-relative-encoder-grad) echo "$previous --sinkhorn-epsilon 0.05
      --set wasserstein_encoder_grad=true" ;;
    hybrid-original) echo "hybrid --set codebook_loss=sum --set wasserstein_scale=whole
      --set sinkhorn_epsilon_mode=absolute --sinkhorn-epsilon 0.05 --set wasserstein_levels=0
      --set sinkhorn_iters=20 --set sinkhorn_tolerance=0 --set sinkhorn_overrelaxation=1" ;;
    *) echo "$1" ;;
  esac
}
group_args() {  # digits-CODES or patches-LEVELSxCODES -> data and model arguments
  case $1 in
    digits-*) echo "--set model.num_codes=${1#digits-}" ;;
    patches-*) local setting=${1#patches-}
      echo "--dataset npz:$patches --batch-size $batch --set model.num_levels=${setting%x*}
        --set model.num_codes=${setting#*x}" ;;
  esac
}

finished() {  # run-dir final-step: the run completed at that step (a run of another length,
  # e.g. --quick's, is redone)
  python - "$1" "$2" <<'PY' 2>/dev/null
import sys
from rqvae import runlog
end = [r for r in runlog.read(sys.argv[1]) if r["kind"] == "end"]
sys.exit(0 if end and end[-1]["status"] == "completed" and end[-1]["step"] == int(sys.argv[2])
         else 1)
PY
}

done_runs=0
started=$SECONDS
train() {  # run-dir final-step config args...
  local run_dir="$1" final="$2" config="$3"; shift 3
  if [[ $dry == 1 ]]; then  # shell-quoted, so each line can be pasted back into a shell
    printf 'rqvae train'; printf ' %q' -c "configs/$config.toml" --run-dir "$run_dir" --quiet "$@"
    echo; return
  fi
  done_runs=$((done_runs + 1))
  local progress="[$done_runs/$total_runs, $((SECONDS - started)) s]"
  if finished "$run_dir" "$final"; then
    echo "$progress kept $run_dir"; return
  fi
  rm -rf "$run_dir"  # an unfinished run from an interrupted study
  echo "$progress training $run_dir"
  local t0=$SECONDS
  rqvae train -c "configs/$config.toml" --run-dir "$run_dir" --quiet "$@" >/dev/null
  echo "    done in $((SECONDS - t0)) s"
}

if [[ $mnist == auto ]]; then
  python -c "from rqvae import config, data; data.load(config.DataConfig(dataset='tfds:mnist'))" \
    2>/dev/null && mnist=1 || mnist=0
  [[ $mnist == 0 ]] && echo "tfds:mnist is not prepared here; skipping MNIST (see README, Data sets)"
fi
total_runs=$(( ${#groups[@]} * ${#methods[@]} * ${#seeds[@]} + mnist * 5 * ${#seeds[@]} ))
if [[ $large == 1 && ! -f $patches && $dry == 0 ]]; then
  mkdir -p "$out"
  python scripts/make_patches.py --size 8 --out "$patches"
fi

for group in "${groups[@]}"; do
  for method in "${methods[@]}"; do
    for seed in "${seeds[@]}"; do
      # shellcheck disable=SC2046  # the variant's and group's words are meant to split
      train "$out/$group/$method-s$seed" "$steps" $(variant "$method") $(group_args "$group") \
        --seed "$seed" --steps "$steps" --set "run.eval_every=$steps"
    done
  done
done

if [[ $mnist == 1 ]]; then
  mnist_steps=$(python -c "import tomllib; print(tomllib.load(open('configs/mnist.toml', 'rb'))['steps'])")
  for method in traditional kmeans restart wasserstein hybrid; do
    for seed in "${seeds[@]}"; do
      lambdas=()
      case $method in  # configs/mnist.toml is the hybrid; the others change its losses
        traditional) lambdas=(--lambda-wasserstein 0) ;;
        kmeans) lambdas=(--lambda-wasserstein 0 --set kmeans_init=true) ;;
        restart) lambdas=(--lambda-wasserstein 0 --set dead_code_threshold=20) ;;
        wasserstein) lambdas=(--lambda-codebook 0 --lambda-wasserstein 1) ;;
      esac
      train "$out/mnist-512/$method-s$seed" "$mnist_steps" mnist --seed "$seed" "${lambdas[@]}"
    done
  done
fi

[[ $dry == 1 ]] && exit 0
for group in "$out"/*/; do
  echo
  echo "== $(basename "$group"): every run"
  rqvae report "$group"
done
echo
rqvae report "$out"/*/ --json | python scripts/study_table.py
