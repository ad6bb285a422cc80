"""What a run records in MLflow 3's own terms, read back through MLflow's client: its LoggedModel
(signature, input example, linked test metrics, registry), its datasets, its system metrics, the
experiment's kind; the model served over REST by `mlflow models serve`; and the MLflow bug the model
logging works around."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from fmnist_exp.data import fashion_mnist as data
from fmnist_exp.tracking import active_run, dataset_inputs, logged_model, registry
from fmnist_exp.tracking.links import ui_command
from fmnist_exp.tracking.store import EXPERIMENT_KIND, Store
from fmnist_exp.training import experiment as experiment_module
from helpers import SMALL_RUN, SUBSET_DIR, free_port, stop_process_group, typed_config, wait_for_http


def use_globally(monkeypatch, uri: str) -> None:
    """MLflow's process-wide tracking URI, for its fluent API, restored after the test."""
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)


@pytest.fixture
def global_store(tracking_uri, monkeypatch):
    """A fresh store as MLflow's process-wide one, with an experiment of ours as the active one."""
    store = Store(tracking_uri)
    experiment_id = store.experiment_id("fluent")
    use_globally(monkeypatch, tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    return store, experiment_id


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory):
    """One epoch on 1,000 subset images, registered, system metrics sampled every second.

    Returns (outcome, MLflow client, tracking URI).
    """
    root = tmp_path_factory.mktemp("mlflow3")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    overrides = [*SMALL_RUN, f"mlflow.tracking_uri={uri}", "register=true", "mlflow.experiment_name=mlflow3"]
    interval, cwd = os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"), Path.cwd()
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    empty = root / "cwd"  # where MLflow's default store (./mlflow.db) would appear if anything fell back to it
    empty.mkdir()
    os.chdir(empty)
    try:
        outcome = experiment_module.run(typed_config(overrides), root / "output", overrides=["epochs=1"])
    finally:
        os.chdir(cwd)
        if interval is None:
            os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
        else:
            os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = interval
    assert not list(empty.iterdir()), "something used MLflow's default store instead of the run's"
    return outcome, mlflow.MlflowClient(uri), uri


def the_logged_model(client, run):
    (model,) = client.search_logged_models([run.info.experiment_id])
    return model


# -- logged models ----------------------------------------------------------------------------------


def test_the_run_logs_its_model_as_a_logged_model(subset_run):
    outcome, client, _ = subset_run
    run = client.get_run(outcome.run_id)
    model = the_logged_model(client, run)
    assert (model.name, model.source_run_id, model.status.name) == ("model", run.info.run_id, "READY")
    assert [output.model_id for output in run.outputs.model_outputs] == [model.model_id]
    assert model.params["batch_size"] == run.data.params["batch_size"]


def test_the_test_metrics_belong_to_the_model_and_the_test_set(subset_run):
    outcome, client, _ = subset_run
    run = client.get_run(outcome.run_id)
    model = the_logged_model(client, run)
    test_input = next(item for item in run.inputs.dataset_inputs if item.dataset.name == "fashion-mnist-test")
    linked = {metric.key: metric for metric in model.metrics}
    for key in ("test_accuracy", "test_loss", "test_per_class/recall_ankle_boot", "test_per_class/macro_f1"):
        assert linked[key].value == pytest.approx(run.data.metrics[key])
        assert (linked[key].dataset_name, linked[key].dataset_digest) == (
            "fashion-mnist-test",
            test_input.dataset.digest,
        )
    assert linked["test_accuracy"].value == pytest.approx(outcome.test_accuracy)
    assert linked["objective"].dataset_name is None  # measured on the validation history, not the test set


def test_the_model_has_its_signature_and_input_example(subset_run, monkeypatch):
    outcome, client, uri = subset_run
    use_globally(monkeypatch, uri)
    model = the_logged_model(client, client.get_run(outcome.run_id))
    metadata = mlflow.models.Model.load(f"models:/{model.model_id}")
    assert metadata.model_id == model.model_id and metadata.run_id == outcome.run_id
    (inputs,) = metadata.signature.inputs.inputs
    assert (str(inputs.type), inputs.shape) == ("float32", (-1, 28, 28, 1))
    assert metadata.signature.outputs.inputs[0].shape == (-1, 10)
    example = mlflow.pyfunc.load_model(f"runs:/{outcome.run_id}/model").input_example
    test_images = data.load(typed_config(SMALL_RUN).data, seed=0).test[0]
    np.testing.assert_array_equal(example, test_images[:2].astype(np.float32))


def test_register_files_the_logged_model_and_champion_points_at_it(subset_run):
    outcome, client, uri = subset_run
    model = the_logged_model(client, client.get_run(outcome.run_id))
    (registered,) = client.search_model_versions("name='fmnist_cnn'")
    assert (registered.source, registered.run_id) == (model.artifact_location, outcome.run_id)
    version = registry.register_model(Store(uri), outcome.run_id, "fmnist_cnn", alias="champion")
    champion = client.get_model_version_by_alias("fmnist_cnn", "champion")
    assert (str(champion.version), champion.source) == (version, model.artifact_location)
    loaded = logged_model.load("models:/fmnist_cnn@champion", Store(uri))
    assert loaded.count_params() == int(client.get_run(outcome.run_id).data.params["model.parameters"])


def test_a_resumed_run_logs_its_model_again_and_a_failed_upload_says_so(tracking_uri, tmp_path):
    store = Store(tracking_uri)
    folder = tmp_path / "model"
    folder.mkdir()
    with active_run.start(store, "resumed", "run", {}) as run:
        with pytest.raises(RuntimeError), run.logged_model("model", folder):
            raise RuntimeError("the save broke")
        (broken,) = store.logged_models_of(run.run_id)
        assert broken.status.name == "FAILED"
        for attempt in ("first", "second"):  # a run stopped after logging its model, then resumed
            with run.logged_model("model", folder) as logged:
                (folder / "MLmodel").write_text(f"{attempt}\n")
    (kept,) = store.logged_models_of(run.run_id)
    assert (kept.model_id, kept.status.name) == (logged.model_id, "READY")
    assert registry.model_location(store, f"runs:/{run.run_id}/model") == kept.artifact_location
    downloaded = registry.download_model(store, f"runs:/{run.run_id}/model", tmp_path / "back")
    assert (downloaded / "MLmodel").read_text() == "second\n"


def test_plain_mlflow_keras_log_model_with_an_input_example_still_fails(global_store, tmp_path):
    """mlflow#16183: pins the bug that logged_model.log works around. When this test fails, MLflow
    is fixed: log the model with `mlflow.keras.log_model(..., input_example=...)` and drop both."""
    import keras

    store, experiment_id = global_store
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    try:
        mlflow.keras.log_model(model, name="model", input_example=np.zeros((1, 4), np.float32))
    except FileNotFoundError as error:
        assert "input_example.json" in str(error)
    else:
        pytest.fail(
            f"mlflow {mlflow.__version__}: mlflow.keras.log_model(..., input_example=...) works now "
            "(mlflow#16183 is fixed); use it in fmnist_exp.logged_model.log and drop this test"
        )
    (failed,) = store.client.search_logged_models([experiment_id])
    assert failed.status.name == "FAILED"


# -- datasets -----------------------------------------------------------------------------------------


def test_the_run_logs_its_three_datasets(subset_run):
    outcome, client, _ = subset_run
    run = client.get_run(outcome.run_id)
    by_context = {
        next(tag.value for tag in item.tags if tag.key == "mlflow.data.context"): item.dataset
        for item in run.inputs.dataset_inputs
    }
    assert set(by_context) == {"training", "validation", "test"}
    names = {context: dataset.name for context, dataset in by_context.items()}
    assert names == {
        "training": "fashion-mnist-train",
        "validation": "fashion-mnist-validation",
        "test": "fashion-mnist-test",
    }
    params = run.data.params
    for context, count_param in (("training", "train"), ("validation", "validation"), ("test", "test")):
        dataset = by_context[context]
        profile = json.loads(dataset.profile)
        assert profile["images"] == int(params[f"data.{count_param}_images"])
        assert profile["origin"] == "data.dir" and profile["checksums_verified"] is True
        assert dataset.digest == profile["sha256"][: dataset_inputs.DIGEST_LENGTH]
        assert (dataset.source_type, json.loads(dataset.source)["uri"]) == ("local", str(SUBSET_DIR.resolve()))
        assert sum(profile["class_counts"]) == profile["images"]


def test_dataset_digests_follow_the_images():
    def digests(*overrides):
        config = typed_config([*SMALL_RUN, *overrides])
        described = dataset_inputs.describe(config, data.load(config.data, config.seed))
        return {context: dataset.digest for context, dataset in described.items()}

    base = digests()
    assert digests() == base
    assert len(set(base.values())) == 3
    fewer = digests("data.max_train_samples=800")
    assert fewer["training"] != base["training"] and fewer["validation"] != base["validation"]
    assert fewer["test"] == base["test"]
    assert digests("seed=7")["validation"] != base["validation"]
    article = digests("data.validation=test")
    assert article["validation"] == article["test"] == base["test"]
    assert "validation" not in digests("data.validation=none")


# -- system metrics ------------------------------------------------------------------------------------


def test_the_run_logs_system_metrics(subset_run):
    outcome, client, _ = subset_run
    metrics = client.get_run(outcome.run_id).data.metrics
    cpu = client.get_metric_history(outcome.run_id, "system/cpu_utilization_percentage")
    memory = client.get_metric_history(outcome.run_id, "system/system_memory_usage_megabytes")
    assert len(cpu) >= 2 and len(memory) == len(cpu)
    assert all(0 <= point.value <= 100 for point in cpu) and any(point.value > 0 for point in cpu)
    assert 0 < metrics["system/system_memory_usage_percentage"] <= 100
    assert "system/cpu_utilization_percentage" not in Store(subset_run[2]).histories(outcome.run_id)


def test_system_metrics_of_a_short_block_and_the_key_that_turns_them_off(tracking_uri):
    store = Store(tracking_uri)
    with active_run.start(store, "short", "on", {}) as on, on.system_metrics(True):
        pass  # shorter than MLflow's 10 s interval: one sample is reported at the end
    with active_run.start(store, "short", "off", {}) as off, off.system_metrics(False):
        pass
    assert "system/cpu_utilization_percentage" in store.get_run(on.run_id).metrics
    assert not any(key.startswith("system/") for key in store.get_run(off.run_id).metrics)
    assert typed_config().mlflow.system_metrics is True
    assert typed_config(["mlflow.system_metrics=false"]).mlflow.system_metrics is False


# -- the experiment's kind -------------------------------------------------------------------------------


def test_experiments_are_machine_learning_experiments(subset_run, tracking_uri, tmp_path):
    outcome, client, _ = subset_run
    experiment = client.get_experiment(client.get_run(outcome.run_id).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == EXPERIMENT_KIND["mlflow.experimentKind"]
    store = Store(tracking_uri)
    older = store.client.create_experiment("made_before", artifact_location=(tmp_path / "older").as_uri())
    assert "mlflow.experimentKind" not in store.client.get_experiment(older).tags
    assert store.experiment_id("made_before") == older
    assert store.client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    chosen = store.client.create_experiment(
        "chosen", artifact_location=(tmp_path / "chosen").as_uri(), tags={"mlflow.experimentKind": "genai_development"}
    )
    store.experiment_id("chosen")
    assert store.client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"
    # MLflow 3.17's UI opens on the view its toggle says; the link the runner prints says which.
    assert ui_command("sqlite:////x/mlflow.db", "3").endswith(
        "then open http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    )
    # The default store needs no key; another store is named.
    from fmnist_exp.config.schema import default_tracking_uri

    assert ui_command(default_tracking_uri(), "1").startswith(
        "python -m fmnist_exp.ui, then open http://127.0.0.1:5000/"
    )
    assert ui_command("sqlite:////x/mlflow.db").startswith("python -m fmnist_exp.ui mlflow.tracking_uri=sqlite:////x/")


# -- serving ----------------------------------------------------------------------------------------------


def post_json(url: str, body) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_raw_pixel_batches(subset_run, tmp_path):
    outcome, client, uri = subset_run
    port = free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{outcome.run_id}/model",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    try:  # the server starts meanwhile; whatever fails from here on, it is stopped
        images, _ = data.load(typed_config(SMALL_RUN).data, seed=0).test
        batch = images[:32].astype(np.float32)  # raw pixels 0-255, (32, 28, 28, 1)
        expected = logged_model.load(f"runs:/{outcome.run_id}/model", Store(uri)).predict(batch, verbose=0)
        wait_for_http(f"http://127.0.0.1:{port}/ping", process, seconds=240)
        answer = post_json(f"http://127.0.0.1:{port}/invocations", {"inputs": batch.tolist()})
        # The README's way: fetch the model's own serving example (two test images), post it as curl would.
        fetched = subprocess.run(
            [sys.executable, "-m", "mlflow", "artifacts", "download", "-u",
             f"runs:/{outcome.run_id}/model/serving_input_example.json", "-d", str(tmp_path)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        )  # fmt: skip
        assert fetched.returncode == 0, fetched.stderr[-2000:]
        example = json.loads(Path(fetched.stdout.strip().splitlines()[-1]).read_text())  # it prints the path
        example_answer = post_json(f"http://127.0.0.1:{port}/invocations", example)
    finally:
        stop_process_group(process)
        log.close()
    predictions = np.asarray(answer["predictions"])
    assert predictions.shape == (32, 10)
    np.testing.assert_array_equal(predictions.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(predictions, expected, atol=1e-5)
    np.testing.assert_allclose(example_answer["predictions"], expected[:2], atol=1e-5)


# -- through a tracking server ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_through_a_tracking_server_records_the_same(mlflow_server, tmp_path):
    overrides = [
        f"data.dir={SUBSET_DIR}", "data.max_train_samples=600", "data.max_test_samples=200", "epochs=1",
        "trainer.verbose=0", f"mlflow.tracking_uri={mlflow_server}", "register=true",
    ]  # fmt: skip
    outcome = experiment_module.run(typed_config(overrides), tmp_path / "output")
    store = Store(mlflow_server)
    run = store.client.get_run(outcome.run_id)  # the MLflow object: its dataset inputs
    model = store.logged_model_of(outcome.run_id)
    assert model.status.name == "READY" and model.artifact_location.startswith("mlflow-artifacts:")
    assert {item.dataset.name for item in run.inputs.dataset_inputs} == {
        "fashion-mnist-train",
        "fashion-mnist-validation",
        "fashion-mnist-test",
    }
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert {metric.key for metric in store.client.get_logged_model(model.model_id).metrics} >= {"test_accuracy"}
    for uri in (f"runs:/{outcome.run_id}/model", "models:/fmnist_cnn/1", f"models:/{model.model_id}"):
        assert logged_model.load(uri, store).count_params() == int(run.data.params["model.parameters"])
    # The model went through the server's artifact proxy.
    assert "MLmodel" in {item.path for item in store.client.list_logged_model_artifacts(model.model_id)}
