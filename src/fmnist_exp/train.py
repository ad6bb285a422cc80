"""Training and evaluation on any Keras backend: data streams, device-dependent choices, callbacks, model.fit.

Nothing here imports TensorFlow unless Keras runs on it: the NumPy streams below serve every backend,
and tf.data serves the TensorFlow backend. Import this module after `backend.activate()`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from fmnist_exp.config import TrainerConfig
from fmnist_exp.errors import UserError

# Which stream feeds model.fit: tf_data (TensorFlow only), pydataset (NumPy batches, any backend), or
# auto: tf_data on TensorFlow, pydataset elsewhere.
STREAMS = ("auto", "tf_data", "pydataset")


def _on_tensorflow() -> bool:
    return keras.backend.backend() == "tensorflow"


def stream_kind(stream: str) -> str:
    """tf_data or pydataset: what `stream` means on the running backend."""
    if stream not in STREAMS:
        raise UserError(f"stream: {stream!r} is not one of {', '.join(STREAMS)}")
    if stream == "auto":
        return "tf_data" if _on_tensorflow() else "pydataset"
    if stream == "tf_data" and not _on_tensorflow():
        raise UserError(f"stream: tf_data needs the tensorflow backend, not {keras.backend.backend()}")
    return stream


class Batches(keras.utils.PyDataset):
    """uint8 batches in file order, for validation, test and prediction; the same every time it is read."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int):
        super().__init__()  # one worker: batches come in index order
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        chosen = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.images[chosen], self.labels[chosen]


class EpochStream(keras.utils.PyDataset):
    """Epochs first_epoch..epochs-1 of training batches as one sequence of uint8 (images, labels).

    Batch `i` is batch `i % steps` of epoch `first_epoch + i // steps` in `epoch_order(seed, epoch)`:
    a pure function of its index, so a resumed run reads exactly the batches an uninterrupted one
    reads, and no batch straddles two epochs. Use with model.fit(steps_per_epoch=steps), which then
    reads the sequence straight through instead of restarting it each epoch.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int
    ):
        # One worker: Keras reads the batches in index order in the training thread. Its thread
        # enqueuer (workers > 1) restarts at each epoch, which this one long sequence must not do.
        super().__init__()
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.seed, self.first_epoch, self.epochs = seed, first_epoch, epochs
        self.steps = math.ceil(len(images) / batch_size)
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.steps * max(0, self.epochs - self.first_epoch)

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.images), self.seed, epoch))
        return self._order[1]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        epoch, step = divmod(index, self.steps)
        chosen = self.order(self.first_epoch + epoch)[step * self.batch_size : (step + 1) * self.batch_size]
        return self.images[chosen], self.labels[chosen]


def pipeline(images: np.ndarray, labels: np.ndarray, batch_size: int, stream: str = "auto"):
    """uint8 batches in file order, for validation, test and prediction (tf.data with prefetch on TensorFlow)."""
    if stream_kind(stream) == "pydataset":
        return Batches(images, labels, batch_size)
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of one epoch: a permutation that depends on (seed, epoch) only.

    Keying the shuffle on the epoch number, not on how often a dataset was iterated, is what lets a
    resumed run see exactly the batches an uninterrupted run would have seen.
    """
    return np.random.default_rng([seed, epoch]).permutation(count).astype(np.int32)


def training_pipeline(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    stream: str = "auto",
):
    """All remaining epochs as one stream of uint8 batches; each epoch a fresh permutation.

    Use with model.fit(steps_per_epoch=ceil(N / batch_size)): batches never straddle two epochs.
    Both kinds of stream yield the same batches in the same order (tested).
    """
    if stream_kind(stream) == "pydataset":
        return EpochStream(images, labels, batch_size, seed, first_epoch, epochs)
    import tensorflow as tf

    orders = np.stack([epoch_order(len(images), seed, epoch) for epoch in range(first_epoch, epochs)])
    all_images, all_labels = tf.constant(images), tf.constant(labels)
    batches = tf.data.Dataset.from_tensor_slices(orders).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
    )
    gathered = batches.map(
        lambda indices: (tf.gather(all_images, indices), tf.gather(all_labels, indices)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return gathered.prefetch(tf.data.AUTOTUNE)


def configure_gpus() -> None:
    """Let TensorFlow take GPU memory as it needs it instead of all of it at start.

    JAX gets the same through XLA_PYTHON_CLIENT_PREALLOCATE=false, set by `backend.activate()`;
    PyTorch's allocator grows on demand by itself.
    """
    if not _on_tensorflow():
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised by an earlier job in this process


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
    from fmnist_exp import backend

    return backend.has_accelerator()


def jit_compile_for_device(choice: str) -> bool | str:
    """`auto`: on TensorFlow, XLA off on CPU (measured about 3x slower for these CNNs) and Keras's
    choice on GPU; on JAX and PyTorch, Keras's choice (JAX always compiles with XLA; PyTorch runs
    eagerly). `true` on PyTorch is torch.compile."""
    choice = str(choice).lower()
    if choice == "auto":
        if _on_tensorflow() and not has_gpu():
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


def atomic_write_text(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def load_checkpoint(folder: Path, state: dict) -> keras.Model:
    """The checkpointed model, compiled, with its optimizer state; safe_mode runs no code from the file."""
    return keras.saving.load_model(folder / state["model"], safe_mode=True)


@dataclass
class TestResult:
    loss: float
    accuracy: float
    probabilities: np.ndarray


def evaluate(model: keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int) -> TestResult:
    """Test loss and accuracy from one prediction pass, which the reports reuse.

    The loss is Keras's: mean cross-entropy plus the weight-regularization terms, as `model.evaluate`
    reports it; the accuracy is the share of argmax predictions equal to the label.
    """
    probabilities = model.predict(pipeline(images, labels, batch_size), verbose=0).astype(np.float64)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    regularization = sum(float(keras.ops.convert_to_numpy(term)) for term in model.losses)
    return TestResult(
        loss=float(-np.log(picked).mean()) + regularization,
        accuracy=float((probabilities.argmax(axis=1) == labels).mean()),
        probabilities=probabilities,
    )
