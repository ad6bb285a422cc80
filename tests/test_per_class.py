"""Evaluation artifacts, evaluate/predict on a logged model, pyfunc loading and the model registry."""

from __future__ import annotations

import json
import subprocess

import mlflow
import numpy as np
import pytest
from PIL import Image

from fmnist_exp.analysis import per_class
from fmnist_exp.commands import evaluate, predict
from fmnist_exp.data import fashion_mnist as data
from fmnist_exp.tracking import logged_model, registry
from fmnist_exp.tracking.store import Store
from helpers import SMALL_RUN, typed_config


def test_per_class_report_by_hand():
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0])
    counts = per_class.confusion_matrix(labels, predictions)
    assert counts[0, 0] == 1 and counts[0, 1] == 1 and counts[1, 1] == 2 and counts[2, 0] == 1
    report = per_class.per_class_report(counts)
    tshirt, trouser = report["classes"]["T-shirt/top"], report["classes"]["Trouser"]
    assert (tshirt["precision"], tshirt["recall"], tshirt["support"]) == (0.5, 0.5, 2)
    assert trouser["precision"] == pytest.approx(2 / 3) and trouser["recall"] == 1.0
    assert trouser["f1"] == pytest.approx(0.8)
    assert report["accuracy"] == pytest.approx(0.6)
    assert per_class.metric_name("T-shirt/top") == "t_shirt_top"


def test_run_logs_the_four_evaluation_artifacts(finished_run):
    outcome, run, _, output = finished_run
    client = mlflow.MlflowClient()
    logged = {item.path for item in client.list_artifacts(run.info.run_id, "evaluation")}
    assert logged == {
        "evaluation/confusion_matrix.csv",
        "evaluation/confusion_matrix.png",
        "evaluation/classification_report.json",
        "evaluation/classification_report.txt",
        "evaluation/misclassified.png",
    }
    assert {item.path for item in client.list_artifacts(run.info.run_id, "plots")} == {"plots/learning_curves.png"}
    csv_lines = (output / "evaluation" / "confusion_matrix.csv").read_text().splitlines()
    assert csv_lines[0].startswith("true\\predicted,T-shirt/top,Trouser")
    assert sum(int(value) for line in csv_lines[1:] for value in line.split(",")[1:]) == 300
    report = json.loads((output / "evaluation" / "classification_report.json").read_text())
    assert report["accuracy"] == pytest.approx(outcome.test_accuracy)
    assert run.data.metrics["test_per_class/recall_ankle_boot"] == report["classes"]["Ankle boot"]["recall"]
    for picture in ("confusion_matrix.png", "misclassified.png"):
        with Image.open(output / "evaluation" / picture) as image:
            assert image.size[0] > 400


COMMANDS = {"fmnist_exp.evaluate": evaluate.main, "fmnist_exp.predict": predict.main}


def run_in_process(capsys, module: str, *arguments: str) -> subprocess.CompletedProcess:
    """A command in this process, through its main(argv): its exit code, stdout and stderr."""
    capsys.readouterr()
    try:
        COMMANDS[module](list(arguments))
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([module, *arguments], code, out, err)


def test_evaluate_reproduces_the_logged_accuracy(finished_run, capsys):
    outcome, run, uri, _ = finished_run
    result = run_in_process(
        capsys, "fmnist_exp.evaluate", f"model_uri=runs:/{run.info.run_id}/model", f"mlflow.tracking_uri={uri}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"test_accuracy={outcome.test_accuracy:.4f}" in result.stdout
    assert "matches the run's logged test_accuracy" in result.stdout


def test_evaluate_refuses_an_unknown_run(finished_run, capsys):
    _, _, uri, _ = finished_run
    result = run_in_process(
        capsys, "fmnist_exp.evaluate", "model_uri=runs:/0123456789abcdef/model", f"mlflow.tracking_uri={uri}"
    )
    assert result.returncode == 2 and "model_uri:" in result.stderr and "Traceback" not in result.stderr


def test_predict_names_the_class_of_test_images(finished_run, tmp_path, capsys):
    _, run, uri, _ = finished_run
    images, _ = data.load(typed_config(SMALL_RUN).data, seed=0).test
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"test_{index}.png")
        Image.fromarray(images[index, ..., 0]).save(paths[-1])
    Image.fromarray(np.repeat(np.kron(images[0, ..., 0], np.ones((2, 2), np.uint8))[..., None], 3, axis=2)).save(
        tmp_path / "big_colour.png"
    )
    model = logged_model.load(f"runs:/{run.info.run_id}/model", Store(uri))
    expected = model.predict(images[:3], verbose=0)
    result = run_in_process(
        capsys,
        "fmnist_exp.predict",
        f"model_uri=runs:/{run.info.run_id}/model",
        f"images={tmp_path}",
        f"mlflow.tracking_uri={uri}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {line.split("\t")[0]: line.split("\t") for line in result.stdout.strip().splitlines()}
    for index, path in enumerate(paths):
        _, name, probability = lines[str(path)][:3]
        assert name == data.CLASS_NAMES[expected[index].argmax()]
        assert float(probability.split()[0]) == pytest.approx(float(expected[index].max()), abs=1e-4)
    assert "converted RGB to grayscale; resized 56x56 to 28x28" in lines[str(tmp_path / "big_colour.png")][2]


def test_predict_refuses_a_file_that_is_no_image(finished_run, tmp_path, capsys):
    _, run, uri, _ = finished_run
    (tmp_path / "notes.png").write_text("not an image")
    result = run_in_process(
        capsys,
        "fmnist_exp.predict",
        f"model_uri=runs:/{run.info.run_id}/model",
        f"images={tmp_path / 'notes.png'}",
        f"mlflow.tracking_uri={uri}",
    )
    assert result.returncode == 2
    assert "notes.png is not a readable image" in result.stderr


def test_pyfunc_predicts_on_raw_pixels(finished_run):
    outcome, run, uri, _ = finished_run
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    images, labels = data.load(typed_config(SMALL_RUN).data, seed=0).test
    probabilities = np.asarray(model.predict(images.astype(np.float32)))
    assert probabilities.shape == (300, 10)
    assert float((probabilities.argmax(axis=1) == labels).mean()) == pytest.approx(outcome.test_accuracy)


def test_registry_champion_alias_loads(finished_run, capsys):
    outcome, run, uri, _ = finished_run
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    (first,) = client.search_model_versions("name='fmnist_cnn'")
    assert first.run_id == run.info.run_id  # filed by register=true
    version = registry.register_model(Store(uri), run.info.run_id, "fmnist_cnn", alias="champion")
    assert str(client.get_model_version_by_alias("fmnist_cnn", "champion").version) == version
    result = run_in_process(
        capsys, "fmnist_exp.evaluate", "model_uri=models:/fmnist_cnn@champion", f"mlflow.tracking_uri={uri}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"test_accuracy={outcome.test_accuracy:.4f}" in result.stdout


def test_the_data_folder_is_read_from_new_and_older_runs():
    from mlflow.entities import Param, Run, RunData, RunInfo, RunTag

    from fmnist_exp.commands.evaluate import logged_data_dir
    from fmnist_exp.tracking.store import RunRecord

    def run_with(params=(), tags=()):
        info = RunInfo("r", "0", "u", "FINISHED", 0, 0, "active")
        data = RunData(params=[Param(*item) for item in params], tags=[RunTag(*item) for item in tags])
        return RunRecord.of(Run(info, data))  # what Store.source_run answers

    assert logged_data_dir(run_with(tags=[("data.dir", "/now/a/tag")])) == "/now/a/tag"
    assert logged_data_dir(run_with(params=[("data.dir", "/was/a/param")])) == "/was/a/param"  # logged before
    assert logged_data_dir(run_with(params=[("data.dir", "None")])) is None and logged_data_dir(None) is None
