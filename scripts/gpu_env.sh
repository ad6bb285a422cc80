# Sourced by the scripts that run on the lent GPU machine (gpu_check.sh, gpu_best.sh): the wheels
# carried in .gpu/wheels beside the machine's Python, the runner on JAX, the data carried in
# .gpu/fashion-mnist, and an MLflow store in the scratch folder $scratch.
wheels="${GPU_WHEELS:-.gpu/wheels}"
if ls "$wheels"/*.whl >/dev/null 2>&1 && ! python3 -c "import keras, hydra, mlflow" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$scratch/site" "$wheels"/*.whl || return 1
    export PYTHONPATH="$scratch/site"
fi
export PYTHONPATH="$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND="${KERAS_BACKEND:-jax}"
export FMNIST_DATA_DIR="${FMNIST_DATA_DIR:-$(pwd)/.gpu/fashion-mnist}"
[ -d "$FMNIST_DATA_DIR" ] || export FMNIST_DATA_DIR="$(cd .. && pwd)/shared/data/fashion-mnist"
export MLFLOW_TRACKING_URI="sqlite:///$scratch/mlflow.db"
export JAX_COMPILATION_CACHE_DIR="$scratch/jax-cache"  # processes compiling the same step share it
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
