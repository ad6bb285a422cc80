"""Keras backends: choosing one, refusing what it cannot do, and real runs on JAX (and PyTorch) on the CPU.

The training runs are subprocesses, because Keras keeps the backend it was first imported with for
the life of a process (this one's is whatever the other tests imported, TensorFlow by default). Each
subprocess reports at exit whether TensorFlow was ever imported: off TensorFlow it must not be.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from fmnist_exp.config.schema import TrainerConfig
from fmnist_exp.errors import ConfigError
from fmnist_exp.model import backend
from helpers import SUBSET_DIR, all_runs, typed_config

HAS_JAX = importlib.util.find_spec("jax") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
needs_jax = pytest.mark.skipif(not HAS_JAX, reason="jax is not installed (pip install -e '.[jax]')")

# Runs a module as `python -m` would, then says on stderr whether TensorFlow was imported.
PROBE = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('tensorflow imported: %s' % ('tensorflow' in sys.modules), file=sys.stderr))\n"
    "module = sys.argv.pop(1)\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)
# fast_cnn with its dropout: a resumed run on JAX matches an uninterrupted one exactly (the same
# batches, the optimizer state, and dropout's random stream kept beside the checkpoint). 540 training
# images (60 held out), 9 batches an epoch: seconds an epoch on JAX on this CPU.
JAX_RUN = [
    f"data.dir={SUBSET_DIR}",
    "data.max_train_samples=600",
    "data.max_test_samples=300",
    "model=fast_cnn",
    "batch_size=64",
    "epochs=2",
    "trainer.verbose=2",
]


def environment(tmp_path: Path, tracking_uri: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    # The runs of one test share JAX's compilation cache: the second and later compile nothing.
    env.update(MLFLOW_TRACKING_URI=tracking_uri, JAX_COMPILATION_CACHE_DIR=str(tmp_path.parent / "jax-cache"))
    env.update(extra)
    return env


def start(module: str, arguments: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """helpers.start_command with the PROBE around the module: these tests also ask whether TensorFlow was imported."""
    return subprocess.Popen(
        [sys.executable, "-c", PROBE, module, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


def finish(process: subprocess.Popen, timeout: float = 400) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_module(module: str, arguments: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return finish(start(module, arguments, env, cwd))


# Choosing the backend ------------------------------------------------------------------------------


def test_the_backend_defaults_to_keras_backend_and_the_key_wins(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert typed_config().trainer.backend == "tensorflow"
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert typed_config().trainer.backend == "jax"
    assert typed_config(["trainer.backend=torch"]).trainer.backend == "torch"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.backend=theano"], "trainer.backend: 'theano' is not one of tensorflow, jax, torch"),
        (
            ["trainer.backend=jax", "trainer.distribute=mirrored"],
            "trainer.distribute: mirrored is TensorFlow's MirroredStrategy and cannot run on trainer.backend=jax",
        ),
        (["trainer.backend=torch", "trainer.distribute=mirrored"], "cannot run on trainer.backend=torch"),
    ],
)
def test_what_a_backend_cannot_do_is_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        typed_config(overrides)


def test_a_bad_keras_backend_variable_is_named(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "numpy")
    with pytest.raises(ConfigError, match="'numpy' \\(from the environment variable KERAS_BACKEND\\)"):
        typed_config()


@pytest.mark.parametrize(
    ("arguments", "refused"),
    [
        (["-m", "trainer.backend=tensorflow,jax"], True),
        (["--multirun", "seed=1,2", "+trainer.backend=choice(jax,torch)"], True),
        (["-m", "trainer.backend=jax", "seed=1,2"], False),
        (["trainer.backend=jax"], False),
    ],
)
def test_a_sweep_over_backends_is_refused(arguments, refused):
    if refused:
        with pytest.raises(ConfigError, match="a sweep over backends .* is refused"):
            backend.refuse_backend_sweep(arguments)
    else:
        backend.refuse_backend_sweep(arguments)


def test_the_command_refuses_a_sweep_over_backends_before_hydra_starts(tmp_path, tracking_uri):
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_exp.run", "-m", "trainer.backend=tensorflow,jax", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        timeout=120,
    )
    assert result.returncode == 2
    assert "trainer.backend: a sweep over backends (tensorflow,jax) is refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert all_runs(tracking_uri) == []


def test_a_process_refuses_to_switch_backends():
    import keras

    current = keras.backend.backend()
    other = next((name for name in backend.installed() if name != current), None)
    if other is None:
        pytest.skip("only one backend is installed")
    with pytest.raises(ConfigError, match=f"Keras already runs on {current} in this process and cannot switch"):
        backend.activate(TrainerConfig(backend=other))
    assert backend.activate(TrainerConfig(backend=current)) == current


def test_jax_start_up_settings_come_from_the_config(monkeypatch):
    """What XLA reads once, at start: threads as NPROC, on-demand GPU memory, deterministic GPU ops."""
    for name in ("NPROC", "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE"):
        monkeypatch.delenv(name, raising=False)
    backend._prepare_jax(threads=1, deterministic=True)
    assert os.environ["NPROC"] == "1"
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=true"
    backend._prepare_jax(threads=None, deterministic=True)  # idempotent: the flag once
    assert os.environ["XLA_FLAGS"].count("xla_gpu_deterministic_ops") == 1


def test_a_model_pins_the_backend_it_was_trained_on():
    import keras

    pins = backend.pip_requirements()
    assert f"keras=={keras.__version__}" in pins
    assert any(pin.startswith(f"{backend.DISTRIBUTIONS[keras.backend.backend()][0]}==") for pin in pins)
    assert not any("+" in pin for pin in pins)


# The backend-neutral training stream ----------------------------------------------------------------


def stream_batches(stream, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if hasattr(stream, "as_numpy_iterator"):
        iterator = stream.as_numpy_iterator()
        return [next(iterator) for _ in range(count)]
    return [stream[index] for index in range(count)]


def test_the_numpy_stream_orders_each_epoch_by_seed_and_epoch_only():
    from fmnist_exp.training import streams

    images = np.arange(10 * 28 * 28, dtype=np.uint8).reshape(10, 28, 28, 1)
    labels = np.arange(10, dtype=np.uint8)
    whole = streams.training_pipeline(images, labels, 4, seed=7, first_epoch=0, epochs=3, stream="pydataset")
    assert len(whole) == 9  # 3 batches (4, 4, 2) per epoch: none straddles two epochs
    batches = stream_batches(whole, 9)
    assert [len(batch_labels) for _, batch_labels in batches] == [4, 4, 2] * 3
    for epoch in range(3):
        seen = np.concatenate([batch_labels for _, batch_labels in batches[3 * epoch : 3 * epoch + 3]])
        np.testing.assert_array_equal(seen, streams.epoch_order(10, 7, epoch))
    # A resume from epoch 1 reads exactly the tail of the uninterrupted stream.
    resumed = streams.training_pipeline(images, labels, 4, seed=7, first_epoch=1, epochs=3, stream="pydataset")
    for (tail_images, tail_labels), (images_again, labels_again) in zip(
        batches[3:], stream_batches(resumed, 6), strict=True
    ):
        np.testing.assert_array_equal(tail_images, images_again)
        np.testing.assert_array_equal(tail_labels, labels_again)
    assert images[batches[0][1]].tobytes() == batches[0][0].tobytes()  # each image keeps its label
    with pytest.raises(IndexError):
        whole[9]


def test_tf_data_and_the_numpy_stream_yield_the_same_batches():
    import keras

    from fmnist_exp.training import streams

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data serves the tensorflow backend only")
    images = np.random.default_rng(0).integers(0, 256, (70, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(70, dtype=np.uint8) % 10
    pipelines = [
        streams.training_pipeline(images, labels, 32, seed=3, first_epoch=1, epochs=3, stream=kind)
        for kind in ("tf_data", "pydataset")
    ]
    for (tf_images, tf_labels), (np_images, np_labels) in zip(*(stream_batches(s, 6) for s in pipelines), strict=True):
        np.testing.assert_array_equal(tf_images, np_images)
        np.testing.assert_array_equal(tf_labels, np_labels)
        assert np_images.dtype == np.uint8
    test_batches = [
        stream_batches(streams.pipeline(images, labels, 32, stream=kind), 3) for kind in ("tf_data", "pydataset")
    ]
    for (tf_images, _), (np_images, _) in zip(*test_batches, strict=True):
        np.testing.assert_array_equal(tf_images, np_images)


# Real runs on JAX and PyTorch, in subprocesses ----------------------------------------------------------


@pytest.mark.slow
@needs_jax
def test_jax_trains_resumes_like_an_uninterrupted_run_and_its_model_loads_on_tensorflow(tmp_path, tracking_uri):
    """SIGTERM in epoch 2, resume, and compare with an uninterrupted run: all on JAX, without TensorFlow."""
    env = environment(tmp_path, tracking_uri)
    output = tmp_path / "interrupted"
    process = start("fmnist_exp.run", [*JAX_RUN, "trainer.backend=jax", f"hydra.run.dir={output}"], env, tmp_path)
    state_file = output / "checkpoints" / "state.json"
    deadline = time.monotonic() + 300
    while not state_file.exists():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # in epoch 2, which takes seconds on JAX on this CPU
    killed = finish(process)
    assert killed.returncode == 130, killed.stderr[-3000:]
    assert "tensorflow imported: False" in killed.stderr
    assert json.loads(state_file.read_text())["epoch"] == 1
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "KILLED" and run.data.params["trainer.backend"] == "jax"

    # The resumed run reads the backend from the run's saved config, not from the environment.
    resumed = run_module("fmnist_exp.run", [f"resume={run.info.run_id}"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "tensorflow imported: False" in resumed.stderr
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_epoch"] == "1"
    steps = [
        point.step for point in mlflow.MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "val_accuracy")
    ]
    assert steps == [1, 2]
    requirements = (output / "model" / "requirements.txt").read_text()
    assert "jax==" in requirements and "tensorflow" not in requirements

    # The same config uninterrupted, with KERAS_BACKEND choosing JAX: the same batches in the same order
    # from the same state. XLA's CPU kernels are deterministic, so the figures are bit-identical.
    reference = run_module(
        "fmnist_exp.run",
        [*JAX_RUN, "mlflow.experiment_name=reference", f"hydra.run.dir={tmp_path / 'reference'}"],
        {**env, "KERAS_BACKEND": "jax"},
        tmp_path,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    other = next(item for item in all_runs(tracking_uri) if item.info.run_id != run.info.run_id)
    assert other.data.params["trainer.backend"] == "jax"
    for key in ("loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        assert run.data.metrics[key] == other.data.metrics[key], key

    # The JAX-trained model, logged as .keras, evaluates under TensorFlow to the run's own accuracy.
    if HAS_TENSORFLOW:
        evaluated = evaluate_under("tensorflow", run.info.run_id, env, tmp_path)
        assert "tensorflow imported: True" in evaluated.stderr
        assert_same_accuracy(evaluated.stdout, run.data.metrics["test_accuracy"])


def evaluate_under(backend_name: str, run_id: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = run_module(
        "fmnist_exp.evaluate", [f"model_uri=runs:/{run_id}/model"], {**env, "KERAS_BACKEND": backend_name}, cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_same_accuracy(stdout: str, logged: float) -> None:
    # Another backend's arithmetic may round differently: one of the 300 test images may flip, no more.
    printed = float(stdout.split("test_accuracy=", 1)[1].split()[0])
    assert printed == pytest.approx(logged, abs=1.01 / 300)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install -e '.[torch]')")
def test_torch_trains_and_its_model_evaluates_under_jax(tmp_path, tracking_uri):
    env = environment(tmp_path, tracking_uri)
    arguments = [
        *JAX_RUN,
        "epochs=1",
        "trainer.backend=torch",
        "trainer.threads=1",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    result = run_module("fmnist_exp.run", arguments, env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorflow imported: False" in result.stderr
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FINISHED" and run.data.params["trainer.backend"] == "torch"
    assert 0.1 < run.data.metrics["test_accuracy"] <= 1.0
    assert "torch==" in (tmp_path / "out" / "model" / "requirements.txt").read_text()
    if HAS_JAX:  # the PyTorch-trained .keras model on JAX, through the evaluate command
        evaluated = evaluate_under("jax", run.info.run_id, env, tmp_path)
        assert "tensorflow imported: False" in evaluated.stderr
        assert_same_accuracy(evaluated.stdout, run.data.metrics["test_accuracy"])


AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}  # the AMD EPYC that ran fast 5.8x slower in mixed_bfloat16


@pytest.mark.parametrize(
    ("precision", "flags", "accelerator", "warned"),
    [
        ("mixed_bfloat16", AVX2_ONLY, False, True),
        ("mixed_float16", AVX2_ONLY | {"avx512_bf16"}, False, True),  # bf16 units do not run float16
        ("mixed_bfloat16", AVX2_ONLY | {"avx512f", "avx512_bf16"}, False, False),
        ("mixed_bfloat16", AVX2_ONLY | {"amx_bf16"}, False, False),
        ("mixed_float16", AVX2_ONLY | {"amx_fp16"}, False, False),
        ("mixed_bfloat16", AVX2_ONLY, True, False),  # a GPU runs it, not the CPU
        ("float32", AVX2_ONLY, False, False),
        ("mixed_bfloat16", None, False, False),  # no /proc/cpuinfo: say nothing rather than guess
        ("mixed_bfloat16", {"fp", "asimd", "bf16"}, False, False),  # ARM names its features otherwise
    ],
)
def test_a_reduced_precision_the_cpu_would_emulate_is_named(precision, flags, accelerator, warned):
    line = backend.slow_precision_warning(precision, flags, accelerator)
    assert (line is not None) == warned
    if warned:
        assert line.startswith(f"trainer.precision={precision}: ") and "float32" in line and "\n" not in line


def test_a_mixed_bfloat16_run_warns_exactly_when_this_cpu_lacks_bfloat16(tmp_path, tracking_uri, caplog):
    """A real run in mixed_bfloat16 on this machine: the warning follows the CPU's own flags."""
    from fmnist_exp.training import experiment

    flags = backend.cpu_flags()
    expected = backend.slow_precision_warning("mixed_bfloat16", flags, accelerator=False)
    overrides = [f"data.dir={SUBSET_DIR}", "data.max_train_samples=256", "data.max_test_samples=128",
                 "model=fast_cnn", "batch_size=64", "epochs=1", "trainer.precision=mixed_bfloat16",
                 "trainer.verbose=0", "mlflow.log_model=false", f"mlflow.tracking_uri={tracking_uri}"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="fmnist_exp"):
        experiment.run(typed_config(overrides), tmp_path / "output")
    warnings = [record.getMessage() for record in caplog.records if "trainer.precision=" in record.getMessage()]
    assert warnings == ([expected] if expected and not backend.has_accelerator() else [])
