"""Bad input, faults mid-training, resume and determinism, against real subprocesses and stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from conftest import SMALL_RUN, SUBSET_DIR, typed_config
from fmnist_exp import data, experiment


def start_cli(arguments: list[str], tracking_uri: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fmnist_exp.run", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        cwd=cwd,
    )


def run_cli(arguments: list[str], tracking_uri: str, cwd: Path) -> subprocess.CompletedProcess:
    process = start_cli([*arguments, f"hydra.run.dir={cwd}/out"], tracking_uri, cwd)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def all_runs(tracking_uri: str) -> list:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def corrupt_copy(tmp_path: Path, how: str) -> Path:
    copy = tmp_path / "data"
    data.copy_dataset(SUBSET_DIR, copy)
    (copy / data.MANIFEST_NAME).unlink()  # so that reading, not the checksum, meets the damage
    if how == "truncated":
        path = copy / data.FILES["train_images"]
        path.write_bytes(path.read_bytes()[:4000])
    elif how == "magic":
        labels = data.read_idx(copy / data.FILES["test_labels"], data.LABELS_MAGIC)
        data.write_idx(copy / data.FILES["test_labels"], labels, 2052)
    elif how == "counts":
        labels = data.read_idx(copy / data.FILES["train_labels"], data.LABELS_MAGIC)
        data.write_idx(copy / data.FILES["train_labels"], labels[:100], data.LABELS_MAGIC)
    return copy


POOLS = (
    "["
    + ",".join(["{type:max_pooling2d,pool_size:2}"] * 5)
    + ",{type:flatten},{type:dense,units:10,activation:softmax}]"
)

# (override(s), text the message must hold). Each must exit non-zero before a run exists.
BAD_INPUTS = [
    (["batch_size=0"], "batch_size: 0 must be a positive number"),
    (["batch_size=-1"], "batch_size: -1 must be a positive number"),
    (["batch_size=abc"], "batch_size"),
    (["batch_size=1000000000"], "batch_size: 1000000000 is larger than 65536"),
    (["epochs=-1"], "epochs: -1 must be a positive number"),
    (["seed=-3"], "seed: -3 must be 0 or more"),
    (["optimizer=adagrad"], "optimizer/adagrad"),
    (["optimizer.learning_rate=-0.01"], "optimizer.learning_rate: -0.01 must be a positive number"),
    (["optimizer.learning_rate=fast"], "optimizer.learning_rate"),
    (["optimizer.momentum=0.9"], "optimizer.momentum: adam takes no momentum"),
    (["optimizer.schedule.name=linear"], "optimizer.schedule.name: 'linear' is not one of constant, cosine"),
    (["model=resnet"], "model/resnet"),
    (["model.layers.0.type=conv3d"], "model.layers[0].type: 'conv3d' is not a known layer type"),
    (["model.layers.0.type=os.system"], "model.layers[0].type: 'os.system' is not a known layer type"),
    (["model.layers.0.filters=0"], "model.layers[0].filters: 0 must be an integer of at least 1"),
    (["model.layers.4.kernel_size=13"], "model.layers[4].kernel_size: 13 does not fit the 12x12x64 feature map"),
    ([f"model.layers={POOLS}"], "model.layers[4].pool_size: 2 does not fit the 1x1x1 feature map"),
    (["model.layers.8.rate=1.5"], "model.layers[8].rate: 1.5 must be a number in [0, 1)"),
    (["model.layers.9.units=9"], "model.layers[9]: the last layer must be {type: dense, units: 10"),
    (["model.layers=[{type:flatten}]"], "model.layers[0]: the last layer must be"),
    (["data.max_train_samples=0"], "data.max_train_samples: 0 must be a positive number"),
    (["data.validation=cross"], "data.validation: 'cross' is not one of holdout, test, none"),
    (["data.dir=/nonexistent/fashion"], "data.dir: '/nonexistent/fashion' is not a folder"),
    (["trainer.precision=float8"], "trainer.precision: 'float8' is not one of float32"),
    (
        ["mlflow.tracking_uri=http://127.0.0.1:9"],
        "mlflow.tracking_uri: cannot reach the tracking server http://127.0.0.1:9",
    ),
    (["data.no_such_key=1"], "no_such_key"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[" ".join(o)[:40] for o, _ in BAD_INPUTS])
def test_bad_input_is_refused_clearly_and_leaves_no_run(tmp_path, tracking_uri, overrides, message):
    result = run_cli([*SMALL_RUN, *overrides], tracking_uri, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    assert all_runs(tracking_uri) == []


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated", "train-images-idx3-ubyte.gz: not a readable gzip file"),
        ("magic", "t10k-labels-idx1-ubyte.gz: IDX magic number 2052, expected 2049"),
        ("counts", "4,000 images but train-labels-idx1-ubyte.gz 100 labels"),
    ],
)
def test_damaged_data_files_are_named(tmp_path, tracking_uri, how, message):
    copy = corrupt_copy(tmp_path, how)
    result = run_cli([*SMALL_RUN, f"data.dir={copy}", "data.verify=false"], tracking_uri, tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert all_runs(tracking_uri) == []


def test_unwritable_output_folder_is_named(tmp_path, tracking_uri):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        multirun = ["-m"] if key == "hydra.sweep.dir" else []
        process = start_cli([*multirun, *SMALL_RUN, f"{key}={blocker}/out/${{now:%H}}"], tracking_uri, tmp_path)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 2
        assert f"{key}: cannot create" in stderr and f"{blocker} is a file" in stderr
        assert "Traceback" not in stderr
    assert all_runs(tracking_uri) == []


def test_nan_loss_fails_the_run_with_a_reason(tmp_path, tracking_uri):
    result = run_cli([*SMALL_RUN, "epochs=3", "optimizer.learning_rate=1e6"], tracking_uri, tmp_path)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "loss became NaN or infinite" in result.stderr
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FAILED"
    assert "NaN or infinite" in run.data.tags["failure_reason"]
    assert int(run.data.tags["last_completed_epoch"]) < 3  # it stopped early


def test_deterministic_runs_are_bit_identical(tmp_path, tracking_uri):
    overrides = [
        *SMALL_RUN,
        "epochs=2",
        "deterministic=true",
        "mlflow.log_model=false",
        f"mlflow.tracking_uri={tracking_uri}",
    ]
    first = experiment.run(typed_config(overrides), tmp_path / "first")
    second = experiment.run(typed_config(overrides), tmp_path / "second")
    timing = {"epoch_seconds", "images_per_second"}
    assert {k: v for k, v in first.history.items() if k not in timing} == {
        k: v for k, v in second.history.items() if k not in timing
    }
    assert set(first.history) - timing >= {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert first.test_accuracy == second.test_accuracy


def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, tracking_uri):
    arguments = [
        f"data.dir={SUBSET_DIR}",
        "epochs=3",
        "batch_size=32",
        "deterministic=true",
        "trainer.verbose=2",
        "mlflow.log_model=false",
    ]
    output = tmp_path / "interrupted"
    process = start_cli([*arguments, f"hydra.run.dir={output}"], tracking_uri, tmp_path)
    state_file = output / "checkpoints" / "state.json"
    deadline = time.monotonic() + 240
    while not state_file.exists():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert json.loads(state_file.read_text())["epoch"] == 1
    (killed,) = all_runs(tracking_uri)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["last_completed_epoch"] == "1"

    resumed = run_cli([f"resume={killed.info.run_id}"], tracking_uri, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (finished,) = all_runs(tracking_uri)
    assert finished.info.run_id == killed.info.run_id
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["resumed_from_epoch"] == "1"
    steps = [point.step for point in mlflow.MlflowClient().get_metric_history(finished.info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3]

    (tmp_path / "reference").mkdir()
    uninterrupted = run_cli([*arguments, "mlflow.experiment_name=reference"], tracking_uri, tmp_path / "reference")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    reference = next(run for run in all_runs(tracking_uri) if run.info.run_id != finished.info.run_id)
    # Same batches in the same order and the optimizer state restored; only the dropout random
    # stream restarts at the resume, so the figures agree closely rather than bit for bit.
    assert finished.data.metrics["val_accuracy"] == pytest.approx(reference.data.metrics["val_accuracy"], abs=0.03)
    assert finished.data.metrics["test_accuracy"] == pytest.approx(reference.data.metrics["test_accuracy"], abs=0.03)
