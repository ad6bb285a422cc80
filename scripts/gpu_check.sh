#!/usr/bin/env bash
# GPU check, under 10 minutes on one GPU: the throughput benchmark, then the article's recipe for a
# few epochs, with the device and the figures written to $OUT (or ./gpu_check). Run from the repo root:
#   FMNIST_DATA_DIR=/path/to/fashion-mnist bash scripts/gpu_check.sh
set -euo pipefail
out="${OUT:-gpu_check}"
mkdir -p "$out"
export FMNIST_DATA_DIR="${FMNIST_DATA_DIR:-$(pwd)/../shared/data/fashion-mnist}"
export MLFLOW_TRACKING_URI="sqlite:///$(pwd)/$out/mlflow.db"

python3 -m pip install -q -e ".[gpu]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.csv"
python3 -c "import tensorflow as tf; print(tf.config.list_physical_devices('GPU'))" | tee "$out/tf_devices.txt"

# Runner against bare Keras, float32 and mixed_float16, at the article's batch size and a GPU-sized one.
for precision in float32 mixed_float16; do
    for batch in 32 256; do
        timeout 150 python3 -m fmnist_exp.bench batch_size=$batch precision=$precision images=25600 repeats=3 \
            output="$out/bench_${precision}_b${batch}.json" | tee "$out/bench_${precision}_b${batch}.txt"
    done
done

# The article's recipe, 5 epochs, test set as validation: accuracy per epoch and seconds per epoch.
timeout 240 python3 -m fmnist_exp.run experiment=article epochs=5 trainer.verbose=2 mlflow.experiment_name=gpu_check \
    | tee "$out/article_5_epochs.txt"
