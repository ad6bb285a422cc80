#!/usr/bin/env bash
# The one prepared call for the GPU machine (JAX), within a 9-minute device call: everything at once on
# the one GPU, each job's memory capped at its share (scripts/gpu_settle.py says what runs):
#   experiment=article and scripts/article_plain.py, 100 epochs, seeds 1-3 each: how often the recipe collapses;
#   the candidate default (the article's recipe with a cosine schedule), seeds 1-3;
#   experiment=best's candidates (resnet_small_aug at width 48 and 32, wide_cnn_flip), seeds 1-3;
#   bench at batch 32 and 256: the runner on the device stream and on the NumPy stream against bare Keras.
# Figures in $OUT (default docs/gpu_settle): summary.md, results.json (every curve), curves.png,
# log.txt. Stopped early (SETTLE_LIMIT seconds, default 450; SIGTERM; Ctrl-C), it writes the same
# files from what finished and what got that far, marked PARTIAL.
#
#   here, once:   bash scripts/gpu_wheels.sh       (fills the ignored .gpu/ with wheels and the data)
#   device run:   command "bash scripts/gpu_settle.sh", carry [".gpu"], timeout_s 540
#   on a CPU, toy sizes:  GPU_CHECK_SIZE=tiny KERAS_BACKEND=jax bash scripts/gpu_settle.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-docs/gpu_settle}"
mkdir -p "$out"
scratch="$(mktemp -d)"

settle() {
    source scripts/gpu_env.sh || return 1
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi: CPU only"
    # exec: the driver gets the signals this shell gets, and writes the summary on SIGTERM.
    exec python3 scripts/gpu_settle.py "$scratch" "$out"
}

settle > >(tee "$out/log.txt") 2>&1
