"""What the tests share: the shipped real subset, Hydra's compose API, and the command line as a
user runs it (a subprocess against a real store). Imported as `from helpers import ...`.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# Set before anything reads them, so that the session's warm zygote and every command inherit them:
# MLflow 3 sends usage telemetry unless told not to (tests send traffic to loopback only), and the
# decoded-data cache of the whole session stays out of the user's home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("FMNIST_CACHE_DIR", tempfile.mkdtemp(prefix="fmnist-exp-cache-"))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fmnist_exp.config.schema import CONF_DIR, ExperimentConfig, register_schemas  # noqa: E402
from fmnist_exp.data import fashion_mnist as data  # noqa: E402
from fmnist_exp.data import idx  # noqa: E402
from fmnist_exp.model.validation import to_experiment_config  # noqa: E402

SUBSET_DIR = Path(__file__).parent / "data" / "fashion-mnist-subset"

FULL_DATA_DIR = os.environ.get("FMNIST_DATA_DIR")


# The shrunken real config that fast tests train: 1 epoch on 1,000 real images.
def small_run(train_images: int, test_images: int, *settings: str) -> list[str]:
    """The one shape of a test's small config: the real subset, cut to a few hundred images."""
    return [
        f"data.dir={SUBSET_DIR}",
        f"data.max_train_samples={train_images}",
        f"data.max_test_samples={test_images}",
        *settings,
    ]


# One epoch of the default model on 1,000 images: the end-to-end runs and the shared finished run.
SMALL_RUN = small_run(1000, 300, "epochs=1", "batch_size=64", "trainer.verbose=0")
# Smaller still, for the fault tests that start several trainings: 400 images, no model logged.
TINY_RUN = small_run(400, 200, "batch_size=50", "trainer.verbose=2", "trainer.threads=1")
# A sweep's jobs: 600 images, one epoch, deterministic, so that a rerun of a config gives its figures.
SWEEP_RUN = small_run(600, 200, "epochs=1", "trainer.verbose=0", "deterministic=true")
# Generous: the test machine may be shared and slow.
PROCESS_TIMEOUT = 600


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=overrides or [])


def typed_config(overrides: list[str] | None = None) -> ExperimentConfig:
    return to_experiment_config(compose_config(overrides))


# -- processes ------------------------------------------------------------------------------------


def start_command(
    module: str, arguments: list[str], cwd: Path, env: dict[str, str] | None = None, kind: str = "warm"
) -> subprocess.Popen | ForkedProcess:
    """`python -m <module> <arguments>` in its own process group, started as `kind` says:

    - "warm": a forked child of the session's warm zygote (TensorFlow, Keras and MLflow already
      imported: seconds saved per command); a new interpreter instead when the command runs on
      another backend or profiles its imports.
    - "cold": a child of the cold zygote (no framework imported), for a refusal that must come before
      Keras is imported (assert_refused checks it).
    - "new": a new interpreter, for behaviour at import time.
    Each answers as subprocess.Popen does for what the tests use.

    Its stdout and stderr go to files, not pipes: a test that polls files while the process
    runs reads nothing, and a full pipe would stop the process mid-write.
    """
    environment = {**os.environ, **(env or {})}
    if os.environ.get("FMNIST_TESTS_FRESH"):  # every command in a new interpreter, to tell a zygote's fault
        if kind == "cold":  # the new interpreter still says what it imported (assert_refused reads it)
            environment["PYTHONPROFILEIMPORTTIME"] = "1"
        kind = "new"
    if kind == "warm" and warm_enough(arguments, environment):
        return session_zygote(warm=True).start(module, arguments, cwd, environment)
    if kind == "cold":
        return session_zygote(warm=False).start(module, arguments, cwd, environment)
    stdout, stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", module, *arguments],
        stdout=stdout,
        stderr=stderr,
        text=True,
        env=environment,
        cwd=cwd,
        start_new_session=True,
    )
    process.output_files = (stdout, stderr)
    return process


def warm_enough(arguments: list[str], environment: dict[str, str]) -> bool:
    """Whether a warm zygote's child behaves as a new interpreter would for this command: Keras on
    TensorFlow (the backend it was imported with), and no profile of the imports asked for."""
    backends = [
        argument.split("=", 1)[1] for argument in arguments if argument.lstrip("+").startswith("trainer.backend=")
    ]
    return (
        not GPU_VISIBLE  # the zygote probed the GPU: CUDA cannot be used again in a child forked after that
        and all(environment.get(name) == SESSION_ENVIRONMENT.get(name) for name in READ_AT_IMPORT)
        and environment.get("KERAS_BACKEND", "tensorflow") in ("", "tensorflow")
        and all(backend == "tensorflow" for backend in backends)
        and "PYTHONPROFILEIMPORTTIME" not in environment
    )


def read_output(process: subprocess.Popen) -> tuple[str, str]:
    texts = []
    for handle in process.output_files:
        handle.seek(0)
        texts.append(handle.read())
    return texts[0], texts[1]


def finish(process: subprocess.Popen, timeout: float = PROCESS_TIMEOUT) -> subprocess.CompletedProcess:
    """Wait for a process we started; on a timeout end it (and only its own group) and fail."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"{process.args} ran past {timeout} s:\n{read_output(process)[1][-3000:]}") from None
    stdout, stderr = read_output(process)
    for handle in process.output_files:
        handle.close()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    result.warm = getattr(process, "warm", False)
    result.imported = process.imported() if isinstance(process, ForkedProcess) else None
    return result


def run_command(
    module: str, arguments: list[str], cwd: Path, env: dict[str, str] | None = None, timeout=None, kind: str = "warm"
):
    return finish(start_command(module, arguments, cwd, env, kind), timeout or PROCESS_TIMEOUT)


def run_cli(arguments: list[str], tracking_uri: str, cwd: Path, env: dict[str, str] | None = None, kind: str = "warm"):
    """`python -m fmnist_exp.run` with the store in MLFLOW_TRACKING_URI and its output in cwd/out."""
    return run_command(
        "fmnist_exp.run",
        [*arguments, f"hydra.run.dir={cwd}/out"],
        cwd,
        {"MLFLOW_TRACKING_URI": tracking_uri, **(env or {})},
        kind=kind,
    )


ZYGOTE = Path(__file__).parent / "zygote.py"


class ForkedProcess:
    """A zygote's child, answering as subprocess.Popen does: pid (the leader of its own process
    group), poll, wait, send_signal, terminate, kill; its output files for finish and read_output."""

    def __init__(self, zygote: Zygote, pid: int, args: list[str], output_files: tuple, imported: Path) -> None:
        self.pid, self.args, self.output_files = pid, args, output_files
        self.warm = zygote.warm
        self.returncode: int | None = None
        self._zygote, self._imported = zygote, imported

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.returncode(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is None:
            self.returncode = self._zygote.returncode(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.poll() is None:  # as Popen: never a signal to a pid that may have been reused
            with contextlib.suppress(ProcessLookupError):  # it ended, and the zygote reaped it, just now
                os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def imported(self) -> list[str] | None:
        """The frameworks the command had imported when it exited (None after a kill)."""
        return json.loads(self._imported.read_text()) if self._imported.is_file() else None


class Zygote:
    """Commands as forked children of one process that imported their libraries once (tests/zygote.py):
    real processes with their own session, environment, signals and exit code, started in milliseconds.

    Cold, it imported no framework: a child's result lists the frameworks (TensorFlow,
    Keras, PyTorch, JAX) the command imported, which the refusal table checks is none. Warm, it also
    imported MLflow, TensorFlow and Keras: the training commands start without seconds of imports.
    """

    def __init__(self, warm: bool = False, env: dict[str, str] | None = None) -> None:
        self.warm = warm
        self.scratch = Path(tempfile.mkdtemp(prefix="zygote-"))
        self.process = subprocess.Popen(
            [sys.executable, str(ZYGOTE), *(["--warm"] if warm else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self._ended: dict[int, int] = {}
        self._started: dict[int, int] = {}  # request id -> the pid of its child
        self._next_id = 0
        self._closed = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read_answers, daemon=True).start()

    def _read_answers(self) -> None:
        for line in self.process.stdout:
            answer = json.loads(line)
            with self._changed:
                if "returncode" in answer:
                    self._ended[answer["pid"]] = answer["returncode"]
                else:  # a new child: an earlier child's end under the same (reused) pid is not its end
                    self._ended.pop(answer["pid"], None)
                    self._started[answer["id"]] = answer["pid"]
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def start(self, module: str, arguments: list[str], cwd: Path, env: dict[str, str]) -> ForkedProcess:
        folder = Path(tempfile.mkdtemp(dir=self.scratch))
        files = {name: folder / name for name in ("stdout", "stderr", "imported")}
        files["stdout"].touch()
        files["stderr"].touch()
        with self._changed:
            self._next_id += 1
            number = self._next_id
            request = {"id": number, "module": module, "argv": arguments, "cwd": str(cwd), "env": env}
            self.process.stdin.write(json.dumps({**request, **{k: str(v) for k, v in files.items()}}) + "\n")
            self.process.stdin.flush()
            # Long enough for a warm zygote still importing on a loaded machine before it reads the request.
            self._changed.wait_for(lambda: number in self._started or self._closed, timeout=PROCESS_TIMEOUT)
            if number not in self._started:
                raise AssertionError(f"the zygote started no child for {module} {arguments}")
            pid = self._started.pop(number)
        outputs = (open(files["stdout"]), open(files["stderr"]))  # noqa: SIM115 (finish closes them)
        return ForkedProcess(self, pid, [module, *arguments], outputs, files["imported"])

    def returncode(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._ended or self._closed, timeout=timeout)
            if pid not in self._ended and self._closed:
                raise AssertionError(f"the zygote ended before its child {pid} did; its exit code is lost")
            return self._ended.get(pid)

    def alive(self) -> bool:
        return self.process.poll() is None and not self._closed

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_process_group(self.process)
        shutil.rmtree(self.scratch, ignore_errors=True)


# The environment of the session as it began: a zygote starts from it even when its first command
# comes from a test that changed the environment (HOME, say, which Keras reads on import).
SESSION_ENVIRONMENT = dict(os.environ)
# What Keras and MLflow read once, as the zygote imports them: a command that sets one differently
# gets a new interpreter (Keras reads keras.json under HOME or KERAS_HOME, for one). Not
# TF_CPP_MIN_LOG_LEVEL: the zygote sets it to 2 before TensorFlow starts, as every command does.
READ_AT_IMPORT = ("HOME", "KERAS_HOME", "MLFLOW_LOGGING_LEVEL", "MLFLOW_CONFIGURE_LOGGING")
# A machine with an NVIDIA GPU: training commands start as new interpreters there.
GPU_VISIBLE = Path("/dev/nvidiactl").exists()
_ZYGOTES: dict[bool, Zygote] = {}


def session_zygote(warm: bool) -> Zygote:
    """This test process's warm or cold zygote, started on first use (closed by conftest at the end)."""
    if warm not in _ZYGOTES or not _ZYGOTES[warm].alive():  # a zygote that died is replaced
        _ZYGOTES[warm] = Zygote(warm=warm, env=SESSION_ENVIRONMENT)
    return _ZYGOTES[warm]


def close_zygotes() -> None:
    for warm in list(_ZYGOTES):
        _ZYGOTES.pop(warm).close()


def multirun(arguments: list[str], tracking_uri: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m fmnist_exp.run -m <arguments>` in `cwd`, its store in MLFLOW_TRACKING_URI; it must exit 0."""
    result = run_command(
        "fmnist_exp.run", ["-m", *arguments, f"hydra.sweep.dir={cwd}/sweep"], cwd, {"MLFLOW_TRACKING_URI": tracking_uri}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def wait_for(condition, process: subprocess.Popen | None = None, timeout: float = PROCESS_TIMEOUT, what: str = ""):
    """Poll `condition()` until it returns something true; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            stderr = read_output(process)[1]
            raise AssertionError(f"the process ended ({process.returncode}) before {what}:\n{stderr[-3000:]}")
        if time.monotonic() > deadline:
            if process is not None:  # leave nothing running: end the process (its own group only)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def checkpoint_epoch(output_dir: Path) -> int:
    """The last epoch checkpointed in a run's output folder (0 before the first)."""
    try:
        return int(json.loads((output_dir / "checkpoints" / "state.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


# -- the store ------------------------------------------------------------------------------------


def all_runs(tracking_uri: str) -> list:
    """Every run of every experiment in a store (none for a store that was never created)."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    database = tracking_uri.removeprefix("sqlite:///")
    if tracking_uri.startswith("sqlite:///") and not Path(database).is_file():
        return []
    client = MlflowClient(tracking_uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments(view_type=ViewType.ALL)]
    return list(client.search_runs(experiments, max_results=1000)) if experiments else []


def metric_steps(tracking_uri: str, run_id: str, key: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(point.step for point in MlflowClient(tracking_uri).get_metric_history(run_id, key))


# -- what every refusal must look like -------------------------------------------------------------

# Lines that are not the command's own: Python's import-time profile (see assert_refused), MLflow's
# INFO lines when it creates a new store's tables, and TensorFlow's start-up lines (absl's format).
NOISE = re.compile(
    r"^(import time:|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\."
    r"|WARNING: All log messages before absl|[IWE]\d{4} [\d:.]+ +\d+ \w+\.cc:\d+\])"
)
FRAMEWORKS = re.compile(r"^import time:.*\|\s*(tensorflow|keras|torch|jax)\s*$", re.MULTILINE)


def assert_refused(result: subprocess.CompletedProcess, message: str, before_keras: bool = True) -> str:
    """Exit 2 with one line naming `message`, no traceback; with `before_keras`, TensorFlow and Keras
    were never imported (the command ran with PYTHONPROFILEIMPORTTIME=1). Returns that line."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not NOISE.match(line)]
    shown = "\n".join(lines)[-3000:]
    assert result.returncode == 2, f"exit {result.returncode}:\n{shown}"
    assert "Traceback" not in result.stderr, shown
    assert len(lines) == 1 and lines[0].startswith("fmnist_exp: error: "), f"not one line:\n{shown}"
    assert message in lines[0], f"{message!r} not in:\n{lines[0]}"
    if before_keras and getattr(result, "warm", False):
        raise AssertionError("a warm zygote's child had Keras before it began: start it with kind='cold'")
    if before_keras and getattr(result, "imported", None) is not None:  # a Zygote's child says what it imported
        assert result.imported == [], f"{', '.join(result.imported)} imported before the refusal"
    elif before_keras:
        imported = FRAMEWORKS.search(result.stderr)
        assert imported is None, f"{imported.group(1)} was imported before the refusal"
    return lines[0]


# -- servers --------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_cluster_is_up(address: str) -> bool:
    try:
        status = subprocess.run(["ray", "status", f"--address={address}"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return status.returncode == 0 and "Resources" in status.stdout


def wait_for_http(url: str, process, seconds: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def stop_process_group(process) -> None:
    """End a server we started (and only its own process group), politely first."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# -- hostile and odd inputs -----------------------------------------------------------------------


def hostile_saved_model(folder: Path, marker: Path) -> Path:
    """A model folder that runs code when loaded MLflow's way: an exported SavedModel (its MLmodel
    says save_exported_model: true) whose serve function writes `marker` with tf.io.write_file."""
    import keras
    import tensorflow as tf

    class Hostile(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
        def serve(self, images):
            tf.io.write_file(str(marker), "code from a model folder ran")
            return tf.zeros([tf.shape(images)[0], 10])

    module = Hostile()
    tf.saved_model.save(module, str(folder / "data" / "model"), signatures={"serving_default": module.serve})
    (folder / "MLmodel").write_text(
        "artifact_path: model\n"
        "flavors:\n"
        "  keras:\n"
        "    data: data\n"
        f"    keras_version: {keras.__version__}\n"
        "    save_exported_model: true\n"
        "  python_function:\n"
        "    data: data\n"
        "    loader_module: mlflow.keras\n"
        "    python_version: 3.11.0\n"
    )
    return folder


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header claims width x height (what a decompression bomb looks like to PIL)."""
    import struct
    import zlib

    from PIL import Image

    Image.new("L", (1, 1)).save(path)
    raw = bytearray(path.read_bytes())
    # The IHDR chunk: length (4) and type (4) at byte 8, then width and height, then its CRC at byte 29.
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))
    return path


# -- data files -------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """Write a uint8 array as a gzipped IDX file (a subset, or a deliberately wrong file)."""
    header = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_subset(source: Path, target: Path, train_count: int, test_count: int) -> None:
    """Cut the first N training and test items of `source` into `target`, with a SHA256SUMS manifest
    (how tests/data/fashion-mnist-subset was made)."""
    import hashlib

    target.mkdir(parents=True, exist_ok=True)
    counts = {"train": train_count, "test": test_count}
    for split in ("train", "test"):
        images, labels = data.read_pair(source, data.FILES[f"{split}_images"], data.FILES[f"{split}_labels"])
        write_idx(target / data.FILES[f"{split}_images"], images[: counts[split], ..., 0], idx.IMAGES_MAGIC)
        write_idx(target / data.FILES[f"{split}_labels"], labels[: counts[split]], idx.LABELS_MAGIC)
    digests = {name: hashlib.sha256(gzip.open(target / name).read()).hexdigest() for name in data.FILES.values()}
    (target / data.MANIFEST_NAME).write_text("".join(f"{digest}  {name}\n" for name, digest in digests.items()))


def copy_dataset(source: Path, target: Path) -> None:
    """Copy the four files (and a manifest, if any), to corrupt a private copy."""
    target.mkdir(parents=True, exist_ok=True)
    for name in [*data.FILES.values(), data.MANIFEST_NAME]:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
