"""hydra/launcher=gpu_pack: how many jobs it packs, and that packed jobs give the figures of the same
jobs run one at a time (real sweeps on JAX on the shipped subset; no GPU here, so the GPU's memory is
stood in for by hydra.launcher.gpu_memory_mb, which only sizes the pack and sets the caps)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from fmnist_exp.sweeps import gpu_pack
from helpers import SUBSET_DIR

needs_jax_and_joblib = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None or gpu_pack.JoblibLauncher is None,
    reason="needs jax and hydra-joblib-launcher (pip install -e '.[jax,sweeps]')",
)
# fast_cnn without dropout, 300 images in batches of 50, 1 epoch: seconds per job on JAX on this CPU.
JOBS = [
    f"data.dir={SUBSET_DIR}", "data.max_train_samples=300", "data.max_test_samples=100", "batch_size=50",
    "epochs=1", "model=fast_cnn", "model.layers.13.rate=0.0", "trainer.backend=jax", "trainer.verbose=2",
    "mlflow.log_model=false", "mlflow.system_metrics=false", "seed=1,2",
]  # fmt: skip
FIGURES = ("loss", "accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy")


@pytest.mark.parametrize(
    ("memory_mb", "cores", "expected"),
    [(None, 16, 1), (143_771, 16, 16), (143_771, 64, 35), (8_192, 16, 2), (1_000, 16, 1)],
)
def test_the_pack_fills_the_gpu_at_one_job_per_core_at_most(memory_mb, cores, expected):
    assert gpu_pack.jobs_to_pack(memory_mb, cores, job_memory_mb=4096) == expected


def sweep(arguments: list[str], folder: Path) -> dict[str, mlflow.entities.Run]:
    """A sweep of JOBS in a store of its own; its child runs by seed."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    env.update(MLFLOW_TRACKING_URI=uri, JAX_COMPILATION_CACHE_DIR=str(folder.parent / "jax-cache"))
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_exp.run", "-m", *JOBS, *arguments, f"hydra.sweep.dir={folder}/sweep"],
        capture_output=True, text=True, timeout=600, cwd=folder, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    children = [run for run in mlflow.search_runs(search_all_experiments=True, output_format="list")
                if "mlflow.parentRunId" in run.data.tags]  # fmt: skip
    assert all(run.info.status == "FINISHED" for run in children)
    return {run.data.params["seed"]: run for run in children}


@needs_jax_and_joblib
@pytest.mark.slow  # two real sweeps on JAX: minutes (CI's second step)
def test_packed_jobs_run_side_by_side_and_give_the_figures_of_one_at_a_time(tmp_path):
    # A stand-in GPU of 8 GiB at 4 GiB a job: two jobs at a time (on a machine of two cores or more).
    packed_folder, alone_folder = tmp_path / "packed", tmp_path / "alone"
    packed_folder.mkdir(), alone_folder.mkdir()
    packed = sweep(["hydra/launcher=gpu_pack", "hydra.launcher.gpu_memory_mb=8192"], packed_folder)
    jobs = min(2, gpu_pack.cpu_cores())
    for number in range(2):
        hydra = yaml.safe_load((packed_folder / "sweep" / str(number) / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra["launcher"]["n_jobs"] == jobs
        assert hydra["job"]["env_set"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == gpu_pack.memory_fraction(jobs)
    assert {run.data.tags["trainer.threads"] for run in packed.values()} == {str(gpu_pack.cpu_cores() // jobs)}
    if jobs == 2:  # side by side: each job started before the other ended
        first, second = packed.values()
        assert first.info.start_time < second.info.end_time and second.info.start_time < first.info.end_time

    # Hydra's default launcher: one job after the other, in one process, with as many threads as a packed
    # job (XLA's CPU kernels sum in another order on another thread count: the last digits would differ).
    alone = sweep([f"trainer.threads={gpu_pack.cpu_cores() // jobs}"], alone_folder)
    assert sorted(packed) == sorted(alone) == ["1", "2"]
    for seed in ("1", "2"):
        for key in FIGURES:
            assert packed[seed].data.metrics[key] == alone[seed].data.metrics[key], (seed, key)
    assert packed["1"].data.metrics["test_loss"] != packed["2"].data.metrics["test_loss"]  # the seeds differ
