"""Training and evaluation: tf.data pipelines, the device-dependent compile choices, model.fit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from fmnist_exp.config import TrainerConfig
from fmnist_exp.errors import UserError


def pipeline(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """uint8 batches in file order with prefetch, for validation, test and prediction."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of one epoch: a permutation that depends on (seed, epoch) only.

    Keying the shuffle on the epoch number, not on how often a dataset was iterated, is what lets a
    resumed run see exactly the batches an uninterrupted run would have seen.
    """
    return np.random.default_rng([seed, epoch]).permutation(count).astype(np.int32)


def training_pipeline(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int
) -> tf.data.Dataset:
    """All remaining epochs as one stream of uint8 batches; each epoch a fresh permutation.

    Use with model.fit(steps_per_epoch=ceil(N / batch_size)): batches never straddle two epochs.
    """
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
    """Let TensorFlow take GPU memory as it needs it instead of all of it at start."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised by an earlier job in this process


def strategy_scope(distribute: str):
    """The scope models and optimizers are built in: MirroredStrategy's, or a no-op."""
    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()


def configure_threads(threads: int | None) -> None:
    """Cap TensorFlow's CPU threads; must run before TensorFlow starts its thread pools."""
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # this process already ran a job with its pools set; they stay as they are


def configure_determinism(enabled: bool) -> None:
    """Deterministic kernels (slower on GPU); on CPU the default kernels are mostly deterministic already."""
    if enabled:
        tf.config.experimental.enable_op_determinism()


def has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def jit_compile_for_device(choice: str) -> bool | str:
    """XLA measured about 3x slower for these CNNs on CPU, so `auto` turns it off there."""
    choice = str(choice).lower()
    if choice == "auto":
        return "auto" if has_gpu() else False
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


class EpochTimer(keras.callbacks.Callback):
    """Adds learning_rate, epoch_seconds and images_per_second to each epoch's logs.

    images_per_second counts the training pass only (it stops the clock when validation begins), so
    it compares across validation schemes.
    """

    def __init__(self, train_images: int):
        super().__init__()
        self.train_images = train_images
        self._epoch_start = 0.0
        self._train_end: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._train_end = None
        self._epoch_start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        train_seconds = (self._train_end or now) - self._epoch_start
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs["epoch_seconds"] = now - self._epoch_start
            logs["images_per_second"] = self.train_images / train_seconds if train_seconds > 0 else 0.0


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the end of an epoch whose loss is NaN or infinite, and remembers it.

    Checked per epoch rather than per batch, so the hot loop gains no host synchronisation.
    """

    def __init__(self):
        super().__init__()
        self.diverged_at: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.diverged_at = epoch + 1
            self.model.stop_training = True


class Checkpointer(keras.callbacks.Callback):
    """After every epoch: the model with its optimizer state, then state.json naming it.

    Both are written to a temporary name and renamed, and state.json only ever names a complete
    file, so a crash mid-write leaves the previous checkpoint intact.
    """

    def __init__(self, folder: Path, run_id: str):
        super().__init__()
        self.folder = folder
        self.run_id = run_id

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.keras"
        partial = self.folder / f".{name}.partial.keras"
        self.model.save(partial)
        os.replace(partial, self.folder / name)
        atomic_write_text(
            self.folder / "state.json", json.dumps({"epoch": epoch + 1, "model": name, "run_id": self.run_id})
        )
        for old in self.folder.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def read_checkpoint(folder: Path) -> dict:
    """state.json of a checkpoint folder: {epoch, model, run_id}."""
    state_path = folder / "state.json"
    if not state_path.is_file():
        raise UserError(f"resume: no checkpoint in {folder} (state.json is missing)")
    return json.loads(state_path.read_text())


def load_checkpoint(folder: Path, state: dict) -> keras.Model:
    """The checkpointed model, compiled, with its optimizer state; safe_mode runs no code from the file."""
    return keras.saving.load_model(folder / state["model"], safe_mode=True)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread, like Ctrl-C, so the run can end as KILLED."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
