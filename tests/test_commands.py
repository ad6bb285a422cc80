"""The small commands speak the runner's grammar; the package installs anywhere; the UI; start-up noise."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fmnist_exp
from fmnist_exp.commands import bench, evaluate, predict, report, ui
from fmnist_exp.config.schema import CHECKOUT, CONF_DIR
from fmnist_exp.runtime import noise
from fmnist_exp.tracking.store import Store
from helpers import SUBSET_DIR, free_port, stop_process_group, wait_for_http

COMMANDS = {"evaluate": evaluate.main, "predict": predict.main, "report": report.main, "bench": bench.main}


@pytest.fixture
def clean_folder(tmp_path, monkeypatch) -> Path:
    """The working folder of a command, with its own store; the test checks it is left empty."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    return folder


def finished_runs(tracking_uri: str, experiment_name: str, objectives: dict[str, float]) -> dict[str, str]:
    """Runs that FINISHED with these objectives, without training: {run name: run id}."""
    store = Store(tracking_uri)
    experiment_id = store.experiment_id(experiment_name)
    ids = {}
    for name, objective in objectives.items():
        run = store.client.create_run(experiment_id, run_name=name)
        store.client.log_metric(run.info.run_id, "objective", objective)
        store.client.set_terminated(run.info.run_id, "FINISHED")
        ids[name] = run.info.run_id
    return ids


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_the_runners_shape(name, clean_folder, capsys):
    with pytest.raises(SystemExit) as stopped:
        COMMANDS[name](["--help"])
    assert stopped.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"fmnist_exp.{name}: ")
    assert f"python -m fmnist_exp.{name}" in shown
    assert "== The config (change any key with key=value" in shown
    assert shown.rstrip().endswith("Hydra's own options: --hydra-help.")
    if name != "bench":  # the store a command opens is shown, absolute
        assert f"tracking_uri: {os.environ['MLFLOW_TRACKING_URI']}" in shown
    assert list(clean_folder.iterdir()) == []


ELSEWHERE = "mlflow.tracking_uri=sqlite:////elsewhere/mlflow.db"


@pytest.mark.parametrize(
    ("name", "arguments", "shown"),
    [
        ("evaluate", ["model_uri=runs:/abc/model", "data.dir=/d", "data.max_test_samples=7", "batch_size=5", ELSEWHERE],
         ["model_uri: runs:/abc/model", "dir: /d", "max_test_samples: 7", "batch_size: 5", "tracking_uri: sqlite:////elsewhere/"]),
        ("predict", ["model_uri=models:/fmnist_cnn@champion", "images=[a.png,b.png]", ELSEWHERE],
         ["model_uri: models:/fmnist_cnn@champion", "- a.png", "- b.png", "tracking_uri: sqlite:////elsewhere/"]),
        ("report", ["mlflow.experiment_name=baseline", "sweep=all", "champion=best", ELSEWHERE],
         ["experiment_name: baseline", "sweep: all", "champion: best", "tracking_uri: sqlite:////elsewhere/"]),
        ("bench", ["model=fast_cnn", "trainer.precision=mixed_bfloat16", "trainer.jit_compile=false", "target=0.9"],
         ["name: fast_cnn", "precision: mixed_bfloat16", "jit_compile: 'False'", "target: 0.9"]),
    ],
)  # fmt: skip
def test_every_command_takes_the_runners_dotted_keys(name, arguments, shown, clean_folder, capsys):
    COMMANDS[name](["--cfg", "job", *arguments])
    composed = capsys.readouterr().out
    for line in shown:
        assert line in composed
    assert list(clean_folder.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("evaluate", [], "model_uri: required, e.g. runs:/<run id>/model"),
        ("evaluate", ["model_uri=x", "tracking_uri=sqlite:///x.db"], "tracking_uri: not a known key; the keys: model_uri, batch_size, output_dir, data.dir"),
        ("evaluate", ["model_uri=x", "batch_size=abc"], "batch_size: Value 'abc' of type 'str' could not be converted to Integer"),
        ("evaluate", ["model_uri=x", "batch_size=0"], "batch_size: 0 must be a positive number"),
        ("evaluate", ["model_uri=x", "data.max_train_samples=5"], "data.max_train_samples: not a known key"),
        ("predict", ["model_uri=x"], "images: required"),
        ("predict", ["model_uri=x", "images=/no/such/photo.png"], "images: /no/such/photo.png is neither a file nor a folder"),
        ("predict", ["model_uri=x", "images=a.png,b.png"], "Ambiguous value for argument 'images=a.png,b.png'"),
        ("report", ["experiment=fmnist_exp"], "experiment: not a known key; the keys: sweep, champion, mlflow.tracking_uri, mlflow.orphan_after_minutes, mlflow.experiment_name"),
        ("report", ["+colour=red"], "colour: not a known key"),
        ("report", ["-m", "sweep=a,b"], "-m: report runs once"),
        ("report", ["sweep=${oc.env:FMNIST_NO_SUCH_VARIABLE}"], "sweep: "),
        ("bench", ["precision=float32"], "precision: not a known key; the keys: model, batch_size, images, repeats, trainer.backend, trainer.precision"),
        ("bench", ["repeats=0"], "repeats must be at least 1"),
        ("bench", ["model=nosuch"], "Available options in 'model': fast_cnn"),
        ("bench", ["model=fast_cnn", "model.widht=48"], "model.widht"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(name, arguments, message, clean_folder, capsys):
    with pytest.raises(SystemExit) as stopped:
        COMMANDS[name](arguments)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("fmnist_exp: error: ") and message in error
    assert len(error.strip().splitlines()) == 1, error
    assert list(clean_folder.iterdir()) == []  # no outputs/<date>/, no .hydra/, no log file


def test_a_command_from_the_shell_leaves_nothing_and_prints_one_line(tmp_path):
    """As a user runs it: a subprocess in a fresh folder, naming a store that is not there (a typo):
    a command that only reads refuses it and makes none."""
    store = tmp_path / "store" / "mlflow.db"
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_exp.report", f"mlflow.tracking_uri=sqlite:///{store}", "mlflow.experiment_name=none"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"fmnist_exp: error: mlflow.tracking_uri: no MLflow store at {store}; this command only reads a store "
        "and makes none (check the path; a run makes a new store)"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("report", []),
        ("report", ["sweep=all"]),
        ("evaluate", ["model_uri=runs:/0123/model"]),
        ("predict", ["model_uri=models:/fmnist_cnn@champion", "images={tmp}/shirt.png"]),
    ],
)
def test_a_command_that_only_reads_refuses_a_store_that_is_not_there(name, arguments, tmp_path, capsys):
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "shirt.png")
    typo = tmp_path / "mlrnus"
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    with pytest.raises(SystemExit) as stopped:
        COMMANDS[name]([*arguments, f"mlflow.tracking_uri=sqlite:///{typo}/mlflow.db"])
    assert stopped.value.code == 2
    assert f"mlflow.tracking_uri: no MLflow store at {typo}/mlflow.db" in capsys.readouterr().err
    assert not typo.exists()


def test_report_of_a_run_that_is_no_sweep_says_so(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = finished_runs(uri, "baseline", {"lr=0.01": 0.81})
    with pytest.raises(SystemExit) as stopped:
        report.main([f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=baseline", f"sweep={ids['lr=0.01']}"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.strip() == (
        f"fmnist_exp: error: sweep: run {ids['lr=0.01']} is no sweep (a single run, or a sweep's job); give a "
        "sweep's parent run id, latest (the newest sweep) or all (every run of the experiment)"
    )


def test_report_ranks_an_experiments_runs_by_the_runners_keys(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = finished_runs(uri, "baseline", {"lr=0.01": 0.81, "lr=0.001": 0.9})
    rows = report.main([f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=baseline", "sweep=all"])
    assert [row["run_id"] for row in rows] == [ids["lr=0.001"], ids["lr=0.01"]]
    assert "all 2 runs of experiment baseline" in capsys.readouterr().out


def test_the_wheel_carries_conf_and_runs_from_any_folder(tmp_path):
    """`pip install .` and the wheel: every file of conf/ inside, py.typed, the licence and the version;
    and the runner finds its configs from elsewhere."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools installed")
    if CHECKOUT is None:
        pytest.skip("runs from a source checkout only")
    source = tmp_path / "source"
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "LICENSE", "src", "conf"):
        copy = shutil.copytree if (CHECKOUT / part).is_dir() else shutil.copy
        copy(
            CHECKOUT / part,
            source / part,
            **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")} if copy is shutil.copytree else {}),
        )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", "dist"],
        capture_output=True, text=True, timeout=300, cwd=source,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (source / "dist").glob("fmnist_exp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in CONF_DIR.rglob("*.yaml"):
        assert f"fmnist_exp/conf/{config.relative_to(CONF_DIR).as_posix()}" in names
    assert "fmnist_exp/config/schema.py" in names and "fmnist_exp/sweeps/study.py" in names
    # What a published package carries: PEP 561's marker, the licence, the version from its one home.
    assert "fmnist_exp/py.typed" in names
    (metadata,) = (name for name in names if name.endswith(".dist-info/METADATA"))
    (licence,) = (name for name in names if name.endswith(".dist-info/licenses/LICENSE"))
    assert "MIT License" in zipfile.ZipFile(wheel).read(licence).decode()
    headers = zipfile.ZipFile(wheel).read(metadata).decode()
    assert f"\nVersion: {fmnist_exp.__version__}\n" in headers and "\nLicense-Expression: MIT\n" in headers
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("fmnist-run", "fmnist-evaluate", "fmnist-predict", "fmnist-report", "fmnist-bench", "fmnist-ui"):
        assert f"{script} = " in scripts
    assert "[hydra.plugins]\nstudy = fmnist_exp.sweeps.study:StudySweeper" in scripts

    # An install of the wheel alone (its console scripts too), run from an unrelated folder.
    target, elsewhere = tmp_path / "installed", tmp_path / "elsewhere"
    elsewhere.mkdir()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["PYTHONPATH"] = str(target)
    where = subprocess.run(
        [sys.executable, "-c", "import fmnist_exp.config.schema as c; print(c.__file__); print(c.default_tracking_uri())"],
        capture_output=True, text=True, timeout=60, cwd=elsewhere, env=environment,
    )  # fmt: skip
    module, store = where.stdout.split()
    assert Path(module).is_relative_to(target)  # not the checkout
    assert store == f"sqlite:///{elsewhere / 'mlruns' / 'mlflow.db'}"  # the working folder's, not site-packages'
    for command in ([sys.executable, "-m", "fmnist_exp.run"], [str(target / "bin" / "fmnist-run")]):
        result = subprocess.run(
            [*command, "dry_run=true", f"data.dir={SUBSET_DIR}"],
            capture_output=True, text=True, timeout=120, cwd=elsewhere, env=environment,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "total 676,842 parameters" in result.stdout
    assert not (elsewhere / "mlruns").exists()


@pytest.mark.slow
def test_ui_serves_the_projects_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    finished_runs(uri, "fmnist_exp", {"default": 0.9})
    experiment_id = Store(uri).experiment_id("fmnist_exp", create=False)
    port = free_port()
    log = open(tmp_path / "ui.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist_exp.ui", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process, seconds=180)
    finally:
        stop_process_group(process)
        log.close()
    printed = (tmp_path / "ui.log").read_text()
    link = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    assert f"MLflow UI on {uri}\n  {link}\n" in printed  # the machine-learning view, not the GenAI one


def test_ui_passes_mlflow_options_through_and_refuses_what_it_cannot_open(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    finished_runs(uri, "baseline", {"a": 0.5})
    command, store, url = ui.server_command(
        [f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=baseline", "-p", "5001"]
    )
    assert command[1:] == [
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--workers",
        "1",
        "-p",
        "5001",
    ]
    assert store == uri and url.startswith("http://127.0.0.1:5001/#/experiments/")
    assert url.endswith("/runs?workflowType=machine_learning")
    # A store without the experiment yet: the list of experiments, in the same view.
    _, _, url = ui.server_command([f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=other"])
    assert url == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    with pytest.raises(ui.UserError, match="no MLflow store at"):
        ui.server_command([f"mlflow.tracking_uri=sqlite:///{tmp_path / 'none.db'}"])
    with pytest.raises(ui.UserError, match="tracking_uri: not a known key"):
        ui.server_command(["tracking_uri=x"])


def test_tensorflow_starts_without_its_cpu_machine_lines():
    """No "Could not find cuda drivers" (twice) nor "failed call to cuInit" on a machine without a GPU."""
    result = subprocess.run(
        [sys.executable, "-c", "from fmnist_exp.runtime import noise; noise.quiet(); noise.import_tensorflow(); import keras"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(noise.STARTUP_NOISE.search(line) for line in result.stderr.splitlines()), result.stderr


def test_noise_filters_keep_everything_else(caplog):
    noise.quiet()
    logger = logging.getLogger("tensorflow")
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        logger.warning(
            "5 out of the last 5 calls to <function f> triggered tf.function retracing. Tracing is expensive"
        )
        logger.warning("a warning that matters")
    assert [record.getMessage() for record in caplog.records] == ["a warning that matters"]
    assert noise.STARTUP_NOISE.search(
        "E0000 00:00:1795980157.312836 18938 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
        "Failed call to cuInit: UNKNOWN ERROR (303)"
    )
    assert not noise.STARTUP_NOISE.search("E0000 cuda_platform.cc:52] failed call to cuInit: CUDA_ERROR_OUT_OF_MEMORY")
