"""Streams whose images stay on the device: the `device` stream kind of streams.py (JAX and PyTorch).

The uint8 images and labels are copied to the backend's default device once. Each epoch, the order
`streams.epoch_order(count, seed, epoch)` is copied there (one small array per epoch) and every batch
is gathered from the resident arrays by that order on the device: no NumPy gather and no copy from
host to device per step. Batch `i` holds exactly what streams.EpochStream's batch `i` holds (tested),
so a resumed run reads the same batches on either stream. Import after `backend.activate()`;
streams.py builds these streams (training_pipeline, pipeline).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import keras
import numpy as np

BACKENDS = ("jax", "torch")


class _JaxOps:
    """Arrays on JAX's default device; one compiled gather per batch size (the last batch may be smaller)."""

    def __init__(self):
        import jax

        self.jax = jax
        self.take = jax.jit(self._take, static_argnames="size")

    @staticmethod
    def _take(images, labels, order, start, size: int):
        from jax import lax
        from jax import numpy as jnp

        chosen = lax.dynamic_slice_in_dim(order, start, size)
        return jnp.take(images, chosen, axis=0), jnp.take(labels, chosen, axis=0)

    def put(self, array: np.ndarray):
        return self.jax.device_put(array)

    def starts(self, starts: list[int]) -> list:
        # Each batch's offset as a device scalar, made once: a Python int would be copied each step.
        return self.jax.device_put([np.int32(start) for start in starts])


class _TorchOps:
    """Tensors on CUDA when there is one, else the CPU; slices of the order are views, not copies."""

    def __init__(self):
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def put(self, array: np.ndarray):
        # index_select takes int64 indices; images and labels keep their dtype, as Keras's own convert does.
        array = array.astype(np.int64) if array.dtype == np.int32 else array
        return self.torch.as_tensor(array, device=self.device)

    def starts(self, starts: list[int]) -> list[int]:
        return starts  # slicing a tensor by a Python int copies nothing to the device

    def take(self, images, labels, order, start: int, size: int):
        chosen = order[start : start + size]
        return images.index_select(0, chosen), labels.index_select(0, chosen)


@functools.cache
def _ops():
    name = keras.backend.backend()
    if name == "jax":
        return _JaxOps()
    if name == "torch":
        return _TorchOps()
    raise ValueError(f"the device stream serves {' and '.join(BACKENDS)}, not {name}")


class ResidentEpochStream(keras.utils.PyDataset):
    """Epochs first_epoch..epochs-1 of training batches, gathered on the device; see streams.EpochStream."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        first_epoch: int,
        epochs: int,
        epoch_order: Callable[[int, int, int], np.ndarray],
    ):
        # epoch_order is streams.epoch_order, passed in: streams imports this module, not the other way.
        super().__init__()  # one worker: batches in index order, in the training thread
        self.epoch_order = epoch_order
        self.ops = _ops()
        self.count, self.batch_size = len(images), batch_size
        self.seed, self.first_epoch, self.epochs = seed, first_epoch, epochs
        self.steps = math.ceil(self.count / batch_size)
        self.images, self.labels = self.ops.put(images), self.ops.put(labels)
        self.offsets = self.ops.starts([step * batch_size for step in range(self.steps)])
        self._order: tuple[int, object] | None = None

    def __len__(self) -> int:
        return self.steps * max(0, self.epochs - self.first_epoch)

    def order(self, epoch: int):
        """The epoch's permutation on the device: one copy per epoch, kept until the next epoch."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.ops.put(self.epoch_order(self.count, self.seed, epoch)))
        return self._order[1]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        epoch, step = divmod(index, self.steps)
        size = min(self.batch_size, self.count - step * self.batch_size)
        return self.ops.take(self.images, self.labels, self.order(self.first_epoch + epoch), self.offsets[step], size)


class ResidentBatches(ResidentEpochStream):
    """Batches in file order, for validation, test and prediction; the same every time it is read."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int):
        in_file_order = lambda count, *_: np.arange(count, dtype=np.int32)  # noqa: E731 (one use)
        super().__init__(images, labels, batch_size, 0, 0, 1, epoch_order=in_file_order)
