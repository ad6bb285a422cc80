#!/usr/bin/env bash
# Run HERE (where PyPI is reachable), before scripts/gpu_check.sh goes to the GPU machine, which
# reaches no registry. Fills .gpu/ (ignored by git, so name it in the device tool's `carry`):
#   .gpu/wheels/          the wheels the runner needs there and the machine lacks, for CPython 3.12 x86-64
#   .gpu/fashion-mnist/   a copy of the data set (the ../shared beside a checkout does not travel)
#
#   bash scripts/gpu_wheels.sh                 # for the GPU machine
#   GPU_PYTHON=3.11 bash scripts/gpu_wheels.sh /tmp/wheels-3.11   # the same set for this Python, to try here
#
# Not downloaded: TensorFlow (the check runs on JAX), JAX, PyTorch, NumPy, pandas, matplotlib and the
# rest of what the machine's image already holds (the device tool's KINDS.md lists it); --no-deps,
# so nothing else slips in. The versions are the ones this project runs and tests here.
set -euo pipefail
cd "$(dirname "$0")/.."
python_version="${GPU_PYTHON:-3.12}"
wheels="${1:-.gpu/wheels}"
data_dir="${FMNIST_DATA_DIR:-$(cd .. && pwd)/shared/data/fashion-mnist}"

packages=(
    # Keras and the two of its needs the machine lacks (absl-py, h5py, ml-dtypes, numpy, packaging and rich are there).
    keras==3.15.1 namex==0.1.0 optree==0.20.0
    # Hydra (omegaconf vendors its ANTLR runtime; PyYAML is there).
    hydra-core==1.4.0rc3 omegaconf==2.4.1rc1
    # The study sweeper's base, which Hydra loads on every command (a core dependency); tqdm is there.
    hydra-optuna-sweeper==1.4.0rc3 optuna==5.0.0 colorlog==6.12.0
    # hydra/launcher=gpu_pack packs jobs on the GPU through the joblib launcher (joblib and cloudpickle are there).
    hydra-joblib-launcher==1.4.0rc3
    # MLflow without its server and UI (mlflow-skinny), plus the SQLite store (SQLAlchemy, Alembic, Mako)
    # and what mlflow-skinny imports that the machine lacks.
    mlflow-skinny==3.17.2 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3
    cryptography==48.0.0 cffi==2.0.0 pycparser==3.0
    cachetools==7.3.3 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 importlib-metadata==9.1.0
    opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
    opentelemetry-semantic-conventions==0.66b2
    pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
    python-dotenv==1.2.2 sqlparse==0.6.1 databricks-sdk==0.162.0 fastapi==0.165.0 starlette==1.10.0
    # Present there, but possibly too old for the above: OpenTelemetry's and MLflow's generated code
    # needs protobuf >= 5.26, pydantic-core a recent typing_extensions. These shadow the machine's copies
    # for this check only (they sit first on PYTHONPATH), and are the versions that run together here.
    protobuf==7.36.2 typing-extensions==4.16.0
)

mkdir -p "$wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$wheels" "${packages[@]}" 2> >(grep -v "is neither a file nor a directory" >&2)

# One version of each package: two would stop the whole install there.
duplicates=$(ls "$wheels"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$duplicates" ]; then
    echo "gpu_wheels: more than one version of: $duplicates (empty $wheels and run again)" >&2
    exit 1
fi

if [ "$wheels" = ".gpu/wheels" ]; then
    mkdir -p .gpu/fashion-mnist
    cp "$data_dir"/*.gz .gpu/fashion-mnist/
fi

# What travels: the working tree (tracked and untracked-not-ignored files) plus .gpu, 64 MiB at most.
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -sb .gpu 2>/dev/null | cut -f1 || echo 0)
echo "wheels: $(ls "$wheels"/*.whl | wc -l) files, $(du -sh "$wheels" | cut -f1); working tree $((tree / 1048576)) MiB + .gpu $((carried / 1048576)) MiB of 64 MiB"
if [ $((tree + carried)) -gt $((64 * 1048576)) ]; then
    echo "gpu_wheels: over the 64 MiB a device call carries" >&2
    exit 1
fi
