"""Device-dependent choices made once before a model is built: GPU memory, threads, determinism,
precision, the distribution scope, XLA, progress output, and how a model is compiled.

Nothing here imports TensorFlow unless Keras runs on it. Import this module after `backend.activate()`.
"""

from __future__ import annotations

import contextlib
import os
import sys

import keras

from fmnist_exp.config.schema import TrainerConfig


def configure_gpus() -> None:
    """Let TensorFlow take GPU memory as it needs it instead of all of it at start.

    JAX gets the same through XLA_PYTHON_CLIENT_PREALLOCATE=false, set by `backend.activate()`;
    PyTorch's allocator grows on demand by itself, and is capped at FMNIST_GPU_MEMORY_FRACTION of
    the GPU when set (hydra/launcher=gpu_pack sets it, and XLA_PYTHON_CLIENT_MEM_FRACTION for JAX).
    """
    if keras.backend.backend() == "torch":
        _cap_torch_memory(os.environ.get("FMNIST_GPU_MEMORY_FRACTION"))
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised by an earlier job in this process


def _cap_torch_memory(fraction: str | None) -> None:
    import torch

    if fraction and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(float(fraction))


def strategy_scope(distribute: str):
    """The scope models and optimizers are built in: MirroredStrategy's (TensorFlow only), or a no-op."""
    if distribute == "mirrored":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()


def configure_threads(threads: int | None) -> None:
    """Cap the backend's CPU threads; must run before it starts its thread pools.

    TensorFlow and PyTorch are set here; JAX reads NPROC, which `backend.activate()` sets.
    """
    if not threads:
        return
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # this process already ran a job with its pools set; they stay as they are
    elif name == "torch":
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass  # only settable before PyTorch's first parallel work; an earlier job did that


def configure_determinism(enabled: bool) -> None:
    """Deterministic kernels (slower on GPU); on CPU the default kernels are mostly deterministic already.

    JAX: XLA's deterministic GPU ops, set by `backend.activate()` (its CPU kernels are deterministic).
    """
    if not enabled:
        return
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif name == "torch":
        import torch

        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def has_gpu() -> bool:
    from fmnist_exp.model import backend

    return backend.has_accelerator()


def jit_compile_for_device(choice: str) -> bool | str:
    """`auto`: on TensorFlow, XLA off on CPU (measured about 3x slower for these CNNs) and Keras's
    choice on GPU; on JAX and PyTorch, Keras's choice (JAX always compiles with XLA; PyTorch runs
    eagerly). `true` on PyTorch is torch.compile."""
    choice = str(choice).lower()
    if choice == "auto":
        if keras.backend.backend() == "tensorflow" and not has_gpu():
            return False
        return "auto"
    return choice == "true"


def verbosity(choice: str) -> int:
    """A progress bar in a terminal; one line per epoch in a log file."""
    if choice == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(choice)


def configure_precision(precision: str) -> None:
    keras.mixed_precision.set_global_policy(precision)


def compile_model(model: keras.Model, optimizer, trainer: TrainerConfig) -> None:
    # Sparse labels with sparse cross-entropy equal the article's one-hot categorical cross-entropy.
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile_for_device(trainer.jit_compile),
    )
