"""What feeds Keras: training, validation and test streams on any backend, and the test pass over them.

NumPy PyDatasets serve every backend, tf.data serves the TensorFlow backend, and the device stream
(resident_streams.py) keeps the arrays on JAX's or PyTorch's device; the arrays stay uint8 (the
model's first layer scales them). Import this module after `backend.activate()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from fmnist_exp.errors import UserError

# Which stream feeds model.fit: tf_data (TensorFlow only), pydataset (NumPy batches, any backend),
# device (arrays resident on JAX's or PyTorch's device), or auto: AUTO's choice for the backend.
STREAMS = ("auto", "tf_data", "pydataset", "device")
# device on JAX: as fast as pydataset on a 2-core CPU (docs/performance.md), and no per-step copy on a
# GPU. PyTorch keeps pydataset until the device stream is measured there.
AUTO = {"tensorflow": "tf_data", "jax": "device", "torch": "pydataset"}


def stream_kind(stream: str) -> str:
    """tf_data, pydataset or device: what `stream` means on the running backend."""
    if stream not in STREAMS:
        raise UserError(f"stream: {stream!r} is not one of {', '.join(STREAMS)}")
    if stream == "auto":
        return AUTO[keras.backend.backend()]
    if stream == "tf_data" and not keras.backend.backend() == "tensorflow":
        raise UserError(f"stream: tf_data needs the tensorflow backend, not {keras.backend.backend()}")
    if stream == "device" and keras.backend.backend() == "tensorflow":
        raise UserError("stream: device serves the jax and torch backends; on tensorflow use tf_data")
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
    kind = stream_kind(stream)
    if kind == "pydataset":
        return Batches(images, labels, batch_size)
    if kind == "device":
        from fmnist_exp.training.resident_streams import ResidentBatches

        return ResidentBatches(images, labels, batch_size)
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
    Every kind of stream yields the same batches in the same order (tested).
    """
    kind = stream_kind(stream)
    if kind == "pydataset":
        return EpochStream(images, labels, batch_size, seed, first_epoch, epochs)
    if kind == "device":
        from fmnist_exp.training.resident_streams import ResidentEpochStream

        return ResidentEpochStream(images, labels, batch_size, seed, first_epoch, epochs, epoch_order)
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


@dataclass
class TestResult:
    loss: float
    accuracy: float
    probabilities: np.ndarray


def test_pass(model: keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int) -> TestResult:
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
