#!/usr/bin/env bash
# The device checks, in one run on a machine with an accelerator (about 6 minutes on one GPU).
# 1. Does skipping the transport solve on steps with nothing to move (lax.cond, the CPU's
#    choice: --guard branch) beat solving every step (--guard select, today's choice on
#    accelerators)? Times both on the 8x8 patch cell (2 x 4,096 codes) and the 16x16 grid
#    tokenizer (2 x 1,024), each with traditional VQ beside it.
# 2. With LARGE=1, the large-codebook cells on seed 0 (colour 8x8 patches at 2 x 16,384 and
#    2 x 65,536 codes: traditional, restart and the flag), too slow for the 2-core CPU machine.
#   scripts/gpu_checks.sh [OUT_DIR]            # patches are written to OUT_DIR (default /tmp)
#   LARGE=1 scripts/gpu_checks.sh [OUT_DIR]
set -euo pipefail
out=${1:-/tmp}
cd "$(dirname "$0")/.."
python -c "import jax; print(jax.devices())"
[[ -f $out/patches8.npz ]] || python scripts/make_patches.py --size 8 --out "$out/patches8.npz"
[[ -f $out/patches16.npz ]] || python scripts/make_patches.py --size 16 --count 20000 \
  --heldout-count 2000 --out "$out/patches16.npz"
for guard in select branch; do
  python scripts/bench_transport.py --data "$out/patches8.npz" --codes 4096 --steps 500 \
    --after 1000 --variants traditional hybrid --guard "$guard"
  python scripts/bench_transport.py --data "$out/patches16.npz" --config configs/tokens-patches.toml \
    --codes 1024 --steps 500 --after 500 --variants traditional hybrid --guard "$guard"
done
if [[ ${LARGE:-0} == 1 ]]; then
  CELLS="colour8-2x16384 colour8-2x65536" METHODS="traditional restart hybrid" SEEDS=0 \
    scripts/transport_matrix.sh --out "$out/matrix"
fi
