"""The command line as a user runs it: a subprocess with a real store."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import mlflow
import pytest

from conftest import SMALL_RUN


def run_cli(*arguments: str, tracking_uri: str, cwd) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    return subprocess.run(
        [sys.executable, "-m", "fmnist_exp.run", *arguments, f"hydra.run.dir={cwd}/out"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        cwd=cwd,
    )


def runs_in(tracking_uri: str) -> list:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_a_small_run_end_to_end(tmp_path, tracking_uri):
    result = run_cli(*SMALL_RUN, tracking_uri=tracking_uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test_accuracy=" in result.stdout and "mlflow ui" in result.stdout
    (run,) = runs_in(tracking_uri)
    assert run.info.status == "FINISHED"
    assert run.info.run_id in result.stdout
    assert (tmp_path / "out" / "learning_curves.png").is_file()


@pytest.mark.parametrize(
    "override, message",
    [
        ("batch_size=-1", "batch_size: -1 must be a positive number"),
        ("model.layers.0.type=conv2dd", "model.layers[0].type: 'conv2dd' is not a known layer type"),
        ("batch_size=abc", "batch_size"),
        ("optimizer=adagrad", "optimizer"),
    ],
)
def test_bad_input_fails_fast_without_a_run(tmp_path, tracking_uri, override, message):
    started = time.perf_counter()
    result = run_cli(*SMALL_RUN, override, tracking_uri=tracking_uri, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert time.perf_counter() - started < 30  # no TensorFlow work, no training
    assert runs_in(tracking_uri) == []


def test_help_lists_the_groups(tmp_path, tracking_uri):
    result = run_cli("--help", tracking_uri=tracking_uri, cwd=tmp_path)
    assert result.returncode == 0
    groups = dict(
        line.split(": ", 1)
        for line in result.stdout.splitlines()
        if line.split(": ")[0] in ("model", "optimizer", "experiment")
    )
    assert {"seed_cnn", "modern_cnn", "fast_cnn", "wide_cnn"} <= set(groups["model"].split(", "))
    assert groups["optimizer"] == "adam, adamw, rmsprop, sgd"
    assert set(groups["experiment"].split(", ")) == {"article", "fast", "strong", "best"}
    assert "python -m fmnist_exp.run -m key=a,b" in result.stdout
