"""A failure that is not bad input keeps its traceback: exit 1, the run FAILED with its reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import mlflow

from helpers import SUBSET_DIR


def test_an_error_inside_training_keeps_its_traceback_and_fails_the_run(tmp_path, tracking_uri):
    output = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fmnist_exp.run",
            f"data.dir={SUBSET_DIR}",
            "epochs=3",
            "batch_size=32",
            "trainer.verbose=2",
            "mlflow.log_model=false",
            f"hydra.run.dir={output}",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        cwd=tmp_path,
    )
    state = output / "checkpoints" / "state.json"
    deadline = time.monotonic() + 300
    while not state.exists():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    # The checkpoint folder turns into a file during epoch 2: saving the next checkpoint fails with
    # an OSError that no input of the user's caused.
    shutil.rmtree(output / "checkpoints")
    (output / "checkpoints").write_text("")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr[-2000:]
    assert "Traceback" in stderr and "fmnist_exp: error:" not in stderr
    mlflow.set_tracking_uri(tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED"
    assert "Error" in run.data.tags["failure_reason"]  # FileExistsError or NotADirectoryError, by name
