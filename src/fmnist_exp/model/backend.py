"""Keras 3's backend for a job: tensorflow, jax or torch, chosen before Keras is imported.

Keras reads its backend once, when it is first imported, so a process trains on one backend for
its whole life. `activate()` sets it (and the settings each runtime reads only at start: JAX's
thread pool, GPU memory and determinism flags), and refuses a second, different backend in the same
process. `check()` holds what each backend cannot do, as plain Python, so that `validation.validate`
refuses it before anything is imported. Nothing here imports Keras or a backend at import time.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from typing import TYPE_CHECKING

from fmnist_exp.errors import ConfigError

if TYPE_CHECKING:
    from fmnist_exp.config.schema import TrainerConfig

BACKENDS = ("tensorflow", "jax", "torch")
# What the model's pip requirements pin for each backend (the distributions, not the import names).
DISTRIBUTIONS = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}
# The pyproject extra that installs each backend.
EXTRAS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def installed() -> list[str]:
    """The backends whose package can be imported here (found, not imported)."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def check(trainer: TrainerConfig) -> None:
    """Refuse, naming the key, what the chosen backend cannot do. Imports nothing."""
    name = trainer.backend
    if name not in BACKENDS:
        origin = " (from the environment variable KERAS_BACKEND)" if os.environ.get("KERAS_BACKEND") == name else ""
        raise ConfigError(f"trainer.backend: {name!r}{origin} is not one of {', '.join(BACKENDS)}")
    if trainer.distribute == "mirrored" and name != "tensorflow":
        raise ConfigError(
            f"trainer.distribute: mirrored is TensorFlow's MirroredStrategy and cannot run on trainer.backend={name}; "
            "use trainer.distribute=none, or trainer.backend=tensorflow"
        )


def activate(trainer: TrainerConfig, deterministic: bool = False) -> str:
    """Make Keras run on `trainer.backend` in this process; call before Keras is first imported.

    Sets KERAS_BACKEND (the config's value wins: conf/config.yaml defaults it to KERAS_BACKEND, so
    the environment variable is honoured unless trainer.backend is given), plus what JAX and PyTorch
    read only when they start: JAX's CPU thread count (trainer.threads), on-demand GPU memory, and
    deterministic GPU kernels. Returns the backend's name. Raises ConfigError for a backend that is
    not installed, or when Keras already runs on another backend in this process.
    """
    check(trainer)
    name = trainer.backend
    loaded = sys.modules.get("keras")
    if loaded is not None:
        current = loaded.backend.backend()
        if current != name:
            raise ConfigError(
                f"trainer.backend: {name} was asked for, but Keras already runs on {current} in this process and "
                "cannot switch; run each backend in its own process (one sweep per backend: "
                f"python -m fmnist_exp.run -m trainer.backend={name} ...)"
            )
        return name
    if importlib.util.find_spec(name) is None:
        here = installed()
        hint = f"; installed: {', '.join(here)} (choose with trainer.backend= or KERAS_BACKEND=)" if here else ""
        raise ConfigError(f"trainer.backend: {name} is not installed here (pip install -e '.[{EXTRAS[name]}]'){hint}")
    os.environ["KERAS_BACKEND"] = name
    if name == "jax":
        _prepare_jax(trainer.threads, deterministic)
    elif name == "torch" and deterministic:
        # cuBLAS reads this when CUDA starts; without it deterministic matmuls raise on a GPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import keras

    if keras.backend.backend() != name:  # a keras.json or an earlier import won over the variable
        raise ConfigError(f"trainer.backend: Keras started on {keras.backend.backend()}, not {name}")
    if name != "tensorflow":
        _keep_keras_off_tensorflow()
    return name


def _keep_keras_off_tensorflow() -> None:
    """Stop Keras importing TensorFlow, where installed, on another backend.

    keras.utils.set_random_seed imports TensorFlow whenever it can, to seed tf.data pipelines (seconds
    and hundreds of MB, and a second set of thread pools). Off TensorFlow nothing here uses tf.data, so
    Keras's lazy handle on it is told it is unavailable, as it would be where TensorFlow is not
    installed. Keras 3.15's handle; on a Keras without it this does nothing (and the test that checks
    TensorFlow stays unimported fails).
    """
    from fmnist_exp.runtime import private_api

    private_api.keep_keras_off_tensorflow()


def _prepare_jax(threads: int | None, deterministic: bool) -> None:
    """What XLA reads once, when JAX creates its first client; too late after the first computation."""
    # Take GPU memory as needed instead of 75% of it at start (TensorFlow's memory growth), so that
    # parallel jobs of a sweep can share a GPU.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if threads:
        # XLA sizes its CPU thread pools from NPROC when it is set (measured here: 1 thread with
        # NPROC=1, both cores without it).
        os.environ["NPROC"] = str(threads)
    if deterministic:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


def activate_for_loading() -> str:
    """For commands that only load and run a logged model (evaluate, predict): any backend will do.

    KERAS_BACKEND when set; else TensorFlow when installed (Keras's own default), else the first
    installed of jax and torch. A `.keras` file loads under every backend.
    """
    keras = sys.modules.get("keras")
    if keras is not None:
        return keras.backend.backend()
    if not os.environ.get("KERAS_BACKEND"):
        found = installed()
        if found:
            os.environ["KERAS_BACKEND"] = found[0]
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def refuse_backend_sweep(arguments: list[str]) -> None:
    """Refuse `-m trainer.backend=a,b`: jobs of a sweep share processes, and a process keeps one backend.

    Hydra's basic launcher runs every job in the one process, and joblib's and Ray's workers run
    several jobs each, so the second backend would fail in every job that lands in a used process.
    """
    from fmnist_exp.config import overrides

    if not overrides.is_multirun(arguments):
        return
    for argument in overrides.overrides_of(arguments):
        value = overrides.value(argument)
        if overrides.key(argument) == "trainer.backend" and overrides.is_sweep(argument):
            raise ConfigError(
                f"trainer.backend: a sweep over backends ({value}) is refused: Keras picks its backend once per "
                "process and a sweep's jobs share processes; run one sweep per backend, e.g. "
                "python -m fmnist_exp.run -m trainer.backend=jax ..."
            )


def pip_requirements() -> list[str]:
    """The running backend's packages and Keras, pinned, for a logged model's requirements."""
    import keras

    pins = [f"keras=={keras.__version__}"]
    for distribution in DISTRIBUTIONS[keras.backend.backend()]:
        # A local label (torch's +cpu, +cu130) names a build on PyTorch's own index; PyPI knows the release.
        pins.append(f"{distribution}=={importlib.metadata.version(distribution).split('+')[0]}")
    return pins


def devices() -> list[str]:
    """The running backend's devices, e.g. ['cpu'] or ['gpu:0 NVIDIA H200']; imports the backend."""
    import keras

    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return [f"gpu:{index}" for index, _ in enumerate(gpus)] or ["cpu"]
    if name == "jax":
        import jax

        described = []
        for device in jax.devices():
            kind = getattr(device, "device_kind", "")
            described.append(
                f"{device.platform}:{device.id}" + (f" {kind}" if kind and kind != device.platform else "")
            )
        return described
    import torch

    if torch.cuda.is_available():
        return [f"gpu:{index} {torch.cuda.get_device_name(index)}" for index in range(torch.cuda.device_count())]
    return ["cpu"]


def has_accelerator() -> bool:
    return not all(device.startswith("cpu") for device in devices())


def describe() -> str:
    """One line for a job's start-up block: backend, versions, devices."""
    import keras

    name = keras.backend.backend()
    version = importlib.metadata.version(DISTRIBUTIONS[name][0])
    return f"keras {keras.__version__} on {name} {version}; devices: {', '.join(devices())}"


# The x86 instructions that run each reduced precision's matrix products natively. Without them, oneDNN
# and XLA emulate bfloat16/float16 on float32 units, with a conversion per operand: measured on a 2-core
# AMD EPYC with AVX2 only, an epoch of `experiment=fast` took 489 s in mixed_bfloat16 against 85 s in
# float32, while a Xeon with AVX-512 BF16 and AMX ran seed_cnn 2.6x faster in it (README, "Performance").
NATIVE_CPU_FLAGS = {"mixed_bfloat16": ("avx512_bf16", "amx_bf16"), "mixed_float16": ("avx512_fp16", "amx_fp16")}


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from Linux's /proc/cpuinfo; None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def slow_precision_warning(precision: str, flags: set[str] | None, accelerator: bool) -> str | None:
    """One line when a reduced precision will run emulated on this CPU (no GPU to run it), else None.

    Unknown flags (not Linux, or not x86: ARM's bf16 is not listed by these names) say nothing rather
    than guess."""
    wanted = NATIVE_CPU_FLAGS.get(precision)
    if accelerator or not wanted or flags is None or not any(flag.startswith(("avx", "sse")) for flag in flags):
        return None
    if flags.isdisjoint(wanted):
        return (
            f"trainer.precision={precision}: this CPU has no {' or '.join(wanted)} instructions, so it is emulated "
            "and usually several times slower than float32 here; trainer.precision=float32 is the fast choice"
        )
    return None
