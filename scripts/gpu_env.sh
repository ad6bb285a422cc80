# Sourced by the scripts that run on the GPU machine (gpu_check.sh, gpu_settle.sh): the wheels
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

# Wait for background jobs given as "pid:name" (each logging to $scratch/name.log), show the end of
# each one's log, then write the figures ($1: the seconds counter the caller started at).
finish_jobs() {
    local started=$1 job
    shift
    for job in "$@"; do
        wait "${job%%:*}" || echo "${job#*:}: exit $?"
        tail -n 3 "$scratch/${job#*:}.log"
    done
    echo "== figures ($((SECONDS - started)) s so far)"
    python3 scripts/gpu_check_summary.py "$scratch" "$out" "$((SECONDS - started))"
}
