#!/usr/bin/env bash
# The GPU check, on the JAX backend, in one command of under 10 minutes on the H200:
#   1. bench: the runner against a bare Keras fit, float32 and mixed_bfloat16, batch 32 and 256;
#   2. the article's recipe (experiment=article: seed_cnn, batch 32, test set as validation), 3 epochs;
#   3. experiment=fast to completion;
#   4. bench of resnet_small (the residual blocks of the layer language), float32, batch 256;
# then the figures in $OUT: summary.md (tables), results.json (every figure), log.txt (all output),
# learning_curves_article.png, learning_curves_fast.png and details.tar.gz (bench JSON, MLflow store,
# Hydra logs): six files (the device tool brings back eight at most).
#
# On the GPU machine (JAX and PyTorch on Python 3.12; no TensorFlow, no Keras, no network):
#   here, once:   bash scripts/gpu_wheels.sh       (fills the ignored .gpu/ with wheels and the data)
#   device run:   command "bash scripts/gpu_check.sh", carry [".gpu"], timeout_s 600
# Here, on the CPU, the same steps at toy sizes, in a few minutes:
#   GPU_CHECK_SIZE=tiny KERAS_BACKEND=jax bash scripts/gpu_check.sh
# GPU_CHECK_SIZE=tiny shrinks the work and nothing else. OUT defaults to ./gpu_check.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
scratch="$(mktemp -d)"

if [ "${GPU_CHECK_SIZE:-full}" = tiny ]; then
    # Toy sizes for a CPU; the limits only stop a hang (a loaded 2-core machine is slow).
    bench_images=(64 256) bench_repeats=1 bench_limit=600 resnet_images=256 resnet_limit=600
    article=(epochs=1 data.max_train_samples=2000 data.max_test_samples=500) article_limit=600
    fast=(epochs=2 data.max_train_samples=2000 data.max_test_samples=500) fast_limit=600
else
    # Each bench round is a whole epoch of 60,000 images (1,875 steps at batch 32, 235 at 256), so the
    # runner's per-epoch costs (MLflow logging, a checkpoint) weigh what they weigh in a real run;
    # 3 counted rounds after 1 traced. The limits add up to 560 s: the figures are written inside
    # the device tool's 600 s even when a step runs out of time (the whole check took 237 s before
    # step 4 was added).
    bench_images=(60000 60000) bench_repeats=3 bench_limit=80 resnet_images=60000 resnet_limit=60
    article=(epochs=3) article_limit=90
    fast=() fast_limit=90
fi

check() {
    local started=$SECONDS
    source scripts/gpu_env.sh || return 1

    echo "== device"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null \
        || echo "no nvidia-smi: CPU only"
    python3 -c "
import hydra, jax, keras, mlflow
print(f'keras {keras.__version__} on {keras.backend.backend()}, jax {jax.__version__}, hydra {hydra.__version__}, '
      f'mlflow {mlflow.__version__}; devices: {jax.devices()}')
if jax.default_backend() == 'cpu' and '$(command -v nvidia-smi)':
    raise SystemExit('gpu_check: there is a GPU but JAX sees only the CPU; stopping rather than timing the CPU')
" || return 1

    echo "== 1. bench: the runner against bare Keras ($((SECONDS - started)) s so far)"
    for precision in float32 mixed_bfloat16; do
        for index in 0 1; do
            batch=$([ "$index" = 0 ] && echo 32 || echo 256)
            timeout "$bench_limit" python3 -m fmnist_exp.bench batch_size="$batch" trainer.precision="$precision" \
                images="${bench_images[$index]}" repeats="$bench_repeats" \
                output="$scratch/bench_${precision}_b${batch}.json" || echo "bench $precision batch $batch: exit $?"
        done
    done

    echo "== 2. the article's recipe ($((SECONDS - started)) s so far)"
    timeout "$article_limit" python3 -m fmnist_exp.run experiment=article "${article[@]}" trainer.verbose=2 \
        mlflow.experiment_name=gpu_check mlflow.run_name=article hydra.run.dir="$scratch/article" \
        || echo "article: exit $?"

    echo "== 3. experiment=fast to completion ($((SECONDS - started)) s so far)"
    timeout "$fast_limit" python3 -m fmnist_exp.run experiment=fast "${fast[@]}" trainer.verbose=2 \
        mlflow.experiment_name=gpu_check mlflow.run_name=fast hydra.run.dir="$scratch/fast" \
        || echo "fast: exit $?"

    echo "== 4. bench: resnet_small, float32, batch 256 ($((SECONDS - started)) s so far)"
    timeout "$resnet_limit" python3 -m fmnist_exp.bench model=resnet_small batch_size=256 images="$resnet_images" \
        repeats="$bench_repeats" output="$scratch/bench_resnet_small_float32_b256.json" || echo "bench resnet_small: exit $?"

    echo "== figures ($((SECONDS - started)) s so far)"
    python3 scripts/gpu_check_summary.py "$scratch" "$out" "$((SECONDS - started))"
    for name in article fast; do
        cp "$scratch/$name/learning_curves.png" "$out/learning_curves_$name.png" 2>/dev/null
    done
    tar -czf "$out/details.tar.gz" -C "$scratch" --exclude=./jax-cache --exclude=./site --exclude='*.keras' .
    echo "gpu_check: $((SECONDS - started)) s in all; figures in $out"
}

check 2>&1 | tee "$out/log.txt"
