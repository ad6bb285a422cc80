"""A process that imports the runner's libraries once, then forks one child per command it is sent.

Each child is a real process (its own pid, session and process group, environment, working folder,
standard streams, signals and exit code) that runs `python -m <module> <arguments>` as the
interpreter would, started in milliseconds instead of the seconds an interpreter spends importing.

Two flavours (tests/helpers.py, Zygote):
- cold (no argument): imports no framework (Hydra, MLflow and the runner's modules; see
  import_the_commands). The bad-input cases of
  tests/test_cli.py run here, and each child still proves it refused before TensorFlow or Keras was
  imported: it writes the frameworks it imported to the file named by "imported" as it exits.
- warm (`--warm`): also TensorFlow and Keras (on TensorFlow), the 5-10 s every training command
  spends importing before its first line of work. The training tests start their commands here.
  What a warm child cannot show stays with a cold child or a new interpreter (helpers.start_command's
  `kind`): a refusal before Keras is imported, behaviour at import time (TensorFlow's start-up lines)
  and a backend other than TensorFlow (Keras keeps the backend it was imported with).

The runner's command modules are imported here too: they read the environment (HOME, the data and
cache folders) when they work, not when they are imported, so each child's own environment holds.
Every library imported
here was checked to start no thread a child needs: NumPy's OpenBLAS and MLflow's jemalloc restart
theirs after a fork, and TensorFlow creates its thread pools at its first operation, in the child.

Protocol: one JSON line per command on stdin, {"id", "module", "argv", "cwd", "env", "stdout",
"stderr", "imported"}; back, {"id", "pid"} as soon as the child runs (so that the test can signal it),
and {"pid", "returncode"} once it has ended. Children run side by side; the zygote reaps them as they end,
so that no ended child lingers as a zombie that a liveness check would take for a live process.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import runpy
import selectors
import signal
import sys
import tempfile
from collections.abc import Iterator

import hydra  # noqa: F401  (what every command imports first: the start-up the children share)
import numpy  # noqa: F401
import omegaconf  # noqa: F401
import yaml  # noqa: F401

FRAMEWORKS = ("tensorflow", "keras", "torch", "jax")


def import_training_libraries() -> None:
    """MLflow, TensorFlow and Keras, TensorFlow's start-up lines sent where the runner sends them
    (fmnist_exp.runtime.noise does the same in a new interpreter: C++ INFO lines off, the rest dropped)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import mlflow  # noqa: F401

    with stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # CUDA is probed here, once
        import keras  # noqa: F401


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """The zygote's own start-up lines (TensorFlow's, MLflow's as it makes tables): not a test's output."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def child(request: dict) -> None:
    """Become the command: its session, folder, environment, streams and argv; never returns."""
    os.setsid()  # its own process group, as start_new_session gives a new interpreter
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # where `python -m` looks first, instead of this file's folder
    os.environ.clear()
    os.environ.update(request["env"])
    for descriptor, path in ((1, request["stdout"]), (2, request["stderr"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(handle, descriptor)
        os.close(handle)
    nothing = os.open(os.devnull, os.O_RDONLY)  # the zygote's requests are not the command's to read
    os.dup2(nothing, 0)
    os.close(nothing)

    def record_imports() -> None:
        with open(request["imported"], "w") as handle:
            json.dump([name for name in FRAMEWORKS if name in sys.modules], handle)

    atexit.register(record_imports)  # registered first, so it runs last
    sys.argv = [request["module"], *request["argv"]]
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    sys.exit(0)  # through SystemExit, as the interpreter ends: atexit handlers run, streams flush


def reap(children: set[int]) -> None:
    for pid in list(children):
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended:
            children.discard(pid)
            print(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}), flush=True)


def import_the_commands() -> None:
    """The runner's command modules and what they import at the top: none imports a framework before
    its work begins, which the refusal table checks. Then MLflow's SQL store, by making a throwaway
    one (SQLAlchemy, Alembic and MLflow's migrations are imported as a store is first opened: 2 s of
    every command here), and the plotting libraries a run's figures use."""
    import matplotlib

    import fmnist_exp.commands.evaluate
    import fmnist_exp.commands.predict
    import fmnist_exp.commands.report
    import fmnist_exp.commands.run  # noqa: F401

    matplotlib.use("Agg")  # as fmnist_exp.analysis.plots does; no display here
    import matplotlib.pyplot  # noqa: F401
    import PIL.Image  # noqa: F401
    from mlflow import MlflowClient

    with stderr_silenced(), tempfile.TemporaryDirectory(prefix="zygote-store-") as folder:
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        client.search_experiments()
        client.search_registered_models()


def main() -> None:
    if "--warm" in sys.argv[1:]:
        import_training_libraries()
    import_the_commands()
    # What was imported stays as it is for every child: out of the collector's sight, so that a child's
    # collections neither walk it (a second or more per command) nor touch its pages (copy-on-write).
    gc.collect()
    gc.freeze()
    children: set[int] = set()
    requests = selectors.DefaultSelector()
    requests.register(0, selectors.EVENT_READ)
    pending = b""
    while True:
        if requests.select(timeout=0.02):
            received = os.read(0, 1 << 20)  # not sys.stdin: its buffer would hide a second request from select
            if not received:  # the test session ended: children still running finish on their own
                return
            pending += received
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    requests.close()
                    child(json.loads(line))
                children.add(pid)
                print(json.dumps({"id": json.loads(line)["id"], "pid": pid}), flush=True)
        reap(children)


if __name__ == "__main__":
    main()
