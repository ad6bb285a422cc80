"""A failure that is not bad input keeps its traceback: exit 1, the run FAILED with its reason."""

from __future__ import annotations

import shutil

import mlflow

from helpers import SUBSET_DIR, finish, start_command, wait_for


def test_an_error_inside_training_keeps_its_traceback_and_fails_the_run(tmp_path, tracking_uri):
    output = tmp_path / "out"
    arguments = [
        f"data.dir={SUBSET_DIR}",
        "data.max_train_samples=1600",  # 45 batches an epoch: time to turn the folder into a file
        "data.max_test_samples=300",
        "epochs=3",
        "batch_size=32",
        "trainer.verbose=2",
        "mlflow.log_model=false",
        f"hydra.run.dir={output}",
    ]
    process = start_command("fmnist_exp.run", arguments, tmp_path, {"MLFLOW_TRACKING_URI": tracking_uri})
    wait_for(lambda: (output / "checkpoints" / "state.json").exists(), process, what="the first checkpoint")
    # The checkpoint folder turns into a file during epoch 2: saving the next checkpoint fails with
    # an OSError that no input of the user's caused.
    shutil.rmtree(output / "checkpoints")
    (output / "checkpoints").write_text("")
    result = finish(process)
    stderr = result.stderr
    assert result.returncode == 1, stderr[-2000:]
    assert "Traceback" in stderr and "fmnist_exp: error:" not in stderr
    mlflow.set_tracking_uri(tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED"
    assert "Error" in run.data.tags["failure_reason"]  # FileExistsError or NotADirectoryError, by name
