"""Training and evaluation: tf.data pipelines, the device-dependent compile choices, model.fit."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from fmnist_exp.config import TrainerConfig


def pipeline(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    shuffle_seed: int | None = None,
    shuffle_buffer: int | None = None,
) -> tf.data.Dataset:
    """uint8 batches with prefetch; shuffled each epoch when a seed is given. The model scales pixels."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(shuffle_buffer or len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
