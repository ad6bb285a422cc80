#!/usr/bin/env bash
# Candidates for experiment=best, trained side by side on the H200 (JAX), in one command of
# under 10 minutes: each job is a full runner run (holdout validation, test set at the end, MLflow),
# several share the GPU (small models leave most of it idle). Figures in $OUT: summary.md,
# results.json, log.txt, and the learning curves of the first seed of each candidate.
#
#   here, once:   bash scripts/gpu_wheels.sh
#   device run:   command "bash scripts/gpu_best.sh", carry [".gpu"], timeout_s 600
#   on a CPU, toy sizes:  GPU_CHECK_SIZE=tiny KERAS_BACKEND=jax bash scripts/gpu_best.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_best}"
mkdir -p "$out"
scratch="$(mktemp -d)"

# name|overrides: experiment=best's AdamW, cosine schedule and batch size 128 under each.
candidates=(
    "resnet48_aug|model=resnet_small_aug model.width=48"
    "resnet32_aug|model=resnet_small_aug model.width=32"
    "wide_cnn_flip|model=wide_cnn_flip"
)
seeds_of_first=(1 2 3)  # the first candidate runs on three seeds, the others on seed 1
if [ "${GPU_CHECK_SIZE:-full}" = tiny ]; then
    size=(epochs=2 data.max_train_samples=1000 data.max_test_samples=300) limit=600
else
    size=(epochs=30) limit=420  # 420 s: the figures are written inside the call, with device time to spare
fi

best() {
    local started=$SECONDS
    source scripts/gpu_env.sh || return 1
    export GPU_CHECK_EXPERIMENT=gpu_best
    # Each process takes GPU memory as it needs it, so the jobs fit side by side.
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi: CPU only"
    local jobs=()
    for index in "${!candidates[@]}"; do
        name="${candidates[$index]%%|*}"
        read -r -a overrides <<<"${candidates[$index]#*|}"
        seeds=(1)
        [ "$index" = 0 ] && seeds=("${seeds_of_first[@]}")
        for seed in "${seeds[@]}"; do
            run="${name}_seed${seed}"
            timeout "$limit" python3 -m fmnist_exp.run experiment=best "${overrides[@]}" seed="$seed" "${size[@]}" \
                trainer.verbose=2 mlflow.system_metrics=false mlflow.experiment_name=gpu_best \
                mlflow.run_name="$run" hydra.run.dir="$scratch/$run" >"$scratch/$run.log" 2>&1 &
            jobs+=("$!:$run")
        done
    done
    finish_jobs "$started" "${jobs[@]}"
    for index in "${!candidates[@]}"; do
        name="${candidates[$index]%%|*}"
        cp "$scratch/${name}_seed1/learning_curves.png" "$out/curves_$name.png" 2>/dev/null
    done
    echo "gpu_best: $((SECONDS - started)) s in all; figures in $out"
}

best 2>&1 | tee "$out/log.txt"
