#!/usr/bin/env bash
# The article's recipe for its full 100 epochs on the H200 (JAX), side by side, in one command of
# under 10 minutes (an epoch there took 3.2 s; 100 epochs on this project's 2-core CPUs take hours):
#   article_runner_seed42   python -m fmnist_exp.run experiment=article (float32, seed 42): the curve
#                           that collapsed to 10% at epoch 49 on the CPU
#   plain_article_seed42    scripts/article_plain.py, the same recipe with no runner: recipe or runner?
#   default_cosine_seed1-3  the candidate default: the same recipe with a cosine learning-rate schedule,
#                           validated on the holdout split, three seeds for its full length
# Figures in $OUT: summary.md (best, last and worst-late validation accuracy per run), results.json
# (every run's per-epoch loss and val_accuracy: the curves for docs/), log.txt.
#
#   here, once:   bash scripts/gpu_wheels.sh
#   device run:   command "bash scripts/gpu_article.sh", carry [".gpu"], timeout_s 600
#   on a CPU, toy sizes:  GPU_CHECK_SIZE=tiny KERAS_BACKEND=jax bash scripts/gpu_article.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_article}"
mkdir -p "$out"
scratch="$(mktemp -d)"

# name|overrides of the runner's jobs (the plain script is started on its own below).
jobs_to_run=(
    "article_runner_seed42|experiment=article seed=42"
    "default_cosine_seed1|optimizer.schedule.name=cosine seed=1"
    "default_cosine_seed2|optimizer.schedule.name=cosine seed=2"
    "default_cosine_seed3|optimizer.schedule.name=cosine seed=3"
)
if [ "${GPU_CHECK_SIZE:-full}" = tiny ]; then
    size=(epochs=2 data.max_train_samples=1000 data.max_test_samples=300) plain=(--epochs 2 --max-train 1000) limit=600
else
    size=() plain=(--epochs 100) limit=530  # 530 s: the figures are written inside the call
fi

article() {
    local started=$SECONDS
    source scripts/gpu_env.sh || return 1
    export GPU_CHECK_EXPERIMENT=gpu_article
    export XLA_PYTHON_CLIENT_PREALLOCATE=false  # each process takes GPU memory as it needs it
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi: CPU only"
    local pids=()
    for job in "${jobs_to_run[@]}"; do
        name="${job%%|*}"
        read -r -a overrides <<<"${job#*|}"
        timeout "$limit" python3 -m fmnist_exp.run "${overrides[@]}" "${size[@]}" trainer.verbose=2 \
            mlflow.log_model=false mlflow.system_metrics=false mlflow.experiment_name=gpu_article \
            mlflow.run_name="$name" hydra.run.dir="$scratch/$name" >"$scratch/$name.log" 2>&1 &
        pids+=("$!:$name")
    done
    timeout "$limit" python3 scripts/article_plain.py --seed 42 "${plain[@]}" \
        --out "$scratch/plain_article_seed42.csv" >"$scratch/plain_article_seed42.log" 2>&1 &
    pids+=("$!:plain_article_seed42")
    finish_jobs "$started" "${pids[@]}"
    cp "$scratch/article_runner_seed42/learning_curves.png" "$out/curves_article_runner.png" 2>/dev/null
    echo "gpu_article: $((SECONDS - started)) s in all; figures in $out"
}

article 2>&1 | tee "$out/log.txt"
