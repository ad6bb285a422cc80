"""Run by tests/test_resident_streams.py in a subprocess on KERAS_BACKEND=jax or torch (a process keeps
the backend Keras first started on): the device stream against the NumPy stream, batch for batch, and
a short training fed by each. Prints one JSON line of findings; asserts what must hold exactly.
"""

from __future__ import annotations

import json
import sys

import keras
import numpy as np

from fmnist_exp.training import resident_streams, streams


def as_numpy(batch):
    return tuple(keras.ops.convert_to_numpy(part) for part in batch)


def same_batches(left, right) -> int:
    assert len(left) == len(right), (len(left), len(right))
    for index in range(len(left)):
        (left_images, left_labels), (right_images, right_labels) = as_numpy(left[index]), as_numpy(right[index])
        assert left_images.dtype == right_images.dtype == np.uint8
        np.testing.assert_array_equal(left_images, right_images)
        np.testing.assert_array_equal(left_labels, right_labels)
    return len(left)


def no_copy_per_step(stream) -> bool:
    """JAX only: read an epoch (its order already on the device) with implicit host-to-device copies refused."""
    import jax

    stream.order(stream.first_epoch)
    with jax.transfer_guard_host_to_device("disallow"):
        batches = [stream[index] for index in range(stream.steps)]
    return all(isinstance(part, jax.Array) for batch in batches for part in batch)


def trained_weights(images, labels, kind: str) -> list[np.ndarray]:
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10, activation="softmax")])  # fmt: skip
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stream = streams.training_pipeline(images, labels, 32, seed=3, first_epoch=0, epochs=2, stream=kind)
    validation = streams.pipeline(images[:50], labels[:50], 32, stream=kind)
    model.fit(stream, epochs=2, steps_per_epoch=stream.steps, validation_data=validation, verbose=0, shuffle=False)
    return [np.asarray(weight) for weight in model.get_weights()]


def main() -> None:
    from fmnist_exp.runtime import private_api

    private_api.keep_keras_off_tensorflow()  # as the runner does: seconds of TensorFlow start-up saved
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (70, 28, 28, 1), dtype=np.uint8)
    labels = (np.arange(70) % 10).astype(np.uint8)
    findings = {"backend": keras.backend.backend()}
    # Three epochs of 32, 32 and 6 images, and a resumed start at epoch 1 and at epoch 2.
    for first_epoch in (0, 1, 2):
        kinds = [
            streams.training_pipeline(images, labels, 32, 3, first_epoch, 3, stream=kind)
            for kind in ("pydataset", "device")
        ]
        assert isinstance(kinds[1], resident_streams.ResidentEpochStream)
        findings[f"training_batches_from_epoch_{first_epoch}"] = same_batches(*kinds)
        try:
            kinds[1][len(kinds[1])]
            raise AssertionError("no IndexError past the end")
        except IndexError:
            pass
    tests = [streams.pipeline(images, labels, 32, stream=kind) for kind in ("pydataset", "device")]
    findings["test_batches"] = same_batches(*tests)
    if keras.backend.backend() == "jax":
        findings["no_copy_per_step"] = no_copy_per_step(
            streams.training_pipeline(images, labels, 32, 3, 1, 3, "device")
        )
    numpy_fed, device_fed = (trained_weights(images, labels, kind) for kind in ("pydataset", "device"))
    findings["same_weights_after_training"] = all(
        np.array_equal(a, b) for a, b in zip(numpy_fed, device_fed, strict=True)
    )
    findings["auto"] = streams.stream_kind("auto")
    print(json.dumps(findings))


if __name__ == "__main__":
    sys.exit(main())
